#!/usr/bin/env python3
"""IMDB movie-review sentiment with CALD: binary classification on a RoBERTa/BERT encoder, either the
transformer itself (the teacher run, hparams/roberta_finetune.yaml) or its Linformer conversion guided by a
teacher (hparams/linformer_*.yaml).

    python nlp/IMDB/train.py hparams/linformer_target.yaml --data_folder=/path/aclImdb

The classification brain lives in cald_brain.text_classification; this file only wires the aclImdb tree to
it. The best checkpoint is chosen on the held-out dev split; dev and test accuracy are reported.
"""

import os

from speechbrain.utils.distributed import run_on_main

from cald_brain.recipe import start_recipe
from cald_brain.scripts import load_recipe_module
from cald_brain.text_classification import IMDB_TASK, fit_and_evaluate, text_datasets

RECIPE_DIR = os.path.dirname(os.path.abspath(__file__))
prepare_imdb = load_recipe_module(RECIPE_DIR, "prepare").prepare_imdb


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
        },
    )
    datasets = text_datasets(hparams, IMDB_TASK, ("train", "dev", "test"))
    fit_and_evaluate(hparams, run_opts, IMDB_TASK, datasets)


if __name__ == "__main__":
    main()
