#!/usr/bin/env python3
"""GLUE with CALD: sequence classification (or STS-B regression) on a RoBERTa/BERT encoder, either the
transformer itself (the teacher run, hparams/roberta_finetune.yaml) or its Linformer conversion guided by a
teacher (hparams/linformer_*.yaml).

    python nlp/GLUE/train.py hparams/linformer_trajectory.yaml --task=qnli --data_folder=/path/glue_data/QNLI

The task table (inputs, labels, metrics) is tasks.py beside this file; the classification brain and datasets
are cald_brain.tasks.text_classification. This file only wires the GLUE task folder to them.
"""

import os

from speechbrain.utils.distributed import run_on_main

from cald_brain.recipe import RecipeError, start_recipe
from cald_brain.scripts import load_recipe_module
from cald_brain.tasks import text_classification

RECIPE_DIR = os.path.dirname(os.path.abspath(__file__))
prepare_glue = load_recipe_module(RECIPE_DIR, "prepare").prepare_glue
glue_task = load_recipe_module(RECIPE_DIR, "tasks").glue_task


def derived_from_task(overrides: dict) -> dict:
    """What --task decides before the hparams load: `num_labels` (the head's outputs) and
    `task_switch_step` (the reference's hybrid switch, linformer_hybrid.yaml's default distill_until_step)."""
    if "task" not in overrides:
        return {}  # the YAML's task: !PLACEHOLDER then asks for it
    task = glue_task(str(overrides["task"]))
    return {"num_labels": task.num_labels, "task_switch_step": task.hybrid_switch_step}


def check_hybrid_switch(hparams: dict, task_name: str) -> None:
    """A hybrid run must know when distillation stops: the reference's step for the task (derived), or the
    user's --distill_until_step / --distill_until_fraction."""
    if hparams.get("guidance_mode") != "hybrid":
        return
    if hparams.get("distill_until_step") is None and hparams.get("distill_until_fraction") is None:
        raise RecipeError(
            f"the reference gives no hybrid switch for --task={task_name}: set --distill_until_step "
            "(optimizer steps) or --distill_until_fraction"
        )


def main() -> None:
    hparams, run_opts, _ = start_recipe(RECIPE_DIR, derive=derived_from_task)
    task = glue_task(hparams["task"])
    check_hybrid_switch(hparams, task.name)
    run_on_main(
        prepare_glue,
        kwargs={
            "data_folder": hparams["data_folder"],
            "save_folder": hparams["save_folder"],
            "task": task.name,
            "skip_prep": hparams["skip_prep"],
        },
    )
    datasets = text_classification.build_datasets(hparams, task)
    text_classification.run(hparams, run_opts, datasets, task)


if __name__ == "__main__":
    main()
