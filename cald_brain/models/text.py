"""Text classification for CALD recipes (GLUE, IMDB): a pretrained encoder (BERT, RoBERTa; the teacher) or
its linear-time conversion (the student, e.g. Linformer) with Hugging Face's sequence-classification head,
for single sentences and sentence pairs.

    student: !new:cald_brain.models.TextClassifier
        source: roberta-base
        num_labels: 2
        mixer: linformer
        mixer_kwargs: {k: 256, max_len: 512}
        config_overrides: {hidden_dropout_prob: 0.1}

Batches come from `cald_brain.data.text.tokenize` (one text, or a pair, per item), so the model and the
data agree on the keys.
"""

from typing import Any

import torch
from torch import nn
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from cald_brain.convert import resolve_source

from .loading import given_or_loaded
from .outputs import ModelOutputs


def load_tokenizer(source: str) -> PreTrainedTokenizerBase:
    """The checkpoint's tokenizer, by the same folder / hub-name rule as the model."""
    return AutoTokenizer.from_pretrained(resolve_source(source))


class TextClassifier(nn.Module):
    """Encoder + sequence-classification head (`AutoModelForSequenceClassification`), teacher or student.

    Arguments
    ---------
    source: hub name or local folder of the pretrained encoder, or a built model (head included) used as is.
    num_labels: classes (1 for regression, e.g. STS-B).
    mixer, mixer_kwargs, init: the conversion (None: the transformer itself); see cald_brain.convert.
    config_overrides: config attributes set before loading (e.g. hidden_dropout_prob).
    """

    def __init__(
        self,
        source: str | PreTrainedModel,
        num_labels: int,
        mixer: str | None = None,
        mixer_kwargs: dict[str, Any] | None = None,
        init: str = "random",
        config_overrides: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(source, PreTrainedModel):
            config_overrides = {**(config_overrides or {}), "num_labels": num_labels}
        self.model = given_or_loaded(
            source, AutoModelForSequenceClassification, mixer, mixer_kwargs, init, config_overrides
        )
        if self.model.config.num_labels != num_labels:
            raise ValueError(f"num_labels is {num_labels}, but the model has {self.model.config.num_labels}")

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> ModelOutputs:
        """(B, C) logits, every hidden state (embeddings first) and the (B, T) token mask."""
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, **extra
        )
        return ModelOutputs(out.logits, tuple(out.hidden_states), attention_mask.bool())
