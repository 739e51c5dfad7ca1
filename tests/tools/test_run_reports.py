"""tools/results.py and tools/plot_run.py on run folders laid out as the recipes write them."""

from pathlib import Path

import pytest
import torch
from conftest import load_repo_script

from cald_brain.run_logs import parse_log_line, summarize_run

results = load_repo_script("tools/results.py", "results_tool")
plot_run = load_repo_script("tools/plot_run.py", "plot_run_tool")

TRAJECTORY_LOG = (
    "epoch: 1, steps: 10 - train loss: 25.00, train task: 9.54, train ld: 1.02, train ld_1: 9.95e-01, "
    "train ld_2: 1.04, train kd: 1.27e-01, train skipped_steps: 0 - valid loss: 8.55, valid WER: 1.00e+02, "
    "valid CER: 1.76e+02\n"
    "epoch: 2, steps: 20 - train loss: 24.92, train task: 9.55, train ld: 1.01, train ld_1: 9.92e-01, "
    "train ld_2: 1.03, train kd: 1.27e-01, train skipped_steps: 0 - valid loss: 8.50, valid WER: 90.0, "
    "valid CER: 60.0\n"
    "epoch: 3, steps: 30 - train loss: 24.90, train task: 9.50, train ld: 1.00, train ld_1: 9.90e-01, "
    "train ld_2: 1.02, train kd: 1.20e-01, train skipped_steps: 0 - valid loss: 8.70, valid WER: 95.0, "
    "valid CER: 70.0\n"
    "Epoch loaded: 2 - test loss: 10.02, test WER: 80.0, test CER: 50.0\n"
)


def make_run(folder: Path, hparams: str, mode: str, log: str, test: str | None) -> Path:
    """A run folder as a recipe leaves it: train log, saved hparams (source path in its header), test
    metrics, one kept checkpoint with a 10-parameter encoder and a 3-parameter head."""
    (folder / "save" / "CKPT+1").mkdir(parents=True)
    (folder / "train_log.txt").write_text(log)
    (folder / "hyperparams.yaml").write_text(
        f"# Generated 2026-12-04 from:\n# /repo/recipes/TEDLIUM/hparams/{hparams}\n# yamllint disable\n"
        f"seed: 1986\nguidance_mode: {mode}\nlr: 0.001\n"
    )
    if test is not None:
        (folder / "test_metrics.json").write_text(test)
    state = {"encoder.w": torch.zeros(2, 5), "head.weight": torch.zeros(3)}
    torch.save(state, folder / "save" / "CKPT+1" / "student.ckpt")
    return folder


def test_log_line_parsing():
    line = parse_log_line(
        "epoch: 3, steps: 30, lr: 1.00e-04 - train loss: 2.5 - valid loss: 1.5, valid ACC: 0.75"
    )
    assert line.meta == {"epoch": 3.0, "steps": 30.0, "lr": 1e-4}
    assert line.stats == {"train": {"loss": 2.5}, "valid": {"loss": 1.5, "ACC": 0.75}}
    assert parse_log_line("speechbrain.core - Beginning experiment!") is None


def test_summary_takes_the_tested_epoch(tmp_path):
    run = make_run(
        tmp_path / "traj", "bimamba2_trajectory.yaml", "trajectory", TRAJECTORY_LOG, '{"WER": 80.0}'
    )
    summary = summarize_run(run)
    assert (summary.recipe, summary.hparams, summary.mode, summary.seed) == (
        "recipes/TEDLIUM",
        "bimamba2_trajectory.yaml",
        "trajectory",
        "1986",
    )
    assert summary.steps == 30
    assert summary.dev == {"WER": 90.0, "CER": 60.0}  # epoch 2, the one the test loaded
    assert summary.test == {"WER": 80.0}
    assert summary.encoder_parameters == 10


def test_results_table_lists_every_run(tmp_path, capsys):
    make_run(
        tmp_path / "a" / "1986", "bimamba2_trajectory.yaml", "trajectory", TRAJECTORY_LOG, '{"WER": 80.0}'
    )
    make_run(tmp_path / "b" / "1986", "bimamba2_unguided.yaml", "unguided", TRAJECTORY_LOG, None)  # running
    results.main([str(tmp_path), "--out", str(tmp_path / "RESULTS.md")])
    printed = capsys.readouterr().out
    assert printed == (tmp_path / "RESULTS.md").read_text()
    lines = printed.splitlines()
    assert lines[0].startswith("| recipe | hparams | mode | seed | steps | dev CER | dev WER | test WER |")
    assert (
        "| recipes/TEDLIUM | bimamba2_trajectory.yaml | trajectory | 1986 | 30 | 60 | 90 | 80 | 10 |"
        in lines[2]
    )
    assert "| bimamba2_unguided.yaml | unguided | 1986 | 30 | 60 | 90 |  | 10 |" in lines[3]


def test_results_errors_name_the_folder(tmp_path):
    with pytest.raises(SystemExit, match="no run folder"):
        results.main([str(tmp_path)])


def test_plot_overlays_runs(tmp_path):
    a = make_run(tmp_path / "traj", "bimamba2_trajectory.yaml", "trajectory", TRAJECTORY_LOG, None)
    b = make_run(
        tmp_path / "ung", "bimamba2_unguided.yaml", "unguided", TRAJECTORY_LOG.replace("ld", "xx"), None
    )
    runs = {
        name: plot_run.read_train_log(f) for name, f in zip(plot_run.run_names([a, b]), [a, b], strict=True)
    }
    titles = [title for title, _, _ in plot_run.panels(runs)]
    assert titles == [
        "task loss (train)",
        "layerwise distillation (train)",
        "LD per layer (traj)",
        "dev CER",
        "dev WER",
    ]
    plot_run.main([str(a), str(b), "--out", str(tmp_path / "curves.png")])
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit, match="train_log.txt does not exist"):
        plot_run.main([str(tmp_path / "missing")])


STEP_LOG = (
    "step: 5, epoch: 1 - train loss: 26.0, train task: 9.90, train ld: 1.10, train lr: 5.00e-04\n"
    "step: 10, epoch: 1 - train loss: 25.0, train task: 9.60, train ld: 1.05, train lr: 1.00e-03\n"
    + TRAJECTORY_LOG.splitlines(keepends=True)[0]
    + "step: 15, epoch: 2 - train loss: 24.9, train task: 9.55, train ld: 1.01, train lr: 7.50e-04\n"
)


def test_step_lines_parse_and_make_the_train_curves(tmp_path):
    """The `log_every_n_steps` lines parse; the train curves (lr included) come from them, the dev curves
    from the epoch lines, and the results table is unchanged by them."""
    line = parse_log_line(STEP_LOG.splitlines()[0])
    assert line.is_step_line and line.x == 5
    assert line.stats == {"train": {"loss": 26.0, "task": 9.9, "ld": 1.1, "lr": 5e-4}}
    run = make_run(tmp_path / "traj", "bimamba2_trajectory.yaml", "trajectory", STEP_LOG, None)
    lines = plot_run.read_train_log(run)
    assert plot_run.series(lines, "train", "task") == ([5.0, 10.0, 15.0], [9.9, 9.6, 9.55])
    assert plot_run.series(lines, "train", "lr") == ([5.0, 10.0, 15.0], [5e-4, 1e-3, 7.5e-4])
    assert plot_run.series(lines, "valid", "WER") == ([10.0], [100.0])
    assert summarize_run(run).steps == 10 and summarize_run(run).dev == {"WER": 100.0, "CER": 176.0}
