"""Causal depthwise convolution + SiLU in plain PyTorch: the CPU path of Mamba2's conv1d.

Computes what `causal_conv1d_fn(..., activation="silu")` computes, in the channels-last layout (batch, length,
channels) as shifted multiply-adds, with a hand-written backward (design measurements: docs/BENCHMARK.md).
"""

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable


def _causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Causal depthwise convolution of x (batch, length, channels) with weight (channels, width).

    Computed in the channels-last layout as `width` shifted multiply-adds, with no transposes or padding
    copies.
    """
    width = weight.shape[-1]
    out = torch.addcmul(bias, x, weight[:, -1]) if bias is not None else x * weight[:, -1]
    for shift in range(1, min(width, x.shape[1])):
        out[:, shift:].addcmul_(x[:, :-shift], weight[:, -1 - shift])  # tap k sees x[t - (width - 1 - k)]
    return out


class _CausalConv1dSiLU(torch.autograd.Function):
    """silu(causal depthwise conv) with a hand-written backward: the same shifted multiply-adds, run
    anti-causally. Autograd through the in-place slices of `_causal_conv1d` would clone the whole gradient
    once per tap."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        pre = _causal_conv1d(x, weight, bias)
        ctx.save_for_backward(x, weight, pre)
        ctx.has_bias = bias is not None
        return F.silu(pre)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight, pre = ctx.saved_tensors
        need_x, need_weight, need_bias = ctx.needs_input_grad
        grad = torch.ops.aten.silu_backward(grad, pre)
        width, length = weight.shape[-1], x.shape[1]
        grad_x = grad_weight = grad_bias = None
        if need_x:
            grad_x = grad * weight[:, -1]
            for shift in range(1, min(width, length)):
                grad_x[:, :-shift].addcmul_(grad[:, shift:], weight[:, -1 - shift])
        if need_weight:
            grad_weight = torch.zeros_like(weight)
            for shift in range(min(width, length)):
                grad_weight[:, -1 - shift] = (grad[:, shift:] * x[:, : length - shift]).sum((0, 1))
        if need_bias and ctx.has_bias:
            grad_bias = grad.sum((0, 1))
        return grad_x, grad_weight, grad_bias


def causal_conv1d_silu(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """silu(causal depthwise conv1d) of x (batch, length, channels), weight (channels, width): what
    `causal_conv1d_fn(x.transpose(1, 2), weight, bias, activation="silu").transpose(1, 2)` computes."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias)):
        return _CausalConv1dSiLU.apply(x, weight, bias)
    return F.silu(_causal_conv1d(x, weight, bias), inplace=True)
