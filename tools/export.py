#!/usr/bin/env python3
"""Export the best checkpoint of a finished (or older) recipe run as a student folder (`cald_brain.export`).

    python tools/export.py results/TEDLIUM/bimamba2_target/1986            # -> <run>/student
    python tools/export.py RUN_FOLDER --out /somewhere/student --pretrained_source /models/wav2vec2-base

Only the student network is built (the `student:` entry of the run's hyperparams.yaml; no teacher, no data),
then the best checkpoint's `student.ckpt` is loaded into it (best by the run's own checkpoint key: WER,
ACC, dev_score or perplexity; or --checkpoint). The units / labels / tokenizer come from the run's save
folder and the pretrained source, the model card from hyperparams.yaml, the best checkpoint and
test_metrics.json.

A relative `pretrained_source` in hyperparams.yaml is relative to the directory the run was started from;
when the run's output_folder was relative too, that directory is known (the run folder minus
output_folder) and the source is found from any working directory; otherwise pass --pretrained_source.
"""

import argparse
import io
import os
import sys
from pathlib import Path

import torch
from hyperpyyaml import load_hyperpyyaml
from ruamel.yaml import YAML

from cald_brain.export import CTCUnits, ModelCard, export_student, task_of
from cald_brain.models import load_tokenizer

# Checkpoint meta keys the recipes keep their best checkpoint by, and which way is better.
BEST_KEYS = {"WER": "min", "ACC": "max", "dev_score": "max", "perplexity": "min"}
# Label files the speech classification recipes write into their save folder (one label per line), by the
# head (manifest column) they label; a run without `label_heads` has one head, the first file found.
LABEL_FILES = {
    "intent": "intents.txt",
    "spk_id": "speakers.txt",
    "scenario": "scenarios.txt",
    "action": "actions.txt",
}


class ExportError(SystemExit):
    def __init__(self, message: str) -> None:
        super().__init__(f"ERROR: {message}")


def load_run_yaml(run: Path) -> dict:
    """The run's hyperparams.yaml (SpeechBrain's copy, references resolved) as a round-trip YAML map."""
    path = run / "hyperparams.yaml"
    if not path.is_file():
        raise ExportError(f"{path} does not exist: give the output folder of a recipe run")
    with open(path, encoding="utf-8") as handle:
        return YAML(typ="rt").load(handle)


def run_directory(run: Path, output_folder: str) -> Path | None:
    """The directory the run was started from, when its output_folder was relative (else None)."""
    relative = Path(output_folder)
    if relative.is_absolute():
        return None
    parts = run.resolve().parts
    count = len([p for p in relative.parts if p not in ("", ".")])
    return Path(*parts[: len(parts) - count]) if count < len(parts) else None


def resolve_source(source: str, run: Path, output_folder: str) -> str:
    """`source` as an absolute folder when it is a folder relative to the run's start directory (or to the
    current one); hub names and absolute paths unchanged."""
    if os.path.isabs(source) or os.path.isdir(source):
        return os.path.abspath(source) if os.path.isdir(source) else source
    start = run_directory(run, output_folder)
    if start is not None and (start / source).is_dir():
        return str(start / source)
    return source


def source_node(student: dict) -> dict:
    """The mapping holding the student's `source:` (the encoder's for speech models)."""
    return student["encoder"] if "encoder" in student else student


def build_run_student(doc: dict, source: str) -> torch.nn.Module:
    """The `student:` object of the run's YAML alone, its source replaced by `source`."""
    student = doc.get("student")
    if student is None:
        raise ExportError("hyperparams.yaml has no `student:` entry")
    source_node(student)["source"] = source
    text = io.StringIO()
    YAML(typ="rt").dump({"student": student}, text)
    return load_hyperpyyaml(text.getvalue())["student"]


def best_checkpoint(save: Path) -> Path:
    """The checkpoint folder the run's best key selects (the newest when none applies)."""
    folders = sorted(save.glob("CKPT+*"))
    if not folders:
        raise ExportError(f"no checkpoint (CKPT+*) in {save}")
    metas = {folder: YAML(typ="safe").load((folder / "CKPT.yaml").read_text()) or {} for folder in folders}
    for key, direction in BEST_KEYS.items():
        scored = [f for f in folders if isinstance(metas[f].get(key), int | float)]
        if scored:
            pick = min if direction == "min" else max
            return pick(scored, key=lambda f: metas[f][key])
    return max(folders, key=lambda f: metas[f].get("unixtime", 0))


def ctc_units(save: Path, doc: dict, size: int) -> CTCUnits:
    """The run's CTC units (`size` of them): label_encoder.txt (characters) or the SentencePiece model in
    save/tokenizer."""
    if doc.get("units", "char") == "bpe":
        models = sorted((save / "tokenizer").glob("*.model"))
        if not models:
            raise ExportError(f"units: bpe, but {save / 'tokenizer'} holds no SentencePiece .model")
        return CTCUnits(int(doc.get("blank_index", 0)), sentencepiece_model=str(models[0]))
    from speechbrain.dataio.encoder import CTCTextEncoder

    encoder = CTCTextEncoder()
    encoder.expect_len(size)
    encoder.load(save / "label_encoder.txt")
    return CTCUnits.from_label_encoder(encoder)


def text_labels(doc: dict) -> list[str] | None:
    """Class names of a text task, from its recipe's task table (GLUE --task, else IMDB); None for
    regression."""
    from cald_brain.scripts import load_recipe_module

    repo = Path(__file__).resolve().parents[1]
    if doc.get("task") is not None:
        task = load_recipe_module(repo / "nlp" / "GLUE", "tasks").glue_task(str(doc["task"]))
    else:
        task = load_recipe_module(repo / "nlp" / "IMDB", "tasks").IMDB_TASK
    return None if task.labels is None else list(task.labels)


def task_inputs(module: torch.nn.Module, doc: dict, save: Path, source: str) -> dict:
    """export_student's units / labels / tokenizer / sampling_rate for this run."""
    task = task_of(module)
    if task == "ctc":
        units = ctc_units(save, doc, module.head.out_features)
        return {"units": units, "sampling_rate": int(doc.get("sample_rate", 16000))}
    if task == "audio-classification":
        heads = doc.get("label_heads") or []
        names = [LABEL_FILES.get(head, f"{head}s.txt") for head in heads] or list(LABEL_FILES.values())
        files = [save / name for name in names if (save / name).is_file()]
        if not files or len(files) < len(heads):
            raise ExportError(f"no label file ({', '.join(names)}) in {save}")
        read = [[line.strip() for line in f.read_text().splitlines() if line.strip()] for f in files]
        labels = dict(zip(heads, read, strict=True)) if len(heads) > 1 else read[0]
        return {
            "labels": labels,
            "sampling_rate": int(doc.get("sample_rate", 16000)),
            **({"joint_name": "intent"} if len(heads) > 1 else {}),  # SLURP: scenario + action
        }
    inputs = {"tokenizer": load_tokenizer(source)}
    if task == "text-classification":
        inputs["labels"] = text_labels(doc)
    return inputs


def model_card(run: Path, doc: dict, checkpoint: Path, source: str) -> ModelCard:
    """The run's card (ModelCard.for_run) with the optimizer steps of the exported checkpoint."""
    brain = checkpoint / "brain.ckpt"
    steps = YAML(typ="safe").load(brain.read_text()).get("optimizer_step") if brain.is_file() else None
    return ModelCard.for_run(run, {**doc, "pretrained_source": source}, steps)


def export_run(
    run: Path, out: Path | None = None, source: str | None = None, checkpoint: Path | None = None
) -> Path:
    """Export `run`'s best (or the given) checkpoint to `out` (default <run>/student); returns the folder."""
    doc = load_run_yaml(run)
    source = source or resolve_source(
        str(source_node(doc["student"])["source"]), run, str(doc.get("output_folder", ""))
    )
    module = build_run_student(doc, source)
    checkpoint = checkpoint or best_checkpoint(run / "save")
    weights = checkpoint / "student.ckpt"
    if not weights.is_file():
        raise ExportError(f"{weights} does not exist (is {checkpoint} a checkpoint of this run?)")
    module.load_state_dict(torch.load(weights, map_location="cpu"))
    module.eval()
    inputs = task_inputs(module, doc, run / "save", source)
    card = model_card(run, doc, checkpoint, source)
    return export_student(module, out or run / "student", card=card, **inputs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="a recipe run's output folder (holds hyperparams.yaml, save/)")
    parser.add_argument("--out", type=Path, help="export folder (default: RUN/student)")
    parser.add_argument(
        "--pretrained_source", help="the conversion source, if hyperparams.yaml's is not found"
    )
    parser.add_argument("--checkpoint", type=Path, help="a CKPT+* folder (default: the run's best)")
    args = parser.parse_args(argv)
    try:
        folder = export_run(args.run, args.out, args.pretrained_source, args.checkpoint)
    except FileNotFoundError as err:
        raise ExportError(f"{err}. If the pretrained source moved, pass --pretrained_source") from err
    print(folder)


if __name__ == "__main__":
    sys.exit(main())
