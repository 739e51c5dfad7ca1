"""Warm-up + cosine learning-rate schedule with a floor, as the CALD reference's LM runs use it
(lm/open_instruct/retrain_mamba_distill.py: transformers' `get_scheduler("cosine")` over `lr_decay_steps`
with `num_warmup_steps = int(lr_decay_steps * warmup_ratio)`, every factor raised to `min_lr / lr`, and
`min_lr / lr` once `lr_decay_steps` have passed). The speech recipes' schedule is
`cald_brain.optim.WarmupExpDecay`.
"""

import math

import torch


def warmup_cosine_factor(step: int, decay_steps: int, warmup_ratio: float, min_lr_ratio: float) -> float:
    """Learning-rate factor (of the peak) after `step` optimizer steps: linear warm-up from 0 over
    int(decay_steps * warmup_ratio) steps, half a cosine to 0 at `decay_steps`, floored at `min_lr_ratio`
    (and equal to it from `decay_steps` on)."""
    if step >= decay_steps:
        return min_lr_ratio
    warmup = int(decay_steps * warmup_ratio)
    if step < warmup:
        factor = step / max(1, warmup)
    else:
        progress = (step - warmup) / max(1, decay_steps - warmup)
        factor = max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    return max(factor, min_lr_ratio)


class WarmupCosine(torch.optim.lr_scheduler.LRScheduler):
    """`warmup_cosine_factor` as a step-wise scheduler (`step()` after each optimizer step; its state dict,
    checkpointed by SpeechBrain as `lr_scheduler`, holds the step). Reference LM values: decay_steps 12000
    (0.5 % of the Pile) or 24000 (1 %, 2 %), warmup_ratio 0.03, min_lr_ratio 3e-5 / 3e-4 = 0.1.

    YAML: `lr_scheduler: !name:cald_brain.schedules.WarmupCosine` with the keyword arguments.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        decay_steps: int,
        warmup_ratio: float = 0.03,
        min_lr_ratio: float = 0.0,
        last_epoch: int = -1,
    ):
        if decay_steps <= 0 or not 0.0 <= warmup_ratio < 1.0 or not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(
                "WarmupCosine needs decay_steps > 0, 0 <= warmup_ratio < 1, 0 <= min_lr_ratio <= 1; got "
                f"{decay_steps}, {warmup_ratio}, {min_lr_ratio}"
            )
        self.decay_steps, self.warmup_ratio, self.min_lr_ratio = int(decay_steps), warmup_ratio, min_lr_ratio
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        factor = warmup_cosine_factor(self.last_epoch, self.decay_steps, self.warmup_ratio, self.min_lr_ratio)
        return [base * factor for base in self.base_lrs]
