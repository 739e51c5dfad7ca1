"""tools/slurm/submit.py with a stand-in sbatch: the teacher first, the students that read its checkpoints
after it (afterok), the others at once; --array fans each kind out as one array job."""

import os
import subprocess
import sys

import pytest
from conftest import ROOT

SBATCH = """#!/usr/bin/env bash
n=$(( $(cat "$FAKE_DIR/count" 2>/dev/null || echo 100) + 1 ))
echo $n > "$FAKE_DIR/count"
echo "$n $*" >> "$FAKE_DIR/sbatch.log"
echo "$n;cluster"
"""


@pytest.fixture
def submit(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(SBATCH)
    (bin_dir / "sbatch").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_DIR": str(tmp_path)}

    def run(*args: str) -> list[str]:
        done = subprocess.run(
            [sys.executable, "tools/slurm/submit.py", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
        return (tmp_path / "sbatch.log").read_text().splitlines()

    return run


def test_teacher_then_students(submit):
    jobs = submit("recipes/TEDLIUM", "--", "--data_folder=/data/ted")
    assert len(jobs) == 6
    assert jobs[0].startswith("101 --parsable --job-name=cald-TEDLIUM-wav2vec2_ctc tools/slurm/cald.sbatch")
    assert jobs[0].endswith("recipes/TEDLIUM/train.py hparams/wav2vec2_ctc.yaml --data_folder=/data/ted")
    by_mode = {line.split("--job-name=cald-TEDLIUM-bimamba2_")[1].split()[0]: line for line in jobs[1:]}
    assert sorted(by_mode) == ["hybrid", "target", "trajectory", "unguided", "waypoint"]
    for mode in ("target", "waypoint", "hybrid"):
        assert "--dependency=afterok:101" in by_mode[mode]
        assert f"hparams/bimamba2_{mode}.yaml --data_folder=/data/ted" in by_mode[mode]
    for mode in ("unguided", "trajectory"):
        assert "--dependency" not in by_mode[mode]


def test_array_jobs(submit, tmp_path):
    jobs = submit("recipes/SLURP", "--array", "--sbatch=--partition=gpu", "--", "--data_folder=/data/slurp")
    assert len(jobs) == 3  # teacher, the free students, the students after the teacher
    free, after = jobs[1], jobs[2]
    assert "--array=0-1" in free and "--dependency" not in free
    assert "--array=0-2" in after and "--dependency=afterok:101" in after and "--partition=gpu" in after
    listing = after.split("CALD_TASKS_FILE=")[1].split()[0]
    with open(listing, encoding="utf-8") as f:
        assert f.read().split() == [
            "hparams/bimamba2_hybrid.yaml",
            "hparams/bimamba2_target.yaml",
            "hparams/bimamba2_waypoint.yaml",
        ]
    assert after.endswith("tools/slurm/cald.sbatch recipes/SLURP/train.py --data_folder=/data/slurp")
    for job in (free, after):  # the tool writes its task lists into the repository's slurm_tasks/
        os.remove(job.split("CALD_TASKS_FILE=")[1].split()[0])


def test_modes_and_errors(submit, tmp_path):
    jobs = submit("lm/Pile", "--modes", "target")  # no teacher run: the pretrained model is the teacher
    assert [job.split()[-1] for job in jobs] == ["hparams/mamba2_target.yaml", "hparams/mamba_target.yaml"]
    assert not any("--dependency" in job for job in jobs)
    done = subprocess.run(
        [sys.executable, "tools/slurm/submit.py", "recipes/TEDLIUM", "--modes", "nope", "--dry-run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert (
        done.returncode == 1
        and "no recipes/TEDLIUM student for mode(s) nope; available: hybrid" in done.stderr
    )
