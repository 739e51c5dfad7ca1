"""Crash-safe checkpoints: SpeechBrain's Checkpointer, written atomically and checked before it is trusted.

SpeechBrain writes ``CKPT.yaml`` first and the other files after it, straight into the ``CKPT+*`` folder, so a
run killed mid-write leaves a folder that looks valid and makes every later run fail to resume.
`AtomicCheckpointer` writes every file into a hidden temporary folder, flushes it to disk and renames it into
place: a ``CKPT+*`` folder only ever appears complete. The meta file records the size of every file, and a
checkpoint that is incomplete or damaged (older versions, a copy cut short, a half-deleted folder) is skipped
on recovery with a warning naming it; the previous complete checkpoint is used instead. Deletion renames the
folder away first, so it is atomic too. A write that fails (a full disk: torch reports "unexpected pos ...")
removes its temporary folder and raises CheckpointWriteError naming the folder, the free space and the fix;
the previous checkpoint stays intact. Use it in YAML as
``checkpointer: !new:cald_brain.checkpoints.AtomicCheckpointer``; everything else (recoverables,
``save_and_keep_only``, ``num_to_keep``) is SpeechBrain's.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import random
import shutil
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from speechbrain.utils.checkpoints import (
    CKPT_PREFIX,
    DEFAULT_SAVE_HOOKS,
    METAFNAME,
    PARAMFILE_EXT,
    Checkpoint,
    Checkpointer,
    ckpt_recency,
    get_default_hook,
    mark_as_loader,
    mark_as_saver,
    register_checkpoint_hooks,
)
from speechbrain.utils.distributed import ddp_barrier, ddp_broadcast, if_main_process

logger = logging.getLogger(__name__)

FILES_KEY = "checkpoint-files"  # meta key: {file name: size in bytes} of every file of the checkpoint
TMP_PREFIX = ".tmp-"  # a checkpoint being written
TRASH_PREFIX = ".trash-"  # a checkpoint being deleted


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (typically a full disk); the message names the folder and the fix."""


@contextlib.contextmanager
def checked_write(target: Path, partial: Path) -> Iterator[None]:
    """Turn an OSError / RuntimeError raised while writing `target` (through the temporary `partial`, removed
    on failure) into a CheckpointWriteError naming it, the free space of its disk and the fix."""
    try:
        yield
    except (OSError, RuntimeError) as err:
        if partial.is_dir():
            shutil.rmtree(partial, ignore_errors=True)
        else:
            partial.unlink(missing_ok=True)
        try:
            free = f"{shutil.disk_usage(target.parent).free / 2**30:.2f} GiB free on its disk"
        except OSError:
            free = "the free space of its disk is unknown"
        full = (isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)) or any(
            text in str(err) for text in ("unexpected pos", "file write failed", "No space left")
        )
        cause = "The disk (or quota) is full" if full else "If the disk (or quota) is full"
        raise CheckpointWriteError(
            f"Could not write {target} ({type(err).__name__}: {err}); {free}. {cause}: free space there "
            "(older output folders, or a lower num_to_keep) or move output_folder to a larger disk, then run "
            "the same command again; it resumes from the last complete checkpoint, which is intact."
        ) from err


def fsync_path(path: Path) -> None:
    """Flush a file or folder to disk (so a rename that follows cannot outlive its contents on a crash)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """`torch.save` through a temporary file that is flushed and renamed into place; returns `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}")
    with checked_write(path, tmp):
        torch.save(obj, tmp)
        fsync_path(tmp)
        os.replace(tmp, path)
    fsync_path(path.parent)
    return path


def checkpoint_problem(path: Path, required: list[str] = ()) -> str | None:
    """Why the ``CKPT+*`` folder `path` cannot be resumed from, or None if it looks complete.

    Checkpoints written by `AtomicCheckpointer` list their files and sizes in the meta file; those are checked
    exactly. Older ones (plain SpeechBrain) must hold a non-empty file for each name in `required` (the
    recoverables registered now) and intact torch archives.
    """
    try:
        meta = yaml.safe_load((path / METAFNAME).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        return f"its {METAFNAME} cannot be read ({err})"
    if not isinstance(meta, dict) or "unixtime" not in meta or "end-of-epoch" not in meta:
        return f"its {METAFNAME} is incomplete"
    files = meta.get(FILES_KEY)
    if files is not None:
        for name, size in files.items():
            file = path / name
            if not file.is_file():
                return f"{name} is missing"
            if file.stat().st_size != size:
                return f"{name} has {file.stat().st_size} bytes instead of {size}"
        return None
    for name in required:
        if not (path / f"{name}{PARAMFILE_EXT}").is_file():
            return f"{name}{PARAMFILE_EXT} is missing"
    for file in path.glob(f"*{PARAMFILE_EXT}"):
        if file.stat().st_size == 0:
            return f"{file.name} is empty"
        with open(file, "rb") as handle:
            is_archive = handle.read(2) == b"PK"
        if is_archive and not zipfile.is_zipfile(file):
            return f"{file.name} is truncated"
    return None


class AtomicCheckpointer(Checkpointer):
    """A SpeechBrain Checkpointer whose checkpoints appear atomically and are verified before recovery."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._reported: set[Path] = set()

    def save_checkpoint(self, meta={}, end_of_epoch=True, name=None, verbosity=logging.INFO):  # noqa: B006
        """Write every recoverable into a temporary folder, then rename it to ``CKPT+...`` (main process)."""
        final = tmp = None
        if if_main_process():
            self._remove_leftovers()
            final = self._new_checkpoint_dirpath() if name is None else self._custom_checkpoint_dirpath(name)
            if final.exists():
                raise FileExistsError(f"checkpoint {final} exists already; choose another name")
            tmp = final.with_name(f"{TMP_PREFIX}{final.name}")
            tmp.mkdir()
        tmp = ddp_broadcast(tmp, src=0)
        hooks = {}
        for key, obj in self.recoverables.items():
            hooks[key] = self.custom_save_hooks.get(key) or get_default_hook(obj, DEFAULT_SAVE_HOOKS)
            if hooks[key] is None:
                raise RuntimeError(
                    f"Don't know how to save recoverable {key!r} ({type(obj).__name__}): register a save hook"
                )
        with checked_write(tmp.with_name(tmp.name.removeprefix(TMP_PREFIX)), tmp):
            for key, obj in self.recoverables.items():
                hooks[key](obj, tmp / f"{key}{PARAMFILE_EXT}")
        ddp_barrier()  # every process has written its files
        if not if_main_process():
            return None
        with checked_write(final, tmp):
            files = {}
            for file in sorted(tmp.iterdir()):
                fsync_path(file)
                files[file.name] = file.stat().st_size
            saved_meta = {"unixtime": time.time(), "end-of-epoch": end_of_epoch, **meta, FILES_KEY: files}
            with open(tmp / METAFNAME, "w", encoding="utf-8") as handle:
                handle.write("# yamllint disable\n")
                yaml.dump(saved_meta, handle)
                handle.flush()
                os.fsync(handle.fileno())
            fsync_path(tmp)
            os.rename(tmp, final)
            fsync_path(self.checkpoints_dir)
        ckpt_type = "end-of-epoch" if end_of_epoch else "intra-epoch"
        logger.log(verbosity, f"Saved an {ckpt_type} checkpoint in {final}")
        paramfiles = {key: final / f"{key}{PARAMFILE_EXT}" for key in self.recoverables}
        return Checkpoint(final, saved_meta, paramfiles)

    def list_checkpoints(self) -> list[Checkpoint]:
        """The complete checkpoints; an incomplete one is skipped with a warning (once) naming it."""
        complete = []
        for path in self._list_checkpoint_dirs():
            problem = checkpoint_problem(path, list(self.recoverables))
            if problem is None:
                complete.append(path)
            elif path not in self._reported:
                self._reported.add(path)
                logger.warning(
                    f"Skipping checkpoint {path}: it is incomplete or damaged ({problem}), e.g. written by a "
                    "run killed mid-save. An earlier complete checkpoint is used if there is one; delete the "
                    "folder once you no longer need it."
                )
        return self._construct_checkpoint_objects(complete)

    def delete_checkpoints(
        self,
        *,
        num_to_keep=1,
        min_keys=None,
        max_keys=None,
        importance_keys=[ckpt_recency],  # noqa: B006 (SpeechBrain's signature)
        ckpt_predicate=None,
        verbosity=logging.INFO,
    ):
        """SpeechBrain's selection (keep the `num_to_keep` best by each key), with atomic deletion."""
        if num_to_keep < 0:
            raise ValueError("Number of checkpoints to keep must be positive.")
        keys = [{"min_key": key} for key in min_keys or []]
        keys += [{"max_key": key} for key in max_keys or []]
        keys += [{"importance_key": key} for key in importance_keys]
        candidates, protected = set(), set()
        for key in keys:
            candidates.update(self.find_checkpoints(ckpt_predicate=ckpt_predicate, **key))
            protected.update(
                self.find_checkpoints(ckpt_predicate=ckpt_predicate, max_num_checkpoints=num_to_keep, **key)
            )
        ddp_barrier()
        if if_main_process():
            for ckpt in candidates - protected:
                trash = ckpt.path.with_name(f"{TRASH_PREFIX}{ckpt.path.name}")
                os.rename(ckpt.path, trash)  # gone from the listing at once, even if the removal is cut short
                shutil.rmtree(trash)
                logger.log(verbosity, f"Deleted checkpoint in {ckpt.path}")
        ddp_barrier()

    def _remove_leftovers(self) -> None:
        """Remove temporary and half-deleted folders of runs killed mid-save (the run lock makes this run the
        only writer of the folder)."""
        for path in self.checkpoints_dir.iterdir():
            if path.is_dir() and path.name.startswith((TMP_PREFIX + CKPT_PREFIX, TRASH_PREFIX + CKPT_PREFIX)):
                logger.info(f"Removing {path}, left by a run killed while saving or deleting a checkpoint")
                shutil.rmtree(path)


@register_checkpoint_hooks
class RandomStates:
    """The state of the global random number generators of the process, as one recoverable (`rng.ckpt`):
    torch (CPU and every CUDA device), NumPy and Python. Restoring it makes dropout, masking and augmentation
    after a resume draw the same numbers as the uninterrupted run."""

    @mark_as_saver
    def _save(self, path: Path) -> None:
        np_state = np.random.get_state(legacy=False)
        version, mt_state, gauss = random.getstate()
        state = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {
                "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                "pos": np_state["state"]["pos"],
                "has_gauss": np_state["has_gauss"],
                "gauss": np_state["gauss"],
            },
            "python": {
                "version": version,
                "state": torch.tensor(mt_state, dtype=torch.int64),
                "gauss": gauss,
            },
        }
        torch.save(state, path)

    @mark_as_loader
    def _recover(self, path: Path, end_of_epoch: bool) -> None:
        del end_of_epoch
        state = torch.load(path, map_location="cpu", weights_only=True)
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available():
            if len(state["cuda"]) != torch.cuda.device_count():
                logger.warning(
                    f"{path}: saved with {len(state['cuda'])} CUDA devices, {torch.cuda.device_count()} "
                    "visible now; CUDA random states are restored for the devices both have"
                )
            for device, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(cuda_state, device)
        np_state = state["numpy"]
        np.random.set_state(
            {
                "bit_generator": "MT19937",
                "state": {"key": np_state["key"].numpy().astype(np.uint32), "pos": np_state["pos"]},
                "has_gauss": np_state["has_gauss"],
                "gauss": np_state["gauss"],
            }
        )
        py_state = state["python"]
        random.setstate((py_state["version"], tuple(py_state["state"].tolist()), py_state["gauss"]))
