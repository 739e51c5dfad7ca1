"""Gated RMSNorm of Mamba2 (mamba_ssm's `layernorm_gated.RMSNorm`): its Triton kernel on CUDA when it imports,
plain PyTorch otherwise."""

import torch
import torch.nn.functional as F
from torch import nn

from .kernels import use_cuda_kernels


class RMSNormGated(nn.Module):
    """RMSNorm with an optional SiLU gate, as `mamba_ssm.ops.triton.layernorm_gated.RMSNorm`.

    norm(x * silu(z)) if not `norm_before_gate`, else norm(x) * silu(z); the statistics are taken over groups
    of `group_size` channels (all channels when None). Parameter: `weight` (hidden_size,), no bias.
    """

    def __init__(
        self,
        hidden_size: int,
        eps: float = 1e-5,
        group_size: int | None = None,
        norm_before_gate: bool = True,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.eps = eps
        self.group_size = hidden_size if group_size is None else group_size
        if hidden_size % self.group_size != 0:
            raise ValueError(f"RMSNormGated: group_size {group_size} must divide hidden_size {hidden_size}")
        self.norm_before_gate = norm_before_gate
        self.weight = nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))
        self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        kernels = use_cuda_kernels(x)
        if kernels is not None:
            return kernels.rmsnorm_fn(
                x,
                self.weight,
                None,
                z=z,
                eps=self.eps,
                group_size=self.group_size,
                norm_before_gate=self.norm_before_gate,
            )
        dtype = x.dtype
        compute = torch.promote_types(dtype, torch.float32)
        x, weight = x.to(compute), self.weight.to(compute)
        if z is not None and not self.norm_before_gate:
            x = F.silu(z.to(compute)).mul_(x)
        if self.group_size == x.shape[-1]:
            out = F.rms_norm(x, (self.group_size,), weight, self.eps)
        else:
            grouped = F.rms_norm(x.unflatten(-1, (-1, self.group_size)), (self.group_size,), None, self.eps)
            out = grouped.flatten(-2) * weight
        if z is not None and self.norm_before_gate:
            out = out * F.silu(z.to(compute))
        return out.to(dtype)
