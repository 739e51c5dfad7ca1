"""Shared test helpers: repository paths, the committed samples, and repository scripts loaded by file path.

Tests are grouped by what they exercise: unit/ (library pieces: mixers, conversion, losses, models, data),
engine/ (CALDBrain, guidance, optimisers, recipe start-up), recipes/ (every recipe's data preparation, the
table-driven recipe smoke runs and the hparams agreement check), tools/ (the scripts under tools/). Test
modules import these names with `from conftest import ...` (pytest puts this folder on sys.path).
"""

import filecmp
import os
from pathlib import Path
from types import ModuleType

from cald_brain.scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "tests" / "samples"
TEDLIUM_SAMPLE = SAMPLES / "TEDLIUM_release-3"
SLURP_SAMPLE = SAMPLES / "SLURP"
VOXCELEB1_SAMPLE = SAMPLES / "VoxCeleb1"
TINY_WAV2VEC2 = SAMPLES / "models" / "tiny-wav2vec2"


def assert_same_tree(made: Path, committed: Path) -> None:
    """Every file of `committed` is in `made` with the same bytes (links: the same target), and no more."""
    for path in sorted(committed.rglob("*")):
        twin = made / path.relative_to(committed)
        if path.is_symlink():
            assert os.readlink(twin) == os.readlink(path), path
        elif path.is_file():
            assert filecmp.cmp(path, twin, shallow=False), f"{path} differs"
    assert sorted(p.relative_to(made) for p in made.rglob("*")) == sorted(
        p.relative_to(committed) for p in committed.rglob("*")
    )


def load_repo_script(relative_path: str, name: str) -> ModuleType:
    """A script of this repository (tools/x.py, recipes/X/prepare.py) as module `name`."""
    return load_script(ROOT / relative_path, name)


# A tiny wav2vec2-family encoder configuration (any audio family's config accepts these keys): 2 layers of
# width 32, two convolutions (20 ms frames at 16 kHz), no LayerDrop or SpecAugment unless a test sets them.
TINY_AUDIO_CONFIG = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    conv_dim=(16, 16),
    conv_stride=(5, 4),
    conv_kernel=(10, 8),
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=2,
    layerdrop=0.0,
    mask_time_prob=0.0,
)
