"""Shared test helpers: repository paths, the committed samples, and repository scripts loaded by file path.

Tests are grouped by what they exercise: unit/ (library pieces: mixers, conversion, losses, models, data),
engine/ (CALDBrain, guidance, optimisers, recipe start-up), recipes/ (every recipe's data preparation, the
table-driven recipe smoke runs and the hparams agreement check), tools/ (the scripts under tools/). Test
modules import these names with `from conftest import ...` (pytest puts this folder on sys.path).
"""

import filecmp
import os
import shutil
from pathlib import Path
from types import ModuleType

from cald_brain.scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "tests" / "samples"
TEDLIUM_SAMPLE = SAMPLES / "TEDLIUM_release-3"
SLURP_SAMPLE = SAMPLES / "SLURP"
VOXCELEB1_SAMPLE = SAMPLES / "VoxCeleb1"
TINY_WAV2VEC2 = SAMPLES / "models" / "tiny-wav2vec2"
SMALL_WAV2VEC2 = SAMPLES / "models" / "small-wav2vec2"  # the README demo's teacher
# The TED-LIUM recipe's defaults are the reference's full-scale schedule (bf16; 18-24 utterances per
# micro-batch, 3-4 micro-batches per optimizer step); on the sample, on CPU, every test run sizes it so
# (recipes/TEDLIUM/README.md, "Try it on the sample").
TEDLIUM_SAMPLE_OVERRIDES = ("--max_batch_items=2", "--grad_accumulation_factor=1", "--precision=fp32")


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

# wav2vec2's two layer-norm layouts: base (post-LN, group-norm feature encoder), large-lv60 (stable, pre-LN).
LAYOUTS = {
    "base": dict(feat_extract_norm="group", do_stable_layer_norm=False),  # wav2vec2-base
    "stable": dict(feat_extract_norm="layer", do_stable_layer_norm=True),  # wav2vec2-large-lv60
}


def tiny_audio_checkpoint(folder: Path, layout: str, layerdrop: float, **config) -> str:
    """A tiny Wav2Vec2 checkpoint (TINY_AUDIO_CONFIG, updated with `config`) in `layout` with `layerdrop`,
    saved with its feature extractor into `folder` as a hub checkpoint is; returns the folder."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    torch.manual_seed(0)
    settings = {**TINY_AUDIO_CONFIG, **config, "layerdrop": layerdrop, **LAYOUTS[layout]}
    Wav2Vec2Model(Wav2Vec2Config(**settings)).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(do_normalize=True).save_pretrained(folder)
    return str(folder)


def offline_hub_cache(hf_home: Path, repo: str, folder: Path) -> None:
    """`folder`'s files laid out as huggingface_hub's cache under `hf_home` holds a downloaded `repo`."""
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = hf_home / "hub" / f"models--{repo.replace('/', '--')}"
    shutil.copytree(folder, repo_dir / "snapshots" / revision)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(revision)


def offline_hub_env(hf_home: Path) -> dict[str, str]:
    """The environment of a process that resolves hub names from the cache under `hf_home` only, offline
    (huggingface_hub reads these at import: use it for a fresh process)."""
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    for other in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE"):
        env.pop(other, None)  # they would take precedence over HF_HOME
    return env
