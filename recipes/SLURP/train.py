#!/usr/bin/env python3
"""SLURP intent classification with CALD: a pooled classifier on a Wav2Vec2 encoder, either the transformer
itself (the teacher run, hparams/wav2vec2_ic.yaml) or its BiMamba2 conversion (hparams/bimamba2_*.yaml).

    python recipes/SLURP/train.py hparams/bimamba2_trajectory.yaml --data_folder=/path/SLURP

The label is the intent, scenario_action (recipes/SLURP/prepare.py). Everything else (classifier brain,
accuracy, predictions file, CALD) lives in cald_brain; this file only wires the SLURP manifests.
"""

import os

import speechbrain as sb
from speechbrain.utils.distributed import run_on_main

from cald_brain.classification import check_num_classes, classification_datasets, train_and_test
from cald_brain.recipe import start_recipe
from cald_brain.scripts import load_recipe_module

RECIPE_DIR = os.path.dirname(os.path.abspath(__file__))
prepare = load_recipe_module(RECIPE_DIR, "prepare")


@sb.utils.data_pipeline.takes("transcript")
@sb.utils.data_pipeline.provides("loss_units")
def transcript_characters(transcript: str) -> int:
    """Loss units of a recording: its transcript's characters, the reference's divisor (see
    cald_brain.classification.cross_entropy_per_unit)."""
    return max(len(transcript), 1)


def main() -> None:
    hparams, run_opts, _ = start_recipe(RECIPE_DIR)
    run_on_main(
        prepare.prepare_slurp,
        kwargs={
            "data_folder": hparams["data_folder"],
            "save_folder": hparams["save_folder"],
            "skip_prep": hparams["skip_prep"],
        },
    )
    label_file = os.path.join(hparams["save_folder"], prepare.LABEL_FILE)
    datasets, labels = classification_datasets(hparams, "intent", label_file, transcript_characters)
    check_num_classes(labels, hparams["num_outputs"], "num_outputs", label_file)

    train_and_test(hparams, run_opts, datasets, labels)


if __name__ == "__main__":
    main()
