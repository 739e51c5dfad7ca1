"""Mamba2 mixer with the parameters of `mamba_ssm.modules.mamba2.Mamba2` and a fast pure-PyTorch CPU path.

Constructor arguments, defaults, parameter names, shapes and initialisation follow mamba_ssm (2.x), so a state
dict moves between the two (and Hugging Face's `Mamba2Mixer`) without renaming. On CUDA tensors, when
mamba_ssm and causal_conv1d import, the forward pass runs their kernels; everywhere else it runs
`cald_brain.mixers.ops.ssd.ssd_chunked`, which agrees with them to float32 rounding.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from .ops.causal_conv import causal_conv1d_silu
from .ops.kernels import use_cuda_kernels
from .ops.rmsnorm import RMSNormGated
from .ops.ssd import CPU_CHUNK_SIZE, ssd_chunked


class Mamba2(nn.Module):
    """Mamba2 token mixer: (batch, length, d_model) -> (batch, length, d_model), causal.

    Same arguments as mamba_ssm's Mamba2, minus d_ssm, conv_init, use_mem_eff_path and the tensor-parallel
    options. `chunk_size` is the chunk of the CUDA kernels; the CPU path uses `cpu_chunk_size` (an attribute,
    `ops.ssd.CPU_CHUNK_SIZE` by default; the chunk size changes the result only by float32 rounding).
    Recurrent decoding: `allocate_inference_cache`, `prefill`, `step` (below).
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 128,
        d_conv: int = 4,
        expand: int = 2,
        headdim: int = 64,
        ngroups: int = 1,
        A_init_range: tuple[float, float] = (1, 16),
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        dt_limit: tuple[float, float] = (0.0, float("inf")),
        bias: bool = False,
        conv_bias: bool = True,
        chunk_size: int = 256,
        rmsnorm: bool = True,
        norm_before_gate: bool = False,
        D_has_hdim: bool = False,
        layer_idx: int | None = None,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.d_inner = expand * d_model
        self.d_ssm = self.d_inner
        self.headdim = headdim
        self.ngroups = ngroups
        if self.d_ssm % headdim != 0:
            raise ValueError(f"Mamba2: d_inner = {self.d_ssm} is not a multiple of headdim={headdim}")
        self.nheads = self.d_ssm // headdim
        if self.nheads % ngroups != 0:
            raise ValueError(f"Mamba2: ngroups {ngroups} must divide the number of heads {self.nheads}")
        if not (A_init_range[0] > 0 and A_init_range[1] >= A_init_range[0]):
            raise ValueError(f"Mamba2: A_init_range {A_init_range} must satisfy 0 < low <= high")
        self.D_has_hdim = D_has_hdim
        self.rmsnorm = rmsnorm
        self.norm_before_gate = norm_before_gate
        self.dt_limit = tuple(dt_limit)
        self.chunk_size = chunk_size
        self.cpu_chunk_size = CPU_CHUNK_SIZE
        self.layer_idx = layer_idx

        # Creation order (and so RNG use) as in mamba_ssm. in_proj output order: [z, x, B, C, dt].
        self.conv_dim = self.d_ssm + 2 * ngroups * d_state
        d_in_proj = 2 * self.d_inner + 2 * ngroups * d_state + self.nheads
        self.in_proj = nn.Linear(d_model, d_in_proj, bias=bias, **factory_kwargs)
        self.conv1d = nn.Conv1d(
            self.conv_dim,
            self.conv_dim,
            kernel_size=d_conv,
            groups=self.conv_dim,
            padding=d_conv - 1,
            bias=conv_bias,
            **factory_kwargs,
        )
        # dt_bias = softplus⁻¹(dt), dt log-uniform in [dt_min, dt_max], floored at dt_init_floor.
        log_dt = torch.rand(self.nheads, **factory_kwargs) * (math.log(dt_max) - math.log(dt_min))
        dt = torch.exp(log_dt + math.log(dt_min)).clamp(min=dt_init_floor)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        A = torch.empty(self.nheads, dtype=torch.float32, device=device).uniform_(*A_init_range)
        self.A_log = nn.Parameter(torch.log(A).to(dtype=dtype))
        self.D = nn.Parameter(torch.ones(self.d_ssm if D_has_hdim else self.nheads, device=device))
        for param in (self.dt_bias, self.A_log, self.D):
            param._no_weight_decay = True
        if rmsnorm:
            self.norm = RMSNormGated(
                self.d_ssm,
                eps=1e-5,
                norm_before_gate=norm_before_gate,
                group_size=self.d_ssm // ngroups,
                **factory_kwargs,
            )
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory_kwargs)

    def _skip(self) -> torch.Tensor:
        """D as the scan expects it: (nheads,) or (nheads, headdim)."""
        return self.D.view(self.nheads, self.headdim) if self.D_has_hdim else self.D

    def _dt_limit_kwargs(self) -> dict:
        """dt_limit for the kernel, only when set (mamba_ssm passes it the same way)."""
        return {} if self.dt_limit == (0.0, float("inf")) else {"dt_limit": self.dt_limit}

    def _project_in(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """in_proj as z, xBC, dt, computed as two GEMMs ([z, x, B, C] and dt; see docs/BENCHMARK.md)."""
        weight, bias = self.in_proj.weight, self.in_proj.bias
        split = weight.shape[0] - self.nheads
        zxbc = F.linear(hidden_states, weight[:split], None if bias is None else bias[:split])
        dt = F.linear(hidden_states, weight[split:], None if bias is None else bias[split:])
        z, xBC = zxbc.split([self.d_ssm, self.conv_dim], dim=-1)
        return z, xBC, dt

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(batch, length, d_model) -> (batch, length, d_model)."""
        z, xBC, dt = self._project_in(hidden_states)
        # At least float32: a half-precision A_log can give A = -inf.
        A = -torch.exp(self.A_log.to(torch.promote_types(self.A_log.dtype, torch.float32)))
        kernels = use_cuda_kernels(hidden_states)
        if kernels is not None:
            xBC = xBC.transpose(1, 2)  # channels-last (batch, channels, length) view, as mamba_ssm passes it
            if xBC.shape[1] % 8 or xBC.stride(0) % 8 or xBC.stride(2) % 8:
                xBC = xBC.contiguous()  # the kernel's channels-last layout needs all three multiples of 8
            xBC = kernels.causal_conv1d_fn(
                xBC, self.conv1d.weight.squeeze(1), self.conv1d.bias, activation="silu"
            ).transpose(1, 2)
        else:
            xBC = causal_conv1d_silu(xBC, self.conv1d.weight.squeeze(1), self.conv1d.bias)
        x, B, C = xBC.split([self.d_ssm, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        x = x.unflatten(-1, (self.nheads, self.headdim))
        B = B.unflatten(-1, (self.ngroups, self.d_state))
        C = C.unflatten(-1, (self.ngroups, self.d_state))
        if kernels is not None:
            y = kernels.mamba_chunk_scan_combined(
                x,
                dt,
                A,
                B,
                C,
                chunk_size=self.chunk_size,
                D=self._skip(),
                z=None if self.rmsnorm else z.unflatten(-1, (self.nheads, self.headdim)),
                dt_bias=self.dt_bias,
                dt_softplus=True,
                **self._dt_limit_kwargs(),
            ).flatten(2)
        else:
            dt = F.softplus(dt.to(A.dtype) + self.dt_bias.to(A.dtype))
            if "dt_limit" in self._dt_limit_kwargs():  # clamping is not free, and its gradient is 0 outside
                dt = dt.clamp(*self.dt_limit)
            y = ssd_chunked(x, dt, A, B, C, chunk_size=self.cpu_chunk_size, D=self._skip()).flatten(2)
            if not self.rmsnorm:
                y = y * F.silu(z)
        if self.rmsnorm:
            y = self.norm(y, z)
        return self.out_proj(y)

    def forward_in_pieces(
        self, hidden_states: torch.Tensor, piece: int, reverse: bool = False, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Inference on long sequences: `forward` computed `piece` steps at a time (rounded up to a multiple
        of `cpu_chunk_size`, so the scan's chunks are those of the whole sequence), the convolution's last
        inputs and the SSM state carried from piece to piece. Equal to `forward` up to float rounding, with
        temporaries for one piece only. `reverse`: read the sequence backwards, as `forward` of the flipped
        sequence, flipped back. The output is added into `out` when given (else into a new tensor).
        Pure-PyTorch path, no gradients."""
        piece = -(-piece // self.cpu_chunk_size) * self.cpu_chunk_size
        length = hidden_states.shape[1]
        out = torch.zeros_like(hidden_states) if out is None else out
        A = -torch.exp(self.A_log.float())
        splits = dict(
            split_size=[self.d_ssm, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1
        )
        conv_tail, state = None, None
        bounds = [(start, min(start + piece, length)) for start in range(0, length, piece)]
        if reverse:  # pieces cut from the end: the flipped sequence's
            bounds = [(max(stop - piece, 0), stop) for stop in range(length, 0, -piece)]
        for start, stop in bounds:
            chunk = hidden_states[:, start:stop]
            z, xBC, dt = self._project_in(chunk.flip(1) if reverse else chunk)
            steps = stop - start
            if conv_tail is not None:
                xBC = torch.cat([conv_tail, xBC], dim=1)
            conv_tail = xBC[:, -(self.d_conv - 1) :]
            xBC = causal_conv1d_silu(xBC, self.conv1d.weight.squeeze(1), self.conv1d.bias)[:, -steps:]
            x, B, C = xBC.split(**splits)
            y, state = ssd_chunked(
                x.unflatten(-1, (self.nheads, self.headdim)),
                self._dt(dt),
                A,
                B.unflatten(-1, (self.ngroups, self.d_state)),
                C.unflatten(-1, (self.ngroups, self.d_state)),
                chunk_size=self.cpu_chunk_size,
                D=self._skip(),
                initial_state=state,
                return_final_state=True,
            )
            y = self._gate_and_output(y.flatten(2), z)
            out[:, start:stop].add_(y.flip(1) if reverse else y)
        return out

    # --- recurrent decoding (mamba_ssm's inference-cache layout) --------------------------------------------

    def allocate_inference_cache(
        self, batch_size: int, dtype: torch.dtype | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero (conv_state (batch, conv_dim, d_conv), ssm_state (batch, nheads, headdim, d_state) in
        float32): the whole memory this layer needs per sequence, whatever the context length."""
        device = self.out_proj.weight.device
        dtype = self.conv1d.weight.dtype if dtype is None else dtype
        conv_state = torch.zeros(batch_size, self.conv_dim, self.d_conv, device=device, dtype=dtype)
        ssm_state = torch.zeros(
            batch_size, self.nheads, self.headdim, self.d_state, device=device, dtype=torch.float32
        )
        return conv_state, ssm_state

    def _gate_and_output(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Gate (gated RMSNorm, or y * silu(z)) and out_proj of the flattened scan output."""
        y = self.norm(y, z) if self.rmsnorm else y * F.silu(z)
        return self.out_proj(y)

    def _dt(self, dt: torch.Tensor) -> torch.Tensor:
        """softplus(dt + dt_bias) in float32, clamped to dt_limit when set."""
        dt = F.softplus(dt.float() + self.dt_bias.float())
        return dt.clamp(*self.dt_limit) if "dt_limit" in self._dt_limit_kwargs() else dt

    def prefill(
        self, hidden_states: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor
    ) -> torch.Tensor:
        """The forward pass over a whole prompt that also writes the states `step` continues from.
        Pure-PyTorch path."""
        z, xBC, dt = self._project_in(hidden_states)
        conv_state.copy_(F.pad(xBC.transpose(1, 2), (self.d_conv - xBC.shape[1], 0)))
        xBC = causal_conv1d_silu(xBC, self.conv1d.weight.squeeze(1), self.conv1d.bias)
        x, B, C = xBC.split([self.d_ssm, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        A = -torch.exp(self.A_log.float())
        y, final = ssd_chunked(
            x.unflatten(-1, (self.nheads, self.headdim)),
            self._dt(dt),
            A,
            B.unflatten(-1, (self.ngroups, self.d_state)),
            C.unflatten(-1, (self.ngroups, self.d_state)),
            chunk_size=self.cpu_chunk_size,
            D=self._skip(),
            return_final_state=True,
        )
        ssm_state.copy_(final)
        return self._gate_and_output(y.flatten(2), z)

    def step(
        self, hidden_states: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor
    ) -> torch.Tensor:
        """One token (batch, 1, d_model) -> (batch, 1, d_model); the states are updated in place."""
        z, xBC, dt = self._project_in(hidden_states.squeeze(1))
        conv_state.copy_(torch.roll(conv_state, shifts=-1, dims=-1))
        conv_state[:, :, -1] = xBC
        xBC = (conv_state * self.conv1d.weight.squeeze(1)).sum(dim=-1)
        if self.conv1d.bias is not None:
            xBC = xBC + self.conv1d.bias
        x, B, C = F.silu(xBC).split(
            [self.d_ssm, self.ngroups * self.d_state, self.ngroups * self.d_state], -1
        )
        per_group = self.nheads // self.ngroups
        B = B.float().view(-1, self.ngroups, self.d_state).repeat_interleave(per_group, dim=1)  # (b, h, n)
        C = C.float().view(-1, self.ngroups, self.d_state).repeat_interleave(per_group, dim=1)
        x = x.float().view(-1, self.nheads, self.headdim)
        dt = self._dt(dt)  # (b, h)
        decay = torch.exp(dt * -torch.exp(self.A_log.float()))
        ssm_state.mul_(decay[..., None, None]).add_((dt[..., None] * x).unsqueeze(-1) * B.unsqueeze(2))
        y = (ssm_state @ C.unsqueeze(-1)).squeeze(-1)  # (b, h, p)
        D = self._skip().float()
        y = y + (D.unsqueeze(-1) if D.dim() == 1 else D) * x
        y = y.flatten(1).to(hidden_states.dtype)
        return self._gate_and_output(y, z).unsqueeze(1)
