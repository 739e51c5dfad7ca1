"""Building the new mixers and initialising them from the attention weights they replace.

`init="attention"` (after "Mamba in the Llama", Wang et al. 2024). Notation: the replaced attention computes
q = W_q h + b_q, k = W_k h + b_k, v = W_v h + b_v and projects its output with W_o (or has no output
projection in the replaced module, as BERT/RoBERTa's `attention.self`: then W_o is taken as the identity and
the host's `attention.output.dense` keeps playing its role). "rows <- W" copies the first n rows (output
features) with n = min(rows of both); rows beyond n keep the mixer's own random initialisation.

- Mamba2 (each direction of BiMamba2): in_proj = [z, x, B, C, dt] rows. x rows <- W_v, B rows (ngroups *
  d_state) <- W_k, C rows <- W_q, each sliced to the first n rows (so with d_state=128, ngroups=1 and head_dim
  64, B and C come from the first two key/query heads); out_proj columns[:n] <- W_o / directions (directions
  = 2 for BiMamba2, whose two outputs are summed). Biases are copied the same way when the mixer has them
  (mamba_ssm's default bias=False drops them). z, dt, conv1d, dt_bias, A_log, D and the norm stay random.
- Mamba (v1): in_proj = [x, z] rows; x rows <- W_v, out_proj columns[:n] <- W_o. Mamba v1 computes B and C
  from the convolved inner sequence through x_proj (d_inner -> dt_rank + 2 * d_state), not from the block
  input, so W_k and W_q have no counterpart and are not copied. Everything else stays random.
- Linformer: query/key/value <- W_q/W_k/W_v (weights and biases) and the output projection <- W_o, for both
  `init` values: these layers keep their role (the CALD reference loads them from the source model). Only the
  sequence projections are new (random, std 1).
"""

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cald_brain.mixers import BiMamba2, LinformerSelfAttention, Mamba, Mamba2
from cald_brain.mixers.linformer import LinformerProjection

Projection = tuple[torch.Tensor, torch.Tensor | None]  # nn.Linear-style (out, in) weight and bias


@dataclass(frozen=True)
class AttentionWeights:
    """The projections of one replaced self-attention (views of its parameters, never modified)."""

    query: Projection
    key: Projection
    value: Projection
    output: Projection | None  # None: the output projection stays outside the replaced module


@dataclass(frozen=True)
class MixerSpec:
    """A mixer choice: whether it sees the whole sequence (bidirectional mixers take the padding mask)."""

    name: str
    bidirectional: bool


INITS = ("random", "attention")

MIXERS = {
    "bimamba2": MixerSpec("bimamba2", bidirectional=True),
    "linformer": MixerSpec("linformer", bidirectional=True),
    "mamba2": MixerSpec("mamba2", bidirectional=False),
    "mamba": MixerSpec("mamba", bidirectional=False),
}


class MixerFactory:
    """Builds one mixer per replaced attention; holds what the layers share (Linformer share="layer").

    hidden_size, num_heads: of the source model; linformer_defaults: max_len / dropout taken from the source
    config unless the caller gives them in `mixer_kwargs`.
    """

    def __init__(
        self,
        mixer: str,
        mixer_kwargs: dict[str, Any],
        hidden_size: int,
        num_heads: int,
        linformer_defaults: dict[str, Any],
    ) -> None:
        self.mixer = mixer
        self.hidden_size = hidden_size
        self.kwargs = dict(mixer_kwargs)
        if mixer == "linformer":
            self.kwargs = {**linformer_defaults, **self.kwargs, "num_heads": num_heads}
            if self.kwargs.get("max_len") is None:
                raise ValueError(
                    "mixer='linformer' needs max_len= (the most frames/tokens one input may have); this "
                    "model's config gives no default"
                )
            self.shared_projection = (
                LinformerProjection(self.kwargs["max_len"], self.kwargs.get("k", 256))
                if self.kwargs.get("share") == "layer"
                else None
            )

    def __call__(self) -> nn.Module:
        if self.mixer == "bimamba2":
            return BiMamba2(self.hidden_size, **self.kwargs)
        if self.mixer == "mamba2":
            return Mamba2(self.hidden_size, **self.kwargs)
        if self.mixer == "mamba":
            return Mamba(self.hidden_size, **self.kwargs)
        return LinformerSelfAttention(
            self.hidden_size, shared_projection=self.shared_projection, **self.kwargs
        )


def linear_weights(linear: nn.Linear) -> Projection:
    return linear.weight, linear.bias


def _copy_rows(dst: torch.Tensor, src: torch.Tensor, scale: float = 1.0) -> int:
    """dst[:n] <- src[:n] * scale with n = min(rows); both have the same trailing shape. Returns elements."""
    n = min(dst.shape[0], src.shape[0])
    dst[:n].copy_(src[:n] * scale)
    return dst[:n].numel()


def _copy_into_rows(linear: nn.Linear, start: int, size: int, src: Projection) -> int:
    """Rows [start, start + size) of a Linear (weight and, when both exist, bias) <- first rows of src."""
    weight, bias = src
    copied = _copy_rows(linear.weight[start : start + size], weight)
    if linear.bias is not None and bias is not None:
        copied += _copy_rows(linear.bias[start : start + size], bias)
    return copied


def _copy_out_proj(linear: nn.Linear, src: Projection | None, scale: float) -> int:
    """out_proj columns[:n] <- W_o[:, :n] * scale (identity when the attention has no output projection)."""
    if src is None:
        eye = torch.eye(linear.out_features, dtype=linear.weight.dtype, device=linear.weight.device)
        src = (eye, None)
    weight, bias = src
    copied = _copy_rows(linear.weight.T, weight.T, scale)
    if linear.bias is not None and bias is not None:
        copied += _copy_rows(linear.bias, bias, scale)
    return copied


def _init_mamba2(mixer: Mamba2, weights: AttentionWeights, directions: int) -> int:
    d_inner, bc = mixer.d_inner, mixer.ngroups * mixer.d_state
    return (
        _copy_into_rows(mixer.in_proj, d_inner, d_inner, weights.value)
        + _copy_into_rows(mixer.in_proj, 2 * d_inner, bc, weights.key)
        + _copy_into_rows(mixer.in_proj, 2 * d_inner + bc, bc, weights.query)
        + _copy_out_proj(mixer.out_proj, weights.output, 1.0 / directions)
    )


def _init_mamba(mixer: Mamba, weights: AttentionWeights) -> int:
    return _copy_into_rows(mixer.in_proj, 0, mixer.d_inner, weights.value) + _copy_out_proj(
        mixer.out_proj, weights.output, 1.0
    )


def _init_linformer(mixer: LinformerSelfAttention, weights: AttentionWeights) -> int:
    return sum(
        _copy_into_rows(layer, 0, layer.out_features, src)
        for layer, src in (
            (mixer.query, weights.query),
            (mixer.key, weights.key),
            (mixer.value, weights.value),
        )
    )


@torch.no_grad()
def init_from_attention(
    mixer: nn.Module, out_proj: nn.Linear | None, weights: AttentionWeights, init: str
) -> int:
    """Copy what the module docstring lists into a new mixer (and its host's out_proj); returns the number
    of elements copied.

    Linformer layers (and `out_proj`, which only Linformer hosts have) are copied for every `init`; Mamba
    mixers only for init="attention".
    """
    copied = 0
    if out_proj is not None:
        copied += _copy_out_proj(out_proj, weights.output, 1.0)
    if isinstance(mixer, LinformerSelfAttention):
        return copied + _init_linformer(mixer, weights)
    if init != "attention":
        return copied
    if isinstance(mixer, BiMamba2):
        return copied + sum(_init_mamba2(m, weights, 2) for m in (mixer.mamba_fwd, mixer.mamba_bwd))
    if isinstance(mixer, Mamba2):
        return copied + _init_mamba2(mixer, weights, 1)
    return copied + _init_mamba(mixer, weights)
