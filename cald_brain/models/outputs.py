"""What a network returns to the engine: `ModelOutputs`. Plain PyTorch, no trainer import, so models,
inference and export code can use it without loading SpeechBrain's trainer."""

from dataclasses import dataclass

import torch


@dataclass
class ModelOutputs:
    """What one network (student or teacher) produced for a batch.

    logits: (B, T, V) frame-level (CTC, LM) or (B, C) per item (classifier).
    hidden_states: HF `output_hidden_states` style; index 0 = embeddings / feature projection,
        index i = output of block i; each (B, T, D).
    mask: (B, T) bool, True = valid frame of the hidden states (and of frame-level logits); None = no padding.
    """

    logits: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...]
    mask: torch.Tensor | None = None

    @property
    def frame_level(self) -> bool:
        """True when the logits have one row per frame (B, T, V), which `mask` then covers; False when they
        have one row per item (B, C)."""
        return is_frame_level(self.logits)


def is_frame_level(logits: torch.Tensor) -> bool:
    """(B, T, V) logits are frame-level, (B, C) per item: the one place this is decided."""
    return logits.dim() == 3
