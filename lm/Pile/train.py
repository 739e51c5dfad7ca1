#!/usr/bin/env python3
"""Pythia -> Mamba on the Pile with CALD: every attention of a pretrained GPT-NeoX replaced by a Mamba mixer,
trained on next-token prediction, guided (target) by the frozen pretrained model itself or not (unguided),
or guided for the first 40 % of the steps (hybrid).

    python lm/Pile/train.py hparams/mamba_target.yaml --data_prefix=/path/pile_pythia/document \\
        --pretrained_source=EleutherAI/pythia-1b

Data: the Pythia pre-shuffled Pile in Megatron's MMIDIDX format, read in index order (cald_brain.data.
mmap_tokens): the first `max_train_samples` sequences train, the next `valid_samples` validate (perplexity,
best checkpoint), the next `test_samples` test. Training replays the reference's stream (`number_of_epochs`
passes over the training sequences in index order) cut into segments of `valid_every_n_steps` optimizer
steps; each segment is one SpeechBrain epoch: validation, checkpoint (the best by perplexity is kept) and
resumption work per segment. At the end the best student is exported to <output_folder>/student
(cald_brain.export; read by cald_brain.inference.load and Hugging Face with trust_remote_code=True).

The task (LM brain, datasets, segmented stream, export) is cald_brain.tasks.causal_lm; this file only wires
the corpus to it.
"""

import os

from cald_brain.recipe import start_recipe
from cald_brain.tasks import causal_lm

RECIPE_DIR = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    hparams, run_opts, _ = start_recipe(RECIPE_DIR)
    datasets = causal_lm.build_datasets(hparams)
    causal_lm.run(hparams, run_opts, datasets)


if __name__ == "__main__":
    main()
