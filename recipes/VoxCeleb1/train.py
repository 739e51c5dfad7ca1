#!/usr/bin/env python3
"""VoxCeleb1 speaker identification with CALD: a statistics-pooling classifier on a Wav2Vec2 encoder, either
the transformer itself (the teacher run, hparams/wav2vec2_sid.yaml) or its BiMamba2 conversion
(hparams/bimamba2_*.yaml).

    python recipes/VoxCeleb1/train.py hparams/bimamba2_trajectory.yaml --data_folder=/path/VoxCeleb1

Training reads random crops of at most `train_crop_seconds` (SUPERB: 8 s), evaluation whole utterances.
The task (classifier brain, accuracy, predictions file) is cald_brain.tasks.utterance_classification; this
file only wires the VoxCeleb1 manifests and their label rules to it.
"""

import os
from collections.abc import Callable

import speechbrain as sb
from speechbrain.utils.distributed import run_on_main

from cald_brain.data.crops import crop_pipeline
from cald_brain.recipe import start_recipe
from cald_brain.scripts import load_recipe_module
from cald_brain.tasks import utterance_classification as task

RECIPE_DIR = os.path.dirname(os.path.abspath(__file__))
prepare = load_recipe_module(RECIPE_DIR, "prepare")


def constant_units(units: float) -> Callable:
    """Loss units per utterance: a constant (the reference's placeholder label "123" counts 3; see
    cald_brain.tasks.utterance_classification.cross_entropy_per_unit)."""

    @sb.utils.data_pipeline.takes("spk_id")
    @sb.utils.data_pipeline.provides("loss_units")
    def per_utterance(spk_id: str) -> float:
        return float(units)

    return per_utterance


def main() -> None:
    hparams, run_opts, _ = start_recipe(RECIPE_DIR)
    run_on_main(
        prepare.prepare_voxceleb1,
        kwargs={
            "data_folder": hparams["data_folder"],
            "save_folder": hparams["save_folder"],
            "split_file": hparams["split_file"],
            "skip_prep": hparams["skip_prep"],
        },
    )
    heads = [task.LabelHead.read("spk_id", os.path.join(hparams["save_folder"], prepare.LABEL_FILE))]
    task.check_heads(heads, hparams)
    datasets = task.build_datasets(
        hparams,
        heads,
        constant_units(hparams["loss_units_per_utterance"]),
        train_items=[crop_pipeline(hparams["train_crop_seconds"], hparams["sample_rate"])],
    )

    task.run(hparams, run_opts, datasets, heads)


if __name__ == "__main__":
    main()
