"""Chunked selective scan vs the naive step-by-step reference: values, last state, gradients, stability."""

import pytest
import torch

from cald_brain.mixers.ops.selective_scan import selective_scan, selective_scan_ref

ARG_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def make_inputs(batch=2, dim=5, d_state=4, length=37, dtype=torch.float64, seed=0) -> dict[str, torch.Tensor]:
    """Random inputs in mamba_ssm's layout; A < 0 as in Mamba (A = -exp(A_log))."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=g, dtype=dtype)).requires_grad_()

    return {
        "u": randn(batch, dim, length),
        "delta": randn(batch, dim, length, scale=0.5),
        "A": (-torch.rand(dim, d_state, generator=g, dtype=dtype) * 3 - 0.1).requires_grad_(),
        "B": randn(batch, d_state, length),
        "C": randn(batch, d_state, length),
        "D": randn(dim),
        "z": randn(batch, dim, length),
        "delta_bias": randn(dim, scale=0.5),
    }


def outputs_and_grads(fn, inputs, **kwargs):
    """Run `fn`, and backpropagate a loss that weighs every output frame and the last state differently."""
    out, last_state = fn(**inputs, return_last_state=True, **kwargs)
    weights = torch.linspace(-1, 2, out.shape[-1], dtype=out.dtype)
    loss = (out * weights).sum() + (last_state**2).sum()
    leaves = [name for name, x in inputs.items() if x is not None and x.requires_grad]
    grads = torch.autograd.grad(loss, [inputs[name] for name in leaves])
    return out, last_state, dict(zip(leaves, grads, strict=True))


def reference_fp64(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The naive reference in fp64 on the same inputs (softplus on)."""
    detached = {name: x.detach().double() for name, x in inputs.items()}
    return selective_scan_ref(**detached, delta_softplus=True)


@pytest.mark.parametrize("length", [1, 7, 16, 37, 50])
@pytest.mark.parametrize("chunk_size", [1, 16, 32])
def test_matches_reference_with_all_options(length, chunk_size):
    inputs = make_inputs(length=length)
    out, last, grads = outputs_and_grads(selective_scan, inputs, delta_softplus=True, chunk_size=chunk_size)
    ref_out, ref_last, ref_grads = outputs_and_grads(selective_scan_ref, inputs, delta_softplus=True)
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(last, ref_last, rtol=1e-10, atol=1e-10)
    assert set(grads) == set(ARG_NAMES)
    for name in ARG_NAMES:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-9, atol=1e-9, msg=name)


def test_matches_reference_without_optional_inputs():
    inputs = make_inputs(length=45)
    inputs.update(D=None, z=None, delta_bias=None)
    out, last, grads = outputs_and_grads(selective_scan, inputs, chunk_size=8)
    ref_out, ref_last, ref_grads = outputs_and_grads(selective_scan_ref, inputs)
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(last, ref_last, rtol=1e-10, atol=1e-10)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-9, atol=1e-9, msg=name)


def test_gradcheck():
    inputs = make_inputs(batch=1, dim=3, d_state=2, length=11)

    def fn(*args):
        return selective_scan(*args, delta_softplus=True, return_last_state=True, chunk_size=4)

    assert torch.autograd.gradcheck(fn, tuple(inputs[name] for name in ARG_NAMES))


def test_low_precision_inputs_are_computed_in_fp32():
    inputs = {name: x.detach() for name, x in make_inputs(length=40).items()}
    half = {name: x.to(torch.bfloat16) for name, x in inputs.items()}
    out, last = selective_scan(**half, delta_softplus=True, return_last_state=True)
    assert out.dtype == torch.bfloat16 and last.dtype == torch.float32
    # Same bf16-rounded inputs, computed exactly: only the final bf16 rounding of the output may differ.
    ref_out, ref_last = selective_scan_ref(
        **{name: x.double() for name, x in half.items()}, delta_softplus=True, return_last_state=True
    )
    torch.testing.assert_close(out.double(), ref_out, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(last.double(), ref_last, rtol=1e-5, atol=1e-5)


def test_long_sequence_is_finite_and_exact():
    """20,000 steps, tiny dims: no overflow or drift, in fp32, against the fp64 reference."""
    inputs = make_inputs(batch=1, dim=2, d_state=2, length=20_000, dtype=torch.float32)
    out, last = selective_scan(**inputs, delta_softplus=True, return_last_state=True)
    assert torch.isfinite(out).all() and torch.isfinite(last).all()
    out.sum().backward()
    assert all(torch.isfinite(x.grad).all() for x in inputs.values())
    ref_out = reference_fp64(inputs)
    torch.testing.assert_close(out.double(), ref_out, rtol=1e-4, atol=1e-4)


def test_huge_decays_do_not_overflow():
    """dt * A of -1e4 per step (cumulated far past fp32's exp range inside one chunk) stays exact."""
    inputs = make_inputs(batch=1, dim=3, d_state=4, length=100, dtype=torch.float32)
    with torch.no_grad():
        inputs["delta"].fill_(1e3)  # softplus(1e3) = 1e3
        inputs["A"].mul_(10)
    out, last = selective_scan(**inputs, delta_softplus=True, return_last_state=True, chunk_size=64)
    assert torch.isfinite(out).all() and torch.isfinite(last).all()
    (out.sum() + last.sum()).backward()
    assert all(torch.isfinite(x.grad).all() for x in inputs.values())
    # Every step forgets the past: h_t = dt u_t B_t exactly.
    ref_out = reference_fp64(inputs)
    torch.testing.assert_close(out.double(), ref_out, rtol=1e-5, atol=1e-3)


def test_chunk_size_does_not_change_the_result():
    inputs = {name: x.detach() for name, x in make_inputs(length=70).items()}
    results = [selective_scan(**inputs, delta_softplus=True, chunk_size=size) for size in (3, 32, 70, 128)]
    for result in results[1:]:
        torch.testing.assert_close(result, results[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("name", "shape"), [("B", (2, 3, 37)), ("delta", (2, 5, 36)), ("D", (4,)), ("A", (5,))]
)
def test_shape_errors_name_the_argument(name, shape):
    inputs = {key: x.detach() for key, x in make_inputs().items()}
    inputs[name] = torch.zeros(shape, dtype=torch.float64)
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        selective_scan(**inputs)
