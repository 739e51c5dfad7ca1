"""The chunked SSD scan against the step-by-step recurrence (a float64 oracle): outputs, states, gradients."""

import pytest
import torch

from cald_brain.mixers.ops.ssd import segsum_exp, ssd_chunked, ssd_reference


def make_inputs(batch, length, nheads, headdim, ngroups, dstate, dtype=torch.float64, dt_scale=0.5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return dict(
        x=torch.randn(batch, length, nheads, headdim, generator=gen, dtype=dtype),
        dt=torch.rand(batch, length, nheads, generator=gen, dtype=dtype) * dt_scale,
        A=-torch.rand(nheads, generator=gen, dtype=dtype) * 4 - 0.1,
        B=torch.randn(batch, length, ngroups, dstate, generator=gen, dtype=dtype),
        C=torch.randn(batch, length, ngroups, dstate, generator=gen, dtype=dtype),
    )


CASES = [
    # (length, chunk, nheads, ngroups): lengths below, at, and not multiples of the chunk; groups > 1.
    (37, 8, 4, 1),
    (50, 16, 6, 3),
    (5, 8, 2, 2),
    (64, 16, 4, 2),
    (1, 4, 2, 1),
]


@pytest.mark.parametrize("length,chunk,nheads,ngroups", CASES)
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("skip", [None, "head", "channel"])
def test_chunked_matches_recurrence(length, chunk, nheads, ngroups, with_state, skip):
    torch.manual_seed(0)
    batch, headdim, dstate = 2, 3, 5
    inputs = make_inputs(batch, length, nheads, headdim, ngroups, dstate)
    D = {
        None: None,
        "head": torch.randn(nheads, dtype=torch.float64),
        "channel": torch.randn(nheads, headdim, dtype=torch.float64),
    }[skip]
    state0 = torch.randn(batch, nheads, headdim, dstate, dtype=torch.float64) if with_state else None
    y, final = ssd_chunked(**inputs, chunk_size=chunk, D=D, initial_state=state0, return_final_state=True)
    y_ref, final_ref = ssd_reference(**inputs, D=D, initial_state=state0, return_final_state=True)
    assert y.shape == inputs["x"].shape and final.shape == (batch, nheads, headdim, dstate)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(final, final_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("length,chunk,ngroups", [(23, 8, 1), (19, 4, 2)])
def test_gradients_match_recurrence(length, chunk, ngroups):
    torch.manual_seed(0)
    batch, nheads, headdim, dstate = 2, 4, 3, 5
    inputs = make_inputs(batch, length, nheads, headdim, ngroups, dstate)
    inputs["D"] = torch.randn(nheads, dtype=torch.float64)
    inputs["initial_state"] = torch.randn(batch, nheads, headdim, dstate, dtype=torch.float64)
    names = list(inputs)
    leaves = [inputs[name].requires_grad_() for name in names]
    y_weight = torch.randn(batch, length, nheads, headdim, dtype=torch.float64)
    s_weight = torch.randn(batch, nheads, headdim, dstate, dtype=torch.float64)

    def loss(fn, **kwargs):
        y, final = fn(**inputs, return_final_state=True, **kwargs)
        return (y * y_weight).sum() + (final * s_weight).sum()

    grads = torch.autograd.grad(loss(ssd_chunked, chunk_size=chunk), leaves)
    grads_ref = torch.autograd.grad(loss(ssd_reference), leaves)
    for name, grad, grad_ref in zip(names, grads, grads_ref, strict=True):
        torch.testing.assert_close(grad, grad_ref, rtol=1e-9, atol=1e-9, msg=lambda m, n=name: f"d/d{n}: {m}")


@pytest.mark.parametrize("skip_shape", [(4,), (4, 3)])
def test_per_item_parameters_equal_separate_calls(skip_shape):
    """A as (batch, 1, nheads) and D as (batch, 1, nheads, 1 | headdim) scan items of different modules at
    once, as separate calls would."""
    first = make_inputs(1, 30, 4, 3, 1, 5, seed=1)
    second = make_inputs(1, 30, 4, 3, 1, 5, seed=2)
    for inputs in (first, second):
        inputs["D"] = torch.randn(skip_shape, dtype=torch.float64)
    stacked = {k: torch.cat([first[k], second[k]]) for k in ("x", "dt", "B", "C")}
    stacked["A"] = torch.stack([first["A"], second["A"]]).unsqueeze(1)
    stacked["D"] = torch.stack([first["D"], second["D"]]).view(2, 1, 4, -1)
    y = ssd_chunked(**stacked, chunk_size=8)
    torch.testing.assert_close(y[:1], ssd_chunked(**first, chunk_size=8), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(y[1:], ssd_chunked(**second, chunk_size=8), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(y, ssd_reference(**stacked), rtol=1e-10, atol=1e-10)


def test_chunk_size_only_changes_rounding_float32():
    inputs = make_inputs(2, 300, 4, 16, 1, 32, dtype=torch.float32, dt_scale=0.1)
    ys = [ssd_chunked(**inputs, chunk_size=chunk) for chunk in (16, 64, 128, 512)]
    for y in ys[1:]:
        torch.testing.assert_close(y, ys[0], rtol=1e-4, atol=1e-4)


def test_float32_close_to_float64_oracle():
    inputs = make_inputs(2, 200, 4, 8, 1, 16, dt_scale=0.2)
    y64 = ssd_reference(**inputs)
    y32 = ssd_chunked(**{k: v.float() for k, v in inputs.items()}, chunk_size=64)
    assert y32.dtype == torch.float32
    torch.testing.assert_close(y32.double(), y64, rtol=1e-4, atol=1e-4)


def test_segsum_exp_values_and_mask():
    dA = torch.tensor([-0.5, -1.0, -2.0], dtype=torch.float64)
    out = segsum_exp(dA)
    expected = torch.tensor(
        [[1.0, torch.e**-1.0, torch.e**-3.0], [0.0, 1.0, torch.e**-2.0], [0.0, 0.0, 1.0]],
        dtype=torch.float64,
    )  # [j, i] = exp(dA[j+1] + ... + dA[i]) for i >= j
    torch.testing.assert_close(out, expected)


def test_huge_decays_stay_finite_with_finite_gradients():
    """dt * A of -1e4 per step: the decays underflow to exactly 0; nothing may become inf or NaN."""
    inputs = make_inputs(1, 40, 2, 3, 1, 4, dtype=torch.float32)
    inputs["dt"] = torch.full_like(inputs["dt"], 1e3)
    inputs["A"] = torch.full_like(inputs["A"], -10.0)
    leaves = [inputs[k].requires_grad_() for k in ("x", "dt", "A", "B", "C")]
    y, final = ssd_chunked(**inputs, chunk_size=16, return_final_state=True)
    assert torch.isfinite(y).all() and torch.isfinite(final).all()
    grads = torch.autograd.grad(y.sum() + final.sum(), leaves)
    assert all(torch.isfinite(g).all() for g in grads)
    # With full decay at every step, the state holds only the current step: y_t = dt_t (C_t . B_t) x_t.
    x, dt, B, C = (inputs[k].detach() for k in ("x", "dt", "B", "C"))
    expected = dt[..., None] * (B * C).sum(-1)[..., None] * x
    torch.testing.assert_close(y.detach(), expected, rtol=1e-5, atol=1e-3)


def test_rejects_mismatched_shapes():
    inputs = make_inputs(2, 10, 4, 3, 1, 5)
    inputs["dt"] = inputs["dt"][:, :9]
    with pytest.raises(ValueError, match="dt has shape"):
        ssd_chunked(**inputs)
    inputs = make_inputs(2, 10, 4, 3, 3, 5)
    with pytest.raises(ValueError, match="ngroups dividing nheads"):
        ssd_chunked(**inputs)
