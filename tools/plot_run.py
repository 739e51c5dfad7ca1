#!/usr/bin/env python3
"""Curves of one or several recipe runs, overlaid so that e.g. the five guidance modes compare at a glance:
task loss, layerwise distillation (total, and per layer for the first run that logs it), the dev metrics
and the learning rate, against optimizer steps (epochs when the log has no steps). The train curves come
from the step lines (`log_every_n_steps`) when the log has them, else from the epoch lines.

    python tools/plot_run.py results/TEDLIUM/*/1986 --out tedlium.png

Reads each folder's train_log.txt (cald_brain.run_logs); a panel no run has data for is left out.
"""

import argparse
import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from cald_brain.run_logs import LogLine, read_train_log  # noqa: E402


def series(lines: list[LogLine], stage: str, key: str) -> tuple[list[float], list[float]]:
    """(x, y) of `key` in `stage` over the lines that have it: train from the step lines if there are any
    (finer), else from the epoch lines; lr also from the lines' leading fields (older LM logs)."""
    step_lines = stage == "train" and any(line.is_step_line for line in lines)
    points = []
    for line in lines:
        if line.is_step_line != step_lines:
            continue
        values = {**line.meta, **line.stats.get(stage, {})} if key == "lr" else line.stats.get(stage, {})
        if isinstance(values.get(key), float):
            points.append((line.x, values[key]))
    return [p[0] for p in points], [p[1] for p in points]


def panels(runs: dict[str, list[LogLine]]) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """(title, stage, [(label, key), ...]) for every panel some run has data for."""
    metrics = sorted(
        {k for lines in runs.values() for line in lines for k in line.stats.get("valid", {}) if k != "loss"}
    )
    found = [
        ("task loss (train)", "train", [("", "task")]),
        ("layerwise distillation (train)", "train", [("", "ld")]),
        *((f"dev {metric}", "valid", [("", metric)]) for metric in metrics),
        ("learning rate", "train", [("", "lr")]),
    ]
    per_layer = next(
        (
            (name, sorted({k for line in lines for k in line.stats.get("train", {}) if k.startswith("ld_")}))
            for name, lines in runs.items()
            if any(k.startswith("ld_") for line in lines for k in line.stats.get("train", {}))
        ),
        None,
    )
    if per_layer is not None:
        name, keys = per_layer
        keys.sort(key=lambda k: int(k.split("_")[1]))
        found.insert(2, (f"LD per layer ({name})", "train", [(k, k) for k in keys]))
    return [
        (title, stage, keys)
        for title, stage, keys in found
        if any(series(lines, stage, key)[0] for lines in runs.values() for _, key in keys)
    ]


def plot(runs: dict[str, list[LogLine]], out: Path) -> None:
    """One PNG with a panel per curve kind, every run overlaid."""
    chosen = panels(runs)
    if not chosen:
        raise SystemExit("ERROR: the train logs hold no statistics to plot yet (no finished epoch)")
    cols = min(3, len(chosen))
    rows = (len(chosen) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for ax, (title, stage, keys) in zip(axes.flat, chosen, strict=False):
        for name, lines in runs.items():
            for label, key in keys:
                x, y = series(lines, stage, key)
                if x:
                    ax.plot(x, y, marker=".", label=label or name)
        ax.set_title(title)
        ax.set_xlabel("optimizer steps")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(chosen) :]:
        ax.axis("off")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out)


def run_names(folders: list[Path]) -> list[str]:
    """Short, distinct labels: each folder's path below the folders' common parent (one run: its name)."""
    resolved = [folder.resolve() for folder in folders]
    if len(resolved) == 1:
        return [resolved[0].name]
    common = Path(os.path.commonpath(resolved))
    return [str(folder.relative_to(common)) or folder.name for folder in resolved]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run output folders (each with train_log.txt)")
    parser.add_argument("--out", type=Path, help="PNG to write (default: <first run>/curves.png)")
    args = parser.parse_args(argv)
    try:
        runs = dict(zip(run_names(args.runs), (read_train_log(f) for f in args.runs), strict=True))
    except FileNotFoundError as err:
        sys.exit(f"ERROR: {err}")
    out = args.out or args.runs[0] / "curves.png"
    plot(runs, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
