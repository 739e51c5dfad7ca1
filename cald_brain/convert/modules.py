"""The module that stands where a Hugging Face self-attention stood, and how the padding mask reaches it.

Padding mask: encoders built on `transformers.masking_utils` (wav2vec2, hubert, data2vec-audio, bert, roberta,
gpt_neox) turn the 2-D padding mask into a 4-D (batch, 1, length, length) mask chosen by
`config._attn_implementation`. A converted student sets that to `CALD_ATTN_IMPLEMENTATION`, registered
here: its mask function hands the 2-D boolean padding mask (True = real frame) through unchanged, so no
quadratic mask is ever built and the mixer receives exactly the mask the caller gave (or None). WavLM passes
the 2-D mask to its layers directly. The attention function registered under the same name raises: a
converted student has no softmax attention left to call.
"""

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import (
    AttentionMaskInterface,
    bidirectional_mask_function,
    causal_mask_function,
)

from cald_brain.mixers.masking import lengths_to_mask

CALD_ATTN_IMPLEMENTATION = "cald_padding_mask"


def _padding_mask_only(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int = 0,
    kv_offset: int = 0,
    mask_function=None,
    attention_mask: torch.Tensor | None = None,
    **kwargs,
) -> torch.Tensor | None:
    """Mask interface of a converted student: the 2-D boolean padding mask itself (or None: no padding).

    The causal/bidirectional pattern is the mixer's own business. Patterns a mixer cannot honour (packed
    sequences, sliding windows, KV-cache offsets) and left padding raise instead of being dropped silently.
    """
    if mask_function not in (causal_mask_function, bidirectional_mask_function):
        raise ValueError(
            "a converted student only supports plain right-padded batches; this forward asked for a custom "
            "attention pattern (packed sequences via position_ids, sliding window or an extra mask function)"
        )
    if int(q_offset) != 0 or int(kv_offset) != 0 or q_length != kv_length:
        raise ValueError(
            "a converted student has no KV cache: call it on whole sequences with use_cache=False "
            f"(got query offset {q_offset}, key offset {kv_offset}, {q_length} queries for {kv_length} keys)"
        )
    if attention_mask is None:
        return None
    mask = attention_mask.bool()
    exporting = torch.compiler.is_exporting()  # torch.export cannot trace this data-dependent check
    if not exporting and not torch.equal(mask, lengths_to_mask(mask.sum(dim=1), mask.shape[1])):
        raise ValueError("attention_mask must be right-padded: 1 on a prefix of each item, then 0")
    return mask


def _no_softmax_attention(module: nn.Module, *args, **kwargs):
    raise RuntimeError(
        f"{type(module).__name__} asked for softmax attention, but this model was converted by "
        "cald_brain.convert: every self-attention should have been replaced by a mixer"
    )


AttentionMaskInterface.register(CALD_ATTN_IMPLEMENTATION, _padding_mask_only)
AttentionInterface.register(CALD_ATTN_IMPLEMENTATION, _no_softmax_attention)


def padding_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """The (batch, length) boolean padding mask from what a HF layer passes to its attention (2-D or None)."""
    if attention_mask is None:
        return None
    if attention_mask.dim() != 2:
        raise ValueError(
            f"the mixer received a {attention_mask.dim()}-D attention mask; a converted student expects the "
            "2-D padding mask, which it gets when config._attn_implementation == "
            f"{CALD_ATTN_IMPLEMENTATION!r} (set by cald_brain.convert). Do not change the student's "
            "attn_implementation or pass a 4-D mask."
        )
    return attention_mask.bool()


class MixerAttention(nn.Module):
    """A linear-time mixer in the place of a self-attention module.

    mixer: the token mixer, called as mixer(x, mask=...) when `takes_mask` (bidirectional mixers) or mixer(x)
        (causal mixers: right padding cannot reach real frames, so the mask is only checked).
    out_proj: an output projection after the mixer, for mixers that have none of their own (Linformer) when
        the replaced module owned the attention's output projection; None otherwise.
    Subclasses give `forward` the signature and return value their model family's layer expects.
    """

    def __init__(self, mixer: nn.Module, takes_mask: bool, out_proj: nn.Linear | None = None) -> None:
        super().__init__()
        self.mixer = mixer
        self.takes_mask = takes_mask
        self.out_proj = out_proj

    def mix(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        mask = padding_mask(attention_mask)
        out = self.mixer(hidden_states, mask=mask) if self.takes_mask else self.mixer(hidden_states)
        return out if self.out_proj is None else self.out_proj(out)
