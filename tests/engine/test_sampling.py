"""DurationBatchSampler: the reference's packing, bucketed shuffling, length curriculum; exact resume."""

import pytest
import torch
from speechbrain.dataio.dataset import DynamicItemDataset
from toy_task import ToyBrain, make_brain, make_dataset

from cald_brain.data.sampling import DurationBatchSampler

RATE = 100  # samples per second in these tests: lengths in samples = duration * 100


def manifest(n: int = 60, seed: int = 0) -> DynamicItemDataset:
    """Utterances of 1..40 s (100..4000 samples) with transcripts of 1..30 characters."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(100, 4001, (n,), generator=gen).tolist()
    chars = torch.randint(1, 31, (n,), generator=gen).tolist()
    return DynamicItemDataset(
        {f"u{i}": {"duration": lengths[i] / RATE, "wrd": "x" * chars[i]} for i in range(n)}
    )


def sampler(dataset=None, **overrides) -> DurationBatchSampler:
    settings = dict(
        max_batch_samples=12000,
        max_batch_items=5,
        max_batch_quad_samples=2.5e7,
        bucket_size=16,
        sample_rate=RATE,
        warmup_max_samples=1000,
    )
    settings.update(overrides)
    return DurationBatchSampler(dataset if dataset is not None else manifest(), **settings)


def reference_pack(
    lengths: list[int], batch_size: int, frame_limit: float, quad_limit: float
) -> list[list[int]]:
    """speech/dataloader.py `_pack_into_batches` on lengths sorted ascending (positions returned)."""
    batches = [[]]
    for position, length in enumerate(lengths):
        items = len(batches[-1]) + 1
        if len(batches[-1]) == batch_size or items * length > frame_limit or items * length**2 > quad_limit:
            batches.append([])
        batches[-1].append(position)
    return [b for b in batches if b]


def test_each_bucket_is_packed_like_the_reference():
    s = sampler(shuffle=False)  # buckets are consecutive slices of the dataset, batches in length order
    batches = s.batches()
    for start in range(0, len(s.lengths), 16):
        bucket = sorted(range(start, min(start + 16, len(s.lengths))), key=lambda i: s.lengths[i])
        expected = reference_pack([int(s.lengths[i]) for i in bucket], 5, 12000, 2.5e7)
        got, batches = batches[: len(expected)], batches[len(expected) :]
        assert got == [[bucket[p] for p in b] for b in expected]
    assert batches == []


def test_every_utterance_once_per_epoch_and_limits_hold():
    s = sampler()
    for epoch in (1, 2):
        s.set_epoch(epoch)
        batches = list(s)
        assert sorted(i for b in batches for i in b) == list(range(60))
        for batch in batches:
            longest = max(s.lengths[i] for i in batch)
            assert len(batch) <= 5 and len(batch) * longest <= 12000 and len(batch) * longest**2 <= 2.5e7
    assert s.batches(1) != s.batches(2)  # reshuffled every epoch
    assert sampler().batches(2) == s.batches(2)  # and reproducible


def test_finished_iteration_moves_to_the_next_epoch():
    s = sampler()
    first = list(s)
    assert s.epoch == 2 and list(s) == s.batches(2) != first


def test_curriculum_skips_long_and_short_text_utterances_until_the_warmup_ends():
    s = sampler(data_warmup_steps=2, grad_accumulation_factor=2, warmup_max_samples=2500)  # 4 micro-batches
    batches = s.batches(1)
    excluded = {i for i in range(60) if s.lengths[i] > 2500 or s.text_lengths[i] <= 2}
    assert 0 < len(excluded) < 60
    first_back = next(n for n, b in enumerate(batches) if excluded & set(b))  # curriculum ended in epoch 1
    assert first_back >= 4  # not before 4 micro-batches were planned
    items = [i for b in batches for i in b]
    assert len(items) < 60 and len(set(items)) == len(items)  # the skipped ones are dropped for the epoch
    assert s.in_warmup(1) and not s.in_warmup(2)
    assert sorted(i for b in s.batches(2) for i in b) == list(range(60))  # no filtering after it
    assert sampler(warmup_max_samples=2500).batches(1) != batches


def test_a_fresh_sampler_continues_exactly_mid_epoch_across_the_curriculum_switch():
    """What a kill-and-resume does: SpeechBrain's epoch counter selects the epoch, its SaveableDataLoader
    skips the batches already done; the rest must be what the uninterrupted run gets."""
    settings = dict(data_warmup_steps=5, grad_accumulation_factor=2)
    run = sampler(**settings)
    epochs = [list(run) for _ in range(3)]
    for epoch, done in ((1, 4), (2, 3), (3, 0)):
        resumed = sampler(**settings)  # a new process
        resumed.set_epoch(epoch)
        assert list(resumed)[done:] == epochs[epoch - 1][done:]


def test_bad_settings_and_missing_keys_are_named():
    with pytest.raises(ValueError, match="max_batch_items"):
        sampler(max_batch_items=0)
    with pytest.raises(KeyError, match="words"):
        sampler(text_key="words")
    with pytest.raises(ValueError, match="from 1"):
        sampler().set_epoch(0)


class RecordingBrain(ToyBrain):
    """Records the ids of every train micro-batch; dies at micro-batch `kill_at` of this process."""

    kill_at = 0

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        self.ids = getattr(self, "ids", []) + [tuple(batch.id)]
        if len(self.ids) == self.kill_at:
            raise KeyboardInterrupt


def toy_sampler_run(folder, kill_at: int = 0) -> list:
    dataset = make_dataset(n_items=30)
    for item in dataset.data.values():
        item["duration"] = len(item["x"]) / RATE  # frames as "samples"
    brain = make_brain(
        folder, brain_class=RecordingBrain, run_opts={"ckpt_interval_steps": 1, "grad_accumulation_factor": 2}
    )
    brain.kill_at = kill_at
    s = DurationBatchSampler(
        dataset,
        max_batch_samples=24,
        max_batch_items=4,
        bucket_size=8,
        sample_rate=RATE,
        text_key=None,
        data_warmup_steps=2,
        grad_accumulation_factor=2,
        warmup_max_samples=7,
    )
    brain.fit(brain.hparams.epoch_counter, dataset, train_loader_kwargs={"batch_sampler": s})
    return brain.ids


def test_brain_kill_and_resume_gets_the_same_batches(tmp_path):
    whole = toy_sampler_run(tmp_path / "ref")
    assert len(set(whole)) > 1
    kill_at = len(whole) // 2 + 2  # in epoch 2, past the curriculum
    with pytest.raises(KeyboardInterrupt):
        toy_sampler_run(tmp_path / "killed", kill_at=kill_at)
    resumed = toy_sampler_run(tmp_path / "killed")
    # resumed from the last checkpoint (end of an accumulation window of 2) with exactly the remaining batches
    assert len(whole) - kill_at <= len(resumed) <= len(whole) - kill_at + 2
    assert resumed == whole[len(whole) - len(resumed) :]


def test_ddp_ranks_split_one_plan_evenly(monkeypatch):
    """Under DDP every rank plans the same epoch and takes every world_size-th batch; the plan is padded so
    that all ranks run the same number of micro-batches; the curriculum counts every rank's batches."""
    whole = sampler(manifest(61)).batches(1)
    per_rank = []
    for rank in (0, 1, 2):
        monkeypatch.setattr(DurationBatchSampler, "_world", staticmethod(lambda rank=rank: (rank, 3)))
        s = sampler(data_warmup_steps=2, grad_accumulation_factor=2)
        assert s._warmup_batches() == 12
        per_rank.append(sampler(manifest(61)).batches(1))
    assert len({len(b) for b in per_rank}) == 1
    assert len(whole) % 3  # the padding is exercised
    padded = whole + whole[: -len(whole) % 3]
    assert [batch for i in range(len(padded)) for batch in [per_rank[i % 3][i // 3]]] == padded
