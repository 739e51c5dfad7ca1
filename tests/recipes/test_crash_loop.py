"""tools/crash_loop.py on the TED-LIUM sample: SIGKILLed again and again the moment a checkpoint folder
appears (mid-write, and right after the rename), the same command then finishes with exactly the uninterrupted
run's final checkpoint. Slow (about 10 recipe starts)."""

import subprocess
import sys

import pytest
from test_resume_recipe import ROOT, recipe_args


@pytest.mark.slow
def test_repeated_kills_at_checkpoints_then_the_same_command_finishes(tmp_path):
    reference = [sys.executable, *recipe_args(tmp_path / "ref", ckpt_steps=1)]
    subprocess.run(reference, cwd=ROOT, check=True, capture_output=True, timeout=600)
    out = tmp_path / "killed"
    command = [sys.executable, *recipe_args(out, ckpt_steps=1)]
    loop = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tools" / "crash_loop.py"),
            "--kills=6",
            f"--save_folder={out / 'save'}",
            f"--log={tmp_path / 'loop.log'}",
            f"--reference={tmp_path / 'ref' / 'save'}",
            "--",
            *command,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert loop.returncode == 0, loop.stdout + (tmp_path / "loop.log").read_text()[-3000:]
    assert loop.stdout.count("SIGKILLed") == 6 and "tensors identical" in loop.stdout
