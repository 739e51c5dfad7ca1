"""Model wrappers for recipes: teacher and student built the same way, each returning
`cald_brain.brain.ModelOutputs` (logits, every hidden state, mask), so a recipe's `forward_model` is a line.

- `speech`: SpeechEncoder + SpeechModel (CTC head, or pooled classifier: mean / statistics / attentive);
- `text`: TextClassifier (sequence classification, single sentences and pairs) and its `tokenize`;
- `causal_lm`: CausalLM (decoder + LM head) and `next_token_loss`.
"""

from .causal_lm import CausalLM, next_token_loss
from .loading import load_model
from .speech import Pooling, SpeechEncoder, SpeechModel
from .text import TextClassifier, load_tokenizer, tokenize

__all__ = [
    "CausalLM",
    "Pooling",
    "SpeechEncoder",
    "SpeechModel",
    "TextClassifier",
    "load_model",
    "load_tokenizer",
    "next_token_loss",
    "tokenize",
]
