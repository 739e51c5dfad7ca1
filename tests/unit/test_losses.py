"""Distillation losses vs straightforward per-item / per-frame reference loops."""

from types import SimpleNamespace

import pytest
import speechbrain as sb
import torch
import torch.nn.functional as F
from speechbrain.dataio.batch import PaddedBatch
from toy_task import ToyNet, make_brain, make_dataset

from cald_brain.distill.guidance import StepPlan
from cald_brain.distill.losses import (
    DistillLossConfig,
    distill_scale_factor,
    layerwise_distillation_loss,
    logit_distillation_loss,
    normalize_hidden,
)
from cald_brain.mixers.masking import lengths_to_mask

B, T, D, V = 3, 7, 8, 5
LENGTHS = torch.tensor([7, 4, 2])


def hidden_pair(seed: int = 0, n: int = 4) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    gen = torch.Generator().manual_seed(seed)
    student = tuple(torch.randn(B, T, D, generator=gen) for _ in range(n))
    teacher = tuple(torch.randn(B, T, D, generator=gen) * 2 + 1 for _ in range(n))
    return student, teacher


def reference_norm(x: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-frame normalisation written out element by element."""
    if norm == "none":
        return x
    if norm == "layernorm":
        centred = x - x.mean(-1, keepdim=True)
        return centred / torch.sqrt((centred**2).mean(-1, keepdim=True) + 1e-5)
    return x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-5)


def reference_layer_loss(s, t, lengths, norm, reduction):
    """One layer: loop over items and valid frames."""
    per_item, frames = [], []
    for b in range(s.shape[0]):
        n = int(lengths[b])
        err = ((reference_norm(s[b, :n], norm) - reference_norm(t[b, :n], norm)) ** 2).mean(-1)
        per_item.append(err.mean())
        frames.append(err)
    if reduction == "frame":
        return torch.cat(frames).mean()
    return torch.stack(per_item).mean()


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm", "none"])
@pytest.mark.parametrize("reduction", ["frame", "utterance"])
def test_layerwise_matches_reference(norm, reduction):
    student, teacher = hidden_pair()
    mask = lengths_to_mask(LENGTHS, T)
    total, per_layer = layerwise_distillation_loss(student, teacher, mask, norm, reduction)
    assert sorted(per_layer) == [1, 2, 3]  # index 0 (embeddings) skipped
    expected = {i: reference_layer_loss(student[i], teacher[i], LENGTHS, norm, reduction) for i in (1, 2, 3)}
    for i in per_layer:
        torch.testing.assert_close(per_layer[i], expected[i])
    torch.testing.assert_close(total, torch.stack(list(expected.values())).mean())


def test_frame_and_utterance_reductions_differ_with_unequal_lengths():
    student, teacher = hidden_pair()
    mask = lengths_to_mask(LENGTHS, T)
    frame, _ = layerwise_distillation_loss(student, teacher, mask, reduction="frame")
    utt, _ = layerwise_distillation_loss(student, teacher, mask, reduction="utterance")
    assert not torch.allclose(frame, utt)


def test_padding_does_not_change_value_or_gradient():
    student, teacher = hidden_pair()
    mask = lengths_to_mask(LENGTHS, T)
    garbage_s = tuple(torch.where(mask[..., None], s, torch.full_like(s, float("nan"))) for s in student)
    garbage_t = tuple(torch.where(mask[..., None], t, torch.full_like(t, 1e4)) for t in teacher)
    for reduction in ("frame", "utterance"):
        leaves = [s.clone().requires_grad_() for s in garbage_s]
        total, _ = layerwise_distillation_loss(tuple(leaves), garbage_t, mask, reduction=reduction)
        clean, _ = layerwise_distillation_loss(student, teacher, mask, reduction=reduction)
        torch.testing.assert_close(total, clean)
        total.backward()
        for leaf in leaves[1:]:
            assert torch.isfinite(leaf.grad).all()
            assert (leaf.grad[~mask] == 0).all()


def test_no_mask_equals_full_mask_and_plain_mse():
    student, teacher = hidden_pair()
    full = torch.ones(B, T, dtype=torch.bool)
    no_mask, _ = layerwise_distillation_loss(student, teacher, None, norm="none")
    with_mask, _ = layerwise_distillation_loss(student, teacher, full, norm="none")
    plain = torch.stack([F.mse_loss(student[i], teacher[i]) for i in (1, 2, 3)]).mean()
    torch.testing.assert_close(no_mask, plain)
    torch.testing.assert_close(with_mask, plain)


def test_pairing_options():
    student, teacher = hidden_pair(n=5)
    _, layers = layerwise_distillation_loss(student, teacher, skip_last=True)
    assert sorted(layers) == [1, 2, 3]
    _, layers = layerwise_distillation_loss(student, teacher, skip_first=False)
    assert sorted(layers) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="no hidden state left"):
        layerwise_distillation_loss(student[:2], teacher[:2], skip_last=True)


def test_zero_when_equal_and_gradient_only_to_student():
    student, _ = hidden_pair()
    leaves = tuple(s.clone().requires_grad_() for s in student)
    teacher = tuple(s.clone().requires_grad_() for s in student)
    total, _ = layerwise_distillation_loss(leaves, teacher, lengths_to_mask(LENGTHS, T))
    assert total.item() == 0.0
    (total + (leaves[1] - 1).pow(2).sum()).backward()
    assert all(t.grad is None for t in teacher)
    assert leaves[1].grad is not None


def test_mismatch_errors_name_both_sides():
    student, teacher = hidden_pair(n=4)
    with pytest.raises(ValueError, match=r"student returns 4 hidden states.*teacher returns 3"):
        layerwise_distillation_loss(student, teacher[:3])
    wide = tuple(torch.randn(B, T, D + 2) for _ in range(4))
    with pytest.raises(ValueError, match=rf"student \({B}, {T}, {D}\), teacher \({B}, {T}, {D + 2}\)"):
        layerwise_distillation_loss(student, wide)


def test_normalize_hidden_and_bad_options():
    x = torch.randn(2, 3, D) * 5 + 3
    ln = normalize_hidden(x, "layernorm")
    torch.testing.assert_close(ln.mean(-1), torch.zeros(2, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        normalize_hidden(x, "rmsnorm").pow(2).mean(-1), torch.ones(2, 3), atol=1e-3, rtol=0
    )
    with pytest.raises(ValueError, match="ld_norm='batchnorm'"):
        normalize_hidden(x, "batchnorm")
    with pytest.raises(ValueError, match="loss_reduction='token'"):
        DistillLossConfig(loss_reduction="token")


def reference_kl(zs, zt, tau):
    p_t = torch.softmax(zt / tau, -1)
    return (p_t * (torch.log(p_t) - torch.log_softmax(zs / tau, -1))).sum(-1)


@pytest.mark.parametrize("reduction", ["frame", "utterance"])
@pytest.mark.parametrize("squared", [False, True])
def test_frame_level_kd_matches_reference(reduction, squared):
    gen = torch.Generator().manual_seed(1)
    zs, zt = torch.randn(B, T, V, generator=gen), torch.randn(B, T, V, generator=gen) * 3
    mask = lengths_to_mask(LENGTHS, T)
    tau = 2.0
    loss = logit_distillation_loss(zs, zt, mask, tau, squared, reduction)
    kl = reference_kl(zs, zt, tau)
    if reduction == "frame":
        expected = torch.cat([kl[b, : LENGTHS[b]] for b in range(B)]).mean()
    else:
        expected = torch.stack([kl[b, : LENGTHS[b]].mean() for b in range(B)]).mean()
    torch.testing.assert_close(loss, expected * (tau**2 if squared else 1.0))
    # torch's own KL on the valid frames agrees
    torch_kl = F.kl_div(F.log_softmax(zs / tau, -1), F.softmax(zt / tau, -1), reduction="none").sum(-1)
    if reduction == "frame":
        torch.testing.assert_close(loss / (tau**2 if squared else 1.0), torch_kl[mask].mean())


def test_kd_padding_invariance_and_classifier_logits():
    gen = torch.Generator().manual_seed(2)
    zs, zt = torch.randn(B, T, V, generator=gen), torch.randn(B, T, V, generator=gen)
    mask = lengths_to_mask(LENGTHS, T)
    noisy_s = torch.where(mask[..., None], zs, torch.full_like(zs, float("inf")))
    torch.testing.assert_close(
        logit_distillation_loss(noisy_s, zt, mask), logit_distillation_loss(zs, zt, mask)
    )
    cs, ct = torch.randn(B, V, generator=gen), torch.randn(B, V, generator=gen)
    torch.testing.assert_close(
        logit_distillation_loss(cs, ct, temperature=1.0), reference_kl(cs, ct, 1.0).mean()
    )
    assert logit_distillation_loss(cs, cs.clone()).abs().item() < 1e-6
    with pytest.raises(ValueError, match="per-item"):
        logit_distillation_loss(cs, ct, mask)


def test_kd_gradient_only_to_student_and_bf16_inputs():
    zs = torch.randn(B, T, V, requires_grad=True)
    zt = torch.randn(B, T, V, requires_grad=True)
    logit_distillation_loss(zs, zt, lengths_to_mask(LENGTHS, T)).backward()
    assert zt.grad is None and zs.grad is not None
    loss = logit_distillation_loss(zs.detach().bfloat16(), zt.detach().bfloat16())
    assert loss.dtype == torch.float32


# --- loss scale over an accumulation window: the reference's normalisation --------------------------------


def reference_window_objective(batches, alpha_ld: float, alpha_kd: float) -> torch.Tensor:
    """speech/models/model.py compute_loss (loss_normalize_type='sample') + train_distill.py over one window:
    each micro-batch adds CTC sums + alpha * distillation sums * (its characters / the window's output
    frames); the summed gradient is divided by the window's characters."""
    window_frames = sum(int(b["mask"].sum()) for b in batches)
    window_chars = sum(b["chars"] for b in batches)
    total = torch.zeros(())
    for b in batches:
        mask = b["mask"][..., None].float()
        layer_sums = [
            F.mse_loss(
                F.layer_norm(t * mask, t.shape[-1:]), F.layer_norm(s * mask, s.shape[-1:]), reduction="none"
            )
            .mean(-1)
            .sum()
            for s, t in zip(b["student"][1:], b["teacher"][1:], strict=True)
        ]
        kl = F.kl_div(
            F.log_softmax(b["student_logits"] / 2, -1),
            F.softmax(b["teacher_logits"] / 2, -1),
            reduction="none",
        ).sum(-1)
        scale = b["chars"] / window_frames
        total = total + b["ctc_sum"]
        total = total + alpha_ld * torch.stack(layer_sums).mean() * scale
        total = total + alpha_kd * (kl * b["mask"]).sum() * scale
    return total / window_chars


def our_window_objective(batches, alpha_ld: float, alpha_kd: float, distill_scale: str) -> torch.Tensor:
    """CALDBrain over one window: the mean over micro-batches of task + scale * (alpha * frame-mean terms)."""
    k = len(batches)
    scale = distill_scale_factor(distill_scale, k)
    total = torch.zeros(())
    for b in batches:
        ld, _ = layerwise_distillation_loss(b["student"], b["teacher"], b["mask"])
        kd = logit_distillation_loss(b["student_logits"], b["teacher_logits"], b["mask"])
        total = total + (b["ctc_sum"] / b["chars"] + scale * (alpha_ld * ld + alpha_kd * kd)) / k
    return total


def window(k: int = 4, seed: int = 0) -> list[dict]:
    """k micro-batches of the same size (B items, lengths LENGTHS, 20 characters each)."""
    batches = []
    for i in range(k):
        student, teacher = hidden_pair(seed + i)
        gen = torch.Generator().manual_seed(100 + seed + i)
        batches.append(
            {
                "student": student,
                "teacher": teacher,
                "student_logits": torch.randn(B, T, V, generator=gen),
                "teacher_logits": torch.randn(B, T, V, generator=gen),
                "mask": lengths_to_mask(LENGTHS, T),
                "chars": 20,
                "ctc_sum": torch.rand((), generator=gen) * 50,
            }
        )
    return batches


def test_default_distill_scale_gives_the_reference_weights_over_an_accumulation_window():
    """alpha_LD 15 / alpha_KD 1 with 4 micro-batches per step (the reference's TED-LIUM distillation runs)
    mean per-frame weights 15/4 and 1/4 relative to a per-character CTC: distill_scale 'accumulation' (the
    default) reproduces that; 'none' would weigh distillation 4 times more."""
    assert DistillLossConfig().distill_scale == "accumulation"
    batches = window(k=4)
    reference = reference_window_objective(batches, 15.0, 1.0)
    torch.testing.assert_close(our_window_objective(batches, 15.0, 1.0, "accumulation"), reference)
    torch.testing.assert_close(our_window_objective(batches, 15.0 / 4, 1.0 / 4, "none"), reference)
    assert our_window_objective(batches, 15.0, 1.0, "none") > reference * 1.5
    with pytest.raises(ValueError, match="distill_scale='window' is not supported"):
        DistillLossConfig(distill_scale="window")


@pytest.mark.parametrize(("distill_scale", "factor"), [("accumulation", 0.25), ("none", 1.0)])
def test_brain_objective_applies_distill_scale(tmp_path, distill_scale, factor):
    data = make_dataset(n_items=4)
    batch = PaddedBatch([data[i] for i in range(4)])
    brain = make_brain(tmp_path, run_opts={"grad_accumulation_factor": 4}, distill_scale=distill_scale)
    student = brain.forward_model(brain.student, batch, sb.Stage.TRAIN)
    teacher = brain.forward_model(ToyNet("attention"), batch, sb.Stage.TRAIN)
    plan = StepPlan(SimpleNamespace(source="teacher"), 1.0, 1.0, 15.0)
    loss, terms = brain._objective(plan, student, teacher, batch)
    torch.testing.assert_close(loss, terms["task"] + factor * (15.0 * terms["ld"] + terms["kd"]))
