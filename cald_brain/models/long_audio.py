"""Exact forward pass of one whole recording of any length through a wav2vec2-family encoder (wav2vec2,
HuBERT, data2vec-audio, WavLM; teacher or converted student), in memory linear in the length and small.

A plain forward pass over long audio is dominated by the convolutional feature encoder: 512-channel
activations at 1/5 and 1/10 of the sample rate (about 6 GB for 5 minutes at base width). Here:

- Feature encoder: computed in pieces of whole output frames. Output frame t of the convolution stack (no
  padding) sees exactly the samples [stride t, stride t + field) (`frame_geometry`), so a piece of frames
  [a, b) reads samples [stride a, stride (b - 1) + field) and reproduces them exactly. The layer-norm layout
  (`feat_extract_norm="layer"`, large-lv60) normalises each position over channels: pieces are exact as
  they are. The group-norm layout (base models) normalises each channel of the first layer over the whole
  recording: its per-channel mean and variance come first, from a streaming pass over the first layer, and
  every piece is then normalised with them (exact up to float rounding).
- Waveform normalisation (`do_normalize`): mean and variance from a streaming pass; each piece is
  normalised as it is read, the normalised waveform is never materialised.
- Feature projection (position-wise): applied per piece and written into the one (1, frames, hidden) tensor.
- Encoder: the positional convolution sees the whole sequence. The feed-forward blocks (position-wise) run
  in time pieces, so their 4x-wide intermediate activations never exist for the whole recording. A
  BiMamba2 student's mixers, on the pure-PyTorch path, run each direction piece by piece with the
  convolution and SSM state carried across pieces (`BiMamba2.forward_in_pieces`): the state still spans
  the whole recording, the temporaries one piece. No intermediate hidden state is kept, so what grows with
  the length is a few (frames, hidden) tensors per layer.

The teacher's self-attention is quadratic in time. Through SDPA (transformers' default) its memory stays
linear (fused kernels never build the frames x frames matrix); with eager attention `check_attention_fits`
refuses lengths whose score matrices do not fit in free memory, and names the longest that does.
"""

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from cald_brain.mixers.ops.kernels import use_cuda_kernels

SAMPLE_RATE = 16_000  # every wav2vec2-family checkpoint's input rate
WAV_NORM_EPS = 1e-7  # as in the feature extractor's zero-mean unit-variance normalisation


def conv_output_lengths(config: Any, lengths: torch.Tensor) -> torch.Tensor:
    """Frames the convolutional feature encoder makes of `lengths` samples (config.conv_kernel/conv_stride,
    no padding: floor((n - kernel) / stride) + 1 per layer)."""
    if getattr(config, "add_adapter", False):
        raise ValueError("audio encoders with add_adapter=True are not supported (their frame rate differs)")
    for kernel, stride in zip(config.conv_kernel, config.conv_stride, strict=True):
        lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
    return lengths


def frame_geometry(config: Any) -> tuple[int, int]:
    """(field, stride) in samples of one output frame of the feature encoder: frame t depends on exactly the
    samples [stride t, stride t + field) (400 and 320 for wav2vec2's seven convolutions)."""
    field, stride = 1, 1
    for kernel, step in zip(config.conv_kernel, config.conv_stride, strict=True):
        field += (kernel - 1) * stride
        stride *= step
    return field, stride


class StreamingMoments:
    """Per-channel mean and (biased) variance over the last axis of tensors given piece by piece, combined
    pairwise (Chan et al.), which keeps float32 accurate over millions of positions (no sum of squares)."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None

    def add(self, piece: torch.Tensor) -> None:
        """Account for `piece` (..., positions)."""
        count = piece.shape[-1]
        mean = piece.mean(dim=-1)
        m2 = (piece - mean.unsqueeze(-1)).square_().sum(dim=-1)
        if self.mean is None:
            self.count, self.mean, self.m2 = count, mean, m2
            return
        total = self.count + count
        delta = mean - self.mean
        self.mean = self.mean + delta * (count / total)
        self.m2 = self.m2 + m2 + delta.square() * (self.count * count / total)
        self.count = total

    def variance(self) -> torch.Tensor:
        return self.m2 / self.count


def normalizer(wav: torch.Tensor, piece_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, 1 / std) of a (1, samples) waveform, as the zero-mean unit-variance normalisation uses them."""
    moments = StreamingMoments()
    for piece in wav.split(piece_samples, dim=-1):
        moments.add(piece)
    return moments.mean, (moments.variance() + WAV_NORM_EPS).rsqrt()


class PieceReader:
    """Slices [start, stop) of a (1, samples) waveform, normalised on the fly when `norm` is given."""

    def __init__(self, wav: torch.Tensor, norm: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        self.wav = wav
        self.norm = norm

    def __call__(self, start: int, stop: int) -> torch.Tensor:
        piece = self.wav[:, start:stop]
        if self.norm is not None:
            mean, scale = self.norm
            piece = (piece - mean.unsqueeze(-1)).mul_(scale.unsqueeze(-1))
        return piece.unsqueeze(1)  # (1, 1, samples): the convolutions' channel axis


def first_layer_statistics(
    layer: nn.Module, read: PieceReader, n_samples: int, positions_per_piece: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and variance of the first convolution's output over every position of the whole
    recording (what its GroupNorm normalises with), streamed piece by piece, each position counted once."""
    kernel, stride = layer.conv.kernel_size[0], layer.conv.stride[0]
    positions = (n_samples - kernel) // stride + 1
    moments = StreamingMoments()
    for start in range(0, positions, positions_per_piece):
        stop = min(start + positions_per_piece, positions)
        moments.add(layer.conv(read(stride * start, stride * (stop - 1) + kernel))[0])
    return moments.mean, moments.variance()


def group_norm_layer(layer: nn.Module, stats: tuple[torch.Tensor, torch.Tensor]) -> nn.Module:
    """The first group-norm conv layer as a function of a piece, normalised with whole-recording `stats`."""
    norm = layer.layer_norm
    if norm.num_groups != norm.num_channels:
        raise ValueError(
            f"{type(layer).__name__}: chunking needs one GroupNorm group per channel (wav2vec2's layout), "
            f"got {norm.num_groups} groups for {norm.num_channels} channels"
        )
    mean, var = stats
    scale = (var + norm.eps).rsqrt()
    shift = -mean * scale
    if norm.affine:
        scale, shift = scale * norm.weight, shift * norm.weight + norm.bias

    def forward(piece: torch.Tensor) -> torch.Tensor:
        hidden = layer.conv(piece)
        return layer.activation(hidden.mul_(scale.unsqueeze(-1)).add_(shift.unsqueeze(-1)))

    return forward


def encode_features(
    model: PreTrainedModel, wav: torch.Tensor, normalize: bool, piece_frames: int
) -> torch.Tensor:
    """Feature encoder + feature projection of a (1, samples) waveform, piece by piece: (1, frames, hidden).

    Equal (up to float rounding) to the model's own feature encoder and projection on the whole waveform.
    """
    config = model.config
    field, stride = frame_geometry(config)
    n_samples = wav.shape[-1]
    frames = int(conv_output_lengths(config, torch.tensor(n_samples)))
    if frames < 1:
        raise ValueError(f"the recording has {n_samples} samples; the encoder needs at least {field}")
    read = PieceReader(wav, normalizer(wav, piece_frames * stride) if normalize else None)
    layers = list(model.feature_extractor.conv_layers)
    if config.feat_extract_norm == "group":
        stats = first_layer_statistics(
            layers[0], read, n_samples, piece_frames * stride // layers[0].conv.stride[0]
        )
        layers[0] = group_norm_layer(layers[0], stats)
    hidden = None
    for start in range(0, frames, piece_frames):
        stop = min(start + piece_frames, frames)
        piece = read(stride * start, stride * (stop - 1) + field)
        for layer in layers:
            piece = layer(piece)
        projected = model.feature_projection(piece.transpose(1, 2))
        projected = projected[0] if isinstance(projected, tuple) else projected  # wav2vec2: (hidden, normed)
        if hidden is None:
            hidden = projected.new_empty(1, frames, projected.shape[-1])
        hidden[:, start:stop] = projected
    return hidden


def position_wise_in_pieces(plain: Callable, piece_frames: int) -> Callable:
    """A position-wise (batch, frames, dim) -> (batch, frames, dim') forward run on `piece_frames` frames
    at a time, so that its intermediate activations exist for one piece only."""

    def forward(hidden_states: torch.Tensor) -> torch.Tensor:
        out = None
        for start in range(0, hidden_states.shape[1], piece_frames):
            piece = plain(hidden_states[:, start : start + piece_frames])
            if out is None:
                out = piece.new_empty(*hidden_states.shape[:2], *piece.shape[2:])
            out[:, start : start + piece.shape[1]] = piece
        return out

    return forward


def mixer_in_pieces(mixer: nn.Module, piece_frames: int) -> Callable:
    """A bidirectional mixer's forward on one unpadded sequence, through its `forward_in_pieces` (state
    carried across pieces)."""

    def forward(hidden_states: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is not None:
            raise ValueError("a mixer run in pieces takes one unpadded sequence (mask None)")
        return mixer.forward_in_pieces(hidden_states, piece_frames)

    return forward


@contextmanager
def replaced_forwards(replacements: dict[nn.Module, Callable]) -> Iterator[None]:
    """Within the block, each module's forward is the given function (its class's forward afterwards)."""
    for module, forward in replacements.items():
        module.forward = forward
    try:
        yield
    finally:
        for module in replacements:
            del module.forward


def free_memory_bytes(device: torch.device) -> int:
    """Memory this process could still allocate on `device` (MemAvailable on CPU)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    found = re.search(r"MemAvailable:\s+(\d+) kB", Path("/proc/meminfo").read_text())
    return int(found.group(1)) * 1024 if found else 1 << 62


def check_attention_fits(
    model: PreTrainedModel, frames: int, dtype: torch.dtype, device: torch.device
) -> None:
    """Raise when the model's eager self-attention (frames x frames scores and probabilities per head) would
    not fit in free memory; SDPA and converted students never build those matrices."""
    config = model.config
    if getattr(config, "_attn_implementation", None) != "eager":
        return
    per_frame_squared = 2 * config.num_attention_heads * torch.finfo(dtype).bits // 8
    free = free_memory_bytes(device)
    if per_frame_squared * frames**2 > free:
        longest = int((free / per_frame_squared) ** 0.5)
        _, stride = frame_geometry(config)
        raise MemoryError(
            f"eager self-attention over {frames} frames ({frames * stride / SAMPLE_RATE / 60:.1f} min) needs "
            f"{per_frame_squared * frames**2 / 2**30:.1f} GiB for its score matrices, {free / 2**30:.1f} GiB "
            f"are free: this model holds at most {longest * stride / SAMPLE_RATE / 60:.1f} min in one call. "
            "Load it with attn_implementation='sdpa' (memory linear in the length) or use a converted "
            "student."
        )


def encode_long(
    model: PreTrainedModel, wav: torch.Tensor, normalize: bool, piece_frames: int
) -> torch.Tensor:
    """Last hidden state (1, frames, hidden) of a whole (1, samples) recording, computed as described in the
    module docstring. Inference only: call under torch.no_grad() with the model in eval mode."""
    hidden = encode_features(model, wav, normalize, piece_frames)
    check_attention_fits(model, hidden.shape[1], hidden.dtype, hidden.device)
    replacements = {}
    for layer in model.encoder.layers:
        if hasattr(layer, "feed_forward"):
            replacements[layer.feed_forward] = position_wise_in_pieces(
                layer.feed_forward.forward, piece_frames
            )
        mixer = getattr(layer.attention, "mixer", None)
        if hasattr(mixer, "forward_in_pieces") and use_cuda_kernels(hidden) is None:
            replacements[mixer] = mixer_in_pieces(mixer, piece_frames)
    with replaced_forwards(replacements):
        return model.encoder(hidden, attention_mask=None).last_hidden_state
