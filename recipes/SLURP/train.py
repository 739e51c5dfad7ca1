#!/usr/bin/env python3
"""SLURP intent classification with CALD: a pooled classifier on a Wav2Vec2 encoder, either the transformer
itself (the teacher run, hparams/wav2vec2_ic.yaml) or its BiMamba2 conversion (hparams/bimamba2_*.yaml).

    python recipes/SLURP/train.py hparams/bimamba2_trajectory.yaml --data_folder=/path/SLURP

The heads are the hparams' `label_heads`: scenario and action (the reference's two heads; the intent is
right when both are), or the intent (scenario_action) alone (recipes/SLURP/prepare.py writes every label
file). The task (classifier brain, accuracies, predictions file) is cald_brain.tasks.utterance_classification;
this file only wires the SLURP manifests and their label rules to it.
"""

import os

import speechbrain as sb
from speechbrain.utils.distributed import run_on_main

from cald_brain.recipe import RecipeError, start_recipe
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


def label_heads(hparams: dict) -> list[task.LabelHead]:
    """The heads `label_heads` names, with the label files of the preparation in `save_folder`."""
    names = hparams["label_heads"]
    unknown = [name for name in names if name not in prepare.LABEL_FILES]
    if not names or unknown or len(set(names)) != len(names):
        raise RecipeError(
            f"label_heads is {names}: use [scenario, action] (the reference's two heads) or [intent] (one "
            f"head over the scenario_action labels); known heads: {', '.join(prepare.LABEL_FILES)}"
        )
    return [
        task.LabelHead.read(name, os.path.join(hparams["save_folder"], prepare.LABEL_FILES[name]))
        for name in names
    ]


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
    heads = label_heads(hparams)
    task.check_heads(heads, hparams)
    datasets = task.build_datasets(hparams, heads, transcript_characters)

    task.run(hparams, run_opts, datasets, heads, joint_name="intent")


if __name__ == "__main__":
    main()
