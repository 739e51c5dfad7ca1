"""LayerDrop that keeps every hidden state: a skipped layer passes its input on, and its slot in the hidden
states holds that input, so teacher and student always return N + 1 states that pair index by index.

Under transformers 5 the models' own LayerDrop leaves no hidden state for a skipped layer (layerwise
distillation then sees a depth mismatch); under transformers 4, which the CALD reference ran, the slot held
the layer's input. `install_layerdrop` turns the model's own LayerDrop off and applies this one instead,
with the same probability.
"""

from typing import Any

import torch
from torch import nn


class LayerDrop:
    """Forward hook of one layer: in training, with probability `p`, its output is replaced by its input (the
    hidden states it was given; other outputs, e.g. WavLM's position bias, are kept)."""

    def __init__(self, p: float) -> None:
        if not 0.0 <= p < 1.0:
            raise ValueError(f"layerdrop must be in [0, 1), got {p}")
        self.p = p

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> Any:
        if not module.training or torch.rand([]) >= self.p:
            return None  # keep the layer's output
        hidden_in = args[0] if args else kwargs["hidden_states"]
        return (hidden_in, *output[1:]) if isinstance(output, tuple) else hidden_in


def install_layerdrop(config: Any, layers: nn.ModuleList) -> float:
    """Move the model's LayerDrop (`config.layerdrop`) onto `layers` as `LayerDrop` hooks, run before any
    other forward hook (so hidden-state recorders see the passed-on input); returns the probability."""
    p = float(getattr(config, "layerdrop", 0.0) or 0.0)
    if p > 0.0:
        config.layerdrop = 0.0
        for layer in layers:
            layer.register_forward_hook(LayerDrop(p), prepend=True, with_kwargs=True)
    return p
