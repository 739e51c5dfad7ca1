"""Mamba (v1) mixer: parameters, initialisation and forward of `mamba_ssm.modules.mamba_simple.Mamba`.

State dicts load both ways with mamba_ssm (same names, shapes and dtypes). On CUDA tensors, when mamba_ssm and
causal_conv1d import, the fused kernels are used; everywhere else the pure-PyTorch path (depthwise nn.Conv1d
and the chunked `selective_scan`) computes the same function. The mixer is causal, so right padding never
changes the outputs of real frames; no mask is needed.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .ops.kernels import use_cuda_kernels
from .ops.selective_scan import selective_scan


class Mamba(nn.Module):
    """Selective state-space mixer: (batch, length, d_model) -> (batch, length, d_model).

    Args mirror mamba_ssm: d_inner = expand * d_model unless given (`d_inner`, e.g. the CALD reference's
    5120 for every Pythia size); dt_rank "auto" = ceil(d_model / 16); dt_min, dt_max,
    dt_init ("random" | "constant"), dt_scale and dt_init_floor set the initial step sizes; bias / conv_bias
    add biases to in_proj/out_proj and conv1d; use_fast_path picks the fused `mamba_inner_fn` kernel on CUDA.
    layer_idx is kept for mamba_ssm compatibility. Recurrent decoding (constant memory per token):
    `allocate_inference_cache`, `prefill` (a prompt, filling the states) and `step` (one token), below.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        d_inner: int | None = None,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        use_fast_path: bool = True,
        layer_idx: int | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        factory_kwargs = {"device": device, "dtype": dtype}
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.d_inner = int(expand * d_model) if d_inner is None else int(d_inner)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.use_fast_path = use_fast_path
        self.layer_idx = layer_idx

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias, **factory_kwargs)
        self.conv1d = nn.Conv1d(
            self.d_inner,
            self.d_inner,
            kernel_size=d_conv,
            groups=self.d_inner,
            padding=d_conv - 1,
            bias=conv_bias,
            **factory_kwargs,
        )
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **factory_kwargs)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory_kwargs)
        self._init_dt_proj(dt_init, dt_scale, dt_min, dt_max, dt_init_floor)

        # S4D-real initialisation A = -(1..N) per channel, and the skip D = 1; both kept in fp32.
        A = torch.arange(1, d_state + 1, dtype=torch.float32, device=device).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.d_inner, device=device))
        self.D._no_weight_decay = True

        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory_kwargs)

    @torch.no_grad()
    def _init_dt_proj(self, dt_init: str, scale: float, dt_min: float, dt_max: float, floor: float) -> None:
        """Variance-preserving dt_proj weight; bias = softplus^-1(dt), dt log-uniform in [dt_min, dt_max]."""
        std = self.dt_rank**-0.5 * scale
        if dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, std)
        elif dt_init == "random":
            nn.init.uniform_(self.dt_proj.weight, -std, std)
        else:
            raise ValueError(f"Mamba: dt_init must be 'random' or 'constant', got {dt_init!r}")
        bias = self.dt_proj.bias
        log_dt = torch.rand_like(bias) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        dt = torch.exp(log_dt).clamp(min=floor)
        bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse of softplus
        bias._no_reinit = True  # model-wide inits that zero Linear biases must keep this one

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """hidden_states (batch, length, d_model) -> (batch, length, d_model)."""
        kernels = use_cuda_kernels(hidden_states)
        if kernels is None:
            return self._forward_torch(hidden_states)
        return self._forward_kernels(hidden_states, kernels)

    def _A(self) -> torch.Tensor:
        """The (d_inner, d_state) diagonal state matrix, in fp32 (a half-precision A_log can give -inf)."""
        return -torch.exp(self.A_log.float())

    def _ssm_and_output(
        self, scan_fn, x: torch.Tensor, z: torch.Tensor, ssm_state: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Selective scan of the conv output x (batch, d_inner, length) gated by z, then out_proj.

        `scan_fn` is `selective_scan` or mamba_ssm's `selective_scan_fn` (same signature and semantics).
        ssm_state: when given, receives the final scan state (batch, d_inner, d_state).
        """
        x_dbl = self.x_proj(x.transpose(1, 2))
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight).transpose(1, 2)  # its bias is added inside the scan, in fp32
        y = scan_fn(
            x,
            dt,
            self._A(),
            B.transpose(1, 2).contiguous(),
            C.transpose(1, 2).contiguous(),
            self.D.float(),
            z=z,
            delta_bias=self.dt_proj.bias.float(),
            delta_softplus=True,
            return_last_state=ssm_state is not None,
        )
        if ssm_state is not None:
            y, last_state = y
            ssm_state.copy_(last_state)
        return self.out_proj(y.transpose(1, 2))

    def _forward_torch(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Pure-PyTorch forward (CPU, or CUDA without the kernels)."""
        length = hidden_states.shape[1]
        x, z = self.in_proj(hidden_states).transpose(1, 2).chunk(2, dim=1)
        x = F.silu(self.conv1d(x)[..., :length])
        return self._ssm_and_output(selective_scan, x, z)

    def _forward_kernels(self, hidden_states: torch.Tensor, kernels) -> torch.Tensor:
        """mamba_ssm / causal_conv1d CUDA kernels; the same computation as `_forward_torch`."""
        xz = self.in_proj(hidden_states).transpose(1, 2).contiguous()  # (batch, 2 * d_inner, length)
        if self.use_fast_path:
            return kernels.mamba_inner_fn(
                xz,
                self.conv1d.weight,
                self.conv1d.bias,
                self.x_proj.weight,
                self.dt_proj.weight,
                self.out_proj.weight,
                self.out_proj.bias,
                self._A(),
                None,  # B and C are input-dependent (computed by x_proj inside the kernel)
                None,
                self.D.float(),
                delta_bias=self.dt_proj.bias.float(),
                delta_softplus=True,
            )
        x, z = xz.chunk(2, dim=1)
        x = kernels.causal_conv1d_fn(
            x=x, weight=self.conv1d.weight.squeeze(1), bias=self.conv1d.bias, activation="silu"
        )
        return self._ssm_and_output(kernels.selective_scan_fn, x, z)

    # --- recurrent decoding (mamba_ssm's inference-cache layout) --------------------------------------------

    def allocate_inference_cache(
        self, batch_size: int, dtype: torch.dtype | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero (conv_state (batch, d_inner, d_conv), ssm_state (batch, d_inner, d_state) in float32): the
        whole memory this layer needs per sequence, whatever the context length."""
        device = self.out_proj.weight.device
        dtype = self.conv1d.weight.dtype if dtype is None else dtype
        conv_state = torch.zeros(batch_size, self.d_inner, self.d_conv, device=device, dtype=dtype)
        ssm_state = torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=torch.float32)
        return conv_state, ssm_state

    def prefill(
        self, hidden_states: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor
    ) -> torch.Tensor:
        """The forward pass over a whole prompt (batch, length, d_model) that also writes the states `step`
        continues from (the last d_conv conv inputs, the final scan state). Pure-PyTorch path."""
        length = hidden_states.shape[1]
        x, z = self.in_proj(hidden_states).transpose(1, 2).chunk(2, dim=1)
        conv_state.copy_(F.pad(x, (self.d_conv - length, 0)))  # left-pads or crops to the last d_conv inputs
        x = F.silu(self.conv1d(x)[..., :length])
        return self._ssm_and_output(selective_scan, x, z, ssm_state)

    def step(
        self, hidden_states: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor
    ) -> torch.Tensor:
        """One token (batch, 1, d_model) -> (batch, 1, d_model); conv_state and ssm_state are updated in
        place. Equal to the last frame of `forward` on the whole sequence (float32 rounding)."""
        x, z = self.in_proj(hidden_states.squeeze(1)).chunk(2, dim=-1)  # (batch, d_inner) each
        conv_state.copy_(torch.roll(conv_state, shifts=-1, dims=-1))
        conv_state[:, :, -1] = x
        x = (conv_state * self.conv1d.weight.squeeze(1)).sum(dim=-1)
        if self.conv1d.bias is not None:
            x = x + self.conv1d.bias
        x = F.silu(x)
        dt, B, C = torch.split(self.x_proj(x), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.softplus(F.linear(dt, self.dt_proj.weight).float() + self.dt_proj.bias.float())
        decay = torch.exp(dt.unsqueeze(-1) * self._A())  # (batch, d_inner, d_state)
        ssm_state.mul_(decay).add_((dt * x.float()).unsqueeze(-1) * B.float().unsqueeze(1))
        y = (ssm_state @ C.float().unsqueeze(-1)).squeeze(-1) + self.D.float() * x.float()
        y = (y * F.silu(z.float())).to(hidden_states.dtype)
        return self.out_proj(y).unsqueeze(1)
