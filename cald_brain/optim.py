"""Optimizer parameter groups and the reference learning-rate schedules.

- `param_groups`: groups with their own learning rates, chosen by parameter-name prefix. Fine-tuning a
  pretrained encoder with a freshly initialised task head wants two learning rates (SpeechBrain's wav2vec2
  recipes use two optimizers for this): `lr_by_prefix: {head: 0.01}` gives every parameter whose name starts
  with `head` (names as in the network's `named_parameters()`) that learning rate; the rest keeps the
  optimizer's. With `weight_decay` set, every group is further split into a decayed part and a part without
  decay (biases and the weights of modules named in `no_decay_modules`), as the CALD reference does.
- `WarmupExpDecay`: the CALD reference's step-wise schedule (linear warm-up from 0, optional plateau,
  exponential decay to a final fraction of the peak, then flat), a torch LR scheduler whose state dict
  resumes it exactly; `WarmupLinearDecay` (text recipes) and `WarmupCosine` (LM recipe) likewise.
"""

import math
from collections.abc import Iterable

import torch

NO_DECAY_MODULES = ("layer_norm",)


def decays(name: str, no_decay_modules: Iterable[str] = NO_DECAY_MODULES) -> bool:
    """Whether parameter `name` gets weight decay: not a bias, and not a parameter of a module whose own name
    (the component before the parameter's) is in `no_decay_modules`. The reference's rule
    (speech/models/model.py `is_weight_decayed`) is the default: it excludes `...layer_norm.weight` but not
    e.g. wav2vec2's `final_layer_norm.weight`."""
    parts = name.split(".")
    if parts[-1] == "bias":
        return False
    return not (len(parts) > 1 and parts[-2] in set(no_decay_modules))


def param_groups(
    named_parameters: Iterable[tuple[str, torch.nn.Parameter]],
    lr_by_prefix: dict[str, float] | None,
    weight_decay: float | None = None,
    no_decay_modules: Iterable[str] = NO_DECAY_MODULES,
) -> list[dict]:
    """Split trainable parameters into optimizer groups.

    The first group holds the parameters no prefix matches (it keeps the optimizer's `lr`); then one group
    per prefix with `lr` set. A prefix matches a name equal to it or starting with `prefix + "."`; the longest
    matching prefix wins. A prefix that matches no trainable parameter is an error (a typo would otherwise
    silently train the head at the encoder's rate). With `weight_decay` not None, each of these groups is
    split into `{"weight_decay": weight_decay}` and `{"weight_decay": 0.0}` parts by `decays()` (empty parts
    are left out); without it the optimizer's weight decay applies to every group.
    """
    lr_by_prefix = dict(lr_by_prefix or {})
    no_decay_modules = tuple(no_decay_modules)
    prefixes = sorted(lr_by_prefix, key=len, reverse=True)
    default: list[tuple[str, torch.nn.Parameter]] = []
    grouped: dict[str, list[tuple[str, torch.nn.Parameter]]] = {p: [] for p in prefixes}
    for name, param in named_parameters:
        if not param.requires_grad:
            continue
        match = next((p for p in prefixes if name == p or name.startswith(p + ".")), None)
        (grouped[match] if match is not None else default).append((name, param))
    unused = [p for p in prefixes if not grouped[p]]
    if unused:
        raise ValueError(
            f"lr_by_prefix: no trainable parameter name starts with {', '.join(map(repr, unused))}; "
            "use module paths of the network, e.g. 'head' or 'encoder.model.encoder.layers.0'"
        )
    by_lr = [({}, default)] if default else []
    by_lr += [({"lr": float(lr_by_prefix[p])}, grouped[p]) for p in prefixes]
    groups = []
    for options, named in by_lr:
        if weight_decay is None:
            groups.append({"params": [p for _, p in named], **options})
            continue
        for decayed, wd in ((True, float(weight_decay)), (False, 0.0)):
            params = [p for n, p in named if decays(n, no_decay_modules) == decayed]
            if params:
                groups.append({"params": params, **options, "weight_decay": wd})
    return groups


def warmup_exp_decay_factor(
    step: int, warmup_steps: int, decay_steps: int, final_lr_ratio: float, plateau_steps: int = 0
) -> float:
    """Learning-rate factor (of the peak) after `step` optimizer steps (speech/models/model.py
    `learning_rate_schedule`, decay_type 'exp', min_lr 0): step / warmup_steps during the warm-up, 1 on the
    plateau, final_lr_ratio ** ((step - warmup - plateau) / decay_steps) during the decay, then
    final_lr_ratio."""
    if step < warmup_steps:
        return step / warmup_steps
    decay_start = warmup_steps + plateau_steps
    if step <= decay_start:
        return 1.0
    if step < decay_start + decay_steps:
        return math.exp(-(step - decay_start) * math.log(1.0 / final_lr_ratio) / decay_steps)
    return final_lr_ratio


class WarmupExpDecay(torch.optim.lr_scheduler.LRScheduler):
    """The reference schedule as a step-wise scheduler: every group's lr is its initial (peak) lr times
    `warmup_exp_decay_factor(t)`, t = optimizer steps done (`step()` is called after each optimizer step, so
    the first step runs at lr 0 like the reference's LambdaLR). Reference values: warmup_steps 5000,
    decay_steps 75000, final_lr_ratio 1.5e-6 / 3e-4 = 0.005, plateau_steps 0.

    YAML: `lr_scheduler: !name:cald_brain.optim.WarmupExpDecay` with the keyword arguments (the Brain calls
    it with the optimizer). Its state dict (SpeechBrain checkpoints it as `lr_scheduler`) holds the step.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        warmup_steps: int,
        decay_steps: int,
        final_lr_ratio: float,
        plateau_steps: int = 0,
        last_epoch: int = -1,
    ):
        if warmup_steps < 0 or decay_steps <= 0 or plateau_steps < 0:
            raise ValueError(
                f"WarmupExpDecay needs warmup_steps >= 0, decay_steps > 0, plateau_steps >= 0; got "
                f"{warmup_steps}, {decay_steps}, {plateau_steps}"
            )
        if not 0.0 < final_lr_ratio <= 1.0:
            raise ValueError(f"WarmupExpDecay final_lr_ratio must be in (0, 1], got {final_lr_ratio}")
        self.warmup_steps, self.decay_steps = int(warmup_steps), int(decay_steps)
        self.plateau_steps, self.final_lr_ratio = int(plateau_steps), float(final_lr_ratio)
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        return warmup_exp_decay_factor(
            step, self.warmup_steps, self.decay_steps, self.final_lr_ratio, self.plateau_steps
        )

    def get_lr(self) -> list[float]:
        return [base * self.factor(self.last_epoch) for base in self.base_lrs]


class WarmupLinearDecay(torch.optim.lr_scheduler.LRScheduler):
    """Linear warm-up from 0, then linear decay to 0 at `total_steps` (Hugging Face's
    `get_scheduler("linear")`, the CALD reference's nlp/ schedule). Stepped after each optimizer step.

    The warm-up is `warmup_steps`, or `warmup_fraction` of `total_steps` (rounded): the reference README's
    per-task warm-ups (1964 / 6823 / 1263 / 469 for QNLI / QQP / SST-2 / IMDB) are 6 % of 10 epochs at batch
    32. `total_steps` depends on the data, so a recipe usually leaves it out of the YAML
    (`!name:cald_brain.optim.WarmupLinearDecay {warmup_fraction: 0.06}`) and binds it once the train loader
    exists (CALDBrain.on_fit_start does).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_steps: int,
        warmup_steps: int | None = None,
        warmup_fraction: float | None = None,
        last_epoch: int = -1,
    ):
        if (warmup_steps is None) == (warmup_fraction is None):
            raise ValueError("WarmupLinearDecay needs exactly one of warmup_steps and warmup_fraction")
        if warmup_fraction is not None:
            if not 0.0 <= warmup_fraction < 1.0:
                raise ValueError(
                    f"WarmupLinearDecay warmup_fraction must be in [0, 1), got {warmup_fraction}"
                )
            warmup_steps = round(warmup_fraction * total_steps)
        if warmup_steps < 0 or total_steps <= 0:
            raise ValueError(
                "WarmupLinearDecay needs warmup_steps >= 0 and total_steps > 0; "
                f"got {warmup_steps}, {total_steps}"
            )
        self.warmup_steps, self.total_steps = int(warmup_steps), int(total_steps)
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return step / self.warmup_steps
        return max(0.0, (self.total_steps - step) / max(1, self.total_steps - self.warmup_steps))

    def get_lr(self) -> list[float]:
        return [base * self.factor(self.last_epoch) for base in self.base_lrs]


# Warm-up + cosine with a floor, as the CALD reference's LM runs use it
# (lm/open_instruct/retrain_mamba_distill.py: transformers' get_scheduler("cosine") over lr_decay_steps with
# num_warmup_steps = int(lr_decay_steps * warmup_ratio), every factor raised to min_lr / lr, and min_lr / lr
# once lr_decay_steps have passed).


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

    YAML: `lr_scheduler: !name:cald_brain.optim.WarmupCosine` with the keyword arguments.
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
