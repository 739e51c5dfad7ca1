#!/usr/bin/env python3
"""TED-LIUM 3 ASR with CALD: a CTC recogniser (characters, or SentencePiece BPE pieces) on a Wav2Vec2
encoder, either the transformer itself (the teacher run, hparams/wav2vec2_ctc.yaml) or its BiMamba2
conversion guided by a teacher (hparams/bimamba2_*.yaml).

    python recipes/TEDLIUM/train.py hparams/bimamba2_trajectory.yaml --data_folder=/path/TEDLIUM_release-3

The task (CTC brain, output units, datasets from the manifests) is cald_brain.tasks.ctc; CALD itself is
cald_brain.CALDBrain. This file only wires TED-LIUM's preparation to them.
"""

import os

from speechbrain.utils.distributed import run_on_main

from cald_brain.recipe import start_recipe
from cald_brain.scripts import load_recipe_module
from cald_brain.tasks import ctc

RECIPE_DIR = os.path.dirname(os.path.abspath(__file__))
prepare_tedlium = load_recipe_module(RECIPE_DIR, "prepare").prepare_tedlium


def main() -> None:
    hparams, run_opts, _ = start_recipe(RECIPE_DIR)
    run_on_main(
        prepare_tedlium,
        kwargs={
            "data_folder": hparams["data_folder"],
            "save_folder": hparams["save_folder"],
            "split": hparams["split"],
            "skip_prep": hparams["skip_prep"],
            "characters": hparams["characters"],
            "unknown_characters": hparams["unknown_characters"],
        },
    )
    units = ctc.build_units(hparams)
    datasets = ctc.build_datasets(hparams, units)
    ctc.run(hparams, run_opts, datasets, units)


if __name__ == "__main__":
    main()
