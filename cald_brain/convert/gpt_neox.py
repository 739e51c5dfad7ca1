"""Causal language models: gpt_neox (Pythia).

Replaced: `layers[i].attention` (fused query_key_value, rotary embedding use, softmax, dense). The block
keeps input_layernorm, post_attention_layernorm, the MLP and its parallel-residual formula; the rotary
embeddings are still computed by the model and passed to the mixer, which ignores them. Mixers are causal,
so right padding never reaches real tokens; the padding mask is only checked (right padding, no packing). The
student has no KV cache: conversion sets `use_cache=False` (config and generation config), and a cache passed
anyway raises. Constant-memory decoding with the mixers' recurrent states: cald_brain.models.generation.

Mamba sizes: the CALD reference (lm/open_instruct/modeling_hybrid_mamba.py `build_gpt_neox_mamba_model`) loads
the config of state-spaces/mamba-2.8b-hf and only then sets hidden_size to the Pythia model's. The inner width
and the time-step rank were derived from mamba-2.8b's hidden size 2560 when that config was built, so every
Pythia student gets intermediate_size 5120 and time_step_rank 160 (Pythia-1B: not 2 × 2048 and 2048 / 16).
`mixer="mamba"` defaults to these (`REFERENCE_MAMBA_SIZES`); pass d_inner= / dt_rank= to change them.
"""

import torch
from torch import nn
from transformers import PreTrainedModel

from .build import AttentionWeights, linear_weights
from .core import Adapter, register_adapter
from .modules import MixerAttention


class CausalMixerAttention(MixerAttention):
    """Called by GPTNeoXLayer as
    attention(hidden, attention_mask=..., layer_past=..., position_embeddings=..., **kwargs)."""

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        layer_past=None,
        **kwargs,
    ) -> tuple[torch.Tensor, None]:
        if layer_past is not None:
            raise ValueError(
                "the converted LM has no KV cache: call it with use_cache=False (Hugging Face's generate() "
                "then re-reads the whole sequence at every step; cald_brain.models.generation.generate "
                "decodes with the mixers' recurrent states)"
            )
        return self.mix(hidden_states, attention_mask), None


REFERENCE_MAMBA_SIZES = {"d_inner": 5120, "dt_rank": 160}  # mamba-2.8b: 2 × 2560 and 2560 / 16


class GPTNeoXAdapter(Adapter):
    model_types = ("gpt_neox",)
    default_mixer = "mamba"
    causal = True
    host_class = CausalMixerAttention

    def attention_sites(self, model: PreTrainedModel) -> list[tuple[nn.Module, str]]:
        return [(layer, "attention") for layer in model.base_model.layers]

    def mixer_defaults(self, mixer: str) -> dict:
        return dict(REFERENCE_MAMBA_SIZES) if mixer == "mamba" else {}

    def attention_weights(self, attention: nn.Module) -> AttentionWeights:
        """query_key_value rows are interleaved per head: [q_h, k_h, v_h] for each head h."""
        heads, head_size = attention.config.num_attention_heads, attention.head_size
        weight, bias = linear_weights(attention.query_key_value)
        weight = weight.view(heads, 3, head_size, weight.shape[-1])
        bias = None if bias is None else bias.view(heads, 3, head_size)

        def part(i: int):
            return (
                weight[:, i].reshape(heads * head_size, -1),
                None if bias is None else bias[:, i].reshape(heads * head_size),
            )

        return AttentionWeights(
            query=part(0), key=part(1), value=part(2), output=linear_weights(attention.dense)
        )

    def prepare(self, model: PreTrainedModel) -> None:
        super().prepare(model)
        model.config.use_cache = False
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.use_cache = False


register_adapter(GPTNeoXAdapter())
