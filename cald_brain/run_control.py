"""Run control shared by every recipe: one live run per output folder, a clean stop on SIGUSR1 (SLURM's
warning before the time limit or a preemption) or SIGTERM (`kill`, `scancel`, container runtimes), an output
folder that keeps holding the run it was made for, and run options checked against the types SpeechBrain
declares (its command line leaves some of them as strings).
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import logging
import os
import signal
import socket
import threading
import time
import types
import typing
from pathlib import Path
from typing import Any

from speechbrain.utils.run_opts import RunOptions

from cald_brain.data.manifests import write_atomic

logger = logging.getLogger(__name__)

LOCK_NAME = "run.lock"
IDENTITY_NAME = "run_identity.json"
STOP_SIGNAL = signal.SIGUSR1
STOP_EXIT_CODE = 85  # a run stopped after saving a checkpoint; the SLURM template requeues it
# Every signal that stops a run cleanly: SLURM's warning before the time limit (USR1) and what scancel,
# preemption and container runtimes send (TERM). Both exit with STOP_EXIT_CODE after the checkpoint.
STOP_SIGNALS = (STOP_SIGNAL, signal.SIGTERM)


# ----------------------------------------------------------------------------------------------------------
# One run per output folder
# ----------------------------------------------------------------------------------------------------------


class FolderInUseError(RuntimeError):
    """Another live run holds the output folder."""


def _process_start(pid: int) -> str | None:
    """The start time of process `pid` (Linux /proc; None elsewhere or if it does not exist): tells a live
    holder from a new process that reused its pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return start is None or _process_start(pid) in (None, start)


class RunLock:
    """`<folder>/run.lock`, created exclusively and holding who runs there (pid, host, start time, SLURM job).

    A lock is stale, and taken over with a warning, when its holder is gone: on this host its process no
    longer exists (or the pid was reused, or it is this very process after a restart in a container); from
    another host it belongs to an earlier try of this same SLURM job (requeue), or its heartbeat (the holder
    touches the file every `heartbeat_s`) is older than `stale_after_s`. Otherwise the run is refused naming
    the holder. Released on normal exit; a killed holder leaves a stale lock, which the next run takes over.
    """

    def __init__(self, folder: str | Path, stale_after_s: float = 600.0, heartbeat_s: float = 60.0):
        self.path = Path(folder) / LOCK_NAME
        self.stale_after_s, self.heartbeat_s = stale_after_s, heartbeat_s
        self.info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "start": _process_start(os.getpid()),
            "slurm_job": os.environ.get("SLURM_JOB_ID"),
            "slurm_restart": os.environ.get("SLURM_RESTART_COUNT", "0"),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        self._stop = threading.Event()
        self._held = False

    def describe(self, info: dict[str, Any]) -> str:
        job = f", SLURM job {info['slurm_job']}" if info.get("slurm_job") else ""
        return f"process {info.get('pid')} on {info.get('host')}{job}, since {info.get('since')}"

    def stale_reason(self, info: dict[str, Any]) -> str | None:
        """Why the lock described by `info` no longer belongs to a live run, or None if it may."""
        if info.get("host") == self.info["host"]:
            if info.get("pid") == self.info["pid"]:
                return "its pid is this process's (restarted in a fresh container?)"
            if not _alive(int(info.get("pid", -1)), info.get("start")):
                return "its process no longer exists"
            return None
        if info.get("slurm_job") and info.get("slurm_job") == self.info["slurm_job"]:
            if info.get("slurm_restart") != self.info["slurm_restart"]:
                return "it was taken by an earlier try of this requeued SLURM job"
        age = time.time() - self.path.stat().st_mtime
        if age > self.stale_after_s:
            return f"its holder has not refreshed it for {age:.0f} s"
        return None

    def acquire(self) -> None:
        """Take the lock (taking over a stale one) or raise FolderInUseError naming the holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # a stale lock removed by us may be re-taken by a racing run
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    holder = json.loads(self.path.read_text())
                except (OSError, ValueError):
                    holder = {}  # half-written by a holder killed while taking it
                reason = self.stale_reason(holder) if holder else "it is empty or unreadable"
                if reason is None:
                    raise FolderInUseError(
                        f"{self.path.parent} is in use by another run ({self.describe(holder)}): two runs "
                        "on one output folder overwrite each other's checkpoints. Wait for it to finish, "
                        "stop it, or choose another --output_folder. If that run is certainly dead, delete "
                        f"{self.path}."
                    ) from None
                logger.warning(f"Taking over the lock {self.path} of {self.describe(holder)}: {reason}")
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as handle:
                json.dump(self.info, handle)
            self._held = True
            atexit.register(self.release)
            threading.Thread(target=self._heartbeat, name="run-lock-heartbeat", daemon=True).start()
            return
        raise FolderInUseError(f"could not take {self.path}: other runs keep taking it")

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                os.utime(self.path)
            except OSError:
                return

    def release(self) -> None:
        """Remove the lock if this run still holds it."""
        if not self._held:
            return
        self._stop.set()
        self._held = False
        try:
            if json.loads(self.path.read_text()) == self.info:
                self.path.unlink()
        except (OSError, ValueError):
            pass


# ----------------------------------------------------------------------------------------------------------
# Stop on SIGUSR1 / SIGTERM
# ----------------------------------------------------------------------------------------------------------


class StopRequest:
    """Set when a signal of STOP_SIGNALS arrives; the Brain checks it at the end of each optimizer step, saves
    a checkpoint and exits with STOP_EXIT_CODE (so that a batch script can requeue the job). `signal` is the
    last signal received."""

    requested = False
    signal: signal.Signals = STOP_SIGNAL

    @classmethod
    def _handle(cls, signum: int, frame: types.FrameType | None) -> None:
        del frame
        cls.requested, cls.signal = True, signal.Signals(signum)
        logger.warning(
            f"Received {cls.signal.name}: saving a checkpoint at the end of this optimizer step, then "
            "stopping (outside training, e.g. during the final test, the run goes on; SIGKILL stops it at "
            "once, losing the work since the last checkpoint)"
        )

    @classmethod
    def install(cls) -> None:
        """Handle the stop signals from now on (main thread only; idempotent)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in STOP_SIGNALS:
            if signal.getsignal(signum) != cls._handle:
                signal.signal(signum, cls._handle)


class StoppedOnSignal(SystemExit):
    """Raised after the checkpoint following a stop request: the process exits with STOP_EXIT_CODE. Further
    stop signals are ignored from then on: a cluster and the SLURM scripts may deliver the stop more than
    once, and one arriving while Python shuts down (its handlers already reset) would kill the process with
    another status."""

    def __init__(self, checkpoint: str) -> None:
        received = StopRequest.signal
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                signal.signal(signum, signal.SIG_IGN)
        logger.warning(
            f"Stopped on {received.name} after saving {checkpoint}; run the same command again to resume "
            "from it"
        )
        super().__init__(STOP_EXIT_CODE)


# ----------------------------------------------------------------------------------------------------------
# Typed run options
# ----------------------------------------------------------------------------------------------------------


def scalar_type(annotation: Any) -> type | tuple | None:
    """int / float / str / bool, or a tuple of Literal choices, for a RunOptions field; None otherwise."""
    if typing.get_origin(annotation) is typing.Literal:
        return typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return scalar_type(args[0]) if len(args) == 1 else None
    return annotation if annotation in (int, float, str, bool) else None


RUN_OPTION_TYPES = {
    f.name: kind
    for f in dataclasses.fields(RunOptions)
    if (kind := scalar_type(typing.get_type_hints(RunOptions)[f.name])) is not None
}
TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def coerce(key: str, value: Any, kind: type | tuple) -> Any:
    """`value` as `kind` (a string from the command line is converted); TypeError naming `key` otherwise."""
    if value is None:
        return None
    if isinstance(kind, tuple):
        if value not in kind:
            raise TypeError(f"{key} must be one of {', '.join(map(str, kind))}, got {value!r}")
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    if isinstance(value, str) and kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    raise TypeError(f"{key} must be {TYPE_NAMES[kind]}, got {value!r}")


def check_run_options(options: dict[str, Any]) -> dict[str, Any]:
    """The SpeechBrain run options in `options` converted to their declared types (e.g.
    `optimizer_step_limit`, a string when given on the command line); TypeError naming the first bad one."""
    return {
        key: coerce(key, value, RUN_OPTION_TYPES[key])
        for key, value in options.items()
        if key in RUN_OPTION_TYPES
    }


# ----------------------------------------------------------------------------------------------------------
# What an output folder holds
# ----------------------------------------------------------------------------------------------------------

# The settings that define what an output folder holds (those a recipe's hparams have): a rerun into the same
# folder with another value would resume, score or overwrite the other run's results.
RUN_IDENTITY_KEYS = (
    "hparams_file",
    "task",
    "guidance_mode",
    "mixer",
    "pretrained_source",
    "teacher_path",
    "data_folder",
    "data_prefix",
)
# What a run leaves once it has trained or scored something (searched for anywhere in the output folder).
RESULT_PATTERNS = ("CKPT+*", "train_log.txt", "*metrics*.json")


class RunIdentityError(RuntimeError):
    """The output folder holds the results of a run with other defining settings."""


def holds_results(folder: str | Path) -> bool:
    """True when `folder` holds a checkpoint, a training log or test metrics (not only start-up files)."""
    folder = Path(folder)
    return any(next(folder.rglob(pattern), None) is not None for pattern in RESULT_PATTERNS)


def check_run_identity(folder: str | Path, identity: dict[str, Any]) -> None:
    """Compare `identity` (RUN_IDENTITY_KEYS -> this run's value) with what `<folder>/run_identity.json`
    recorded for earlier runs, then record it (atomically). A changed value is a RunIdentityError naming the
    key, both values and the fix when the folder already holds results; with no result yet (a run that
    failed at start-up, then corrected) the new value is recorded with a warning."""
    path = Path(folder) / IDENTITY_NAME
    recorded: dict[str, Any] = {}
    if path.is_file():
        try:
            recorded = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            logger.warning(f"{path} is unreadable; recording this run's settings in it again")
    changed = {
        key: (recorded[key], value) for key, value in identity.items() if recorded.get(key, value) != value
    }
    if changed:
        described = "; ".join(f"{key}: {old!r} there, {new!r} now" for key, (old, new) in changed.items())
        if holds_results(folder):
            raise RunIdentityError(
                f"{Path(folder)} holds the checkpoints or results of a run with other settings ({described}; "
                f"recorded in {path}). This run would resume from, score or overwrite them. Choose a new "
                f"--output_folder, or delete {Path(folder)} to start afresh; if only the location changed "
                f"(the same data or model moved), delete {path}."
            )
        logger.warning(f"{path}: {described}; the folder holds no result yet, recording this run's settings")
    if {**recorded, **identity} != recorded or not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps({**recorded, **identity}, indent=2))


# Settings a teacher must share with the student run it guides (what it was trained for).
TEACHER_IDENTITY_KEYS = ("task",)


def check_teacher_identity(teacher_path: str | Path, identity: dict[str, Any]) -> None:
    """The teacher run found at `teacher_path` (its save folder, a checkpoint in it, or its output folder)
    must have been trained for this run's task: its `run_identity.json` (in that folder or up to two levels
    above) is compared on TEACHER_IDENTITY_KEYS; a difference is a RunIdentityError naming both values. A
    teacher without the record (e.g. a hub model) is not checked."""
    folder = Path(teacher_path)
    for candidate in (folder, *list(folder.parents)[:2]):
        path = candidate / IDENTITY_NAME
        if path.is_file():
            break
    else:
        return
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    for key in TEACHER_IDENTITY_KEYS:
        if key in recorded and key in identity and recorded[key] != identity[key]:
            raise RunIdentityError(
                f"teacher_path={teacher_path} was trained with {key}={recorded[key]!r} ({path}), this run "
                f"has {key}={identity[key]!r}: a teacher guides only the {key} it was trained for. Give the "
                f"teacher run of {key}={identity[key]!r} (run its teacher hparams first)."
            )
