#!/usr/bin/env python3
"""One Markdown table of every run under RESULTS_ROOT: recipe, hparams file, guidance mode, seed, optimizer
steps, dev metrics (of the checkpoint the test loaded), test metrics and encoder parameters.

    python tools/results.py results/            # prints the table
    python tools/results.py results/ --out results/RESULTS.md

Runs still training (no test line yet) are listed with empty test columns.
"""

import argparse
import sys
from pathlib import Path

from cald_brain.run_logs import RunSummary, find_runs, summarize_run


def number(value: float | None) -> str:
    if value is None:
        return ""
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:.4g}"


def table(runs: list[RunSummary]) -> str:
    """Markdown: one row per run, one column per metric any run reports (dev then test)."""
    dev_keys = sorted({key for run in runs for key in run.dev})
    test_keys = sorted({key for run in runs for key in run.test})
    header = ["recipe", "hparams", "mode", "seed", "steps", *(f"dev {k}" for k in dev_keys)]
    header += [*(f"test {k}" for k in test_keys), "encoder params", "folder"]
    rows = [header, ["---"] * len(header)]
    for run in runs:
        rows.append(
            [run.recipe, run.hparams, run.mode, run.seed, number(run.steps)]
            + [number(run.dev.get(k)) for k in dev_keys]
            + [number(run.test.get(k)) for k in test_keys]
            + [number(run.encoder_parameters), str(run.folder)]
        )
    return "\n".join("| " + " | ".join(row) + " |" for row in rows) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="a results folder (searched recursively) or one run folder")
    parser.add_argument("--out", type=Path, help="also write the table to this Markdown file")
    args = parser.parse_args(argv)
    if not args.root.exists():
        sys.exit(f"ERROR: {args.root} does not exist")
    folders = find_runs(args.root)
    if not folders:
        sys.exit(f"ERROR: no run folder (train_log.txt + hyperparams.yaml) under {args.root}")
    text = table([summarize_run(folder) for folder in folders])
    print(text, end="")
    if args.out is not None:
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(args.out)


if __name__ == "__main__":
    main()
