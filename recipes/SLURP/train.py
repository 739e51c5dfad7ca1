#!/usr/bin/env python3
"""SLURP intent classification with CALD: a pooled classifier on a Wav2Vec2 encoder, either the transformer
itself (the teacher run, hparams/wav2vec2_ic.yaml) or its BiMamba2 conversion (hparams/bimamba2_*.yaml).

    python recipes/SLURP/train.py hparams/bimamba2_trajectory.yaml --data_folder=/path/SLURP

The label is the intent, scenario_action (recipes/SLURP/prepare.py). The task (classifier brain,
accuracy, predictions file) is cald_brain.tasks.utterance_classification; this file only wires the SLURP
manifests and their label rules to it.
"""

import os

import speechbrain as sb
from speechbrain.utils.distributed import run_on_main

from cald_brain.recipe import start_recipe
from cald_brain.scripts import load_recipe_module
from cald_brain.tasks import utterance_classification as task

RECIPE_DIR = os.path.dirname(os.path.abspath(__file__))
prepare = load_recipe_module(RECIPE_DIR, "prepare")


@sb.utils.data_pipeline.takes("transcript")
@sb.utils.data_pipeline.provides("loss_units")
def transcript_characters(transcript: str) -> int:
    """Loss units of a recording: its transcript's characters, the reference's divisor (see
    cald_brain.tasks.utterance_classification.cross_entropy_per_unit)."""
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
    datasets, labels = task.build_datasets(hparams, "intent", label_file, transcript_characters)
    task.check_num_classes(labels, hparams["num_outputs"], "num_outputs", label_file)

    task.run(hparams, run_opts, datasets, labels)


if __name__ == "__main__":
    main()
