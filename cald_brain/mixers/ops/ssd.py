"""State-space duality (SSD) scan of Mamba2 in plain PyTorch: the CPU / fallback path of `Mamba2`.

The recurrence, per batch item b, head h and step t (state S of shape (headdim, dstate)):

    S_t = exp(dt_t * A_h) * S_{t-1} + dt_t * x_t ⊗ B_t        y_t = S_t · C_t + D_h * x_t

`ssd_chunked` computes it in chunks of `chunk_size` steps (Dao & Gu 2024, section 6): inside a chunk as a
masked "attention" (C·Bᵀ ∘ decay) @ (dt·x); between chunks through one state per chunk, carried by an
O(chunks) loop. Every heavy step is a batched GEMM. `ssd_reference` is the plain step-by-step loop, kept as
a test oracle. Shapes follow `mamba_ssm.ops.triton.ssd_combined.mamba_chunk_scan_combined`:

    x (batch, length, nheads, headdim)   dt (batch, length, nheads)   A (nheads,)
    B, C (batch, length, ngroups, dstate)   D (nheads,) or (nheads, headdim)
    initial_state / final state (batch, nheads, headdim, dstate)

Unlike the kernel, `dt` here is the final step size (softplus, bias and limits already applied by the caller).
A and D may also differ per batch item, A as (batch, 1, nheads) and D as (batch, 1, nheads, 1 or headdim):
one call can then scan the batches of several modules stacked together.
"""

import torch

# Chunk length of the CPU path, chosen by measurement (docs/BENCHMARK.md). The GPU kernels keep their
# own `chunk_size` (256 by default).
CPU_CHUNK_SIZE = 32


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 stays float64 (tests); anything else is computed in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def segsum_exp(dA: torch.Tensor) -> torch.Tensor:
    """(..., Q) log-decays -> (..., Q, Q) with [j, i] = exp(dA[j+1] + ... + dA[i]) for i >= j, else 0.

    Note the orientation: row j is the source step, column i the target step, so that both the cumulative
    sum and the exp run along the contiguous last axis (docs/BENCHMARK.md). The sums are
    masked cumulative sums, not differences of one cumsum (no cancellation), and the -inf mask is applied
    before the exp, so neither the output nor its gradient ever meets inf * 0. In-place steps are ones
    autograd allows (cumsum and add do not save their output; exp saves its own result).
    """
    size = dA.shape[-1]
    after = torch.ones(size, size, dtype=torch.bool, device=dA.device).triu(diagonal=1)  # [j, k]: k > j
    sums = dA.unsqueeze(-2) * after.to(dA.dtype)  # [j, k] = dA[k] for k > j
    sums.cumsum_(dim=-1)  # [j, i] = dA[j+1] + ... + dA[i], exactly 0 for i <= j
    before = torch.zeros(size, size, dtype=dA.dtype, device=dA.device).masked_fill_(after.T, float("-inf"))
    return sums.add_(before).exp_()


def _check_shapes(x: torch.Tensor, dt: torch.Tensor, B: torch.Tensor, C: torch.Tensor) -> None:
    batch, length, nheads, _ = x.shape
    if dt.shape != (batch, length, nheads):
        raise ValueError(f"dt has shape {tuple(dt.shape)}, expected {(batch, length, nheads)}")
    if B.shape != C.shape or B.shape[:2] != (batch, length) or nheads % B.shape[2] != 0:
        raise ValueError(
            f"B {tuple(B.shape)} and C {tuple(C.shape)} must both be (batch={batch}, length={length}, "
            f"ngroups, dstate) with ngroups dividing nheads={nheads}"
        )


def _pad_steps(t: torch.Tensor, pad: int) -> torch.Tensor:
    """Zero-pad the step axis (dim 1) of t at the end: one copy (F.pad writes the whole output twice), none
    when pad is 0."""
    if not pad:
        return t
    return torch.cat([t, t.new_zeros(t.shape[0], pad, *t.shape[2:])], dim=1)


def _skip_weights(D: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """D made broadcastable against x (batch, length, nheads, headdim): (nheads,) becomes (nheads, 1)."""
    return None if D is None else (D.unsqueeze(-1) if D.dim() == 1 else D).to(dtype)


def _add_skip(y: torch.Tensor, x: torch.Tensor, D: torch.Tensor | None) -> torch.Tensor:
    """y + D * x, D as returned by `_skip_weights`."""
    return y if D is None else torch.addcmul(y, x, D)


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
    """Chunked SSD scan; returns y (like x), and the final state (float32) too if `return_final_state`.

    Any length works: the tail is zero-padded to a chunk multiple, which is exact (dt = 0 means no decay and
    no input), final state included. dt, dA and their cumsums are float32 (float64 for float64 inputs).
    Everything that does not depend on the carried state is computed for all chunks at once; the loop over
    chunks holds three ops (a GEMM, a multiply and a GEMM-accumulate) on a state that stays in cache, and
    never builds a (chunks, heads, headdim, dstate) tensor in the forward pass.
    """
    _check_shapes(x, dt, B, C)
    batch, length, nheads, headdim = x.shape
    ngroups, dstate = B.shape[2], B.shape[3]
    heads_per_group = nheads // ngroups
    out_dtype, dtype = x.dtype, _compute_dtype(x)
    nchunks = -(-length // chunk_size)
    pad = nchunks * chunk_size - length

    # Decays, (b, c, h, q[, q]) with c = chunk and q = step inside the chunk.
    dt = _pad_steps(dt.to(dtype), pad).view(batch, nchunks, chunk_size, nheads).transpose(2, 3)
    dA = dt * A.to(dtype).unsqueeze(-1)  # A: (h,) or (b, 1, h), against dt (b, c, h, q)
    decay = segsum_exp(dA)  # [j, i]: from step j (exclusive) to step i (inclusive)
    decay_in = dA.cumsum(dim=-1).exp()  # from the chunk start to step i (inclusive)
    decay_chunk = decay_in[..., -1]  # (b, c, h): across the whole chunk

    x, B, C = (_pad_steps(t.to(dtype), pad) for t in (x, B, C))
    x = x.view(batch, nchunks, chunk_size, nheads, headdim)
    B = B.view(batch, nchunks, chunk_size, ngroups, dstate).transpose(2, 3)  # (b, c, g, q, n)
    C = C.view(batch, nchunks, chunk_size, ngroups, dstate).transpose(2, 3)

    # 1. Inside each chunk, a masked "attention": y[i] = sum_j (C_i . B_j) decay[j, i] dt[j] x[j] (+ D x[i]).
    #    The scores are kept as [source j, target i] and used transposed by the GEMM. In-place steps here and
    #    below only touch fresh tensors that autograd allows to change; they spare allocations without grad.
    weight_out = (decay[..., -1] * dt).transpose(2, 3).unsqueeze(-1)  # (b, c, q, h, 1): decay[j, end] dt[j]
    scores = (B @ C.transpose(-1, -2)).unsqueeze(3) * decay.unflatten(2, (ngroups, heads_per_group))
    del decay
    scores = scores.flatten(2, 3).mul_(dt.unsqueeze(-1))  # (b, c, h, q, q)
    D = _skip_weights(D, dtype)
    skip_on_diagonal = D is not None and D.shape[-1] == 1  # one D per head: D x[i] is a diagonal score
    if skip_on_diagonal:
        scores.diagonal(dim1=-2, dim2=-1).add_(D)
    y_diag = scores.transpose(-1, -2) @ x.transpose(2, 3)  # (b, c, h, q, p)
    del scores

    # 2. State carried across chunks: S <- decay_chunk S + sum_j decay[j, end] dt[j] x[j] ⊗ B[j], and each
    #    chunk reads the state entering it: y[i] += decay_in[i] C_i . S. unbind + stack (never indexing or
    #    writing into a buffer in the loop) keeps the backward pass linear in the number of chunks.
    #    The state is kept as (b * g, hg * p, n) so that each update is one fused GEMM: S <- (decay S) + Xᵀ B.
    rows = (batch * ngroups, heads_per_group * headdim)
    x_out = (x * weight_out).view(batch, nchunks, chunk_size, ngroups, rows[1]).permute(1, 0, 3, 4, 2)
    decay_rows = decay_chunk.repeat_interleave(headdim, dim=-1).transpose(0, 1).reshape(nchunks, *rows, 1)
    state = x.new_zeros(batch, nheads, headdim, dstate) if initial_state is None else initial_state.to(dtype)
    state = state.expand(batch, nheads, headdim, dstate).reshape(*rows, dstate)
    y_off = []
    for x_k, B_k, C_k, decay_k in zip(
        x_out.unbind(0), B.unbind(1), C.unbind(1), decay_rows.unbind(0), strict=True
    ):
        C_k = C_k.reshape(rows[0], -1, dstate)  # (b * g, q, n)
        y_off.append(C_k @ state.transpose(-1, -2))  # (b * g, q, hg * p)
        state = (state * decay_k).baddbmm_(x_k.reshape(*rows, -1), B_k.reshape(rows[0], -1, dstate))
    del x_out
    y = torch.stack(y_off, dim=1).view(batch, ngroups, nchunks, chunk_size, heads_per_group, headdim)
    y = y.permute(0, 2, 3, 1, 4, 5).reshape(batch, nchunks, chunk_size, nheads, headdim)
    del y_off
    y = y.mul_(decay_in.transpose(2, 3).unsqueeze(-1)).add_(y_diag.transpose(2, 3))  # (b, c, q, h, p)
    y = y.flatten(1, 2)[:, :length]
    if not skip_on_diagonal:
        y = _add_skip(y, x.flatten(1, 2)[:, :length], D)
    y = y.to(out_dtype)
    return (y, state.view(batch, nheads, headdim, dstate)) if return_final_state else y


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
    y = _add_skip(torch.stack(ys, dim=1), xf, _skip_weights(D, dtype)).to(x.dtype)
    return (y, state) if return_final_state else y
