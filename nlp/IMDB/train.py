#!/usr/bin/env python3
"""IMDB movie-review sentiment with CALD: binary classification on a RoBERTa/BERT encoder, either the
transformer itself (the teacher run, hparams/roberta_finetune.yaml) or its Linformer conversion guided by a
teacher (hparams/linformer_*.yaml).

    python nlp/IMDB/train.py hparams/linformer_target.yaml --data_folder=/path/aclImdb

The task (tasks.py beside this file) says the labels and splits; the classification brain and datasets are
cald_brain.tasks.text_classification. This file only wires the aclImdb tree to them. The best checkpoint is
chosen on the held-out dev split; dev and test accuracy are reported.
"""

import os

from speechbrain.utils.distributed import run_on_main

from cald_brain.recipe import start_recipe
from cald_brain.scripts import load_recipe_module
from cald_brain.tasks import text_classification

RECIPE_DIR = os.path.dirname(os.path.abspath(__file__))
prepare_imdb = load_recipe_module(RECIPE_DIR, "prepare").prepare_imdb
IMDB_TASK = load_recipe_module(RECIPE_DIR, "tasks").IMDB_TASK


def main() -> None:
    hparams, run_opts, _ = start_recipe(RECIPE_DIR)
    run_on_main(
        prepare_imdb,
        kwargs={
            "data_folder": hparams["data_folder"],
            "save_folder": hparams["save_folder"],
            "dev_fraction": hparams["dev_fraction"],
            "seed": hparams["seed"],
            "skip_prep": hparams["skip_prep"],
            "strip_line_breaks": hparams["strip_line_breaks"],
        },
    )
    datasets = text_classification.build_datasets(hparams, IMDB_TASK)
    text_classification.run(hparams, run_opts, datasets, IMDB_TASK)


if __name__ == "__main__":
    main()
