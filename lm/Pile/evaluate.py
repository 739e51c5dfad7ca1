#!/usr/bin/env python3
"""Zero-shot evaluation of Pile students and their teachers with EleutherAI's lm-evaluation-harness.

    python lm/Pile/evaluate.py --model=results/Pile/mamba_target/1986/student --model=EleutherAI/pythia-1b \\
        --tasks=lambada_openai,piqa,winogrande,wsc273,arc_easy,arc_challenge,sciq,logiqa

Each --model is a student exported by train.py (<output_folder>/student, read with cald_brain's hub classes),
a converted student saved with `save_pretrained` (its config.json records `cald_conversion`; loaded with
cald_brain.load_student) or a transformer (hub name or folder; the teacher). As the CALD reference
(lm/eval/run_lm_evals.py, lm/open_instruct/lm_harness_eval.py), the harness's Hugging Face model class scores
a model instance zero-shot, and the reported metric is `acc` for every task. With --data_prefix the perplexity
on a range of an MMIDIDX corpus is measured too (e.g. the test range of train.py: it starts at
max_train_samples + valid_samples). Every --model (its config and tokenizer) is checked before the first is
evaluated, so a mistyped one fails at once; the table (models x tasks) is written to --output as Markdown,
the raw results next to it as JSON, after each model (a later failure keeps the finished ones), and printed.

Generation tasks (generate_until) decode through cald_brain.models.generate, never Hugging Face's
`model.generate()`: a student with its recurrent cache (constant memory per token), a transformer with its KV
cache, the harness's left-padded batches row by row as each prompt alone; greedy or temperature sampling
(other generation settings are refused).

Needs the `lm-eval` package (`pip install -e ".[lm]"`). Tasks whose data the harness must download from the
Hugging Face hub fail on a machine without network access; the error names the task. Local tasks (a folder
of task YAMLs) are added with --include_path; when every task is found there, the harness's own task files
are not indexed (saves ~25 s).
"""

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PretrainedConfig, PreTrainedModel

from cald_brain.convert import load_config, load_student
from cald_brain.convert.core import CONVERSION_KEY
from cald_brain.data.manifests import write_atomic
from cald_brain.data.mmap_tokens import PILE_SEQ_LENGTH, MMapFormatError, TokenSequences, check_token_ids
from cald_brain.models.causal_lm import next_token_loss
from cald_brain.models.generation import generate
from cald_brain.models.hub import CaldConfig, is_exported, load_exported

REFERENCE_TASKS = "lambada_openai,piqa,winogrande,wsc273,arc_easy,arc_challenge,sciq,logiqa"
METRIC = "acc,none"  # the reference's metric key for every task
PPL = "perplexity"


class EvaluationError(SystemExit):
    """A user-facing error: printed without a traceback, exit status 1."""

    def __init__(self, message: str) -> None:
        super().__init__(f"ERROR: {message}")


def import_lm_eval():
    """The lm_eval package, or a clear error saying how to install it."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as err:
        raise EvaluationError(
            f"lm/Pile/evaluate.py needs EleutherAI's lm-evaluation-harness ({err}); install it with "
            '`pip install -e ".[lm]"` (or `pip install lm-eval`)'
        ) from err
    return lm_eval, HFLM, TaskManager


def model_config(source: str) -> PretrainedConfig:
    """The config of a --model (a folder or a hub name; an exported student's: its backbone's); a missing
    folder or an unknown hub name is an EvaluationError naming it."""
    try:
        if is_exported(source):
            return CaldConfig.from_pretrained(source).backbone_config()
        return load_config(source)
    except (OSError, ValueError) as err:
        raise EvaluationError(f"--model={source}: {err}") from err


def load_lm(source: str, device: str) -> tuple[PreTrainedModel, bool]:
    """(model in eval mode on `device`, whether it is a converted student)."""
    converted = os.path.isdir(source) and bool(getattr(model_config(source), CONVERSION_KEY, None))
    if is_exported(source):  # the Hugging Face model inside the exported network
        model = load_exported(source).net.model
    elif converted:
        model = load_student(source)
    else:
        model = AutoModelForCausalLM.from_pretrained(source)
    return model.to(device).eval(), converted


def load_tokenizer(source: str) -> Any:
    """The tokenizer of a --model (or --tokenizer); an EvaluationError naming it if it cannot be loaded."""
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise EvaluationError(
            f"no tokenizer in {source} ({err}); train.py exports it next to the student, or give --tokenizer"
        ) from err


def harness_model(model: PreTrainedModel, tokenizer: Any, batch_size: int, max_length: int | None = None):
    """The harness's Hugging Face LM class around a model instance (as the reference's
    HybridMambaEvalWrapper): the harness tokenizes, batches and scores continuations itself, so students and
    teachers are scored by the same code. Its generation goes through cald_brain's cached `generate`."""
    _, HFLM, _ = import_lm_eval()
    from lm_eval.models import huggingface

    class CachedGenerationLM(HFLM):
        def _model_generate(self, context, max_length: int, stop: list[str], **kwargs) -> torch.Tensor:
            """The harness's batched greedy / sampled generation (left-padded `context` and its
            attention_mask, `stop` strings) by cald_brain's generate."""
            attention_mask = kwargs.pop("attention_mask", None)
            sample, temperature = kwargs.pop("do_sample", False), kwargs.pop("temperature", 0.0)
            temperature = temperature if sample else 0.0
            if kwargs or (sample and not temperature):
                raise EvaluationError(
                    f"generation settings {sorted(kwargs) or ['do_sample without temperature']} of a task: "
                    "lm/Pile/evaluate.py decodes with cald_brain.models.generate (greedy, or sampling at a "
                    "temperature) only"
                )
            criteria = huggingface.stop_sequences_criteria(
                self.tokenizer, stop, context.shape[1], context.shape[0]
            )
            return generate(
                self.model,
                context,
                max_length - context.shape[1],
                temperature=temperature,
                eos_token_id=self.tokenizer.eos_token_id,
                attention_mask=attention_mask,
                stop=lambda tokens: bool(criteria(tokens, None).all()),
            )

    return CachedGenerationLM(
        pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length
    )


def task_manager(tasks: list[str], include_path: str | None) -> Any:
    """The harness's task index: only the --include_path folder when it holds every task, else the harness's
    own task files too (indexing those takes ~25 s)."""
    _, _, TaskManager = import_lm_eval()
    if include_path is not None:
        local = TaskManager(include_path=include_path, include_defaults=False)
        if all(t in local.all_tasks for t in tasks):
            return local
    return TaskManager(include_path=include_path)


def load_tasks(manager: Any, tasks: list[str]) -> list[Any]:
    """The harness's task (or group) objects, loaded one task at a time so that a dataset the machine cannot
    get fails with the name of its task."""
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise EvaluationError(
            f"unknown lm-eval task(s) {', '.join(unknown)}; check the names (lm-eval --tasks list) or add "
            "the folder of a local task YAML with --include_path"
        )
    loaded = []
    for task in tasks:
        try:
            found = manager.load([task])
        except OSError as err:  # what datasets raises offline or without network (ConnectionError, ...)
            raise EvaluationError(
                f"lm-eval task {task}: its dataset could not be loaded ({type(err).__name__}: {err}). Tasks "
                "whose data comes from the Hugging Face hub need network access or a filled "
                "HF_DATASETS_CACHE."
            ) from err
        groups = found.get("groups", {})
        loaded += [groups[task]] if task in groups else list(found["tasks"].values())
    return loaded


def evaluate_model(
    model: PreTrainedModel,
    tokenizer: Any,
    tasks: list[str],
    include_path: str | None = None,
    batch_size: int = 1,
    limit: int | None = None,
    max_length: int | None = None,
    manager: Any = None,
) -> dict[str, Any]:
    """Zero-shot harness results for `tasks` ({"results": {task: {metric: value}}, "samples": ...}).
    manager: an lm_eval TaskManager to reuse (building one indexes every task YAML of the harness)."""
    lm_eval, _, _ = import_lm_eval()
    manager = manager or task_manager(tasks, include_path)
    return lm_eval.simple_evaluate(
        model=harness_model(model, tokenizer, batch_size, max_length),
        tasks=load_tasks(manager, tasks),
        num_fewshot=0,
        task_manager=manager,
        limit=limit,
    )


@torch.no_grad()
def perplexity(model: PreTrainedModel, data: TokenSequences, batch_size: int, device: str) -> float:
    """exp(mean next-token cross-entropy) over every target token of `data` (as train.py's test stage: each
    sequence gives seq_length - 1 inputs and their next tokens)."""
    nll, count = 0.0, 0
    for start in range(0, len(data), batch_size):
        ids = torch.stack([data[i]["input_ids"] for i in range(start, min(start + batch_size, len(data)))])
        ids = ids.to(device)
        logits = model(input_ids=ids[:, :-1]).logits
        nll += next_token_loss(logits, ids, reduction="sum").item()
        count += ids[:, 1:].numel()
    return math.exp(nll / count)


def results_table(scores: dict[str, dict[str, float]], tasks: list[str]) -> str:
    """Markdown table: one row per model; per task its accuracy in % and their mean, then the perplexity
    column when measured."""
    with_ppl = any(PPL in by_task for by_task in scores.values())
    header = ["model", *tasks, *(["mean"] if tasks else []), *([PPL] if with_ppl else [])]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for name, by_task in scores.items():
        values = [100 * by_task[t] for t in tasks]
        cells = [f"{v:.1f}" for v in values] + ([f"{sum(values) / len(values):.1f}"] if tasks else [])
        cells += [f"{by_task[PPL]:.2f}"] if with_ppl else []
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_results(output: Path, scores: dict[str, dict[str, float]], raw: dict, tasks: list[str]) -> str:
    """Write the table to `output` and the raw results to its .json, each atomically; returns the table."""
    table = results_table(scores, tasks)
    output.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(output, table)
    write_atomic(output.with_suffix(".json"), json.dumps(raw, indent=2, default=str))
    return table


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", action="append", required=True, help="student folder or transformer")
    parser.add_argument(
        "--tasks", default=REFERENCE_TASKS, help="comma-separated lm-eval task names ('': none)"
    )
    parser.add_argument("--tokenizer", default=None, help="default: the model's own (train.py exports it)")
    parser.add_argument("--include_path", default=None, help="folder of local task YAMLs")
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--limit", type=int, default=None, help="examples per task (quick checks)")
    parser.add_argument("--max_length", type=int, default=None, help="context length (default: the model's)")
    parser.add_argument("--data_prefix", default=None, help="MMIDIDX corpus: also measure perplexity on it")
    parser.add_argument("--data_start", type=int, default=0, help="first sequence of the perplexity range")
    parser.add_argument("--data_count", type=int, default=None, help="sequences (default: to the end)")
    parser.add_argument("--seq_length", type=int, default=PILE_SEQ_LENGTH)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", type=Path, default=Path("lm_eval_results.md"))
    args = parser.parse_args(argv)
    tasks = [t for t in args.tasks.split(",") if t]
    if not tasks and args.data_prefix is None:
        raise EvaluationError("nothing to evaluate: give --tasks and/or --data_prefix")
    data = None
    if args.data_prefix is not None:
        try:
            data = TokenSequences(args.data_prefix, args.data_start, args.data_count, args.seq_length)
        except (OSError, ValueError) as err:
            raise EvaluationError(f"--data_prefix={args.data_prefix}: {err}") from err
    # every model and tokenizer is checked before any is evaluated
    for source in args.model:
        model_config(source)
    tokenizers = {source: load_tokenizer(args.tokenizer or source) for source in args.model} if tasks else {}
    manager = task_manager(tasks, args.include_path) if tasks else None
    scores, raw = {}, {}
    for source in args.model:
        model, converted = load_lm(source, args.device)
        if data is not None:  # its token ids against this model's vocabulary, before any evaluation
            try:
                check_token_ids(data, model.get_input_embeddings().num_embeddings)
            except MMapFormatError as err:
                raise EvaluationError(f"--data_prefix with --model={source}: {err}") from err
        name = f"{source} ({'student' if converted else 'transformer'})"
        scores[name], raw[name] = {}, {}
        if tasks:
            tokenizer = tokenizers[source]
            out = evaluate_model(
                model,
                tokenizer,
                tasks,
                args.include_path,
                args.batch_size,
                args.limit,
                args.max_length,
                manager,
            )
            missing = [t for t in tasks if METRIC not in out["results"].get(t, {})]
            if missing:
                raise EvaluationError(
                    f"{source}: no {METRIC!r} in the harness results of {', '.join(missing)}"
                )
            scores[name] = {t: out["results"][t][METRIC] for t in tasks}
            raw[name] = out["results"]
        if data is not None:
            scores[name][PPL] = raw[name][PPL] = perplexity(model, data, args.batch_size, args.device)
        del model
        table = write_results(args.output, scores, raw, tasks)  # kept if a later model fails
    print(table, file=sys.stdout)
    return table


if __name__ == "__main__":
    main()
