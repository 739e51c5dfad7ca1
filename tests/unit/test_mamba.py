"""Mamba (v1) mixer: mamba_ssm parameter layout and init, forward vs a plain reference, CUDA kernels."""

import math

import pytest
import torch
import torch.nn.functional as F

from cald_brain.mixers import Mamba
from cald_brain.mixers.ops.kernels import cuda_kernels

# Written by hand from mamba_ssm/modules/mamba_simple.py (in_proj: 2*d_inner x d_model; depthwise conv1d;
# x_proj: dt_rank + 2*d_state outputs, no bias; dt_proj: dt_rank -> d_inner, with bias;
# A_log: d_inner x d_state).
EXPECTED_SHAPES = {
    "defaults, d_model=768": (
        dict(d_model=768),
        {
            "A_log": (1536, 16),
            "D": (1536,),
            "in_proj.weight": (3072, 768),
            "conv1d.weight": (1536, 1, 4),
            "conv1d.bias": (1536,),
            "x_proj.weight": (80, 1536),
            "dt_proj.weight": (1536, 48),
            "dt_proj.bias": (1536,),
            "out_proj.weight": (768, 1536),
        },
    ),
    "defaults, Pythia-1B width": (
        dict(d_model=2048),
        {
            "A_log": (4096, 16),
            "D": (4096,),
            "in_proj.weight": (8192, 2048),
            "conv1d.weight": (4096, 1, 4),
            "conv1d.bias": (4096,),
            "x_proj.weight": (160, 4096),
            "dt_proj.weight": (4096, 128),
            "dt_proj.bias": (4096,),
            "out_proj.weight": (2048, 4096),
        },
    ),
    # The CALD reference's Pythia-1B student (mamba-2.8b's inner width and dt rank, hidden size 2048):
    # lm/open_instruct/hf_modelling_mamba.py MambaMixer with intermediate_size 5120, time_step_rank 160.
    "explicit d_inner and dt_rank, reference Pythia-1B student": (
        dict(d_model=2048, d_inner=5120, dt_rank=160),
        {
            "A_log": (5120, 16),
            "D": (5120,),
            "in_proj.weight": (10240, 2048),
            "conv1d.weight": (5120, 1, 4),
            "conv1d.bias": (5120,),
            "x_proj.weight": (192, 5120),
            "dt_proj.weight": (5120, 160),
            "dt_proj.bias": (5120,),
            "out_proj.weight": (2048, 5120),
        },
    ),
    "non-default options": (
        dict(d_model=64, d_state=8, d_conv=3, expand=1, dt_rank=6, bias=True, conv_bias=False),
        {
            "A_log": (64, 8),
            "D": (64,),
            "in_proj.weight": (128, 64),
            "in_proj.bias": (128,),
            "conv1d.weight": (64, 1, 3),
            "x_proj.weight": (22, 64),
            "dt_proj.weight": (64, 6),
            "dt_proj.bias": (64,),
            "out_proj.weight": (64, 64),
            "out_proj.bias": (64,),
        },
    ),
}


@pytest.mark.parametrize("config", EXPECTED_SHAPES)
def test_parameter_names_and_shapes_match_mamba_ssm(config):
    kwargs, expected = EXPECTED_SHAPES[config]
    mixer = Mamba(**kwargs, device="meta")
    assert {name: tuple(p.shape) for name, p in mixer.state_dict().items()} == expected


def test_low_precision_module_keeps_A_log_and_D_in_fp32():
    mixer = Mamba(32, dtype=torch.bfloat16)
    dtypes = {name: p.dtype for name, p in mixer.named_parameters()}
    assert dtypes.pop("A_log") == torch.float32 and dtypes.pop("D") == torch.float32
    assert set(dtypes.values()) == {torch.bfloat16}


def test_initialisation():
    torch.manual_seed(0)
    mixer = Mamba(256, d_state=8, dt_min=0.002, dt_max=0.05)  # d_inner 512, dt_rank 16
    torch.testing.assert_close(mixer.A_log, torch.log(torch.arange(1.0, 9.0)).expand(512, 8))
    torch.testing.assert_close(mixer.D, torch.ones(512))
    dt = F.softplus(mixer.dt_proj.bias)
    assert dt.min() >= 0.002 * (1 - 1e-4) and dt.max() <= 0.05 * (1 + 1e-4)
    # Log-uniform over the range: both ends are reached, and the median is near the geometric mean.
    assert dt.min() < 0.0025 and dt.max() > 0.04
    assert math.isclose(dt.median().item(), math.sqrt(0.002 * 0.05), rel_tol=0.2)
    std = 16**-0.5
    weight = mixer.dt_proj.weight
    assert weight.abs().max() <= std and weight.abs().max() > 0.9 * std and weight.std() > 0.5 * std

    constant = Mamba(64, dt_rank=4, dt_init="constant", dt_scale=2.0)
    torch.testing.assert_close(constant.dt_proj.weight, torch.full((128, 4), 2.0 * 4**-0.5))
    floored = Mamba(64, dt_min=1e-6, dt_max=2e-6, dt_init_floor=1e-4)
    torch.testing.assert_close(F.softplus(floored.dt_proj.bias), torch.full((128,), 1e-4))
    with pytest.raises(ValueError, match="dt_init"):
        Mamba(64, dt_init="xavier")


def reference_forward(mixer: Mamba, hidden: torch.Tensor) -> torch.Tensor:
    """mamba_simple.Mamba's computation written out step by step (explicit causal conv and recurrence)."""
    batch, length, _ = hidden.shape
    x, z = (hidden @ mixer.in_proj.weight.T).chunk(2, dim=-1)  # (batch, length, d_inner)
    kernel = mixer.conv1d.weight[:, 0, :]  # (d_inner, d_conv); the last tap multiplies the current frame
    padded = F.pad(x, (0, 0, mixer.d_conv - 1, 0))
    x = sum(padded[:, i : i + length] * kernel[:, i] for i in range(mixer.d_conv)) + mixer.conv1d.bias
    x = F.silu(x)
    dt, B, C = (x @ mixer.x_proj.weight.T).split([mixer.dt_rank, mixer.d_state, mixer.d_state], dim=-1)
    dt = F.softplus(dt @ mixer.dt_proj.weight.T + mixer.dt_proj.bias)
    A = -torch.exp(mixer.A_log)
    state = hidden.new_zeros(batch, mixer.d_inner, mixer.d_state)
    ys = []
    for t in range(length):
        state = torch.exp(dt[:, t, :, None] * A) * state + (dt[:, t] * x[:, t])[..., None] * B[:, t, None, :]
        ys.append((state * C[:, t, None, :]).sum(-1) + mixer.D * x[:, t])
    y = torch.stack(ys, dim=1) * F.silu(z)
    return y @ mixer.out_proj.weight.T


def test_forward_matches_reference():
    torch.manual_seed(0)
    mixer = Mamba(24, d_state=4, d_conv=3).double()  # d_inner 48, dt_rank 2
    with torch.no_grad():
        mixer.dt_proj.bias.add_(1.0)  # larger steps, so the state carries more history
    hidden = torch.randn(2, 45, 24, dtype=torch.float64)
    out = mixer(hidden)
    assert out.shape == hidden.shape
    torch.testing.assert_close(out, reference_forward(mixer, hidden), rtol=1e-10, atol=1e-10)


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    mixer = Mamba(16, d_state=4, bias=True)
    mixer(torch.randn(2, 20, 16)).square().mean().backward()
    for name, param in mixer.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_causal_so_right_padding_does_not_leak():
    torch.manual_seed(0)
    mixer = Mamba(16, d_state=4)
    hidden = torch.randn(1, 30, 16)
    changed = hidden.clone()
    changed[:, 18:] = torch.randn(1, 12, 16) * 10
    torch.testing.assert_close(mixer(changed)[:, :18], mixer(hidden)[:, :18], rtol=0, atol=0)


def test_long_sequence_is_finite():
    torch.manual_seed(0)
    mixer = Mamba(8, d_state=4, expand=1)
    with torch.no_grad():
        mixer.dt_proj.bias.fill_(50.0)  # very large dt: exp(dt * A) underflows to 0 at every step
    out = mixer(torch.randn(1, 20_000, 8))
    assert torch.isfinite(out).all()


def kernels_available() -> bool:
    return torch.cuda.is_available() and cuda_kernels() is not None


@pytest.mark.cuda
@pytest.mark.skipif(not kernels_available(), reason="needs a CUDA GPU with mamba_ssm and causal_conv1d")
@pytest.mark.parametrize("use_fast_path", [True, False])
def test_cuda_kernels_match_pure_pytorch(use_fast_path):
    torch.manual_seed(0)
    mixer = Mamba(64, use_fast_path=use_fast_path).cuda()
    hidden = torch.randn(2, 300, 64, device="cuda", requires_grad=True)
    weights = torch.randn(2, 300, 64, device="cuda")

    def run(forward):
        mixer.zero_grad()
        hidden.grad = None
        out = forward(hidden)
        (out * weights).sum().backward()
        return out.detach(), hidden.grad.clone(), {n: p.grad.clone() for n, p in mixer.named_parameters()}

    out_k, grad_k, param_grads_k = run(mixer)  # the kernels (forward() picks them for CUDA tensors)
    out_t, grad_t, param_grads_t = run(mixer._forward_torch)
    torch.testing.assert_close(out_k, out_t, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grad_k, grad_t, rtol=1e-3, atol=1e-3)
    for name, grad in param_grads_k.items():
        torch.testing.assert_close(grad, param_grads_t[name], rtol=1e-3, atol=1e-3, msg=name)
