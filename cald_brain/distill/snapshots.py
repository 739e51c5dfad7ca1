"""Where teachers' weights are on disk: waypoint snapshots (`<save_folder>/snapshots/step_<N>.ckpt`, written
by a teacher run) and frozen-teacher checkpoints.

Checkpoint locations accepted for a frozen teacher: a state-dict file, a SpeechBrain `CKPT+*` folder, or a
SpeechBrain save folder holding `CKPT+*` folders (the best complete one is picked by a meta key; incomplete
ones are skipped with a warning, see `cald_brain.checkpoints`).
"""

import re
from pathlib import Path

import torch
from speechbrain.utils.checkpoints import CKPT_PREFIX, METAFNAME

from cald_brain.checkpoints import AtomicCheckpointer, atomic_torch_save, checkpoint_problem

SNAPSHOT_RE = re.compile(r"^step_(\d+)\.ckpt$")
SNAPSHOT_DIRNAME = "snapshots"


def snapshot_path(folder: str | Path, step: int) -> Path:
    """Path of the waypoint snapshot written after `step` optimizer steps."""
    return Path(folder) / f"step_{step}.ckpt"


def save_snapshot(state_dict: dict[str, torch.Tensor], folder: str | Path, step: int) -> Path:
    """Write a waypoint snapshot atomically (temporary file, flushed, then renamed) and return its path: a
    run killed mid-write leaves no `step_N.ckpt` behind, only a hidden temporary file that is ignored."""
    return atomic_torch_save(state_dict, snapshot_path(folder, step))


def list_snapshots(path: str | Path) -> list[tuple[int, Path]]:
    """Sorted (step, file) of the snapshots in `path` (the snapshot folder, or a save folder holding
    `snapshots/`). Raises FileNotFoundError naming the path when there is none."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"waypoint teacher_path {path} does not exist; point it at the teacher run's save folder "
            f"(holding {SNAPSHOT_DIRNAME}/) or at its snapshot folder"
        )
    folder = path / SNAPSHOT_DIRNAME if (path / SNAPSHOT_DIRNAME).is_dir() else path
    found = sorted(
        (int(m.group(1)), f) for f in folder.iterdir() if (m := SNAPSHOT_RE.match(f.name)) is not None
    )
    if not found:
        raise FileNotFoundError(
            f"no waypoint snapshots (step_<N>.ckpt) in {folder}; run the teacher fine-tuning with "
            "snapshot_every_steps > 0 (it writes <save_folder>/snapshots/step_<N>.ckpt) and set teacher_path "
            "to its save folder"
        )
    return found


def resolve_checkpoint_file(
    path: str | Path, ckpt_key: str = "student", min_key: str | None = None, max_key: str | None = None
) -> Path:
    """The state-dict file of a teacher given as a file, a `CKPT+*` folder or a save folder of them.

    In a save folder the best checkpoint by `min_key` (e.g. WER) or `max_key` (e.g. ACC) is used; checkpoints
    without that key (intra-epoch ones) are ignored. With neither key the folder must hold exactly one.
    """
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(
            f"teacher checkpoint {path} does not exist; set teacher_path to the teacher run's save folder, "
            "one of its CKPT+* folders, or a .ckpt state-dict file"
        )
    if path.name.startswith(CKPT_PREFIX) and (path / METAFNAME).is_file():
        problem = checkpoint_problem(path)
        if problem is not None:
            raise ValueError(
                f"teacher checkpoint {path} is incomplete or damaged ({problem}); point teacher_path at the "
                "teacher run's save folder (its best complete checkpoint is used) or another CKPT+* folder"
            )
        ckpt_dir = path
    else:
        checkpointer = AtomicCheckpointer(path)
        checkpoints = checkpointer.list_checkpoints()
        if not checkpoints:
            raise FileNotFoundError(
                f"no CKPT+* checkpoint in teacher folder {path}; train the teacher first or point "
                "teacher_path at a .ckpt file"
            )
        if min_key is None and max_key is None:
            if len(checkpoints) > 1:
                raise ValueError(
                    f"teacher folder {path} holds {len(checkpoints)} checkpoints; set teacher_min_key "
                    "(e.g. WER) or teacher_max_key (e.g. ACC) to pick the best one, or point teacher_path "
                    "at one CKPT+* folder"
                )
            ckpt_dir = checkpoints[0].path
        else:
            best = checkpointer.find_checkpoint(min_key=min_key, max_key=max_key)
            if best is None:
                raise ValueError(
                    f"no checkpoint in teacher folder {path} records the meta key {min_key or max_key!r}; "
                    "check teacher_min_key / teacher_max_key against the keys saved by the teacher run"
                )
            ckpt_dir = best.path
    ckpt_file = Path(ckpt_dir) / f"{ckpt_key}.ckpt"
    if not ckpt_file.is_file():
        present = sorted(p.stem for p in Path(ckpt_dir).glob("*.ckpt"))
        raise FileNotFoundError(
            f"teacher checkpoint {ckpt_dir} has no {ckpt_key}.ckpt (it has: {', '.join(present)}); "
            "set teacher_ckpt_key to the name of the network's recoverable"
        )
    return ckpt_file
