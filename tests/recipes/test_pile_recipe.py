"""lm/Pile specifics the shared recipe table does not see: the reference's weight decay on the Mamba
mixers only, refusal of trajectory / waypoint guidance, a killed run's data loader resuming at the same
sample (also inside a validation segment of the second pass), the segment setting's check, and token ids
beyond the model's vocabulary refused before training."""

import signal
import subprocess
import sys

import pytest
import speechbrain as sb
import torch
from conftest import ROOT, SAMPLES, load_repo_script

from cald_brain.data.mmap_tokens import MMapTokens, SegmentedBatches, TokenSequences, write_mmap_tokens
from cald_brain.optim import param_groups
from cald_brain.recipe import RecipeError, load_hparams
from cald_brain.tasks import causal_lm

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
    data = TokenSequences(SAMPLES / "pile_mini" / "document", 0, 8, seq_length=129)
    hparams = {"valid_every_n_steps": 0, "batch_size": 2, "number_of_epochs": 1}
    with pytest.raises(RecipeError, match="valid_every_n_steps must be a positive number"):
        causal_lm.segmented_stream(hparams, data, 1)
    stream = causal_lm.segmented_stream({**hparams, "valid_every_n_steps": 2}, data, 1)
    assert (stream.segments, stream.optimizer_steps(1)) == (2, 4)


def pile_args(out) -> list[str]:
    """The target recipe on the sample: 16 sequences, 2 passes in batches of 2, 2 per optimizer step (8
    steps), validated every 3 steps (segments of 3, 3 and 2 steps), a checkpoint after every step."""
    return [
        str(ROOT / "lm" / "Pile" / "train.py"),
        "hparams/mamba_target.yaml",
        *[f"--{k}={v}" for k, v in SAMPLE.items()],
        f"--output_folder={out}",
        "--seq_length=129",
        "--max_train_samples=16",
        "--valid_samples=4",
        "--test_samples=4",
        "--batch_size=2",
        "--grad_accumulation_factor=2",
        "--valid_every_n_steps=3",
        "--decay_steps=8",  # the learning rate changes at every step
        "--precision=fp32",
        "--num_workers=0",
        "--d_inner=96",
        "--dt_rank=4",
        "--ckpt_interval_minutes=0",
        "--ckpt_interval_steps=2",
        "--device=cpu",
        "--noprogressbar",
    ]


def log_fields(line: str) -> dict[str, str]:
    """'key: value' fields of a train_log.txt line."""
    return dict(f.split(": ", 1) for part in line.split(" - ") for f in part.split(", "))


def latest_student(out) -> dict[str, torch.Tensor]:
    ckpt = max((out / "save").glob("CKPT+*"), key=lambda p: p.name)
    return torch.load(ckpt / "student.ckpt", weights_only=True)


@pytest.mark.slow  # three recipe runs
def test_killed_inside_a_segment_and_resumed_equals_uninterrupted(tmp_path):
    killer = ROOT / "tests" / "recipes" / "kill_after_step.py"
    commands = [pile_args(tmp_path / "ref"), [str(killer), "5", *pile_args(tmp_path / "killed")]]
    procs = [subprocess.Popen([sys.executable, *c], cwd=ROOT, stderr=subprocess.PIPE) for c in commands]
    (_, ref_err), (_, killed_err) = (p.communicate(timeout=600) for p in procs)
    assert procs[0].returncode == 0, ref_err.decode()[-3000:]
    assert procs[1].returncode == -signal.SIGKILL, killed_err.decode()[-3000:]  # after step 5, in segment 2
    resumed = subprocess.run([sys.executable, *pile_args(tmp_path / "killed")], cwd=ROOT, capture_output=True)
    assert resumed.returncode == 0, resumed.stderr.decode()[-3000:]
    logs = [(tmp_path / run / "train_log.txt").read_text().splitlines() for run in ("ref", "killed")]
    assert [line.split(", lr")[0] for line in logs[0]] == [
        "epoch: 1, steps: 3",
        "epoch: 2, steps: 6",
        "epoch: 3, steps: 8",
        "Epoch loaded: 3 - test loss: " + logs[0][-1].split("test loss: ")[1],
    ]
    # same lr, losses, validation and test perplexities, segment by segment (the resumed run may list the
    # restored train averages in another order)
    assert [log_fields(line) for line in logs[0]] == [log_fields(line) for line in logs[1]]
    ref, res = latest_student(tmp_path / "ref"), latest_student(tmp_path / "killed")
    assert [k for k in ref if not torch.equal(ref[k], res[k])] == []


def test_token_ids_beyond_the_vocabulary_stop_before_training(tmp_path):
    """A corpus tokenized for a larger vocabulary than the model's: refused at start-up naming the sequence
    (it used to train, then die with a raw IndexError at the batch holding it)."""
    corpus = MMapTokens(SAMPLE["data_prefix"])
    sequences = [corpus[i].copy() for i in range(len(corpus))]
    sequences[5][7] = 1024  # tiny-pythia's vocabulary: ids 0..1023
    write_mmap_tokens(tmp_path / "document", sequences)
    overrides = {**SAMPLE, "data_prefix": str(tmp_path / "document"), "output_folder": str(tmp_path / "out")}
    hparams = load_hparams(HPARAMS / "mamba_target.yaml", {**overrides, "d_inner": 96, "dt_rank": 4})
    hparams.update(max_train_samples=8, valid_samples=4, test_samples=4, seq_length=129)
    with pytest.raises(RecipeError, match="train range.*sequence 5 holds token id 1024.*1024 ids"):
        causal_lm.build_datasets(hparams)
    hparams.update(max_train_samples=60, valid_samples=4, test_samples=4)
    with pytest.raises(RecipeError, match="holds 64 sequences.*lower them to at most 64"):
        causal_lm.build_datasets(hparams)
