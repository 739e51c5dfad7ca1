"""Reading a finished (or running) recipe run folder: its train log, test metrics, saved hparams and kept
checkpoints. Used by tools/plot_run.py (curves) and tools/results.py (one table of many runs).

A run folder is a recipe's `output_folder`: `train_log.txt` (SpeechBrain's FileTrainLogger lines: one per
validation, e.g. ``epoch: 2, steps: 20 - train loss: 9.56, train task: 9.56, train lr: 1.00e-04 - valid loss:
8.61, valid WER: 1.00e+02``, one every `log_every_n_steps` optimizer steps with the train terms averaged since
the last, e.g. ``step: 200, epoch: 1 - train loss: 9.71, train task: 9.60, train lr: 9.00e-05``, and the test
line),
`test_metrics.json`, `hyperparams.yaml` (the hparams file as run, overrides applied, its source path in the
first comment lines) and `save/CKPT+*/` (student.ckpt among them).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ruamel.yaml import YAML

STAGES = ("train", "valid", "test")
# Task-head tensors of the three model wrappers (speech head / pooling, text classifier, LM head): the rest is
# the encoder or backbone.
HEAD_PREFIXES = ("head.", "pooling.", "model.classifier.", "model.lm_head.", "model.embed_out.")


@dataclass
class LogLine:
    """One line of train_log.txt: its leading fields (epoch, steps, lr, ...) and each stage's statistics."""

    meta: dict[str, float | str]
    stats: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def is_step_line(self) -> bool:
        """A `log_every_n_steps` line (train terms since the last one), not an epoch's validation line."""
        return "step" in self.meta

    @property
    def x(self) -> float:
        """Where the line sits on a curve: its optimizer step (epoch when the log has no steps)."""
        return float(self.meta.get("step", self.meta.get("steps", self.meta.get("epoch", 0))))


def _value(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text.strip()


def _fields(text: str) -> dict[str, float | str]:
    found = {}
    for item in text.split(", "):
        key, sep, value = item.partition(": ")
        if sep:
            found[key.strip()] = _value(value)
    return found


def parse_log_line(line: str) -> LogLine | None:
    """A FileTrainLogger line, or None for a line of another shape."""
    parts = line.strip().split(" - ")
    if len(parts) < 2:
        return None
    parsed = LogLine(meta=_fields(parts[0]))
    for part in parts[1:]:
        stage = part.split(" ", 1)[0]
        if stage not in STAGES:
            return None
        # "train loss: 1, train task: 2" -> {"loss": 1, "task": 2}
        parsed.stats[stage] = {key.removeprefix(f"{stage} "): value for key, value in _fields(part).items()}
    return parsed


def read_train_log(folder: str | Path) -> list[LogLine]:
    """Every parsable line of <folder>/train_log.txt, in order (no log: a FileNotFoundError naming it)."""
    path = Path(folder) / "train_log.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: {folder} is not a recipe run's output folder")
    lines = (parse_log_line(line) for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line is not None]


@dataclass
class RunSummary:
    """What tools/results.py tabulates for one run folder."""

    folder: Path
    recipe: str
    hparams: str
    mode: str
    seed: str
    steps: float | None
    dev: dict[str, float]
    test: dict[str, float]
    encoder_parameters: int | None


def saved_hparams(folder: Path) -> tuple[dict, str]:
    """(the top-level values of <folder>/hyperparams.yaml, the hparams file it was generated from)."""
    path = folder / "hyperparams.yaml"
    text = path.read_text(encoding="utf-8")
    source = re.search(r"^# (\S+\.yaml)\s*$", text, flags=re.M)
    values = YAML(typ="rt").load(text) or {}
    return dict(values), source.group(1) if source else str(path)


def recipe_of(hparams_file: str) -> str:
    """`recipes/TEDLIUM` from `/x/recipes/TEDLIUM/hparams/y.yaml` (the two folders above hparams/)."""
    parts = Path(hparams_file).parts
    if "hparams" in parts:
        at = len(parts) - 1 - parts[::-1].index("hparams")
        return "/".join(parts[max(at - 2, 0) : at])
    return "?"


def encoder_parameters(folder: Path) -> int | None:
    """Parameters of the student's encoder / backbone (every tensor but the task head) in the newest kept
    checkpoint's student.ckpt; None when no checkpoint is kept."""
    import torch  # only here: listing runs needs no torch

    checkpoints = sorted((folder / "save").glob("CKPT+*/student.ckpt"))
    if not checkpoints:
        return None
    state = torch.load(checkpoints[-1], map_location="cpu", mmap=True, weights_only=True)
    return sum(t.numel() for name, t in state.items() if not name.startswith(HEAD_PREFIXES))


def summarize_run(folder: str | Path) -> RunSummary:
    """The run's recipe, hparams file, guidance mode, seed, optimizer steps, dev metrics of the checkpoint
    tested (the validation line of the epoch the test loaded; else the last) and test metrics."""
    folder = Path(folder)
    values, source = saved_hparams(folder)
    lines = read_train_log(folder)
    valid = [line for line in lines if "valid" in line.stats]
    tested = [line for line in lines if "test" in line.stats]
    loaded = tested[-1].meta.get("Epoch loaded") if tested else None
    chosen = [line for line in valid if line.meta.get("epoch") == loaded] or valid[-1:]
    dev = {k: v for k, v in chosen[0].stats["valid"].items() if k != "loss"} if chosen else {}
    test_file = folder / "test_metrics.json"
    test = json.loads(test_file.read_text(encoding="utf-8")) if test_file.is_file() else {}
    steps = max((line.meta["steps"] for line in valid if "steps" in line.meta), default=None)
    return RunSummary(
        folder=folder,
        recipe=recipe_of(source),
        hparams=Path(source).name,
        mode=str(values.get("guidance_mode", "unguided")),
        seed=str(values.get("seed", "")),
        steps=steps,
        dev=dev,
        test=flatten_metrics(test),
        encoder_parameters=encoder_parameters(folder),
    )


def flatten_metrics(metrics: dict, prefix: str = "") -> dict[str, float]:
    """{"dev": {"accuracy": 0.9}} -> {"dev accuracy": 0.9}; numbers only."""
    flat = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_metrics(value, f"{name} "))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = value
    return flat


def find_runs(root: str | Path) -> list[Path]:
    """Every run folder under `root` (or `root` itself) that holds a train_log.txt and a hyperparams.yaml."""
    root = Path(root)
    return sorted(
        log.parent for log in root.rglob("train_log.txt") if (log.parent / "hyperparams.yaml").is_file()
    )
