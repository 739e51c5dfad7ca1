#!/usr/bin/env python3
"""CALD on your own corpus, given as manifest CSVs: CTC speech recognition (hparams/wav2vec2_ctc.yaml,
hparams/bimamba2_<mode>.yaml) or utterance classification (hparams/wav2vec2_cls.yaml,
hparams/bimamba2_<mode>_cls.yaml) on a Wav2Vec2 encoder or its BiMamba2 conversion.

    python recipes/CSV/train.py hparams/wav2vec2_ctc.yaml \
        --train_csv=train.csv --valid_csv=valid.csv --test_csv=test.csv --output_folder=results/mine

The manifests' format and checks are recipes/CSV/prepare.py's (README.md); the tasks are
cald_brain.tasks.ctc and cald_brain.tasks.utterance_classification. This file only wires them.
"""

import os

import speechbrain as sb

from cald_brain.recipe import RecipeError, start_recipe
from cald_brain.scripts import load_recipe_module
from cald_brain.tasks import ctc
from cald_brain.tasks import utterance_classification as classification

RECIPE_DIR = os.path.dirname(os.path.abspath(__file__))
prepare = load_recipe_module(RECIPE_DIR, "prepare")


@sb.utils.data_pipeline.takes("id")
@sb.utils.data_pipeline.provides("loss_units")
def one_unit(_: str) -> int:
    """Loss units of an utterance: one (the classifier's loss is the plain mean cross-entropy)."""
    return 1


PREPARE_KEYS = (
    "train_csv",
    "valid_csv",
    "test_csv",
    "save_folder",
    "task",
    "data_folder",
    "sample_rate",
    "skip_prep",
)


def prepare_options(hparams: dict) -> dict:
    """prepare.prepare_csv's arguments from the hparams (plain values: the YAML need not be built)."""
    for key in ("train_csv", "valid_csv", "test_csv"):
        if not isinstance(hparams[key], str):
            raise RecipeError(
                f"pass your {key.split('_')[0]} manifest: --{key}=/path/to/{key.split('_')[0]}.csv"
            )
    return {
        **{key: hparams[key] for key in PREPARE_KEYS},
        "label_column": hparams.get("label_column"),
        "characters": hparams.get("characters"),
    }


def prepare_manifests(hparams: dict) -> str | None:
    """Check and normalise the manifests (prepare.prepare_csv); their errors as start-up errors. Returns the
    CTC character set."""
    try:
        return prepare.prepare_csv(**prepare_options(hparams))
    except (prepare.ManifestError, FileNotFoundError) as err:
        raise RecipeError(str(err)) from err


def main() -> None:
    hparams, run_opts, _ = start_recipe(RECIPE_DIR, prepare=prepare_manifests)
    # the character set the main process fixed (read back, nothing prepared again)
    characters = prepare_manifests({**hparams, "skip_prep": True})
    if hparams["task"] == "ctc":
        hparams["characters"] = characters
        units = ctc.build_units(hparams)
        ctc.run(hparams, run_opts, ctc.build_datasets(hparams, units), units)
        return
    label_file = os.path.join(hparams["save_folder"], prepare.LABEL_FILE)
    heads = [classification.LabelHead.read(prepare.LABEL_KEY, label_file)]
    classification.check_heads(heads, hparams)
    datasets = classification.build_datasets(hparams, heads, one_unit, segmented=True)
    classification.run(hparams, run_opts, datasets, heads)


if __name__ == "__main__":
    main()
