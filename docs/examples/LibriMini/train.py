#!/usr/bin/env python3
"""LibriSpeech-style CTC ASR with CALD (docs/ADAPTING.md, way (c)): the wiring of a new recipe folder.

    python recipes/LibriMini/train.py hparams/bimamba2_trajectory.yaml --data_folder=/path/LibriSpeech

The task is cald_brain.tasks.ctc; prepare.py writes its manifests. Nothing else is recipe-specific.
"""

import os

from speechbrain.utils.distributed import run_on_main

from cald_brain.recipe import start_recipe
from cald_brain.scripts import load_recipe_module
from cald_brain.tasks import ctc

RECIPE_DIR = os.path.dirname(os.path.abspath(__file__))
prepare = load_recipe_module(RECIPE_DIR, "prepare")


def main() -> None:
    hparams, run_opts, _ = start_recipe(RECIPE_DIR)
    run_on_main(
        prepare.prepare_librispeech,
        kwargs={
            "data_folder": hparams["data_folder"],
            "save_folder": hparams["save_folder"],
            "skip_prep": hparams["skip_prep"],
        },
    )
    units = ctc.build_units(hparams)
    ctc.run(hparams, run_opts, ctc.build_datasets(hparams, units), units)


if __name__ == "__main__":
    main()
