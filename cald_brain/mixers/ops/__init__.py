"""The computations behind the mixers, kept apart from the modules (as mamba_ssm's `ops/`).

- `ssd`: Mamba2's chunked state-space-duality scan (and its step-by-step oracle);
- `selective_scan`: Mamba v1's scan (and its oracle);
- `causal_conv`: causal depthwise conv + SiLU as an autograd Function;
- `rmsnorm`: the gated RMSNorm of Mamba2;
- `kernels`: the optional mamba_ssm / causal_conv1d CUDA kernels, dispatched per tensor.
"""
