"""Distillation losses of CALD: layerwise (hidden-state) MSE and temperature-scaled logit KL.

Task losses stay in the recipes. Every loss here takes an optional (batch, length) boolean mask (True = real
frame, right padding) and a reduction: `frame` (mean over all valid frames of the batch) or `utterance` (mean
over each item's valid frames, then over items). Values are computed in float32 whatever the input dtype.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cald_brain.models.outputs import is_frame_level

NORMS = ("layernorm", "rmsnorm", "none")
REDUCTIONS = ("frame", "utterance")
DISTILL_SCALES = ("accumulation", "none")


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """Raise a ValueError naming the option when `value` is not one of `choices`."""
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not supported; use one of {', '.join(choices)}")


def normalize_hidden(x: torch.Tensor, norm: str, eps: float = 1e-5) -> torch.Tensor:
    """Parameter-free normalisation over the feature (last) axis: `layernorm`, `rmsnorm` or `none`."""
    check_choice("ld_norm", norm, NORMS)
    if norm == "layernorm":
        return F.layer_norm(x, x.shape[-1:], eps=eps)
    if norm == "rmsnorm":
        return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps)
    return x


def reduce_frames(values: torch.Tensor, mask: torch.Tensor | None, reduction: str) -> torch.Tensor:
    """Reduce per-frame values (batch, length) to a scalar over the valid frames.

    `frame`: sum over valid frames / number of valid frames in the batch. `utterance`: per-item mean over its
    valid frames, then mean over items (an item without valid frames counts as 0).
    """
    check_choice("loss_reduction", reduction, REDUCTIONS)
    if mask is None:
        return values.mean()
    if mask.shape != values.shape:
        raise ValueError(f"mask has shape {tuple(mask.shape)}, expected {tuple(values.shape)}")
    weights = mask.to(values.dtype)
    values = torch.where(mask, values, 0.0)
    if reduction == "frame":
        return values.sum() / weights.sum().clamp(min=1.0)
    per_item = values.sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
    return per_item.mean()


def zero_padding(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Zero the padded frames of (batch, length, ...) so that whatever they hold (even inf/nan) changes
    neither the value nor the gradient of a masked loss."""
    if mask is None:
        return x
    if mask.shape != x.shape[:2]:
        raise ValueError(f"mask has shape {tuple(mask.shape)}, expected {tuple(x.shape[:2])} (batch, length)")
    return torch.where(mask.view(*mask.shape, *([1] * (x.dim() - 2))), x, 0.0)


def distilled_layers(num_hidden: int, skip_first: bool = True, skip_last: bool = False) -> list[int]:
    """Indices of the hidden states to pair: 0..num_hidden-1 without the embeddings and/or the last block."""
    first = 1 if skip_first else 0
    last = num_hidden - 1 if skip_last else num_hidden
    layers = list(range(first, last))
    if not layers:
        raise ValueError(
            f"no hidden state left to distil out of {num_hidden} (ld_skip_first={skip_first}, "
            f"ld_skip_last={skip_last})"
        )
    return layers


def check_hidden_match(
    student_hidden: tuple[torch.Tensor, ...], teacher_hidden: tuple[torch.Tensor, ...]
) -> None:
    """Raise a ValueError naming both shapes when the teacher's hidden states cannot be paired with the
    student's (different number of hidden states, or a different (batch, length, width) at some index)."""
    if len(student_hidden) != len(teacher_hidden):
        raise ValueError(
            f"depth mismatch: student returns {len(student_hidden)} hidden states "
            f"(width {student_hidden[0].shape[-1]}), teacher returns {len(teacher_hidden)} "
            f"(width {teacher_hidden[0].shape[-1]})"
        )
    for i, (s, t) in enumerate(zip(student_hidden, teacher_hidden, strict=True)):
        if s.shape != t.shape:
            raise ValueError(
                f"shape mismatch at hidden state {i}: student {tuple(s.shape)}, teacher {tuple(t.shape)} "
                "(batch, length, width must be equal)"
            )


def layerwise_distillation_loss(
    student_hidden: tuple[torch.Tensor, ...],
    teacher_hidden: tuple[torch.Tensor, ...],
    mask: torch.Tensor | None = None,
    norm: str = "layernorm",
    reduction: str = "frame",
    skip_first: bool = True,
    skip_last: bool = False,
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Masked MSE between normalised paired hidden states (HF `output_hidden_states` tuples).

    The MSE of a frame is the mean over features of the squared difference; frames are reduced by
    `reduce_frames`; the total is the mean over the paired layers. Teacher states are detached.

    Returns:
        (total, per_layer): the scalar loss and {hidden-state index: that layer's loss}.
    """
    check_hidden_match(student_hidden, teacher_hidden)
    per_layer = {}
    for i in distilled_layers(len(student_hidden), skip_first, skip_last):
        s = normalize_hidden(zero_padding(student_hidden[i].float(), mask), norm)
        t = normalize_hidden(zero_padding(teacher_hidden[i].detach().float(), mask), norm)
        per_frame = (s - t).pow(2).mean(dim=-1)
        per_layer[i] = reduce_frames(per_frame, mask, reduction)
    total = torch.stack(list(per_layer.values())).mean()
    return total, per_layer


def logit_distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor | None = None,
    temperature: float = 2.0,
    temperature_squared: bool = False,
    reduction: str = "frame",
) -> torch.Tensor:
    """KL(softmax(z_T/τ) || softmax(z_S/τ)), summed over classes, reduced over frames or items.

    (B, T, V) logits are frame-level (masked with `mask`, reduced by `reduce_frames`); (B, C) logits are per
    item (mean over items, `mask` must be None). Multiplied by τ² only if `temperature_squared`.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"logit shapes differ: student {tuple(student_logits.shape)}, "
            f"teacher {tuple(teacher_logits.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"kd_temperature must be > 0, got {temperature}")
    if student_logits.dim() not in (2, 3):
        raise ValueError(f"logits must be (B, C) or (B, T, V), got shape {tuple(student_logits.shape)}")
    frame_level = is_frame_level(student_logits)
    if not frame_level and mask is not None:
        raise ValueError("per-item (B, C) logits take no frame mask")
    frame_mask = mask if frame_level else None
    student_logits = zero_padding(student_logits.float(), frame_mask)
    teacher_logits = zero_padding(teacher_logits.detach().float(), frame_mask)
    log_p_student = F.log_softmax(student_logits / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=-1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=-1)
    loss = reduce_frames(kl, mask, reduction) if frame_level else kl.mean()
    return loss * temperature**2 if temperature_squared else loss


def distill_scale_factor(distill_scale: str, accumulation: int) -> float:
    """Factor on the LD and KD terms of a micro-batch: 1 / accumulation for `accumulation` (the CALD
    reference's normalisation: it divides the distillation sums of each micro-batch by the output frames of
    the whole accumulation window, so alpha_ld / alpha_kd act per frame divided by the accumulation factor;
    derivation in docs/ENGINE.md), 1 for `none` (alpha_ld / alpha_kd weigh the per-frame means)."""
    check_choice("distill_scale", distill_scale, DISTILL_SCALES)
    return 1.0 / accumulation if distill_scale == "accumulation" else 1.0


@dataclass(frozen=True)
class DistillLossConfig:
    """Top-level YAML keys of the distillation losses (see docs/ENGINE.md)."""

    kd_temperature: float = 2.0
    kd_temperature_squared: bool = False
    ld_norm: str = "layernorm"
    ld_skip_first: bool = True
    ld_skip_last: bool = False
    loss_reduction: str = "frame"
    distill_scale: str = "accumulation"

    def __post_init__(self):
        check_choice("ld_norm", self.ld_norm, NORMS)
        check_choice("loss_reduction", self.loss_reduction, REDUCTIONS)
        check_choice("distill_scale", self.distill_scale, DISTILL_SCALES)
        if self.kd_temperature <= 0:
            raise ValueError(f"kd_temperature must be > 0, got {self.kd_temperature}")
