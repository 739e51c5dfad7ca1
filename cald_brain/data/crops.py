"""Random fixed-length crops of training audio (speaker identification trains on short windows of each
utterance, e.g. 3 s, drawn anew every epoch; evaluation keeps whole utterances)."""

from collections.abc import Callable

import torch


def random_crop(
    signal: torch.Tensor, num_samples: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A window of `num_samples` at a uniformly random start along the last axis; a shorter signal is
    returned whole (batching pads it, and the relative lengths keep the padding out of the model)."""
    if num_samples <= 0:
        raise ValueError(f"crop length must be positive, got {num_samples} samples")
    length = signal.shape[-1]
    if length <= num_samples:
        return signal
    start = int(torch.randint(length - num_samples + 1, (1,), generator=generator))
    return signal[..., start : start + num_samples]


def crop_pipeline(
    seconds: float, sample_rate: int = 16000, takes: str = "sig", provides: str = "sig"
) -> Callable:
    """A SpeechBrain dynamic item that crops `takes` to `seconds` (random start, drawn from torch's global
    generator, which the recipe's seed sets). Add it to the training set only; `provides` defaults to
    replacing `sig`."""
    from speechbrain.utils import data_pipeline

    num_samples = round(seconds * sample_rate)

    @data_pipeline.takes(takes)
    @data_pipeline.provides(provides)
    def crop(signal: torch.Tensor) -> torch.Tensor:
        return random_crop(signal, num_samples)

    return crop
