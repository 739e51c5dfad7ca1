"""Optional mamba_ssm / causal_conv1d CUDA kernels, found by a real import (never on the CPU path).

A broken install of mamba_ssm still passes `importlib.util.find_spec`, so only an actual import of the
functions counts. The lookup happens once, lazily, the first time a CUDA tensor reaches a mixer.
"""

from functools import cache
from types import SimpleNamespace

import torch


@cache
def cuda_kernels() -> SimpleNamespace | None:
    """The kernel functions if mamba_ssm and causal_conv1d import, else None."""
    try:
        from causal_conv1d import causal_conv1d_fn
        from mamba_ssm.ops.selective_scan_interface import mamba_inner_fn, selective_scan_fn
        from mamba_ssm.ops.triton.layernorm_gated import rmsnorm_fn
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except Exception:  # ImportError, or a partial install failing inside the package
        return None
    return SimpleNamespace(
        causal_conv1d_fn=causal_conv1d_fn,
        selective_scan_fn=selective_scan_fn,
        mamba_inner_fn=mamba_inner_fn,
        rmsnorm_fn=rmsnorm_fn,
        mamba_chunk_scan_combined=mamba_chunk_scan_combined,
    )


def use_cuda_kernels(x: torch.Tensor) -> SimpleNamespace | None:
    """Kernels to use for tensor `x`: only for CUDA tensors, and only when they import."""
    return cuda_kernels() if x.is_cuda else None
