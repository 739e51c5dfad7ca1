"""Selective scan (the Mamba v1 SSM) in plain PyTorch, with the semantics of mamba_ssm's `selective_scan_fn`.

    delta' = softplus(delta + delta_bias)         (each optional)
    h_t    = exp(delta'_t * A) * h_{t-1} + delta'_t * u_t * B_t
    y_t    = C_t . h_t + D * u_t,   then y_t * silu(z_t) if z is given

Shapes follow mamba_ssm: u, delta, z (batch, dim, length); A (dim, d_state); B, C (batch, d_state, length);
D, delta_bias (dim,). Everything is computed in fp32 (fp64 stays fp64); the output has u's dtype.

`selective_scan` is the CPU path. Its core is an autograd.Function that walks the sequence in chunks: each
chunk's decays and inputs are built with batched ops, the recurrence itself is one in-place multiply-add per
step, and the output contraction with C is one batched matmul per chunk. Only the state entering each chunk is
saved; the backward pass recomputes each chunk's states and runs the adjoint recurrence backwards. Memory is
therefore O(length / chunk_size) states plus one chunk's working set, and no term is ever factored as
exp(a) * exp(-b), so large decays or long sequences cannot overflow (every factor exp(delta' * A) is in [0, 1]
for A <= 0). `selective_scan_ref` is the naive step-by-step loop, kept as the test oracle (run it in fp64).
"""

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

DEFAULT_CHUNK_SIZE = 16  # chosen by measurement (docs/BENCHMARK.md)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp64 stays fp64 (for tests); everything else is computed in fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_shapes(u, delta, A, B, C, D, z, delta_bias) -> None:
    """Raise ValueError naming the argument whose shape does not match mamba_ssm's layout."""
    if u.dim() != 3:
        raise ValueError(f"selective scan: u must be (batch, dim, length), got shape {tuple(u.shape)}")
    batch, dim, length = u.shape
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"selective scan: A must be (dim={dim}, d_state), got shape {tuple(A.shape)}")
    d_state = A.shape[1]
    expected = {
        "delta": (delta, (batch, dim, length)),
        "B": (B, (batch, d_state, length)),
        "C": (C, (batch, d_state, length)),
        "D": (D, (dim,)),
        "z": (z, (batch, dim, length)),
        "delta_bias": (delta_bias, (dim,)),
    }
    for name, (tensor, shape) in expected.items():
        if tensor is not None and tuple(tensor.shape) != shape:
            raise ValueError(
                f"selective scan: {name} must have shape {shape} (mamba_ssm layout), "
                f"got {tuple(tensor.shape)}"
            )
    if length == 0:
        raise ValueError("selective scan: the sequence is empty (length 0)")


def _discretize(delta, delta_bias, delta_softplus: bool, dtype: torch.dtype) -> torch.Tensor:
    """The step size delta' = softplus(delta + delta_bias) (each optional), in the compute dtype."""
    delta = delta.to(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)  # threshold 20, as in the CUDA kernel
    return delta


def _finish(y, u, D, z, out_dtype: torch.dtype) -> torch.Tensor:
    """Skip connection D * u and the silu(z) gate, then cast to the input dtype."""
    if D is not None:
        y = y + u.to(y.dtype) * D.to(y.dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y.to(out_dtype)


def _chunk_states(delta, u, A, B, state) -> tuple[torch.Tensor, torch.Tensor]:
    """States h (T, batch, dim, d_state) of one time-major chunk starting from `state`, and the decays.

    In-place, so only for use without autograd. delta, u: (T, batch, dim); B: (T, batch, d_state).
    """
    decay = (delta.unsqueeze(-1) * A).exp_()
    h = (delta * u).unsqueeze(-1) * B.unsqueeze(-2)
    prev = state
    for h_t, decay_t in zip(h.unbind(0), decay.unbind(0), strict=True):
        h_t.addcmul_(decay_t, prev)
        prev = h_t
    return h, decay


class _ChunkedScan(torch.autograd.Function):
    """y_t = C_t . h_t with h_t = exp(delta_t A) h_{t-1} + delta_t u_t B_t, on time-major inputs.

    delta, u: (length, batch, dim); A: (dim, d_state); B, C: (length, batch, d_state).
    Returns y (length, batch, dim) and the last state (batch, dim, d_state); both are differentiable.
    """

    @staticmethod
    def forward(ctx, delta, u, A, B, C, chunk_size: int):
        length, batch, dim = u.shape
        state = u.new_zeros(batch, dim, A.shape[1])
        starts, ys = [], []
        for t0 in range(0, length, chunk_size):
            chunk = slice(t0, t0 + chunk_size)
            starts.append(state)
            h, _ = _chunk_states(delta[chunk], u[chunk], A, B[chunk], state)
            ys.append(torch.matmul(h, C[chunk].unsqueeze(-1)).squeeze(-1))
            state = h[-1].clone()
        ctx.save_for_backward(delta, u, A, B, C, torch.stack(starts))
        ctx.chunk_size = chunk_size
        return torch.cat(ys), state

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y, grad_last):
        delta, u, A, B, C, starts = ctx.saved_tensors
        grad_delta, grad_u = torch.empty_like(delta), torch.empty_like(u)
        grad_B, grad_C = torch.empty_like(B), torch.empty_like(C)
        grad_A = torch.zeros_like(A)
        # carry = dL/dh at the last step of the current chunk, coming from later steps (or the last state).
        carry = grad_last
        for index in reversed(range(starts.shape[0])):
            chunk = slice(index * ctx.chunk_size, (index + 1) * ctx.chunk_size)
            delta_c, u_c, B_c, gy = delta[chunk], u[chunk], B[chunk], grad_y[chunk]
            h, decay = _chunk_states(delta_c, u_c, A, B_c, starts[index])
            grad_C[chunk] = torch.matmul(h.transpose(-1, -2), gy.unsqueeze(-1)).squeeze(-1)
            # Adjoint recurrence: lam_t = C_t gy_t + decay_{t+1} lam_{t+1}; lam_t is also dL/d(input_t).
            lam = gy.unsqueeze(-1) * C[chunk].unsqueeze(-2)
            lam[-1] += carry
            for t in range(lam.shape[0] - 2, -1, -1):
                lam[t].addcmul_(decay[t + 1], lam[t + 1])
            carry = decay[0] * lam[0]
            # dL/d(delta A) = lam_t * h_{t-1} * decay_t, with h_{-1} the state entering the chunk.
            grad_exponent = lam * decay
            grad_exponent[1:] *= h[:-1]
            grad_exponent[0] *= starts[index]
            grad_A += torch.einsum("tbdn,tbd->dn", grad_exponent, delta_c)
            grad_du = torch.matmul(lam, B_c.unsqueeze(-1)).squeeze(-1)  # dL/d(delta * u)
            grad_B[chunk] = torch.matmul(lam.transpose(-1, -2), (delta_c * u_c).unsqueeze(-1)).squeeze(-1)
            grad_delta[chunk] = grad_exponent.mul_(A).sum(-1) + grad_du * u_c
            grad_u[chunk] = grad_du * delta_c
        return grad_delta, grad_u, grad_A, grad_B, grad_C, None


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Chunked selective scan, differentiable w.r.t. every tensor input (including through the last state).

    Returns out (batch, dim, length) in u's dtype, and with `return_last_state` also the final state
    (batch, dim, d_state) in the compute dtype, like mamba_ssm. `chunk_size` only affects speed and memory.
    """
    _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    if chunk_size < 1:
        raise ValueError(f"selective scan: chunk_size must be >= 1, got {chunk_size}")
    dtype = _compute_dtype(u.dtype)

    def time_major(x: torch.Tensor) -> torch.Tensor:
        return x.to(dtype).permute(2, 0, 1).contiguous()

    delta = _discretize(delta, delta_bias, delta_softplus, dtype)
    y, last_state = _ChunkedScan.apply(
        time_major(delta), time_major(u), A.to(dtype), time_major(B), time_major(C), chunk_size
    )
    out = _finish(y.permute(1, 2, 0), u, D, z, u.dtype)
    return (out, last_state) if return_last_state else out


def selective_scan_ref(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Naive reference: one Python step per frame over fully materialised decays. Slow; a test oracle only."""
    _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    dtype = _compute_dtype(u.dtype)
    delta = _discretize(delta, delta_bias, delta_softplus, dtype)
    decay = torch.exp(torch.einsum("bdl,dn->bdln", delta, A.to(dtype)))
    inputs = torch.einsum("bdl,bnl,bdl->bdln", delta, B.to(dtype), u.to(dtype))
    C = C.to(dtype)
    state = u.new_zeros(u.shape[0], u.shape[1], A.shape[1], dtype=dtype)
    ys = []
    for decay_t, input_t, C_t in zip(decay.unbind(2), inputs.unbind(2), C.unbind(2), strict=True):
        state = decay_t * state + input_t
        ys.append(torch.einsum("bdn,bn->bd", state, C_t))
    out = _finish(torch.stack(ys, dim=2), u, D, z, u.dtype)
    return (out, state) if return_last_state else out
