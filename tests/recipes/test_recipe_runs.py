"""Recipe smoke runs, one table for every recipe: each row is a recipe x hparams file x overrides, run for
2 training steps per epoch on the committed samples through the real command line. Every run must write a
checkpoint and its test results; a row with `resume` is then run again with one more epoch and must recover
its first epoch and train only the second. Adding a recipe adds rows (and its sample arguments in RECIPES),
not a test file.

A row may use another row's output folder (e.g. a teacher run's checkpoints and waypoint snapshots) by
naming it in `needs`; `{out:<row id>}` in its overrides is replaced by that folder. Rows marked `slow` run
only with `make test-all` (each invocation costs ~10 s of CPU in imports alone, so the CI set keeps a few
rows per recipe family and the full matrix stays available).
"""

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import ROOT, SAMPLES


@dataclass(frozen=True)
class Run:
    recipe: str  # recipe folder, relative to the repository root
    hparams: str  # file under the recipe's hparams/
    overrides: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()  # row ids whose output folders this run reads
    expect: tuple[str, ...] = ()  # more files the run must write, relative to its output folder
    listings: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (glob, exactly the file names it must match)
    resume: bool = True  # run again with one more epoch: resumes, trains only epoch 2
    from_recipe_folder: bool = False  # start the command inside the recipe folder instead of the root
    slow: bool = False  # only with `make test-all`


# Arguments every run of a recipe gets: the committed sample data and tiny model, small batches.
RECIPES = {
    "recipes/TEDLIUM": (
        f"--data_folder={SAMPLES / 'TEDLIUM_release-3'}",
        f"--pretrained_source={SAMPLES / 'models' / 'tiny-wav2vec2'}",
        "--batch_size=2",
    ),
    "nlp/GLUE": (f"--pretrained_source={SAMPLES / 'models' / 'tiny-roberta'}", "--batch_size=2"),
    "nlp/IMDB": (
        f"--data_folder={SAMPLES / 'aclImdb'}",
        f"--pretrained_source={SAMPLES / 'models' / 'tiny-roberta'}",
        "--batch_size=2",
    ),
}
TINY_BIMAMBA2 = ("--headdim=32", "--d_state=16")
TEDLIUM_TEACHER = "--teacher_path={out:tedlium-teacher}/save"

RUNS = {
    "tedlium-teacher": Run(
        "recipes/TEDLIUM",
        "wav2vec2_ctc.yaml",
        ("--snapshot_every_steps=1",),
        expect=("wer_test.txt",),
        listings=(("save/snapshots/*", ("step_1.ckpt", "step_2.ckpt")),),
        resume=False,  # its folder feeds the rows below
        from_recipe_folder=True,
    ),
    "tedlium-unguided": Run("recipes/TEDLIUM", "bimamba2_unguided.yaml", TINY_BIMAMBA2),
    "tedlium-trajectory": Run("recipes/TEDLIUM", "bimamba2_trajectory.yaml", TINY_BIMAMBA2),
    "tedlium-target": Run(
        "recipes/TEDLIUM",
        "bimamba2_target.yaml",
        (*TINY_BIMAMBA2, TEDLIUM_TEACHER),
        needs=("tedlium-teacher",),
    ),
    "tedlium-waypoint": Run(
        "recipes/TEDLIUM",
        "bimamba2_waypoint.yaml",
        (*TINY_BIMAMBA2, TEDLIUM_TEACHER),
        needs=("tedlium-teacher",),
    ),
    "tedlium-hybrid": Run(
        "recipes/TEDLIUM",
        "bimamba2_hybrid.yaml",
        (*TINY_BIMAMBA2, TEDLIUM_TEACHER, "--distill_until_step=1"),
        needs=("tedlium-teacher",),
    ),
}


# Text recipes: every hparams file on every sample task (GLUE SST-2, QNLI, QQP; IMDB). The CI set is
# SST-2 teacher + waypoint (epoch snapshots), QNLI trajectory (pairs), IMDB teacher; the rest slow.
TEXT_STUDENTS = ("unguided", "target", "trajectory", "waypoint", "hybrid")
TEXT_CI = {"glue-sst2-teacher", "glue-sst2-waypoint", "glue-qnli-trajectory", "imdb-teacher"}


def text_rows(recipe: str, prefix: str, task_args: tuple[str, ...]) -> dict[str, Run]:
    """The teacher row (run from inside the recipe folder, no resume: students read it) and one row per
    student mode for one sample task."""
    teacher = f"{prefix}-teacher"
    rows = {
        teacher: Run(
            recipe, "roberta_finetune.yaml", task_args, resume=False, from_recipe_folder=True,
            listings=(("save/snapshots/*", ("step_2.ckpt",)),), slow=teacher not in TEXT_CI,
        )
    }  # fmt: skip
    for mode in TEXT_STUDENTS:
        needs = (teacher,) if mode in ("target", "waypoint", "hybrid") else ()
        extra = (f"--teacher_path={{out:{teacher}}}/save",) if needs else ()
        extra += ("--distill_until_step=1",) if mode == "hybrid" else ()
        row = f"{prefix}-{mode}"
        rows[row] = Run(
            recipe, f"linformer_{mode}.yaml", task_args + extra, needs=needs, slow=row not in TEXT_CI
        )
    return rows


for _task, _folder in (("sst2", "SST-2"), ("qnli", "QNLI"), ("qqp", "QQP")):
    RUNS.update(
        text_rows(
            "nlp/GLUE",
            f"glue-{_task}",
            (f"--task={_task}", f"--data_folder={SAMPLES / 'glue_data' / _folder}"),
        )
    )
RUNS.update(text_rows("nlp/IMDB", "imdb", ()))


def launch(run: Run, out: Path, epochs: int, outputs: dict[str, Path]) -> None:
    """One debug invocation (2 training batches per epoch) of `run` into `out`."""
    recipe_dir = ROOT / run.recipe
    overrides = [re.sub(r"\{out:([\w-]+)\}", lambda m: str(outputs[m.group(1)]), o) for o in run.overrides]
    cmd = [
        sys.executable,
        str(recipe_dir / "train.py"),
        f"hparams/{run.hparams}",
        *RECIPES[run.recipe],
        f"--output_folder={out}",
        "--device=cpu",
        "--debug",
        "--debug_persistently",
        f"--debug_epochs={epochs}",
        "--noprogressbar",
        *overrides,
    ]
    proc = subprocess.run(
        cmd, cwd=recipe_dir if run.from_recipe_folder else ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


def train_epochs(out: Path) -> list[int]:
    """Epoch numbers logged in train_log.txt (one line per finished training epoch)."""
    text = (out / "train_log.txt").read_text()
    return [int(m) for m in re.findall(r"^epoch: (\d+)", text, flags=re.M)]


@pytest.fixture(scope="module")
def first_epoch(tmp_path_factory):
    """Runs a row's first epoch once per test session (rows needed by others are shared)."""
    done: dict[str, Path] = {}

    def get(row: str) -> Path:
        if row not in done:
            run = RUNS[row]
            for needed in run.needs:
                get(needed)
            out = tmp_path_factory.mktemp("recipe-runs") / row
            launch(run, out, 1, done)
            done[row] = out
        return done[row]

    get.outputs = done
    return get


@pytest.mark.parametrize(
    "row", [pytest.param(r, marks=pytest.mark.slow) if RUNS[r].slow else r for r in RUNS]
)
def test_recipe_run(row, first_epoch):
    run = RUNS[row]
    out = first_epoch(row)
    assert list((out / "save").glob("CKPT+*"))
    assert train_epochs(out) == [1]
    for name in ("test_metrics.json", *run.expect):
        assert (out / name).exists(), name
    for pattern, names in run.listings:
        assert sorted(p.name for p in out.glob(pattern)) == sorted(names), pattern
    if run.resume:
        launch(run, out, 2, first_epoch.outputs)
        assert train_epochs(out) == [1, 2]
