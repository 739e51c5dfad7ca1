#!/usr/bin/env python3
"""Mini-CALD: the method at work on a CPU. For one task family, the transformer teacher and the five guidance
modes of its linear-time student, each with several seeds, on the committed sample corpus and sample model,
through the recipes' own commands; prints the test metric per mode as mean ± standard deviation over seeds
and writes a Markdown table and a plot beside the runs.

    python tools/mini_cald.py --family tedlium --seeds 3        # ~20 minutes on 2 CPU cores
    python tools/mini_cald.py --family glue --seeds 3 --jobs 2
    python tools/mini_cald.py --family slurp --quick            # smoke run: 1 seed, 1 epoch

Runs (per seed s): the teacher (`teacher/seed<s>`, fine-tuned transformer, also the reference row), then the
students: unguided and trajectory-guided at once, target-guided, hybrid and waypoint-guided once the teacher
of the same seed has finished (they read its best checkpoint / snapshots through `--teacher_path`). Up to
`--jobs` runs go in parallel, each with `cores // jobs` threads. A run whose folder holds its
`test_metrics.json` is reused (delete the folder to redo it); an interrupted one resumes from its last
checkpoint, as any recipe run does. Each run's command and output go to `<out>/<family>/logs/`.

The settings are the samples' (see FAMILIES: the recipes' "Try it on the sample" overrides, sized so a family
fits in about 20 minutes); the hybrid switch is the reference's, as a fraction of the run. Writes
`<out>/<family>/mini_cald.{md,json,png}`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from tqdm import tqdm

from cald_brain.run_logs import read_train_log, summarize_run

REPO = Path(__file__).resolve().parents[1]

SAMPLES = REPO / "tests" / "samples"
MODES = ("teacher", "unguided", "target", "trajectory", "waypoint", "hybrid")
READS_TEACHER = ("target", "waypoint", "hybrid")  # need the finished teacher run of the same seed
MODE_LABELS = {
    "teacher": "teacher (transformer, fine-tuned)",
    "unguided": "student, unguided",
    "target": "student, target-guided",
    "trajectory": "student, trajectory-guided",
    "waypoint": "student, waypoint-guided",
    "hybrid": "student, hybrid",
}


@dataclass(frozen=True)
class Family:
    """How one task family runs on its sample: recipe, hparams files, arguments, and what it reports."""

    recipe: str  # folder holding train.py, relative to the repository
    teacher_hparams: str
    student_hparams: str  # with {mode}
    pretrained_source: Path
    task_args: tuple[str, ...]  # data folder, task, label set
    common: tuple[str, ...]  # every run of the family
    teacher_args: tuple[str, ...]  # the teacher run only (e.g. waypoint snapshots)
    student_args: tuple[str, ...]  # every student
    trajectory_args: tuple[str, ...]  # the jointly trained teacher of trajectory guidance
    hybrid_fraction: float  # the reference's switch step over its run's steps
    metric: str  # key of the flattened test_metrics.json
    metric_label: str
    percent: bool  # the metric is a fraction, shown in %
    lower_is_better: bool
    quick: tuple[str, ...] = field(default=("--number_of_epochs=1",))


SPEECH_CPU = (  # the speech recipes' sample overrides: one micro-batch per step, fp32, short warm-up
    "--precision=fp32",
    "--num_workers=0",
    "--grad_accumulation_factor=1",
    "--max_batch_items=4",
    "--warmup_steps=20",
    "--noprogressbar",
    "--device=cpu",
)
CLASSIFICATION_CPU = (
    *SPEECH_CPU,
    "--data_warmup_steps=0",
    "--decay_steps=300",
    "--dropout=0.05",
    "--lr=1e-3",
)
SPEECH_STUDENT = ("--headdim=32", "--d_state=16")  # BiMamba2 sized for a 128-wide encoder
TEDLIUM_MIXER = {"headdim": 32, "d_state": 32}  # (tools/demo.py times this student)
# 16 items a step for every mode (the YAMLs take 32, or 16 x 2 for the distilled students)
TEXT_CPU = ("--lr=1e-3", "--batch_size=16", "--grad_accumulation_factor=1", "--device=cpu", "--noprogressbar")
SPEECH_MODEL = SAMPLES / "models" / "small-wav2vec2"
TEXT_MODEL = SAMPLES / "models" / "tiny-roberta"

FAMILIES = {
    "tedlium": Family(
        recipe="recipes/TEDLIUM",
        teacher_hparams="wav2vec2_ctc.yaml",
        student_hparams="bimamba2_{mode}.yaml",
        pretrained_source=SPEECH_MODEL,
        task_args=(f"--data_folder={SAMPLES / 'TEDLIUM_release-3'}",),
        common=(*SPEECH_CPU, "--head_lr=0.01"),
        teacher_args=("--number_of_epochs=10", "--lr=0.0001", "--snapshot_every_steps=5"),  # an epoch
        student_args=(
            *(f"--{key}={value}" for key, value in TEDLIUM_MIXER.items()),
            "--number_of_epochs=16",
            "--lr=0.0005",
        ),
        trajectory_args=("--teacher_lr=0.0001",),
        hybrid_fraction=40_000 / 90_000,
        metric="WER",
        metric_label="test WER %",
        percent=False,
        lower_is_better=True,
    ),
    "slurp": Family(
        recipe="recipes/SLURP",
        teacher_hparams="wav2vec2_ic.yaml",
        student_hparams="bimamba2_{mode}.yaml",
        pretrained_source=SPEECH_MODEL,
        task_args=(f"--data_folder={SAMPLES / 'SLURP'}", "--label_heads=[intent]", "--num_outputs=5"),
        common=(*CLASSIFICATION_CPU, "--number_of_epochs=5"),
        teacher_args=("--snapshot_every_steps=9",),  # an epoch
        student_args=SPEECH_STUDENT,
        trajectory_args=("--teacher_lr=1e-3",),
        hybrid_fraction=30_000 / 90_000,
        metric="ACC",
        metric_label="test intent accuracy %",
        percent=True,
        lower_is_better=False,
    ),
    "voxceleb1": Family(
        recipe="recipes/VoxCeleb1",
        teacher_hparams="wav2vec2_sid.yaml",
        student_hparams="bimamba2_{mode}.yaml",
        pretrained_source=SPEECH_MODEL,
        task_args=(f"--data_folder={SAMPLES / 'VoxCeleb1'}", "--num_outputs=5", "--train_crop_seconds=1.5"),
        common=(*CLASSIFICATION_CPU, "--number_of_epochs=15"),
        teacher_args=("--snapshot_every_steps=5",),  # an epoch
        student_args=SPEECH_STUDENT,
        trajectory_args=("--teacher_lr=1e-3",),
        hybrid_fraction=50_000 / 90_000,
        metric="ACC",
        metric_label="test speaker accuracy %",
        percent=True,
        lower_is_better=False,
    ),
    "glue": Family(
        recipe="nlp/GLUE",
        teacher_hparams="roberta_finetune.yaml",
        student_hparams="linformer_{mode}.yaml",
        pretrained_source=TEXT_MODEL,
        task_args=("--task=sst2", f"--data_folder={SAMPLES / 'glue_data' / 'SST-2'}"),
        common=(*TEXT_CPU, "--number_of_epochs=6"),
        teacher_args=(),  # waypoints: the YAML's epoch snapshots
        student_args=(),
        trajectory_args=("--teacher_lr=1e-3",),
        # SST-2: 5,000 of 10 epochs x 2,105 steps (67,349 sentences, batch 32)
        hybrid_fraction=5_000 / 21_050,
        metric="dev accuracy",
        metric_label="SST-2 dev accuracy %",
        percent=True,
        lower_is_better=False,
    ),
    "imdb": Family(
        recipe="nlp/IMDB",
        teacher_hparams="roberta_finetune.yaml",
        student_hparams="linformer_{mode}.yaml",
        pretrained_source=TEXT_MODEL,
        task_args=(f"--data_folder={SAMPLES / 'aclImdb'}",),
        common=(*TEXT_CPU, "--number_of_epochs=6"),
        teacher_args=(),  # waypoints: the YAML's epoch snapshots
        student_args=(),
        trajectory_args=("--teacher_lr=1e-3",),
        hybrid_fraction=3_000 / 7_820,  # 3,000 of 10 epochs x 782 steps (25,000 reviews, batch 32)
        metric="test accuracy",
        metric_label="IMDB test accuracy %",
        percent=True,
        lower_is_better=False,
    ),
}


@dataclass
class Run:
    """One recipe run: a mode and a seed of a family, its folder, command and state."""

    mode: str
    seed: int
    folder: Path
    command: list[str]
    log: Path
    needs: tuple[Run, ...] = ()
    process: subprocess.Popen | None = None
    started: float = 0.0
    state: str = "pending"  # pending | running | done | failed

    @property
    def name(self) -> str:
        return f"{self.mode} seed {self.seed}"

    def finished_before(self) -> bool:
        return (self.folder / "test_metrics.json").is_file()


def plan(family: Family, name: str, seeds: list[int], modes: list[str], out: Path, quick: bool) -> list[Run]:
    """The runs of `family` for `seeds` and `modes` (the teacher always: the students read it)."""
    root = out / name
    runs: list[Run] = []
    for seed in seeds:
        teacher_folder = root / "teacher" / f"seed{seed}"
        teacher = None
        for mode in ("teacher", *[m for m in modes if m != "teacher"]):
            folder = root / mode / f"seed{seed}"
            if mode == "teacher":
                hparams, args = family.teacher_hparams, family.teacher_args
            else:
                hparams = family.student_hparams.format(mode=mode)
                args = family.student_args
                if mode == "trajectory":
                    args = (*args, *family.trajectory_args)
                if mode in READS_TEACHER:
                    args = (*args, f"--teacher_path={teacher_folder / 'save'}")
                if mode == "hybrid":
                    args = (
                        *args,
                        "--distill_until_step=null",
                        f"--distill_until_fraction={family.hybrid_fraction:.4f}",
                    )
            command = [
                sys.executable,
                str(REPO / family.recipe / "train.py"),
                f"hparams/{hparams}",
                *family.task_args,
                f"--pretrained_source={family.pretrained_source}",
                *quickened([*family.common, *args], family.quick if quick else ()),
                f"--seed={seed}",
                f"--output_folder={folder}",
            ]
            needs = (teacher,) if mode in READS_TEACHER else ()
            run = Run(mode, seed, folder, command, root / "logs" / f"{mode}-seed{seed}.log", needs)
            if mode == "teacher":
                teacher = run
            runs.append(run)
    return runs


def quickened(args: list[str], quick: tuple[str, ...]) -> list[str]:
    """`args` with the --quick overrides in place of the same keys (a recipe refuses a repeated key)."""
    keys = {arg.split("=", 1)[0] for arg in quick}
    return [arg for arg in args if arg.split("=", 1)[0] not in keys] + list(quick)


def execute(runs: list[Run], jobs: int, threads: int) -> None:
    """Run what is not finished, `jobs` at a time, each run after the runs it needs; a run whose dependency
    failed is not started. Raises SystemExit naming the failed runs' logs at the end."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
    }
    for run in runs:
        if run.finished_before():
            check_same_command(run)
            run.state = "done"
            print(f"[{run.name}] finished before, reusing {run.folder}")
    todo = [run for run in runs if run.state == "pending"]
    bar = tqdm(total=len(todo), desc="mini-CALD runs", unit="run", disable=not todo)
    running: list[Run] = []
    while any(run.state in ("pending", "running") for run in runs):
        for run in todo:
            if run.state != "pending" or len(running) >= jobs:
                continue
            if any(need.state == "failed" for need in run.needs):
                run.state = "failed"
                bar.update()
                tqdm.write(f"[{run.name}] not run: {', '.join(n.name for n in run.needs)} failed")
            elif all(need.state == "done" for need in run.needs):
                start(run, env)
                running.append(run)
                tqdm.write(f"[{run.name}] started: log {run.log}")
        time.sleep(0.5)
        for run in list(running):
            code = run.process.poll()
            if code is None:
                continue
            running.remove(run)
            seconds = time.time() - run.started
            ok = code == 0 and run.finished_before()
            run.state = "done" if ok else "failed"
            if ok:
                record = {"seconds": round(seconds, 1), "threads": threads, "command": run.command}
                write_json(run.folder / "mini_cald_run.json", record)
            bar.update()
            tqdm.write(f"[{run.name}] {'finished' if ok else f'FAILED (exit {code})'} in {seconds:.0f} s")
    bar.close()
    failed = [run for run in runs if run.state == "failed"]
    if failed:
        raise SystemExit("runs failed: " + "; ".join(f"{run.name} (log {run.log})" for run in failed))


def check_same_command(run: Run) -> None:
    """A finished run is reused only if it ran the command planned now (settings changed: say so)."""
    record = run.folder / "mini_cald_run.json"
    if record.is_file() and json.loads(record.read_text())["command"][1:] != run.command[1:]:
        raise SystemExit(
            f"{run.folder} finished with other settings than planned now (its command is in {record}): "
            "delete the folder to run it again, or use another --out"
        )


def start(run: Run, env: dict[str, str]) -> None:
    run.log.parent.mkdir(parents=True, exist_ok=True)
    with open(run.log, "w", encoding="utf-8") as handle:
        handle.write("$ " + " ".join(run.command) + "\n")
        handle.flush()
        run.process = subprocess.Popen(
            run.command, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT
        )
    run.started = time.time()
    run.state = "running"


def write_json(path: Path, value: object) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1), encoding="utf-8")
    tmp.replace(path)


def collect(family: Family, runs: list[Run]) -> dict[str, list[dict]]:
    """Per mode, one record per seed: the test metric (in the table's unit), steps, wall time, LD curve."""
    found: dict[str, list[dict]] = {}
    for run in runs:
        summary = summarize_run(run.folder)
        if family.metric not in summary.test:
            raise SystemExit(
                f"{run.folder}/test_metrics.json has no {family.metric!r} (found {sorted(summary.test)})"
            )
        value = summary.test[family.metric] * (100 if family.percent else 1)
        timing = run.folder / "mini_cald_run.json"
        seconds = json.loads(timing.read_text())["seconds"] if timing.is_file() else None
        curve = [
            (line.x, line.stats["train"]["ld"])
            for line in read_train_log(run.folder)
            if not line.is_step_line and "ld" in line.stats.get("train", {})
        ]
        found.setdefault(run.mode, []).append(
            dict(seed=run.seed, value=value, steps=summary.steps, seconds=seconds, ld=curve)
        )
    return found


def spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.1f} ± {statistics.stdev(values):.1f}" if len(values) > 1 else f"{mean:.1f}"


def table(family: Family, name: str, results: dict[str, list[dict]], command: str) -> str:
    """Markdown: one row per mode, the metric's mean ± standard deviation over seeds, each seed's value."""
    seeds = max(len(records) for records in results.values())
    lines = [
        f"`{command}`",
        "",
        f"| {name}: model | {family.metric_label}, mean ± sd ({seeds} seeds) | per seed | steps | "
        "final train LD | minutes a run |",
        "|---|---|---|---|---|---|",
    ]
    for mode in MODES:
        records = results.get(mode)
        if not records:
            continue
        values = [r["value"] for r in records]
        final_ld = [r["ld"][-1][1] for r in records if r["ld"]]
        minutes = [r["seconds"] / 60 for r in records if r["seconds"] is not None]
        steps = {r["steps"] for r in records}
        lines.append(
            f"| {MODE_LABELS[mode]} | {spread(values)} | {', '.join(f'{v:.1f}' for v in values)} | "
            f"{'/'.join(f'{s:.0f}' for s in sorted(steps) if s is not None)} | "
            f"{f'{statistics.fmean(final_ld):.3f}' if final_ld else '-'} | "
            f"{f'{statistics.fmean(minutes):.1f}' if minutes else '-'} |"
        )
    better = "lower" if family.lower_is_better else "higher"
    lines += [
        "",
        f"({better} is better; final train LD: the layerwise distillation term of the last epoch with one "
        "(hybrid: before its switch), per-frame MSE after layer norm)",
    ]
    return "\n".join(lines) + "\n"


def plot(family: Family, name: str, results: dict[str, list[dict]], path: Path) -> bool:
    """Left: the metric per mode, each seed a dot, mean ± sd a bar. Right: train LD per epoch per guided mode
    (mean over seeds). False (and a message) without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = [m for m in MODES if m in results]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    for i, mode in enumerate(modes):
        values = [r["value"] for r in results[mode]]
        left.scatter([i] * len(values), values, color="tab:gray", zorder=3, s=18)
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        left.errorbar(i, statistics.fmean(values), yerr=sd, fmt="o", color="tab:red", capsize=6, zorder=4)
        curves = [r["ld"] for r in results[mode] if r["ld"]]
        if curves:
            length = min(len(c) for c in curves)
            xs = [curves[0][k][0] for k in range(length)]
            ys = [statistics.fmean(c[k][1] for c in curves) for k in range(length)]
            right.plot(xs, ys, marker=".", label=mode)
    left.set_xticks(range(len(modes)), modes, rotation=20)
    left.set(ylabel=family.metric_label, title=f"{name}: {family.metric_label} per mode (dots: seeds)")
    right.set(xlabel="optimizer step", ylabel="train LD (epoch mean)", title="layerwise distillation term")
    right.set_yscale("log")
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
    if right.lines:
        right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=sorted(FAMILIES), required=True)
    parser.add_argument("--seeds", type=int, default=None, help="seeds 1..N (default 3; 1 with --quick)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (default 2)")
    parser.add_argument("--out", type=Path, default=None, help="default results/mini_cald (…_quick)")
    parser.add_argument("--pretrained_source", type=Path, help="another sample model for the family")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 epoch, 1 seed unless --seeds")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = parser.parse_args(argv)
    family = FAMILIES[args.family]
    if args.pretrained_source is not None:
        family = replace(family, pretrained_source=args.pretrained_source.resolve())
    if not family.pretrained_source.is_dir():
        sys.exit(f"ERROR: sample model {family.pretrained_source} is missing (tools/samples/ makes it)")
    seeds = list(range(1, (args.seeds or (1 if args.quick else 3)) + 1))
    out = (args.out or REPO / "results" / ("mini_cald_quick" if args.quick else "mini_cald")).resolve()
    runs = plan(family, args.family, seeds, args.modes, out, args.quick)
    if args.dry_run:
        for run in runs:
            print(" ".join(run.command))
        return
    threads = max(1, (os.cpu_count() or 1) // max(1, args.jobs))
    start_time = time.time()
    execute(runs, args.jobs, threads)
    results = collect(family, runs)
    shown = ["python tools/mini_cald.py", f"--family {args.family}", f"--seeds {len(seeds)}"]
    shown += ["--quick"] * args.quick + (
        [f"--modes {' '.join(args.modes)}"] if args.modes != list(MODES) else []
    )
    text = table(family, args.family, results, " ".join(shown))
    root = out / args.family
    (root / "mini_cald.md").write_text(text, encoding="utf-8")
    write_json(root / "mini_cald.json", {"family": args.family, "seeds": seeds, "results": results})
    plotted = plot(family, args.family, results, root / "mini_cald.png")
    print("\n" + text)
    written = "mini_cald.md, mini_cald.json" + (", mini_cald.png" if plotted else "")
    print(f"wrote {root}/{{{written}}} ({(time.time() - start_time) / 60:.1f} min)")


if __name__ == "__main__":
    main()
