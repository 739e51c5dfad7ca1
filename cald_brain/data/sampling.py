"""Dynamic batches by total duration, bucketed shuffling and the length curriculum of the CALD reference.

The reference (speech/dataloader.py `Feeder`) reads utterances in a shuffled order, takes them in buckets of
`bucket_size`, sorts each bucket by length, packs it greedily into micro-batches (a new batch starts when one
more utterance would make items × longest length exceed `max_batch_samples`, items × longest² exceed
`max_batch_quad_samples`, or the batch exceed `max_batch_items`), and shuffles the batches of the bucket.
During the first `data_warmup_steps` optimizer steps it skips utterances longer than `warmup_max_samples`
(10 s) or shorter than `warmup_min_samples`, and those whose transcript has at most `warmup_text_longer_than`
characters; afterwards nothing is skipped.

`DurationBatchSampler` does the same as a batch sampler for SpeechBrain's `make_dataloader`
(`batch_sampler` in the loader kwargs). SpeechBrain's `DynamicBatchSampler` is not enough: it has no
curriculum and no quadratic limit, packs by length buckets rather than the reference's shuffled buckets, and
without DDP SpeechBrain calls its `set_epoch` only if the recipe sets `brain.train_sampler` (otherwise every
epoch repeats the same batches).

Resume: the batches of epoch e are a pure function of the settings, the dataset and e (the curriculum phase
of a bucket is decided by the number of micro-batches planned before it, counted from epoch 1), so nothing
needs saving. SpeechBrain's epoch counter gives e (CALDBrain calls `set_epoch`) and its SaveableDataLoader
skips the micro-batches already done in that epoch: a resumed run gets exactly the remaining batches.
"""

from collections.abc import Iterator

import numpy as np
import torch.distributed as dist
from torch.utils.data import Sampler


class DurationBatchSampler(Sampler[list[int]]):
    """Batches of dataset indices under total-duration limits, bucketed shuffling and a length curriculum.

    Args:
        dataset: a SpeechBrain DynamicItemDataset (indices refer to its `data_ids`).
        max_batch_samples: most audio samples in a micro-batch, counted padded (items × longest).
        max_batch_items: most utterances in a micro-batch.
        max_batch_quad_samples: most items × longest² (bounds attention cost); None: no such limit.
        bucket_size: utterances sorted and packed together (reference 1024).
        shuffle: shuffle the utterances (anew each epoch) and the batches within each bucket.
        seed: base seed; epoch e uses (seed, e).
        sample_rate: to turn `duration_key` (seconds) into samples.
        duration_key, text_key: manifest keys of the duration and the transcript (text_key None: no text
            criterion).
        data_warmup_steps: optimizer steps of the curriculum (0: none). It is counted in micro-batches,
            data_warmup_steps × grad_accumulation_factor × world size, so an accumulation window cut short at
            an epoch's end or a skipped non-finite step shifts it by a few micro-batches.
        warmup_max_samples, warmup_min_samples: lengths kept during the curriculum (None: no bound).
        warmup_text_longer_than: during the curriculum keep only transcripts longer than this (None: all).

    Epochs count from 1 (SpeechBrain's EpochCounter); `set_epoch(e)` selects epoch e and a finished iteration
    moves to the next epoch. Under DDP (torch.distributed initialised) every rank plans the same epoch and
    takes every world_size-th batch (the plan is padded by repeating its first batches so that all ranks get
    the same number); CALDBrain passes this sampler to the DataLoader unwrapped (`shards_itself`).
    """

    shards_itself = True  # CALDBrain's batch-sampler protocol: used unwrapped, set_epoch called every epoch

    def __init__(
        self,
        dataset,
        max_batch_samples: float,
        max_batch_items: int,
        max_batch_quad_samples: float | None = None,
        bucket_size: int = 1024,
        shuffle: bool = True,
        seed: int = 0,
        sample_rate: int = 16000,
        duration_key: str = "duration",
        text_key: str | None = "wrd",
        data_warmup_steps: int = 0,
        grad_accumulation_factor: int = 1,
        warmup_max_samples: float | None = 160000,
        warmup_min_samples: float | None = None,
        warmup_text_longer_than: int | None = 2,
    ):
        if max_batch_samples <= 0 or max_batch_items < 1 or bucket_size < 1:
            raise ValueError(
                "DurationBatchSampler needs max_batch_samples > 0, max_batch_items >= 1 and "
                f"bucket_size >= 1; got {max_batch_samples}, {max_batch_items}, {bucket_size}"
            )
        if data_warmup_steps < 0 or grad_accumulation_factor < 1:
            raise ValueError(
                "DurationBatchSampler needs data_warmup_steps >= 0 and grad_accumulation_factor >= 1; got "
                f"{data_warmup_steps}, {grad_accumulation_factor}"
            )
        ids = list(dataset.data_ids)
        if not ids:
            raise ValueError("DurationBatchSampler got an empty dataset")
        missing = [
            key for key in (duration_key, text_key) if key is not None and key not in dataset.data[ids[0]]
        ]
        if missing:
            raise KeyError(
                f"DurationBatchSampler: the manifest has no {', '.join(missing)} (keys: "
                f"{', '.join(dataset.data[ids[0]])}); set duration_key / text_key"
            )
        self.lengths = np.array([round(float(dataset.data[i][duration_key]) * sample_rate) for i in ids])
        self.text_lengths = (
            None if text_key is None else np.array([len(str(dataset.data[i][text_key])) for i in ids])
        )
        self.max_batch_samples, self.max_batch_items = float(max_batch_samples), int(max_batch_items)
        self.max_batch_quad_samples = (
            None if max_batch_quad_samples is None else float(max_batch_quad_samples)
        )
        self.bucket_size, self.shuffle, self.seed = int(bucket_size), bool(shuffle), int(seed)
        self.data_warmup_steps, self.grad_accumulation_factor = (
            int(data_warmup_steps),
            int(grad_accumulation_factor),
        )
        self.warmup_max_samples, self.warmup_min_samples = warmup_max_samples, warmup_min_samples
        self.warmup_text_longer_than = warmup_text_longer_than
        self.epoch = 1
        self._starts = {1: 0}  # epoch -> micro-batches planned in the epochs before it
        self._plan: tuple[int, list[list[int]]] | None = None  # (epoch, its batches)

    # --- the plan -----------------------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Select epoch `epoch` (>= 1) for the next iteration."""
        if epoch < 1:
            raise ValueError(f"DurationBatchSampler epochs count from 1, got {epoch}")
        self.epoch = int(epoch)

    @staticmethod
    def _world() -> tuple[int, int]:
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def _warmup_batches(self) -> int:
        return self.data_warmup_steps * self.grad_accumulation_factor * self._world()[1]

    def _keep_in_warmup(self, index: int) -> bool:
        length = self.lengths[index]
        if self.warmup_max_samples is not None and length > self.warmup_max_samples:
            return False
        if self.warmup_min_samples is not None and length < self.warmup_min_samples:
            return False
        if self.warmup_text_longer_than is not None and self.text_lengths is not None:
            return bool(self.text_lengths[index] > self.warmup_text_longer_than)
        return True

    def _pack(self, bucket: list[int]) -> list[list[int]]:
        """Greedy packing of a bucket sorted by length (the reference's `_pack_into_batches`)."""
        batches: list[list[int]] = []
        current: list[int] = []
        for index in bucket:
            length = float(self.lengths[index])  # the longest so far: the bucket is sorted
            items = len(current) + 1
            full = (
                items > self.max_batch_items
                or items * length > self.max_batch_samples
                or (
                    self.max_batch_quad_samples is not None
                    and items * length * length > self.max_batch_quad_samples
                )
            )
            if full and current:
                batches.append(current)
                current = []
            current.append(index)
        if current:
            batches.append(current)
        return batches

    def _plan_epoch(self, epoch: int, start: int) -> list[list[int]]:
        """All micro-batches of `epoch` (every rank's), given `start` micro-batches planned before it."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.lengths)) if self.shuffle else np.arange(len(self.lengths))
        warmup = self._warmup_batches()
        batches: list[list[int]] = []
        position = 0
        while position < len(order):
            in_warmup = start + len(batches) < warmup
            bucket: list[int] = []
            while position < len(order) and len(bucket) < self.bucket_size:
                index = int(order[position])
                position += 1
                if not in_warmup or self._keep_in_warmup(index):
                    bucket.append(index)
            bucket.sort(key=lambda i: self.lengths[i])  # stable: ties keep the shuffled order
            packed = self._pack(bucket)
            if self.shuffle:
                packed = [packed[i] for i in rng.permutation(len(packed))]
            batches += packed
        return batches

    def _start(self, epoch: int) -> int:
        known = max(e for e in self._starts if e <= epoch)
        while known < epoch:
            self._starts[known + 1] = self._starts[known] + len(self._plan_epoch(known, self._starts[known]))
            known += 1
        return self._starts[epoch]

    def batches(self, epoch: int | None = None) -> list[list[int]]:
        """This rank's micro-batches of `epoch` (default: the selected one)."""
        epoch = self.epoch if epoch is None else epoch
        if self._plan is None or self._plan[0] != epoch:
            self._plan = (epoch, self._plan_epoch(epoch, self._start(epoch)))
        plan = self._plan[1]
        rank, world = self._world()
        if world > 1:
            plan = plan + plan[: -len(plan) % world]
            plan = plan[rank::world]
        return plan

    def in_warmup(self, epoch: int | None = None) -> bool:
        """Whether the curriculum still filters at the start of `epoch` (default: the selected one)."""
        return self._start(self.epoch if epoch is None else epoch) < self._warmup_batches()

    # --- Sampler ------------------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.batches()
        self.epoch += 1

    def __len__(self) -> int:
        return len(self.batches())
