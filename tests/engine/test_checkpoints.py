"""Crash-safe checkpoints (cald_brain.checkpoints): atomic writes, incomplete checkpoints skipped on recovery,
num_to_keep, random number generator states; and the output-folder run lock (cald_brain.run_control)."""

import errno
import json
import logging
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks

from cald_brain.checkpoints import AtomicCheckpointer, CheckpointWriteError, RandomStates, atomic_torch_save
from cald_brain.run_control import FolderInUseError, RunLock


@register_checkpoint_hooks
class Counter:
    """A recoverable holding one integer; its saver can be made to die half-way (a kill mid-save)."""

    def __init__(self, value: int = 0, die: bool = False):
        self.value, self.die = value, die

    @mark_as_saver
    def _save(self, path):
        if self.die:
            raise KeyboardInterrupt("killed mid-save")
        path.write_text(str(self.value))

    @mark_as_loader
    def _recover(self, path, end_of_epoch):
        self.value = int(path.read_text())


def make_checkpointer(folder, **values):
    net = torch.nn.Linear(3, 2)
    objects = {"net": net, **{name: Counter(value) for name, value in values.items()}}
    return AtomicCheckpointer(folder, recoverables=objects), objects


def test_kill_mid_save_leaves_no_checkpoint_and_previous_one_is_recovered(tmp_path):
    ckptr, objs = make_checkpointer(tmp_path, a=1, b=2)
    ckptr.save_checkpoint()
    objs["a"].value, objs["b"].die = 5, True
    with pytest.raises(KeyboardInterrupt):
        ckptr.save_checkpoint()  # a.ckpt written, then the process "dies"
    assert len(list(tmp_path.glob("CKPT+*"))) == 1 and len(list(tmp_path.glob(".tmp-CKPT+*"))) == 1
    fresh, new = make_checkpointer(tmp_path, a=0, b=0)
    assert fresh.recover_if_possible() is not None and new["a"].value == 1 and new["b"].value == 2
    fresh.save_checkpoint()  # the next save clears what the killed one left
    assert not list(tmp_path.glob(".tmp-*"))


FULL_DISK_ERRORS = {  # what torch.save raises when the disk fills up, and the plain OS error
    "torch": RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 532608 vs 532500"),
    "ENOSPC": OSError(errno.ENOSPC, "No space left on device"),
}


@pytest.mark.parametrize("kind", FULL_DISK_ERRORS)
def test_a_full_disk_names_the_folder_and_the_fix_and_keeps_the_previous_checkpoint(
    kind, tmp_path, monkeypatch
):
    ckptr, objs = make_checkpointer(tmp_path, a=1)
    ckptr.save_checkpoint()
    objs["a"].value = 5

    def full_disk(*args, **kwargs):
        raise FULL_DISK_ERRORS[kind]

    monkeypatch.setattr(torch, "save", full_disk)  # the writer of the net's parameters
    with pytest.raises(
        CheckpointWriteError, match=rf"Could not write {tmp_path}/CKPT\+.*GiB free.*disk .*is full"
    ):
        ckptr.save_checkpoint()
    with pytest.raises(CheckpointWriteError, match="final.ckpt.*GiB free"):
        atomic_torch_save({}, tmp_path / "final.ckpt")
    assert not list(tmp_path.glob(".tmp-*"))  # the partial checkpoint and file are gone
    fresh, new = make_checkpointer(tmp_path, a=0)
    assert fresh.recover_if_possible() is not None and new["a"].value == 1


def write_legacy_incomplete(folder, unixtime: float) -> str:
    """What plain SpeechBrain leaves when killed mid-save: CKPT.yaml first, then the files in turn, the last
    one cut at 0 bytes."""
    path = folder / "CKPT+broken"
    path.mkdir()
    (path / "CKPT.yaml").write_text(f"end-of-epoch: false\nunixtime: {unixtime}\n")
    torch.save(torch.nn.Linear(3, 2).state_dict(), path / "net.ckpt")
    (path / "a.ckpt").write_text("")
    return str(path)


def test_incomplete_checkpoint_is_skipped_with_a_warning_naming_it(tmp_path, caplog):
    ckptr, _ = make_checkpointer(tmp_path, a=3)
    good = ckptr.save_checkpoint()
    broken = write_legacy_incomplete(tmp_path, good.meta["unixtime"] + 10)
    fresh, objs = make_checkpointer(tmp_path, a=0)
    with caplog.at_level(logging.WARNING):
        chosen = fresh.recover_if_possible()
    assert chosen.path == good.path and objs["a"].value == 3
    assert f"Skipping checkpoint {broken}" in caplog.text and "a.ckpt is empty" in caplog.text


def test_damaged_file_of_an_atomic_checkpoint_is_detected(tmp_path, caplog):
    ckptr, _ = make_checkpointer(tmp_path, a=3)
    old = ckptr.save_checkpoint()
    new = ckptr.save_checkpoint()
    with open(new.path / "net.ckpt", "r+b") as handle:  # e.g. a copy cut short
        handle.truncate(10)
    with caplog.at_level(logging.WARNING):
        assert ckptr.find_checkpoint().path == old.path
    assert "net.ckpt has 10 bytes instead of" in caplog.text


def test_keep_only_keeps_the_best_and_deletes_the_rest_completely(tmp_path):
    ckptr, _ = make_checkpointer(tmp_path, a=0)
    for wer in (30.0, 10.0, 20.0, 40.0):
        ckptr.save_and_keep_only(meta={"WER": wer}, min_keys=["WER"], num_to_keep=2)
    kept = sorted(c.meta["WER"] for c in ckptr.list_checkpoints())
    assert kept == [10.0, 20.0, 40.0]  # the 2 best by WER, plus the newest (SpeechBrain's keep_recent)
    assert sorted(p.name.startswith("CKPT+") for p in tmp_path.iterdir()) == [True] * 3


def draws() -> list:
    return [torch.rand(3).tolist(), np.random.rand(3).tolist(), np.random.randn(), random.random()]


def test_random_states_round_trip(tmp_path):
    states = RandomStates()
    draws()
    states._save(tmp_path / "rng.ckpt")
    expected = draws()
    torch.manual_seed(123), np.random.seed(123), random.seed(123)
    states._recover(tmp_path / "rng.ckpt", False)
    assert draws() == expected


# --- run lock -------------------------------------------------------------------------------------


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_lock(folder, **info):
    (folder / "run.lock").write_text(json.dumps({"host": os.uname().nodename, "since": "then", **info}))


def test_second_live_run_is_refused_naming_the_holder(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write_lock(tmp_path, pid=holder.pid)
        with pytest.raises(FolderInUseError, match=f"in use by another run \\(process {holder.pid} on "):
            RunLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()


def test_stale_lock_of_a_dead_process_is_taken_over_and_released(tmp_path, caplog):
    pid = dead_pid()
    write_lock(tmp_path, pid=pid)
    lock = RunLock(tmp_path)
    with caplog.at_level(logging.WARNING):
        lock.acquire()
    assert f"Taking over the lock {tmp_path / 'run.lock'} of process {pid}" in caplog.text
    assert json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getpid()
    with pytest.raises(FolderInUseError):  # held by this live process now
        _other_process_lock(tmp_path)
    lock.release()
    assert not (tmp_path / "run.lock").exists()


def _other_process_lock(folder) -> None:
    """Try the lock from another live process on this host (a second run)."""
    code = (
        "import sys; from cald_brain.run_control import RunLock, FolderInUseError\n"
        f"try: RunLock({str(folder)!r}).acquire()\n"
        "except FolderInUseError as e: print(e); sys.exit(3)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode == 3:
        raise FolderInUseError(proc.stdout)
    assert proc.returncode == 0, proc.stderr


def test_lock_from_another_host_is_stale_for_a_requeued_slurm_job_only(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    write_lock(tmp_path, pid=1, host="other-node", slurm_job="41", slurm_restart="0")
    with pytest.raises(FolderInUseError, match="on other-node, SLURM job 41"):
        RunLock(tmp_path).acquire()
    write_lock(tmp_path, pid=1, host="other-node", slurm_job="42", slurm_restart="0")
    lock = RunLock(tmp_path)
    lock.acquire()  # the same job, requeued: its earlier try is gone
    lock.release()
