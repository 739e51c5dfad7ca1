"""State-space duality (SSD) scan of Mamba2 in plain PyTorch: the CPU / fallback path of `Mamba2`.

The recurrence, per batch item b, head h and step t (state S of shape (headdim, dstate)):

    S_t = exp(dt_t * A_h) * S_{t-1} + dt_t * x_t ⊗ B_t        y_t = S_t · C_t + D_h * x_t

`ssd_chunked` computes it in chunks of `chunk_size` steps (Dao & Gu 2024, section 6): inside a chunk as a
masked "attention" (C·Bᵀ ∘ decay) @ (dt·x); between chunks through one state per chunk, carried by an O(chunks)
loop. Every heavy step is a batched GEMM. `ssd_reference` is the plain step-by-step loop, kept as a test
oracle. Shapes follow `mamba_ssm.ops.triton.ssd_combined.mamba_chunk_scan_combined`:

    x (batch, length, nheads, headdim)   dt (batch, length, nheads)   A (nheads,)
    B, C (batch, length, ngroups, dstate)   D (nheads,) or (nheads, headdim)
    initial_state / final state (batch, nheads, headdim, dstate)

Unlike the kernel, `dt` here is the final step size (softplus, bias and limits already applied by the caller).
`A` may also be (batch, 1, nheads), which lets one call scan several modules' batches stacked together.
"""

import torch
import torch.nn.functional as F

# Chunk length of the CPU path: best (or within 12 %) at every length measured on 2-core CPUs, forward and
# backward (see docs/BENCHMARK.md). The GPU kernels keep their own `chunk_size` (256 by default).
CPU_CHUNK_SIZE = 64


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 stays float64 (tests); anything else is computed in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def segsum_exp(dA: torch.Tensor) -> torch.Tensor:
    """(..., Q) log-decays -> (..., Q, Q) with [i, j] = exp(dA[j+1] + ... + dA[i]) for i >= j, else 0.

    Built from a masked cumulative sum rather than a difference of cumsums (no cancellation), and masked with
    -inf before the exp, so neither the output nor its gradient ever sees inf * 0.
    """
    size = dA.shape[-1]
    ones = torch.ones(size, size, dtype=torch.bool, device=dA.device)
    below = torch.tril(ones, diagonal=-1)
    sums = torch.where(below, dA.unsqueeze(-1), 0.0).cumsum(dim=-2)
    return sums.masked_fill(~torch.tril(ones), float("-inf")).exp()


def _check_shapes(x: torch.Tensor, dt: torch.Tensor, B: torch.Tensor, C: torch.Tensor) -> None:
    batch, length, nheads, _ = x.shape
    if dt.shape != (batch, length, nheads):
        raise ValueError(f"dt has shape {tuple(dt.shape)}, expected {(batch, length, nheads)}")
    if B.shape != C.shape or B.shape[:2] != (batch, length) or nheads % B.shape[2] != 0:
        raise ValueError(
            f"B {tuple(B.shape)} and C {tuple(C.shape)} must both be (batch={batch}, length={length}, "
            f"ngroups, dstate) with ngroups dividing nheads={nheads}"
        )


def _add_skip(y: torch.Tensor, x: torch.Tensor, D: torch.Tensor | None) -> torch.Tensor:
    """y + D * x, with D (nheads,) or (nheads, headdim)."""
    if D is None:
        return y
    return y + x * (D.unsqueeze(-1) if D.dim() == 1 else D).to(y.dtype)


def ssd_chunked(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int = CPU_CHUNK_SIZE,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Chunked SSD scan; returns y (like x), and the final state too if `return_final_state`.

    Any length works: the tail is zero-padded to a chunk multiple, which is exact (dt = 0 means no decay and no
    input), final state included. dt, dA and their cumsums are float32 (float64 for float64 inputs).
    """
    _check_shapes(x, dt, B, C)
    batch, length, nheads, headdim = x.shape
    ngroups, dstate = B.shape[2], B.shape[3]
    heads_per_group = nheads // ngroups
    dtype = _compute_dtype(x)
    nchunks = -(-length // chunk_size)
    pad = nchunks * chunk_size - length

    dt = dt.to(dtype)
    dA = dt * A.to(dtype)
    x_dt = x.to(dtype) * dt.unsqueeze(-1)
    B, C = B.to(dtype), C.to(dtype)
    if pad:
        dA, x_dt, B, C = (F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) for t in (dA, x_dt, B, C))

    # Chunked views: c = chunk index, q = position inside the chunk.
    x_dt = x_dt.view(batch, nchunks, chunk_size, ngroups, heads_per_group * headdim)
    B = B.view(batch, nchunks, chunk_size, ngroups, dstate).transpose(2, 3)  # (b, c, g, q, n)
    C = C.view(batch, nchunks, chunk_size, ngroups, dstate).transpose(2, 3)  # (b, c, g, q, n)
    dA = dA.view(batch, nchunks, chunk_size, nheads).transpose(2, 3)  # (b, c, h, q)
    decay = segsum_exp(dA)  # (b, c, h, q, q): decay from step j (exclusive) to step i (inclusive)
    decay_in = dA.cumsum(dim=-1).exp()  # (b, c, h, q): from the chunk start to step i
    decay_out = decay[..., -1, :]  # (b, c, h, q): from step j to the chunk end
    decay_chunk = decay_in[..., -1]  # (b, c, h): across the whole chunk

    # 1. Inside each chunk: y_diag[i] = sum_j (C_i . B_j) * decay[i, j] * dt_j x_j.
    scores = C @ B.transpose(-1, -2)  # (b, c, g, q, q)
    scores = scores.unsqueeze(3) * decay.view(batch, nchunks, ngroups, heads_per_group, chunk_size, chunk_size)
    x_heads = x_dt.view(batch, nchunks, chunk_size, nheads, headdim).transpose(2, 3)  # (b, c, h, q, p)
    y_diag = scores.view(batch, nchunks, nheads, chunk_size, chunk_size) @ x_heads  # (b, c, h, q, p)

    # 2. State contributed by each chunk alone: sum_j decay_out[j] * dt_j x_j ⊗ B_j.
    x_out = x_heads * decay_out.unsqueeze(-1)  # (b, c, h, q, p)
    x_out = x_out.view(batch, nchunks, ngroups, heads_per_group, chunk_size, headdim)
    x_out = x_out.transpose(3, 4).reshape(batch, nchunks, ngroups, chunk_size, heads_per_group * headdim)
    chunk_states = x_out.transpose(-1, -2) @ B  # (b, c, g, hg * p, n)
    chunk_states = chunk_states.view(batch, nchunks, nheads, headdim, dstate)

    # 3. State entering each chunk: O(nchunks) recurrence. unbind + stack keeps the backward linear in the
    #    number of chunks (indexing or writing into a buffer here makes it quadratic).
    state = (
        torch.zeros_like(chunk_states[:, 0])
        if initial_state is None
        else initial_state.to(dtype).expand(batch, nheads, headdim, dstate)
    )
    entering = []
    for local, chunk_decay in zip(chunk_states.unbind(1), decay_chunk.unbind(1), strict=True):
        entering.append(state)
        state = torch.addcmul(local, state, chunk_decay[..., None, None])
    states_in = torch.stack(entering, dim=1)  # (b, c, h, p, n)

    # 4. Contribution of the entering state: y_off[i] = decay_in[i] * C_i . S_in.
    states_in = states_in.view(batch, nchunks, ngroups, heads_per_group * headdim, dstate)
    y_off = C @ states_in.transpose(-1, -2)  # (b, c, g, q, hg * p)
    y_off = y_off.view(batch, nchunks, ngroups, chunk_size, heads_per_group, headdim).transpose(2, 3)
    y_off = y_off.reshape(batch, nchunks, chunk_size, nheads, headdim)
    y = torch.addcmul(y_diag.transpose(2, 3), y_off, decay_in.transpose(2, 3).unsqueeze(-1))
    y = y.reshape(batch, nchunks * chunk_size, nheads, headdim)[:, :length]
    y = _add_skip(y, x.to(dtype), D).to(x.dtype)
    return (y, state.to(x.dtype)) if return_final_state else y


def ssd_reference(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The same scan, one step at a time (slow; a test oracle). Same arguments as `ssd_chunked`."""
    _check_shapes(x, dt, B, C)
    batch, length, nheads, headdim = x.shape
    heads_per_group = nheads // B.shape[2]
    dtype = _compute_dtype(x)
    dt = dt.to(dtype)
    decay = torch.exp(dt * A.to(dtype))  # (b, l, h)
    B = B.to(dtype).repeat_interleave(heads_per_group, dim=2)  # (b, l, h, n)
    C = C.to(dtype).repeat_interleave(heads_per_group, dim=2)
    xf = x.to(dtype)
    state = (
        xf.new_zeros(batch, nheads, headdim, B.shape[-1])
        if initial_state is None
        else initial_state.to(dtype).expand(batch, nheads, headdim, B.shape[-1])
    )
    ys = []
    for t in range(length):
        inject = (dt[:, t, :, None] * xf[:, t]).unsqueeze(-1) * B[:, t].unsqueeze(-2)  # (b, h, p, n)
        state = decay[:, t, :, None, None] * state + inject
        ys.append((state * C[:, t].unsqueeze(-2)).sum(-1))
    y = _add_skip(torch.stack(ys, dim=1), xf, D).to(x.dtype)
    return (y, state.to(x.dtype)) if return_final_state else y
