"""Write a randomly initialised Wav2Vec2 with wav2vec2-base's exact config (768 wide, 12 layers, LayerDrop
0.1, group-norm feature encoder) or large-lv60's (1024 wide, 24 layers, stable layer norm) into a folder, so
that the recipe's full-size defaults (headdim 64, d_state 128, bf16, duration batches) can be exercised on a
GPU without downloading weights. The numbers such a run gives measure speed and memory, not accuracy.

Usage::

    python tools/samples/wav2vec2_standin.py OUT_FOLDER [--layout base|large-lv60]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

LAYOUTS = {
    "base": dict(),  # Wav2Vec2Config's defaults are wav2vec2-base's
    "large-lv60": dict(
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        conv_bias=True,
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", type=Path)
    parser.add_argument("--layout", choices=sorted(LAYOUTS), default="base")
    args = parser.parse_args()
    torch.manual_seed(0)
    config = Wav2Vec2Config(**LAYOUTS[args.layout])
    Wav2Vec2Model(config).save_pretrained(args.out)
    stable = config.do_stable_layer_norm
    Wav2Vec2FeatureExtractor(do_normalize=stable, return_attention_mask=stable).save_pretrained(args.out)
    print(f"{args.layout} stand-in ({config.hidden_size} x {config.num_hidden_layers}) in {args.out}")


if __name__ == "__main__":
    main()
