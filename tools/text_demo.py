"""Sample results of the text recipes: the RoBERTa teacher, a trajectory-guided and an unguided Linformer
student on the committed samples (GLUE SST-2 and the mini aclImdb) with the tiny pretrained RoBERTa, through
the recipes' own command lines; prints a Markdown table of the numbers they wrote.

The tiny model needs a larger learning rate than roberta-base (1e-3 instead of 3e-5) and the sample a smaller
batch (16 per step, as 8 x 2 for the distilled student); everything else is the YAMLs' reference settings,
10 epochs included (with 5, the jointly trained teacher only starts to learn in epoch 3, and the
trajectory-guided student, held to it by alpha_LD = 13, had not left chance yet). The three runs of a task go
in parallel: about 5 minutes per task on a busy 2-core CPU.

Usage::

    python tools/text_demo.py [--out results/text_demo]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "tests" / "samples"
COMMON = (
    f"--pretrained_source={SAMPLES / 'models' / 'tiny-roberta'}",
    "--lr=1e-3",
    "--device=cpu",
    "--noprogressbar",
)
RUNS = (  # (label, hparams file, extra arguments)
    ("teacher (RoBERTa, attention)", "roberta_finetune.yaml", ("--batch_size=16",)),
    (
        "student Linformer, trajectory-guided",
        "linformer_trajectory.yaml",
        ("--batch_size=8", "--teacher_lr=1e-3"),
    ),
    ("student Linformer, unguided", "linformer_unguided.yaml", ("--batch_size=16",)),
)
RECIPES = {  # sample task -> (recipe, task arguments, the split reported)
    "sst2": ("nlp/GLUE", ("--task=sst2", f"--data_folder={SAMPLES / 'glue_data' / 'SST-2'}"), "dev"),
    "imdb": ("nlp/IMDB", (f"--data_folder={SAMPLES / 'aclImdb'}",), "test"),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=REPO / "results" / "text_demo")
    parser.add_argument("--tasks", nargs="+", choices=sorted(RECIPES), default=sorted(RECIPES))
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args(argv)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    rows = []
    for name in args.tasks:
        recipe, task_args, split = RECIPES[name]
        runs = []
        for label, hparams, extra in RUNS:
            out = args.out / recipe.split("/")[1] / hparams.removesuffix(".yaml")
            cmd = [sys.executable, f"{recipe}/train.py", f"hparams/{hparams}", *task_args, *COMMON, *extra]
            cmd += [f"--number_of_epochs={args.epochs}", f"--output_folder={out}"]
            print("$", " ".join(cmd), flush=True)
            log = args.out / f"{name}-{hparams.removesuffix('.yaml')}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            with open(log, "w", encoding="utf-8") as handle:
                process = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT)
            runs.append((label, out, log, process))
        for label, out, log, process in runs:
            if process.wait() != 0:
                raise SystemExit(f"a run failed ({process.returncode}); see {log}")
            metrics = json.loads((out / "test_metrics.json").read_text())[split]
            rows.append((f"{name} ({split})", label, f"{100 * metrics['accuracy']:.1f}"))
    print("\n| sample task (split) | model | accuracy % |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
