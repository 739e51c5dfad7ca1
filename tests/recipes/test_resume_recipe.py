"""Crash safety of a real recipe run (TED-LIUM sample, tiny model, CPU): a run SIGKILLed mid-epoch and started
again with the same command ends with exactly the parameters of an uninterrupted run, random number
generators included (dropout, SpecAugment-style masking), with the recipe's own schedule machinery:
dynamic batches (DurationBatchSampler position), gradient accumulation and the warm-up + decay LR schedulers
of student and joint teacher; a second run on a live run's folder is refused."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TEDLIUM_SAMPLE, TEDLIUM_SAMPLE_OVERRIDES, TINY_WAV2VEC2

TRAIN = ROOT / "recipes" / "TEDLIUM" / "train.py"
KILLER = Path(__file__).with_name("kill_after_step.py")
SAMPLE = TEDLIUM_SAMPLE
TINY_MODEL = TINY_WAV2VEC2


def recipe_args(out: Path, *extra: str, ckpt_steps: int = 2) -> list[str]:
    """The trajectory recipe on the sample: 1 epoch of 10 micro-batches of 2 utterances, 2 per optimizer step,
    the learning rates changing at every step (warm-up 2, decay 3), a checkpoint every `ckpt_steps`
    micro-batches (at the end of a window), no workers."""
    return [
        str(TRAIN),
        "hparams/bimamba2_trajectory.yaml",
        f"--data_folder={SAMPLE}",
        f"--pretrained_source={TINY_MODEL}",
        f"--output_folder={out}",
        *TEDLIUM_SAMPLE_OVERRIDES,
        "--grad_accumulation_factor=2",  # (the last of a repeated option wins)
        "--warmup_steps=2",
        "--decay_steps=3",
        "--final_lr_ratio=0.1",
        "--device=cpu",
        "--headdim=32",
        "--d_state=16",
        "--number_of_epochs=1",
        "--ckpt_interval_minutes=0",
        f"--ckpt_interval_steps={ckpt_steps}",
        "--num_workers=0",
        "--noprogressbar",
        *extra,
    ]


def run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def run_together(*commands: list[str]) -> list[subprocess.CompletedProcess]:
    """Run independent recipe commands at the same time (start-up is mostly single-threaded)."""
    procs = [
        subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for args in commands
    ]
    done = []
    for args, proc in zip(commands, procs, strict=True):
        out, err = proc.communicate(timeout=600)
        done.append(subprocess.CompletedProcess(args, proc.returncode, out.decode(), err.decode()))
    return done


def final_state(out: Path) -> dict[str, torch.Tensor]:
    """Student, joint teacher and both optimizers of the run's last checkpoint."""
    (ckpt,) = (out / "save").glob("CKPT+*")
    state = {}
    for name in ("student", "teacher", "optimizer", "teacher_optimizer"):
        loaded = torch.load(ckpt / f"{name}.ckpt", weights_only=True)
        flat = loaded if name in ("student", "teacher") else loaded["state"]
        for key, value in flat.items():
            if isinstance(value, dict):
                state.update({f"{name}.{key}.{k}": v for k, v in value.items() if torch.is_tensor(v)})
            else:
                state[f"{name}.{key}"] = value
    return state


@pytest.mark.slow
def test_killed_mid_epoch_and_resumed_equals_uninterrupted(tmp_path):
    out = tmp_path / "killed"
    reference, killed = run_together(
        recipe_args(tmp_path / "ref"),
        # checkpoints after optimizer steps 1 and 2, killed after step 3 (micro-batches 5-6 are redone)
        [str(KILLER), "3", *recipe_args(out)],
    )
    assert reference.returncode == 0, reference.stderr[-3000:]
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (out / "train_log.txt").exists() and list((out / "save").glob("CKPT+*"))  # died mid-epoch
    resumed = run(recipe_args(out))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = resumed.stdout + resumed.stderr
    assert "Taking over the lock" in log and "its process no longer exists" in log

    ref, res = final_state(tmp_path / "ref"), final_state(out)
    assert ref.keys() == res.keys()
    different = [key for key in ref if not torch.equal(ref[key], res[key])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    assert (out / "train_log.txt").read_text().count("epoch: 1") == 1


def test_second_run_on_a_live_runs_folder_is_refused(tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = out / "run.lock"
        lock.write_text(
            f'{{"pid": {holder.pid}, "host": "{os.uname().nodename}", "start": null, "since": "now"}}'
        )
        second = run(recipe_args(out))
    finally:
        holder.kill()
        holder.wait()
    assert second.returncode == 1
    assert f"is in use by another run (process {holder.pid} on {os.uname().nodename}" in second.stderr
    assert not (out / "hyperparams.yaml").exists() and lock.exists()  # nothing written into the folder
