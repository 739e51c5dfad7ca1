"""Bidirectional text encoders: bert and roberta.

Replaced: `encoder.layer[i].attention.self` (Q/K/V and the softmax); `attention.output` (dense, dropout,
LayerNorm with the residual) is kept and projects the mixer's output as it projected the attention context.
The (batch, tokens) padding mask reaches bidirectional mixers through the CALD mask pass-through of
`modules.py`.
"""

import torch
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel

from .build import AttentionWeights, linear_weights
from .core import Adapter, register_adapter
from .modules import MixerAttention


class TextMixerAttention(MixerAttention):
    """Called by BertAttention / RobertaAttention as
    self(hidden, attention_mask=..., encoder_hidden_states=..., past_key_values=..., **kwargs)."""

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        past_key_values=None,
        **kwargs,
    ) -> tuple[torch.Tensor, None]:
        if encoder_hidden_states is not None or past_key_values is not None:
            raise ValueError("a converted text encoder takes no encoder_hidden_states or past_key_values")
        return self.mix(hidden_states, attention_mask), None


class BertAdapter(Adapter):
    model_types = ("bert", "roberta")
    default_mixer = "linformer"
    owns_output_projection = False
    host_class = TextMixerAttention

    def check(self, config: PreTrainedConfig) -> None:
        if config.is_decoder or config.add_cross_attention:
            raise ValueError(
                f"{config.model_type} with is_decoder/add_cross_attention is not supported: only the "
                "bidirectional encoder is converted"
            )

    def attention_sites(self, model: PreTrainedModel) -> list[tuple[nn.Module, str]]:
        return [(layer.attention, "self") for layer in model.base_model.encoder.layer]

    def attention_weights(self, attention: nn.Module) -> AttentionWeights:
        return AttentionWeights(
            query=linear_weights(attention.query),
            key=linear_weights(attention.key),
            value=linear_weights(attention.value),
            output=None,
        )

    def linformer_defaults(self, config: PreTrainedConfig) -> dict:
        return {"max_len": config.max_position_embeddings, "dropout": config.attention_probs_dropout_prob}


register_adapter(BertAdapter())
