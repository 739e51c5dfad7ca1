#!/usr/bin/env python3
"""GLUE with CALD: sequence classification (or STS-B regression) on a RoBERTa/BERT encoder, either the
transformer itself (the teacher run, hparams/roberta_finetune.yaml) or its Linformer conversion guided by a
teacher (hparams/linformer_*.yaml).

    python nlp/GLUE/train.py hparams/linformer_trajectory.yaml --task=qnli --data_folder=/path/glue_data/QNLI

The task table (inputs, labels, metrics) and the classification brain live in
cald_brain.text_classification; this file only wires the GLUE task folder to them.
"""

import os
import sys

from speechbrain.utils.distributed import run_on_main

from cald_brain.recipe import RecipeError, start_recipe
from cald_brain.scripts import load_recipe_module
from cald_brain.text_classification import TextTask, fit_and_evaluate, glue_task, text_datasets

RECIPE_DIR = os.path.dirname(os.path.abspath(__file__))
prepare_glue = load_recipe_module(RECIPE_DIR, "prepare").prepare_glue


def with_task_outputs(argv: list[str]) -> list[str]:
    """The command line plus --num_labels for the task named by --task (unless given)."""
    task = None
    for i, arg in enumerate(argv):
        if arg.startswith("--task="):
            task = arg.split("=", 1)[1]
        elif arg == "--task" and i + 1 < len(argv):
            task = argv[i + 1]
    if task is None or any(arg.startswith("--num_labels") for arg in argv):
        return argv
    return [*argv, f"--num_labels={glue_task(task).num_labels}"]


def resolve_hybrid_switch(hparams: dict, task: TextTask) -> None:
    """Hybrid runs with `distill_until_step: null` (and no fraction) switch at the reference's step for the
    task (QNLI 10,000, QQP 40,000, SST-2 5,000); other tasks must say when."""
    if hparams.get("guidance_mode") != "hybrid":
        return
    if hparams.get("distill_until_step") is not None or hparams.get("distill_until_fraction") is not None:
        return
    if task.hybrid_switch_step is None:
        raise RecipeError(
            f"the reference gives no hybrid switch for --task={task.name}: set --distill_until_step "
            "(optimizer steps) or --distill_until_fraction"
        )
    hparams["distill_until_step"] = task.hybrid_switch_step


def main() -> None:
    hparams, run_opts, _ = start_recipe(RECIPE_DIR, with_task_outputs(sys.argv[1:]))
    task = glue_task(hparams["task"])
    if hparams["num_labels"] != task.num_labels:
        raise RecipeError(
            f"num_labels is {hparams['num_labels']} but --task={task.name} has {task.num_labels} "
            f"output(s): pass --num_labels={task.num_labels}"
        )
    resolve_hybrid_switch(hparams, task)
    run_on_main(
        prepare_glue,
        kwargs={
            "data_folder": hparams["data_folder"],
            "save_folder": hparams["save_folder"],
            "task": task.name,
            "skip_prep": hparams["skip_prep"],
        },
    )
    datasets = text_datasets(hparams, task, ("train", *task.dev_splits))
    fit_and_evaluate(hparams, run_opts, task, datasets)


if __name__ == "__main__":
    main()
