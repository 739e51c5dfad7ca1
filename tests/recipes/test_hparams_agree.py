"""The hparams files of a recipe folder must not drift apart.

Each YAML file stays complete (a user opening it sees everything it runs), so the blocks they share are
written several times. This check keeps those copies identical: a top-level key present in several files of
one recipe's hparams/ must have the same block (its line, its indented lines and their inline comments) in
each, unless the recipe lists it in VARYING (keys its files are meant to set differently). Changing a shared
setting therefore means changing it in every file, and this test names the files that were missed.
"""

import re
from pathlib import Path

import pytest
from conftest import ROOT

VARYING = {  # recipe folder (relative to the repository root) -> keys its hparams files set differently
    "recipes/TEDLIUM": {
        "output_folder",  # one results folder per hparams file
        "lr",  # teacher run vs. students
        "student",  # the transformer (teacher run) vs. its BiMamba2 conversion
        "guidance_mode",  # one mode per file
        "student_init",  # target (documented choice) vs. hybrid
        "batch_size",  # the reference's micro-batches: distillation runs vs. teacher / unguided runs
        "batch_max_samples",
        "batch_max_quad_samples",
        "grad_accumulation_factor",
        "residual_inside",  # the reference's unguided BiMamba2 adds its input, the guided ones do not
    },
    "lm/Pile": {
        "output_folder",  # one results folder per hparams file
        "guidance_mode",  # one mode per file
        "alpha_ld",  # 0 for the unguided run
        "mixer",  # mamba vs. mamba2
        "d_state",  # Mamba's 16 vs. Mamba2's 64
        "student",  # Mamba vs. Mamba2 mixer arguments
        "mixer_init",  # the comment lists the mixer's options
        "no_decay_modules",  # Mamba2's A_log, D, dt_bias are not decayed (mamba_ssm's rule)
    },
    **{
        folder: {
            "output_folder",  # one results folder per hparams file
            "student",  # the transformer (teacher run) vs. its BiMamba2 conversion
            "guidance_mode",  # one mode per file
            "student_init",  # target (documented choice) vs. hybrid
            # the reference's batches differ between teacher, distillation and unguided command lines
            "max_batch_samples",
            "max_batch_items",
            "max_batch_quad_samples",
            "grad_accumulation_factor",
        }
        for folder in ("recipes/SLURP", "recipes/VoxCeleb1")
    },
    **{
        folder: {
            "output_folder",  # one results folder per hparams file
            "lr",  # teacher run vs. students
            "batch_size",  # 32 (teacher, unguided) vs. 16 x 2 accumulated (distillation), as the reference
            "grad_accumulation_factor",
            "student",  # the transformer (teacher run) vs. its Linformer conversion
            "guidance_mode",  # one mode per file
        }
        for folder in ("nlp/GLUE", "nlp/IMDB")
    },
}
RECIPE_TREES = ("recipes", "nlp", "lm")  # where recipe folders live
RECIPE_DIRS = sorted(p.parent for tree in RECIPE_TREES for p in (ROOT / tree).glob("**/hparams"))


def top_level_blocks(path: Path) -> dict[str, str]:
    """Top-level key -> its block of lines (full-line comments and blank lines left out)."""
    blocks: dict[str, list[str]] = {}
    key = None
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = re.match(r"([A-Za-z_]\w*)\s*:", line)
        if match:
            key = match.group(1)
            blocks[key] = []
        if key is not None:
            blocks[key].append(line.rstrip())
    return {k: "\n".join(v) for k, v in blocks.items()}


def test_every_recipe_with_hparams_is_listed():
    assert {d.relative_to(ROOT).as_posix() for d in RECIPE_DIRS} == set(VARYING)


@pytest.mark.parametrize("recipe_dir", RECIPE_DIRS, ids=lambda d: d.relative_to(ROOT).as_posix())
def test_shared_blocks_agree(recipe_dir):
    files = {p.name: top_level_blocks(p) for p in sorted((recipe_dir / "hparams").glob("*.yaml"))}
    varying = VARYING[recipe_dir.relative_to(ROOT).as_posix()]
    unused = varying - {key for blocks in files.values() for key in blocks}
    assert not unused, f"VARYING lists keys no hparams file has: {sorted(unused)}"
    drifted = []
    for key in sorted({key for blocks in files.values() for key in blocks} - varying):
        versions: dict[str, list[str]] = {}
        for name, blocks in files.items():
            if key in blocks:
                versions.setdefault(blocks[key], []).append(name)
        if len(versions) > 1:
            drifted.append(f"{key}: " + " | ".join(", ".join(names) for names in versions.values()))
    assert not drifted, (
        f"hparams files in {recipe_dir / 'hparams'} disagree on shared blocks (make them identical, or "
        "add the key to VARYING in this test if it is meant to differ):\n" + "\n".join(drifted)
    )


def test_a_drifted_block_is_reported(tmp_path):
    (tmp_path / "a.yaml").write_text("lr: 0.1\nopt: !name:torch.optim.Adam\n    lr: !ref <lr>\n")
    (tmp_path / "b.yaml").write_text("# comment\nlr: 0.1\nopt: !name:torch.optim.Adam\n    lr: 0.2\n")
    a, b = top_level_blocks(tmp_path / "a.yaml"), top_level_blocks(tmp_path / "b.yaml")
    assert a["lr"] == b["lr"] and a["opt"] != b["opt"]


@pytest.mark.parametrize("recipe_dir", RECIPE_DIRS, ids=lambda d: d.relative_to(ROOT).as_posix())
def test_checkpoints_are_written_atomically(recipe_dir):
    """Every hparams file checkpoints through AtomicCheckpointer (a kill mid-write never leaves a checkpoint
    that looks complete), not SpeechBrain's plain Checkpointer."""
    plain = [
        p.name
        for p in sorted((recipe_dir / "hparams").glob("*.yaml"))
        if not top_level_blocks(p)["checkpointer"].startswith(
            "checkpointer: !new:cald_brain.checkpoints.AtomicCheckpointer"
        )
    ]
    assert not plain, f"{recipe_dir / 'hparams'}: use cald_brain.checkpoints.AtomicCheckpointer in {plain}"
