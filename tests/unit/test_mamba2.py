"""Mamba2: mamba_ssm's parameter layout and initialisation, forward against a plain reference and against
Hugging Face's independent implementation, chunk-size invariance and numerical stability."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from cald_brain.mixers.mamba2 import Mamba2
from cald_brain.mixers.ops.causal_conv import causal_conv1d_silu
from cald_brain.mixers.ops.kernels import cuda_kernels

# Parameter names and shapes of mamba_ssm.modules.mamba2.Mamba2 (2.x), in state_dict order, written out by
# hand from its source: d_inner = expand * d_model, nheads = d_inner / headdim,
# in_proj rows = 2 d_inner + 2 ngroups d_state + nheads, conv channels = d_inner + 2 ngroups d_state.
# fmt: off
LAYOUTS = [
    (
        dict(d_model=768, expand=1),
        [("dt_bias", (12,)), ("A_log", (12,)), ("D", (12,)), ("in_proj.weight", (1804, 768)),
         ("conv1d.weight", (1024, 1, 4)), ("conv1d.bias", (1024,)), ("norm.weight", (768,)),
         ("out_proj.weight", (768, 768))],
    ),
    (
        dict(d_model=256),  # all defaults: expand 2, headdim 64, d_state 128
        [("dt_bias", (8,)), ("A_log", (8,)), ("D", (8,)), ("in_proj.weight", (1288, 256)),
         ("conv1d.weight", (768, 1, 4)), ("conv1d.bias", (768,)), ("norm.weight", (512,)),
         ("out_proj.weight", (256, 512))],
    ),
    (
        dict(d_model=64, d_state=16, d_conv=3, headdim=32, ngroups=2, bias=True, conv_bias=False,
             D_has_hdim=True, rmsnorm=False),
        [("dt_bias", (4,)), ("A_log", (4,)), ("D", (128,)), ("in_proj.weight", (324, 64)),
         ("in_proj.bias", (324,)), ("conv1d.weight", (192, 1, 3)), ("out_proj.weight", (64, 128)),
         ("out_proj.bias", (64,))],
    ),
]
# fmt: on


@pytest.mark.parametrize("kwargs,expected", LAYOUTS)
def test_parameter_names_and_shapes_match_mamba_ssm(kwargs, expected):
    model = Mamba2(**kwargs)
    assert [(name, tuple(t.shape)) for name, t in model.state_dict().items()] == expected


def test_initialisation_matches_mamba_ssm():
    torch.manual_seed(0)
    model = Mamba2(d_model=512, headdim=16, dt_min=0.002, dt_max=0.05)  # 64 heads
    A = torch.exp(model.A_log)
    assert A.min() >= 1 and A.max() <= 16 and A.max() - A.min() > 10  # A = U(1, 16), stored as log
    assert model.D.dtype == torch.float32 and torch.equal(model.D, torch.ones(64))
    dt = F.softplus(model.dt_bias)  # dt_bias is softplus⁻¹ of a log-uniform dt in [dt_min, dt_max]
    assert dt.min() >= 0.002 * (1 - 1e-5) and dt.max() <= 0.05 * (1 + 1e-5)
    assert torch.log(dt).std() > 0.5  # spread over the log range, not constant
    assert torch.equal(model.norm.weight, torch.ones(1024)) and model.norm.bias is None
    assert model.norm.group_size == 1024 and model.norm.eps == 1e-5 and not model.norm.norm_before_gate
    assert all(getattr(p, "_no_weight_decay", False) for p in (model.dt_bias, model.A_log, model.D))
    assert not hasattr(model.in_proj.weight, "_no_weight_decay")
    floored = Mamba2(d_model=64, headdim=16, dt_min=1e-6, dt_max=2e-6, dt_init_floor=1e-4)
    torch.testing.assert_close(F.softplus(floored.dt_bias), torch.full((8,), 1e-4), rtol=1e-3, atol=0)


def reference_forward(m: Mamba2, u: torch.Tensor) -> torch.Tensor:
    """Mamba2 written out plainly with m's parameters: F.conv1d, one step at a time, gated RMSNorm."""
    batch, length, _ = u.shape
    H, P, G, N = m.nheads, m.headdim, m.ngroups, m.d_state
    zxbcdt = F.linear(u, m.in_proj.weight, m.in_proj.bias)
    z, xBC, dt = zxbcdt.split([m.d_inner, m.d_inner + 2 * G * N, H], dim=-1)
    conv = F.conv1d(
        xBC.transpose(1, 2), m.conv1d.weight, m.conv1d.bias, padding=m.d_conv - 1, groups=xBC.shape[-1]
    )
    xBC = F.silu(conv[..., :length].transpose(1, 2))
    x, B, C = xBC.split([m.d_inner, G * N, G * N], dim=-1)
    x = x.view(batch, length, H, P)
    B, C = B.view(batch, length, G, N), C.view(batch, length, G, N)
    dt = F.softplus(dt + m.dt_bias)
    if m.dt_limit != (0.0, math.inf):
        dt = dt.clamp(*m.dt_limit)
    A = -torch.exp(m.A_log)
    D = m.D.view(H, P) if m.D_has_hdim else m.D[:, None]
    group_of_head = torch.arange(H) // (H // G)
    state = u.new_zeros(batch, H, P, N)
    ys = []
    for t in range(length):
        Bt, Ct = B[:, t, group_of_head], C[:, t, group_of_head]  # (batch, H, N)
        state = (
            torch.exp(dt[:, t] * A)[..., None, None] * state
            + (dt[:, t, :, None] * x[:, t])[..., None] * Bt[:, :, None, :]
        )
        ys.append((state * Ct[:, :, None, :]).sum(-1) + D * x[:, t])
    y = torch.stack(ys, dim=1).flatten(2)
    if not m.rmsnorm:
        y = y * F.silu(z)
    else:
        if not m.norm_before_gate:
            y = y * F.silu(z)
        grouped = y.view(batch, length, G, -1)
        rms = torch.sqrt(grouped.pow(2).mean(-1, keepdim=True) + m.norm.eps)
        y = (grouped / rms).flatten(2) * m.norm.weight
        if m.norm_before_gate:
            y = y * F.silu(z)
    return F.linear(y, m.out_proj.weight, m.out_proj.bias)


CONFIGS = [
    dict(d_model=32, d_state=16, headdim=8),
    dict(d_model=32, d_state=8, headdim=8, expand=1, ngroups=2, D_has_hdim=True, bias=True),
    dict(d_model=24, d_state=8, headdim=12, d_conv=3, norm_before_gate=True, conv_bias=False),
    dict(d_model=16, d_state=8, headdim=8, rmsnorm=False, dt_limit=(0.02, 0.05)),
]


@pytest.mark.parametrize("kwargs", CONFIGS)
def test_forward_matches_plain_reference(kwargs):
    torch.manual_seed(0)
    model = Mamba2(**kwargs)
    with torch.no_grad():  # random values where mamba_ssm's init leaves zeros/ones
        model.D.normal_()
        if model.rmsnorm:
            model.norm.weight.uniform_(0.5, 1.5)
    model.cpu_chunk_size = 16
    u = torch.randn(2, 45, kwargs["d_model"])
    model64 = copy.deepcopy(model).double()
    expected = reference_forward(model64, u.double())
    torch.testing.assert_close(model(u).double(), expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model64(u.double()), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kwargs", CONFIGS[:2])
def test_gradients_match_plain_reference(kwargs):
    torch.manual_seed(0)
    model = Mamba2(**kwargs).double()
    model.cpu_chunk_size = 8
    u = torch.randn(2, 21, kwargs["d_model"], dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 21, kwargs["d_model"], dtype=torch.float64)
    leaves = [u, *model.parameters()]
    grads = torch.autograd.grad((model(u) * weight).sum(), leaves)
    expected = torch.autograd.grad((reference_forward(model, u) * weight).sum(), leaves)
    names = ["input"] + [name for name, _ in model.named_parameters()]
    for name, grad, grad_ref in zip(names, grads, expected, strict=True):
        torch.testing.assert_close(grad, grad_ref, rtol=1e-9, atol=1e-9, msg=lambda m, n=name: f"{n}: {m}")


def test_matches_huggingface_mamba2_mixer_with_same_state_dict():
    """transformers' Mamba2Mixer is an independent version of mamba_ssm's Mamba2; weights load as they are."""
    from transformers import Mamba2Config
    from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer

    torch.manual_seed(0)
    ours = Mamba2(d_model=64, d_state=16, headdim=16, ngroups=2, chunk_size=32)
    config = Mamba2Config(
        hidden_size=64,
        num_heads=8,
        head_dim=16,
        n_groups=2,
        state_size=16,
        expand=2,
        conv_kernel=4,
        chunk_size=32,
        layer_norm_epsilon=1e-5,
        use_bias=False,
        use_conv_bias=True,
        num_hidden_layers=1,
    )
    theirs = Mamba2Mixer(config, layer_idx=0).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    u = torch.randn(2, 100, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(u), theirs(u), rtol=1e-4, atol=1e-5)


def test_cpu_chunk_size_does_not_change_results():
    torch.manual_seed(0)
    model = Mamba2(d_model=32, d_state=16, headdim=8)
    u = torch.randn(2, 300, 32)
    outputs = []
    for chunk in (16, 64, 100, 512):
        model.cpu_chunk_size = chunk
        outputs.append(model(u))
    for out in outputs[1:]:
        torch.testing.assert_close(out, outputs[0], rtol=1e-5, atol=1e-5)


def test_long_sequence_stays_finite():
    torch.manual_seed(0)
    model = Mamba2(d_model=16, d_state=8, headdim=8, expand=1)
    model.cpu_chunk_size = 256  # fewer loop steps; stability does not depend on the chunk size
    u = torch.randn(1, 20_000, 16)
    with torch.no_grad():
        out = model(u)
    assert out.shape == u.shape and torch.isfinite(out).all()
    # Causal: the first frames do not depend on the rest of the sequence.
    with torch.no_grad():
        torch.testing.assert_close(out[:, :500], model(u[:, :500]), rtol=1e-4, atol=1e-5)


def test_large_dt_stays_finite_with_finite_gradients():
    torch.manual_seed(0)
    model = Mamba2(d_model=16, d_state=8, headdim=8, A_init_range=(16, 16))
    with torch.no_grad():
        model.dt_bias.fill_(40.0)  # dt ≈ 40, dt * A ≈ -640 per step: every decay underflows to 0
    u = torch.randn(2, 300, 16, requires_grad=True)
    out = model(u)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    assert torch.isfinite(u.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_bfloat16_module_runs_close_to_float32():
    torch.manual_seed(0)
    model = Mamba2(d_model=32, d_state=16, headdim=8)
    u = torch.randn(2, 70, 32)
    expected = model(u)
    out = model.to(torch.bfloat16)(u.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, rtol=0.1, atol=0.05)


@pytest.mark.parametrize("length", [1, 2, 3, 17])
@pytest.mark.parametrize("with_bias", [True, False])
def test_causal_conv1d_silu_matches_conv1d_with_exact_gradients(length, with_bias):
    """The shift-and-add convolution and its hand-written backward, against F.conv1d and gradcheck."""
    torch.manual_seed(0)
    x = torch.randn(2, length, 6, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(6, dtype=torch.float64, requires_grad=True) if with_bias else None
    conv = F.conv1d(x.transpose(1, 2), weight.unsqueeze(1), bias, padding=3, groups=6)
    expected = F.silu(conv[..., :length].transpose(1, 2))
    torch.testing.assert_close(causal_conv1d_silu(x, weight, bias), expected)
    with torch.no_grad():  # the in-place inference path
        torch.testing.assert_close(causal_conv1d_silu(x, weight, bias), expected)
    inputs = (x, weight, bias) if with_bias else (x, weight)
    assert torch.autograd.gradcheck(lambda *args: causal_conv1d_silu(*args), inputs)


def test_rejects_bad_head_layout():
    with pytest.raises(ValueError, match="headdim"):
        Mamba2(d_model=48, headdim=64)
    with pytest.raises(ValueError, match="ngroups"):
        Mamba2(d_model=64, headdim=32, ngroups=3)


def assert_relative_error(actual: torch.Tensor, expected: torch.Tensor, tol: float, name: str = "") -> None:
    """||actual - expected|| / ||expected|| <= tol. The Triton kernels multiply float32 in TF32 (10-bit
    mantissa), so elementwise float32 tolerances do not hold; a wrong layout or formula gives errors ~1."""
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    error = ((actual - expected).norm() / expected.norm()).item()
    assert error <= tol, (
        f"{name}: relative error {error:.2e} > {tol:.0e} (max abs diff "
        f"{(actual - expected).abs().max().item():.2e}, max abs {expected.abs().max().item():.2e})"
    )


@pytest.mark.cuda
@pytest.mark.skipif(
    not torch.cuda.is_available() or cuda_kernels() is None,
    reason="needs a CUDA GPU with mamba_ssm and causal_conv1d",
)
def test_cuda_kernels_match_pure_pytorch_path():
    torch.manual_seed(0)
    model = Mamba2(d_model=256, expand=1, ngroups=2)
    u = torch.randn(2, 700, 256)
    expected = model(u)
    expected.square().mean().backward()
    cuda_model = copy.deepcopy(model).cuda()
    cuda_model.zero_grad()
    u_cuda = u.cuda()
    out = cuda_model(u_cuda)
    out.square().mean().backward()
    assert_relative_error(out, expected, 3e-3, "output")
    for (name, p_cpu), p_cuda in zip(model.named_parameters(), cuda_model.parameters(), strict=True):
        assert_relative_error(p_cuda.grad, p_cpu.grad, 2e-2, name)
