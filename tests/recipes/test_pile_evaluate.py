"""lm/Pile/evaluate.py, the lm-evaluation-harness adapter: on a local multiple-choice task, the harness's
per-choice log-likelihoods of a converted tiny-Pythia student and of the teacher equal an independent
computation from one forward pass, and the command writes the models x tasks table. The harness part needs
the optional `lm-eval` package (setup.py extra "lm") and is skipped without it (and marked slow: the harness
indexes its task files at start-up); the perplexity column, the table and the missing-package error are
tested always."""

import builtins
import json

import pytest
import torch
from conftest import SAMPLES, load_repo_script
from transformers import AutoModelForCausalLM, AutoTokenizer

from cald_brain.convert import load_and_convert
from cald_brain.data.mmap_tokens import MMapTokens

TINY_PYTHIA = SAMPLES / "models" / "tiny-pythia"
DOCS = [
    ("Return a new list containing all items from the iterable in ascending", ["order.", "banana."], 0),
    ("Open the file and return a corresponding file", ["elephant.", "object."], 1),
    ("Raise a ValueError if the argument is not a valid", ["value.", "sky."], 0),
    ("If the optional argument is omitted, the default", ["under", "is"], 1),
    ("The function returns None if the key is not", ["found.", "purple."], 0),
    ("This method is called when the object is garbage", ["window", "collected."], 1),
]
evaluate = load_repo_script("lm/Pile/evaluate.py", "pile_evaluate")


def local_task(folder) -> str:
    """A zero-shot multiple-choice task in lm-eval's YAML format over a local JSON-lines file."""
    data = folder / "tiny_choice.jsonl"
    data.write_text(
        "".join(json.dumps({"context": c, "choices": ch, "label": y}) + "\n" for c, ch, y in DOCS)
    )
    (folder / "tiny_choice.yaml").write_text(
        "task: cald_tiny_choice\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{context}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{label}}"\n'
        "metric_list:\n  - metric: acc\n"
    )
    return "cald_tiny_choice"


@torch.no_grad()
def choice_logliks(model, tokenizer, context: str, choices: list[str]) -> list[float]:
    """Sum of log p(continuation tokens | context), continuation = " " + choice, from one forward pass."""
    ctx = tokenizer(context)["input_ids"]
    out = []
    for choice in choices:
        whole = tokenizer(context + " " + choice)["input_ids"]
        logp = model(input_ids=torch.tensor([whole])).logits[0].float().log_softmax(-1)
        out.append(sum(logp[t - 1, whole[t]].item() for t in range(len(ctx), len(whole))))
    return out


def student(tmp_path):
    torch.manual_seed(0)
    model = load_and_convert(
        str(TINY_PYTHIA), "mamba", model_class=AutoModelForCausalLM, d_inner=96, dt_rank=4
    )
    folder = tmp_path / "student"
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(TINY_PYTHIA).save_pretrained(folder)  # as train.py exports it
    return folder


@pytest.mark.slow  # the harness indexes its thousands of task files at start-up
def test_harness_scores_student_and_teacher_like_a_forward_pass(tmp_path, monkeypatch):
    lm_eval_tasks = pytest.importorskip("lm_eval.tasks")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    task = local_task(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(TINY_PYTHIA)
    manager = lm_eval_tasks.TaskManager(include_path=str(tmp_path))
    for source in (student(tmp_path), TINY_PYTHIA):
        model, _ = evaluate.load_lm(str(source), "cpu")
        out = evaluate.evaluate_model(model, tokenizer, [task], manager=manager)
        samples = sorted(out["samples"][task], key=lambda s: s["doc_id"])
        assert len(samples) == len(DOCS)
        correct = 0
        for sample, (context, choices, label) in zip(samples, DOCS, strict=True):
            harness = [float(r[0]) for r in sample["filtered_resps"]]
            expected = choice_logliks(model, tokenizer, context, choices)
            assert harness == pytest.approx(expected, abs=1e-3)
            correct += int(max(range(len(choices)), key=expected.__getitem__) == label)
        assert out["results"][task]["acc,none"] == pytest.approx(correct / len(DOCS))


@pytest.mark.slow
def test_command_writes_the_table(tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    task = local_task(tmp_path)
    folder = student(tmp_path)
    output = tmp_path / "table.md"
    table = evaluate.main(
        [f"--model={folder}", f"--model={TINY_PYTHIA}", f"--tasks={task}", f"--include_path={tmp_path}"]
        + ["--device=cpu", f"--output={output}"]
    )
    assert output.read_text() == table
    rows = table.splitlines()
    assert rows[0] == f"| model | {task} | mean |"
    assert rows[2].startswith(f"| {folder} (student) |") and rows[3].startswith(
        f"| {TINY_PYTHIA} (transformer) |"
    )
    assert json.loads(output.with_suffix(".json").read_text()).keys() == {
        f"{folder} (student)",
        f"{TINY_PYTHIA} (transformer)",
    }
    with pytest.raises(SystemExit, match="unknown lm-eval task"):
        evaluate.main(
            [f"--model={TINY_PYTHIA}", "--tasks=no_such_task", "--device=cpu", f"--output={output}"]
        )


def test_results_table():
    table = evaluate.results_table({"a": {"x": 0.5, "y": 0.25}, "b": {"x": 1.0, "y": 0.0}}, ["x", "y"])
    assert table.splitlines() == [
        "| model | x | y | mean |",
        "|---|---|---|---|",
        "| a | 50.0 | 25.0 | 37.5 |",
        "| b | 100.0 | 0.0 | 50.0 |",
    ]


def test_missing_lm_eval_is_a_clear_error(monkeypatch):
    real_import = builtins.__import__

    def no_lm_eval(name, *args, **kwargs):
        if name.startswith("lm_eval"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_lm_eval)
    with pytest.raises(SystemExit, match=r'pip install -e "\.\[lm\]"'):
        evaluate.main([f"--model={TINY_PYTHIA}", "--tasks=piqa"])


def test_perplexity_column_without_the_harness(tmp_path):
    data = ["--data_prefix=" + str(SAMPLES / "pile_mini" / "document"), "--data_start=56", "--seq_length=129"]
    output = tmp_path / "ppl.md"
    table = evaluate.main(
        [f"--model={TINY_PYTHIA}", "--tasks=", *data, "--batch_size=3", f"--output={output}"]
    )
    rows = table.splitlines()
    assert rows[0] == "| model | perplexity |"
    corpus = MMapTokens(SAMPLES / "pile_mini" / "document")
    ids = torch.stack([torch.from_numpy(corpus[i].astype("int64")) for i in range(56, 64)])
    teacher = AutoModelForCausalLM.from_pretrained(TINY_PYTHIA).eval()
    with torch.no_grad():
        logits = teacher(input_ids=ids[:, :-1]).logits
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten()).exp().item()
    assert float(rows[2].split("|")[2]) == pytest.approx(expected, abs=0.01)  # batches of 3, 3, 2 = one of 8
    with pytest.raises(SystemExit, match="nothing to evaluate"):
        evaluate.main([f"--model={TINY_PYTHIA}", "--tasks="])
