"""Causal language modelling for CALD recipes (Pile): a pretrained decoder (GPT-NeoX / Pythia; the
teacher) or its linear-time conversion (the student, Mamba by default) with its LM head.

    student: !new:cald_brain.models.CausalLM
        source: EleutherAI/pythia-160m
        mixer: mamba
        mixer_kwargs: {d_state: 16}
"""

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel

from .loading import given_or_loaded
from .outputs import ModelOutputs


def next_token_loss(
    logits: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor | None = None, reduction: str = "mean"
) -> torch.Tensor:
    """Cross-entropy of predicting token t + 1 from the logits at t, over valid targets only (`reduction`
    "mean" or "sum"): the one next-token loss of training, evaluation and tests. `logits` cover either all of
    `input_ids` (the last position predicts nothing and is dropped) or their first T - 1 tokens (what the LM
    task feeds the model); `mask` (B, T) marks the valid tokens of `input_ids` (None: all)."""
    targets = input_ids[:, 1:]
    if mask is not None:
        targets = targets.masked_fill(~mask[:, 1:].bool(), -100)
    logits = logits[:, : targets.shape[1]]
    return F.cross_entropy(
        logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100, reduction=reduction
    )


class CausalLM(nn.Module):
    """Decoder + LM head (`AutoModelForCausalLM`), teacher or student.

    Arguments
    ---------
    source: hub name or local folder of the pretrained decoder, or a built model (head included) used as is.
    mixer, mixer_kwargs, init: the conversion (None: the transformer itself); see cald_brain.convert.
    config_overrides: config attributes set before loading (e.g. hidden_dropout).
    """

    def __init__(
        self,
        source: str | PreTrainedModel,
        mixer: str | None = None,
        mixer_kwargs: dict[str, Any] | None = None,
        init: str = "random",
        config_overrides: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.model = given_or_loaded(
            source, AutoModelForCausalLM, mixer, mixer_kwargs, init, config_overrides
        )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> ModelOutputs:
        """(B, T, V) next-token logits, every hidden state (embeddings first) and the token mask."""
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        mask = None if attention_mask is None else attention_mask.bool()
        return ModelOutputs(out.logits, tuple(out.hidden_states), mask)
