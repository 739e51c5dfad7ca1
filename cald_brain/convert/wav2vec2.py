"""Audio encoders with wav2vec2-style layers: wav2vec2, hubert, data2vec-audio and wavlm.

Replaced: `encoder.layers[i].attention`, the whole attention including its output projection (for WavLM also
its gated relative position bias: `rel_attn_embed` in layer 0, `gru_rel_pos_*` in every layer). The layers
pass a (batch, frames) padding mask (wav2vec2/hubert/data2vec-audio through the CALD mask pass-through of
`modules.py`, WavLM directly), which reaches bidirectional mixers as `mask=`.
"""

import torch
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel

from .build import AttentionWeights, linear_weights
from .core import Adapter, register_adapter
from .modules import MixerAttention


class AudioMixerAttention(MixerAttention):
    """Called by wav2vec2/hubert/data2vec-audio layers as attention(hidden, attention_mask=..., **kwargs)."""

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs
    ) -> tuple[torch.Tensor, None]:
        return self.mix(hidden_states, attention_mask), None


class WavLMMixerAttention(MixerAttention):
    """Called by WavLM layers, which thread `position_bias` from layer to layer: it is passed on unchanged
    (None, as no layer computes one any more)."""

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_bias: torch.Tensor | None = None,
        index: int = 0,
        **kwargs,
    ) -> tuple[torch.Tensor, None, torch.Tensor | None]:
        return self.mix(hidden_states, attention_mask), None, position_bias


class Wav2Vec2Adapter(Adapter):
    model_types = ("wav2vec2", "hubert", "data2vec-audio")
    default_mixer = "bimamba2"
    host_class = AudioMixerAttention

    def attention_sites(self, model: PreTrainedModel) -> list[tuple[nn.Module, str]]:
        return [(layer, "attention") for layer in model.base_model.encoder.layers]

    def attention_weights(self, attention: nn.Module) -> AttentionWeights:
        return AttentionWeights(
            query=linear_weights(attention.q_proj),
            key=linear_weights(attention.k_proj),
            value=linear_weights(attention.v_proj),
            output=linear_weights(attention.out_proj),
        )

    def linformer_defaults(self, config: PreTrainedConfig) -> dict:
        return {"dropout": config.attention_dropout}  # no max_len default: frames depend on the audio length


class WavLMAdapter(Wav2Vec2Adapter):
    model_types = ("wavlm",)
    host_class = WavLMMixerAttention
    uses_mask_interface = False  # WavLM hands its layers the 2-D mask itself


register_adapter(Wav2Vec2Adapter())
register_adapter(WavLMAdapter())
