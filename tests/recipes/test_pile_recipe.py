"""lm/Pile specifics the shared recipe table does not see: the reference's weight decay on the Mamba
mixers only, refusal of trajectory / waypoint guidance, a killed run's data loader resuming at the same
sample (also inside a validation segment of the second pass), and the segment setting's check."""

import sys

import pytest
import speechbrain as sb
from conftest import ROOT, SAMPLES, load_repo_script

from cald_brain.data.mmap_tokens import SegmentedBatches, TokenSequences
from cald_brain.optim import param_groups
from cald_brain.recipe import RecipeError, load_hparams

HPARAMS = ROOT / "lm" / "Pile" / "hparams"
SAMPLE = {
    "data_prefix": str(SAMPLES / "pile_mini" / "document"),
    "pretrained_source": str(SAMPLES / "models" / "tiny-pythia"),
}


@pytest.mark.parametrize(
    "name, overrides, own_params_decay",
    [
        ("mamba_target.yaml", {"d_inner": 96, "dt_rank": 4}, True),  # the reference decays A_log and D
        (
            "mamba2_target.yaml",
            {"headdim": 32, "d_state": 16},
            False,
        ),  # mamba_ssm's no-decay A_log, D, dt_bias
    ],
)
def test_weight_decay_on_mixer_weights_only(name, overrides, own_params_decay, tmp_path):
    hparams = load_hparams(HPARAMS / name, {**SAMPLE, **overrides, "output_folder": str(tmp_path)})
    student = hparams["student"]
    groups = param_groups(
        student.named_parameters(), None, hparams["weight_decay"], hparams["no_decay_modules"]
    )
    names = {id(p): n for n, p in student.named_parameters()}
    decayed = {names[id(p)] for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    # the reference: parameters with 'mamba' in their name, minus 'bias' and 'norm.weight'
    expected = {
        n
        for n in names.values()
        if ".mixer." in n
        and not n.endswith("bias")
        and not n.endswith("norm.weight")
        and (own_params_decay or not n.split(".")[-2] == "mixer")
    }
    assert decayed == expected and expected
    assert {g["weight_decay"] for g in groups} == {0.1, 0.0}


@pytest.mark.parametrize("mode", ["trajectory", "waypoint"])
def test_trajectory_and_waypoint_are_refused(mode, tmp_path, monkeypatch):
    train = load_repo_script("lm/Pile/train.py", "pile_train")
    argv = ["train.py", "hparams/mamba_target.yaml", f"--guidance_mode={mode}", f"--output_folder={tmp_path}"]
    argv += [f"--{k}={v}" for k, v in SAMPLE.items()] + ["--d_inner=96", "--dt_rank=4"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(RecipeError, match=f"guidance_mode={mode} does not apply"):
        train.main()


def test_loader_resumes_at_the_same_sample(tmp_path):
    data = TokenSequences(SAMPLES / "pile_mini" / "document", 0, 48, seq_length=129)
    loader = sb.dataio.dataloader.make_dataloader(data, batch_size=2, shuffle=False)
    seen = []
    for i, batch in enumerate(loader):
        seen.append(batch["id"])
        if i == 2:
            loader._speechbrain_save(tmp_path / "loader.ckpt")  # as an intra-epoch checkpoint does
            break
    assert seen == [["seq0", "seq1"], ["seq2", "seq3"], ["seq4", "seq5"]]  # index order, as the reference
    resumed = sb.dataio.dataloader.make_dataloader(data, batch_size=2, shuffle=False)
    resumed._speechbrain_load(tmp_path / "loader.ckpt", end_of_epoch=False)
    first = next(iter(resumed))
    assert first["id"] == ["seq6", "seq7"]
    assert first["input_ids"].tolist() == [data[6]["input_ids"].tolist(), data[7]["input_ids"].tolist()]


def test_segment_loader_resumes_at_the_same_sample(tmp_path):
    """Inside segment 5 of 8 (the second pass starts there: 24 batches of 2 per pass, 6 per segment)."""
    data = TokenSequences(SAMPLES / "pile_mini" / "document", 0, 48, seq_length=129)

    def loader() -> sb.dataio.dataloader.SaveableDataLoader:
        stream = SegmentedBatches(len(data), 2, passes=2, batches_per_segment=6)
        stream.set_epoch(5)  # as SpeechBrain does at the start of every epoch
        return sb.dataio.dataloader.make_dataloader(data, batch_sampler=stream)

    first = loader()
    seen = []
    for i, batch in enumerate(first):
        seen.append(batch["id"])
        if i == 2:
            first._speechbrain_save(tmp_path / "loader.ckpt")
            break
    assert seen == [["seq0", "seq1"], ["seq2", "seq3"], ["seq4", "seq5"]]
    resumed = loader()
    resumed._speechbrain_load(tmp_path / "loader.ckpt", end_of_epoch=False)
    assert [b["id"] for b in resumed] == [["seq6", "seq7"], ["seq8", "seq9"], ["seq10", "seq11"]]


def test_valid_every_n_steps_must_be_positive():
    train = load_repo_script("lm/Pile/train.py", "pile_train")
    data = TokenSequences(SAMPLES / "pile_mini" / "document", 0, 8, seq_length=129)
    hparams = {"valid_every_n_steps": 0, "batch_size": 2, "number_of_epochs": 1}
    with pytest.raises(RecipeError, match="valid_every_n_steps must be a positive number"):
        train.segmented_stream(hparams, data, 1)
    stream = train.segmented_stream({**hparams, "valid_every_n_steps": 2}, data, 1)
    assert (stream.segments, stream.optimizer_steps(1)) == (2, 4)
