"""Smoke test of every TED-LIUM hparams file: 2 steps on the mini sample through the real command line,
a checkpoint written, and a second invocation that resumes instead of starting over.

The teacher run goes first (its checkpoint and waypoint snapshots feed target / waypoint / hybrid).
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPE_DIR = ROOT / "recipes" / "TEDLIUM"
SAMPLE = ROOT / "tests" / "samples" / "TEDLIUM_release-3"
TINY_MODEL = ROOT / "tests" / "samples" / "models" / "tiny-wav2vec2"
STUDENT_YAMLS = ["unguided", "target", "trajectory", "waypoint", "hybrid"]
TINY_MIXER = ["--headdim=32", "--d_state=16"]


def run(hparams: str, out: Path, *extra: str, epochs: int, cwd: Path = ROOT) -> str:
    """One debug invocation of the recipe (2 train batches per epoch); returns its combined output."""
    cmd = [
        sys.executable,
        str(RECIPE_DIR / "train.py"),
        f"hparams/{hparams}",
        f"--data_folder={SAMPLE}",
        f"--pretrained_source={TINY_MODEL}",
        f"--output_folder={out}",
        "--batch_size=2",
        "--device=cpu",
        "--debug",
        "--debug_persistently",
        f"--debug_epochs={epochs}",
        "--noprogressbar",
        *extra,
    ]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc.stdout + proc.stderr


def train_epochs(out: Path) -> list[int]:
    """Epoch numbers logged in train_log.txt (one line per finished training epoch)."""
    text = (out / "train_log.txt").read_text()
    return [int(m) for m in re.findall(r"^epoch: (\d+)", text, flags=re.M)]


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tedlium") / "teacher"
    # Run from inside the recipe folder: hparams paths resolve there too.
    run("wav2vec2_ctc.yaml", out, "--snapshot_every_steps=1", epochs=1, cwd=RECIPE_DIR)
    return out


def test_teacher_run_writes_checkpoint_snapshots_and_test_results(teacher_run):
    assert list((teacher_run / "save").glob("CKPT+*"))
    assert sorted(p.name for p in (teacher_run / "save" / "snapshots").iterdir()) == [
        "step_1.ckpt",
        "step_2.ckpt",
    ]
    assert (teacher_run / "wer_test.txt").exists()
    assert (teacher_run / "test_metrics.json").exists()
    assert train_epochs(teacher_run) == [1]


@pytest.mark.parametrize("mode", STUDENT_YAMLS)
def test_student_yaml_runs_and_resumes(mode, teacher_run, tmp_path):
    out = tmp_path / mode
    teacher = [] if mode in ("unguided", "trajectory") else [f"--teacher_path={teacher_run / 'save'}"]
    if mode == "hybrid":
        teacher.append("--distill_until_step=1")
    run(f"bimamba2_{mode}.yaml", out, *TINY_MIXER, *teacher, epochs=1)
    assert list((out / "save").glob("CKPT+*"))
    assert train_epochs(out) == [1]
    # Same command with one more epoch: recovers epoch 1 and trains only epoch 2.
    run(f"bimamba2_{mode}.yaml", out, *TINY_MIXER, *teacher, epochs=2)
    assert train_epochs(out) == [1, 2]
    assert (out / "test_metrics.json").exists()
