"""BiMamba2: padding invariance, masks and lengths, the optional residual / non-finite / post-norm steps."""

import copy

import pytest
import torch

from cald_brain.mixers import BiMamba2
from cald_brain.mixers.ops.kernels import cuda_kernels

D_MODEL = 32


def make_model(**kwargs) -> BiMamba2:
    torch.manual_seed(0)
    model = BiMamba2(D_MODEL, d_state=16, headdim=8, **kwargs)
    model.mamba_fwd.cpu_chunk_size = model.mamba_bwd.cpu_chunk_size = 16
    return model


def test_structure_and_state_dict_names():
    model = make_model(post_norm=True)
    assert model.mamba_fwd.expand == 1 and model.mamba_fwd.nheads == 4
    names = list(model.state_dict())
    mamba2_names = (
        "dt_bias",
        "A_log",
        "D",
        "in_proj.weight",
        "conv1d.weight",
        "conv1d.bias",
        "norm.weight",
        "out_proj.weight",
    )
    assert names[:8] == [f"mamba_fwd.{n}" for n in mamba2_names]
    assert names[8:16] == [n.replace("mamba_fwd", "mamba_bwd") for n in names[:8]]
    assert names[16:] == ["norm.weight", "norm.bias"]
    assert "norm" not in dict(make_model().named_children())
    # The two directions are independent modules with their own weights.
    assert not torch.equal(model.mamba_fwd.in_proj.weight, model.mamba_bwd.in_proj.weight)


def test_unpadded_forward_is_forward_plus_reversed_backward():
    model = make_model()
    x = torch.randn(2, 40, D_MODEL)
    expected = model.mamba_fwd(x) + model.mamba_bwd(x.flip(1)).flip(1)
    torch.testing.assert_close(model(x), expected)


def padded_batch(lengths: list[int], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    x = torch.randn(len(lengths), max_len, D_MODEL)
    mask = torch.arange(max_len)[None, :] < torch.tensor(lengths)[:, None]
    x[~mask] = 1e4  # garbage in the padding must not leak into real frames
    return x, mask


@pytest.mark.parametrize("kwargs", [{}, dict(residual_inside=True, post_norm=True, drop_non_finite=True)])
def test_padding_invariance(kwargs):
    model = make_model(**kwargs)
    lengths = [50, 37, 5, 1]
    x, mask = padded_batch(lengths, 50)
    with torch.no_grad():
        out = model(x, mask=mask)
        for i, length in enumerate(lengths):
            alone = model(x[i : i + 1, :length])
            torch.testing.assert_close(out[i, :length], alone[0], rtol=1e-5, atol=1e-5)
            assert torch.equal(out[i, length:], torch.zeros_like(out[i, length:]))


def test_mask_and_lengths_agree_and_padding_gets_no_gradient():
    model = make_model()
    x, mask = padded_batch([30, 12], 30)
    x.requires_grad_()
    by_mask = model(x, mask=mask)
    by_lengths = model(x, lengths=torch.tensor([30, 12]))
    assert torch.equal(by_mask, by_lengths)
    by_mask.square().sum().backward()
    assert torch.equal(x.grad[1, 12:], torch.zeros_like(x.grad[1, 12:]))
    assert x.grad[1, :12].abs().sum() > 0


def test_bad_masks_raise():
    model = make_model()
    x = torch.randn(2, 10, D_MODEL)
    holes = torch.ones(2, 10, dtype=torch.bool)
    holes[0, 3] = False
    with pytest.raises(ValueError, match="prefix"):
        model(x, mask=holes)
    with pytest.raises(ValueError, match="shape"):
        model(x, mask=torch.ones(2, 9, dtype=torch.bool))


def test_residual_post_norm_and_non_finite_options():
    x = torch.randn(2, 20, D_MODEL)
    plain = make_model()(x)
    torch.testing.assert_close(make_model(residual_inside=True)(x), plain + x)
    normed = make_model(post_norm=True)
    torch.testing.assert_close(normed(x), torch.nn.functional.layer_norm(plain, (D_MODEL,)))
    with torch.no_grad():
        normed.norm.weight.fill_(2.0)
    torch.testing.assert_close(normed(x), 2 * torch.nn.functional.layer_norm(plain, (D_MODEL,)))

    poisoned = x.clone()
    poisoned[0, 5, 0] = float("inf")  # spreads inf/NaN through item 0 in both directions
    assert not torch.isfinite(make_model()(poisoned)[0]).all()
    cleaned = make_model(drop_non_finite=True)(poisoned)
    assert torch.isfinite(cleaned).all()
    torch.testing.assert_close(cleaned[1], plain[1])


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    return ((actual - expected).norm() / expected.norm()).item()


@pytest.mark.cuda
@pytest.mark.skipif(
    not torch.cuda.is_available() or cuda_kernels() is None,
    reason="needs a CUDA GPU with mamba_ssm and causal_conv1d",
)
def test_cuda_kernels_match_pure_pytorch():
    """The kernel path (CUDA) against the pure-PyTorch path (CPU) on a padded batch: outputs, exact zeros on
    padding, gradients, and each item alone. Tolerances are relative norms: the Triton scan multiplies
    float32 in TF32. d_state 128 and headdim 64, as test_mamba2's CUDA test, so Triton autotunes once."""
    torch.manual_seed(0)
    model = BiMamba2(256, residual_inside=True, post_norm=True)
    lengths = torch.tensor([300, 211, 64, 1])
    x = torch.randn(4, 300, 256)
    mask = torch.arange(300)[None, :] < lengths[:, None]
    x[~mask] = 10.0  # padding garbage, large but far from overflow
    weights = torch.randn(4, 300, 256)
    x_cpu = x.clone().requires_grad_()
    expected = model(x_cpu, lengths=lengths)
    (expected * weights).sum().backward()

    cuda_model = copy.deepcopy(model).cuda()
    cuda_model.zero_grad(set_to_none=True)
    x_cuda = x.cuda().requires_grad_()
    out = cuda_model(x_cuda, lengths=lengths.cuda())
    (out * weights.cuda()).sum().backward()

    errors = {"output": relative_error(out, expected), "input grad": relative_error(x_cuda.grad, x_cpu.grad)}
    pairs = zip(model.named_parameters(), cuda_model.parameters(), strict=True)
    errors |= {name: relative_error(p_cuda.grad, p_cpu.grad) for (name, p_cpu), p_cuda in pairs}
    limit = {"output": 3e-3}
    too_large = {name: f"{error:.1e}" for name, error in errors.items() if error > limit.get(name, 2e-2)}
    assert not too_large, f"relative errors: {too_large}"
    padding = ~mask.cuda()
    assert torch.equal(out[padding], torch.zeros_like(out[padding]))
    assert torch.equal(x_cuda.grad[padding], torch.zeros_like(x_cuda.grad[padding]))
    with torch.no_grad():
        for i, length in enumerate(lengths.tolist()):
            alone = cuda_model(x_cuda[i : i + 1, :length])
            assert relative_error(out[i, :length], alone[0]) < 1e-4, f"item {i} alone"
