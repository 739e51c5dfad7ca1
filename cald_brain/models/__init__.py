"""Model wrappers for recipes: teacher and student built the same way, each returning
`ModelOutputs` (`outputs`) (logits, every hidden state, mask), so a recipe's `forward_model` is a line.

- `speech`: SpeechEncoder + SpeechModel (CTC head, or pooled classifier: mean / statistics / attentive);
- `text`: TextClassifier (sequence classification, single sentences and pairs) and `load_tokenizer`;
- `causal_lm`: CausalLM (decoder + LM head) and `next_token_loss`.
"""

from .causal_lm import CausalLM, next_token_loss
from .loading import load_model
from .outputs import ModelOutputs
from .speech import Pooling, SpeechEncoder, SpeechModel
from .text import TextClassifier, load_tokenizer

__all__ = [
    "CausalLM",
    "Pooling",
    "SpeechEncoder",
    "SpeechModel",
    "TextClassifier",
    "load_model",
    "load_tokenizer",
    "ModelOutputs",
    "next_token_loss",
]
