#!/usr/bin/env python3
"""Submit a recipe's runs to SLURM in the order CALD needs: the teacher run first, then the students; the
students that read the teacher's checkpoints (target, waypoint, hybrid: their hparams have `teacher_path`)
start only once it succeeded (`--dependency=afterok`), the others (unguided, trajectory) start at once.

    python tools/slurm/submit.py recipes/TEDLIUM -- --data_folder=/path/TEDLIUM_release-3
    python tools/slurm/submit.py recipes/TEDLIUM --array --modes target waypoint hybrid \\
        --sbatch=--partition=gpu -- --data_folder=/path/TEDLIUM_release-3 --seed=7

Every job runs tools/slurm/cald.sbatch (torchrun per node, stop-and-requeue before the time limit) from the
current directory, which must be the repository root, with the same overrides after `--`. The students find
the teacher through their default `teacher_path` (results/<recipe>/<teacher>/<seed>/save), so keep
`output_folder` at its default or pass `--teacher_path` yourself. `--array` fans the students of each kind out
as one array job (one task per mode; cald.sbatch reads its hparams file from CALD_TASKS_FILE).
`--dry-run` prints the sbatch commands without submitting.
"""

import argparse
import itertools
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ruamel.yaml import YAML

TEMPLATE = Path("tools") / "slurm" / "cald.sbatch"
DRY_RUN_IDS = itertools.count(1)


@dataclass(frozen=True)
class HparamsFile:
    path: Path  # relative to the recipe folder: hparams/x.yaml
    mode: str  # guidance mode; "teacher" for the transformer's own fine-tuning run
    needs_teacher: bool


def recipe_runs(recipe: Path) -> list[HparamsFile]:
    """The recipe's hparams files: the teacher run (no `mixer`: the transformer itself) and the students."""
    files = sorted((recipe / "hparams").glob("*.yaml"))
    if not files:
        raise SystemExit(f"ERROR: {recipe / 'hparams'} holds no hparams file: is {recipe} a recipe folder?")
    runs = []
    for file in files:
        top = YAML(typ="rt").load(file.read_text(encoding="utf-8")) or {}
        mode = "teacher" if "mixer" not in top else str(top.get("guidance_mode", "unguided"))
        runs.append(HparamsFile(file.relative_to(recipe), mode, "teacher_path" in top))
    return runs


def sbatch(args: list[str], dry_run: bool) -> str:
    """Submit (`sbatch --parsable ...`) and return the job id; in a dry run print the command."""
    command = ["sbatch", "--parsable", *args]
    if dry_run:
        print(shlex.join(command))
        return f"DRYRUN{next(DRY_RUN_IDS)}"
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"ERROR: {shlex.join(command)} failed: {done.stderr.strip()}")
    return done.stdout.strip().split(";")[0]


def tasks_file(recipe: Path, group: str, runs: list[HparamsFile], dry_run: bool) -> Path:
    """The array tasks' hparams files, one per line (task i reads line i + 1), under slurm_tasks/."""
    path = Path("slurm_tasks") / f"{recipe.name}-{group}-{os.getpid()}.txt"
    if not dry_run:
        path.parent.mkdir(exist_ok=True)
        path.write_text("".join(f"{run.path}\n" for run in runs), encoding="utf-8")
    return path.resolve()


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    ours, overrides = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", type=Path, help="recipe folder, e.g. recipes/TEDLIUM")
    parser.add_argument("--modes", nargs="+", help="student guidance modes to submit (default: all)")
    parser.add_argument("--no-teacher", action="store_true", help="the teacher run is done: students only")
    parser.add_argument("--array", action="store_true", help="students of each kind as one array job")
    parser.add_argument("--sbatch", action="append", default=[], help="extra sbatch option (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="print the sbatch commands only")
    args = parser.parse_args(ours)
    if not TEMPLATE.is_file():
        raise SystemExit(f"ERROR: {TEMPLATE} not found: run this from the repository root")
    train = args.recipe / "train.py"
    if not train.is_file():
        raise SystemExit(f"ERROR: {train} not found: is {args.recipe} a recipe folder?")
    runs = recipe_runs(args.recipe)
    teacher = [run for run in runs if run.mode == "teacher"]
    students = [run for run in runs if run.mode != "teacher"]
    if args.modes:
        unknown = sorted(set(args.modes) - {run.mode for run in students})
        if unknown:
            available = ", ".join(sorted({run.mode for run in students}))
            raise SystemExit(
                f"ERROR: no {args.recipe} student for mode(s) {', '.join(unknown)}; available: {available}"
            )
        students = [run for run in students if run.mode in args.modes]

    teacher_job = None
    if teacher and not args.no_teacher:
        name = f"--job-name=cald-{args.recipe.name}-{teacher[0].path.stem}"
        teacher_job = sbatch(
            [name, *args.sbatch, str(TEMPLATE), str(train), str(teacher[0].path), *overrides], args.dry_run
        )
        print(f"teacher {teacher[0].path}: job {teacher_job}")
    for needs, group in ((False, "free"), (True, "after-teacher")):
        members = [run for run in students if run.needs_teacher == needs]
        if not members:
            continue
        dependency = [f"--dependency=afterok:{teacher_job}"] if needs and teacher_job else []
        if args.array:
            listing = tasks_file(args.recipe, group, members, args.dry_run)
            options = [
                f"--job-name=cald-{args.recipe.name}-{group}",
                f"--array=0-{len(members) - 1}",
                f"--export=ALL,CALD_TASKS_FILE={listing}",
                *dependency,
                *args.sbatch,
            ]
            job = sbatch([*options, str(TEMPLATE), str(train), *overrides], args.dry_run)
            print(f"{', '.join(run.mode for run in members)} ({listing}): array job {job}")
            continue
        for run in members:
            options = [f"--job-name=cald-{args.recipe.name}-{run.path.stem}", *dependency, *args.sbatch]
            job = sbatch([*options, str(TEMPLATE), str(train), str(run.path), *overrides], args.dry_run)
            print(f"{run.mode} {run.path}: job {job}")


if __name__ == "__main__":
    main()
