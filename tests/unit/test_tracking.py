"""cald_brain.tracking: the added logger gets every line's numbers at the line's optimizer step, and the file
logger keeps writing train_log.txt."""

import importlib.machinery
import math
import sys
import types

from speechbrain.utils.train_logger import FileTrainLogger

from cald_brain.run_logs import read_train_log
from cald_brain.tracking import TrackingLogger, with_tracking


def fake_wandb(monkeypatch) -> list:
    """A stand-in `wandb` module recording init and log calls (the real package is not in the test stack)."""
    calls = []
    module = types.ModuleType("wandb")
    module.__spec__ = importlib.machinery.ModuleSpec("wandb", None)

    class Run:
        def log(self, scalars, step):
            calls.append(("log", scalars, step))

    def init(**kwargs):
        calls.append(("init", kwargs))
        return Run()

    module.init = init
    monkeypatch.setitem(sys.modules, "wandb", module)
    return calls


def test_wandb_gets_the_scalars_and_train_log_stays(tmp_path, monkeypatch):
    calls = fake_wandb(monkeypatch)
    hparams = {
        "train_logger": FileTrainLogger(tmp_path / "train_log.txt"),
        "logger": "wandb",
        "output_folder": str(tmp_path),
        "seed": 7,
    }
    logger = with_tracking(hparams)
    assert isinstance(logger, TrackingLogger)
    logger.log_stats({"step": 5, "epoch": 1}, train_stats={"loss": 2.0, "ld": math.nan, "lr": 1e-3})
    logger.log_stats({"epoch": 1, "steps": 10}, train_stats={"loss": 1.5}, valid_stats={"WER": 50.0})
    logger.log_stats({"Epoch loaded": 1}, test_stats={"WER": 40.0})
    init, *logs = calls
    assert init[1]["config"]["seed"] == 7 and init[1]["dir"] == str(tmp_path / "wandb")
    assert logs == [
        ("log", {"meta/step": 5.0, "meta/epoch": 1.0, "train/loss": 2.0, "train/lr": 1e-3}, 5),
        ("log", {"meta/epoch": 1.0, "meta/steps": 10.0, "train/loss": 1.5, "valid/WER": 50.0}, 10),
        ("log", {"meta/Epoch loaded": 1.0, "test/WER": 40.0}, 10),
    ]
    lines = read_train_log(tmp_path)
    assert [line.is_step_line for line in lines] == [True, False, False]
    assert lines[0].stats["train"]["lr"] == 1e-3


def test_file_alone_by_default(tmp_path):
    file_logger = FileTrainLogger(tmp_path / "train_log.txt")
    assert with_tracking({"train_logger": file_logger, "output_folder": str(tmp_path)}) is file_logger
