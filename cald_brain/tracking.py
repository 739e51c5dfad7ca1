"""Experiment tracking: `--logger=file|tensorboard|wandb` adds TensorBoard or Weights & Biases to the
recipe's `train_logger` (SpeechBrain's FileTrainLogger, which keeps writing train_log.txt).

Every statistic the engine logs (the step lines every `log_every_n_steps` optimizer steps, the epoch lines,
the test line) goes to train_log.txt as before and, as scalars `<stage>/<name>` at the run's optimizer step,
to the added logger: TensorBoard event files in `<output_folder>/tensorboard`, or a W&B run whose files are
under `<output_folder>/wandb`. Only the main process writes.
"""

import math
from pathlib import Path
from typing import Any, Protocol

from speechbrain.utils.distributed import if_main_process
from speechbrain.utils.train_logger import TrainLogger

LOGGERS = ("file", "tensorboard", "wandb")
STEP_KEYS = ("step", "steps")  # stats_meta keys that carry the optimizer step (step lines, epoch lines)


class LoggerChoiceError(ValueError):
    """A bad `logger` value, or the chosen logger's package is not installed (the message says what to do)."""


class ScalarSink(Protocol):
    """Where the added logger's scalars go."""

    def write(self, scalars: dict[str, float], step: int) -> None: ...


class TensorBoardSink:
    """torch.utils.tensorboard's SummaryWriter over `folder`; flushed after each write so that a running
    `tensorboard --logdir` sees every line."""

    def __init__(self, folder: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(folder))

    def write(self, scalars: dict[str, float], step: int) -> None:
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()


class WandbSink:
    """One W&B run (project from $WANDB_PROJECT, default "cald_brain"; named after the output folder), with
    the run's top-level plain hparams as its config. Its id comes from the output folder, so a resumed or
    requeued run continues the same W&B run."""

    def __init__(self, folder: Path, config: dict[str, Any]) -> None:
        import hashlib
        import os

        import wandb

        folder.mkdir(parents=True, exist_ok=True)
        output_folder = str(folder.parent.resolve())
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "cald_brain"),
            name=str(folder.parent),
            id=hashlib.sha1(output_folder.encode()).hexdigest()[:16],
            resume="allow",
            dir=str(folder),
            config=config,
        )

    def write(self, scalars: dict[str, float], step: int) -> None:
        self.run.log(scalars, step=step)


def check_logger_choice(choice: Any) -> str:
    """`choice` if it is a known logger whose package is installed; else a LoggerChoiceError naming the
    values or the install command (never a silent fallback to the file alone)."""
    if choice not in LOGGERS:
        raise LoggerChoiceError(f"--logger={choice}: choose one of {', '.join(LOGGERS)}")
    package = {"tensorboard": "tensorboard", "wandb": "wandb"}.get(choice)
    if package is not None:
        import importlib.util

        if importlib.util.find_spec(package) is None:
            extra = "track" if choice == "tensorboard" else "wandb"
            raise LoggerChoiceError(
                f"--logger={choice} needs the {package} package, which is not installed: "
                f'pip install {package} (or pip install -e ".[{extra}]")'
            )
    return choice


def scalars_of(stats_meta: dict, stages: dict[str, dict | None]) -> dict[str, float]:
    """The finite numbers of one log call as `<stage>/<name>` (meta fields as `meta/<name>`)."""
    scalars = {}
    for stage, stats in {"meta": stats_meta, **stages}.items():
        for name, value in (stats or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                scalars[f"{stage}/{name}"] = float(value)
    return scalars


class TrackingLogger(TrainLogger):
    """The recipe's file logger plus one ScalarSink: every log_stats call goes to both. The x axis is the
    optimizer step of the line (`step` or `steps` in stats_meta), else the last one seen (the test line).
    `sink` is None on the processes other than the main one: they write nothing."""

    def __init__(self, file_logger: TrainLogger, sink: ScalarSink | None) -> None:
        self.file_logger = file_logger
        self.sink = sink
        self.last_step = 0

    def log_stats(self, stats_meta, train_stats=None, valid_stats=None, test_stats=None, verbose=True):
        self.file_logger.log_stats(stats_meta, train_stats, valid_stats, test_stats, verbose)
        if self.sink is None:
            return
        stages = {"train": train_stats, "valid": valid_stats, "test": test_stats}
        step = next((stats_meta[key] for key in STEP_KEYS if key in stats_meta), self.last_step)
        self.last_step = int(step)
        self.sink.write(scalars_of(stats_meta, stages), self.last_step)


def _sink(choice: str, output_folder: Path, config: dict[str, Any]) -> ScalarSink | None:
    """The sink of `choice` on the main process; None on the others."""
    if not if_main_process():
        return None
    if choice == "tensorboard":
        return TensorBoardSink(output_folder / "tensorboard")
    return WandbSink(output_folder / "wandb", config)


def with_tracking(hparams: dict[str, Any]) -> TrainLogger:
    """The hparams' `train_logger`, plus the logger `logger` names (`file`, the default: it alone)."""
    file_logger = hparams["train_logger"]
    choice = check_logger_choice(hparams.get("logger", "file"))
    if choice == "file":
        return file_logger
    config = {k: v for k, v in hparams.items() if isinstance(v, (str, int, float, bool)) or v is None}
    return TrackingLogger(file_logger, _sink(choice, Path(hparams["output_folder"]), config))
