"""Linformer self-attention (Wang et al. 2020) as used by CALD to replace RoBERTa/BERT self-attention.

Keys and values are projected along the sequence axis, (length, hidden) -> (k, hidden), by learned
(max_len, k) matrices, so attention costs O(length * k). As in the CALD reference, each item uses only the
first `length` rows of the matrix (its valid frames) and the projection is scaled by 1 / sqrt(length).

Initialisation: normal with std 1, as in the CALD reference. With the 1 / sqrt(length) scaling each projected
key/value row is then a random mix of the valid rows whose variance equals theirs, whatever the length, so the
attention logits start at the scale the pretrained Q/K weights expect.

The query/key/value layers keep Hugging Face BERT/RoBERTa names (`query`, `key`, `value`) so a converter can
copy them; the output dense layer stays in the host model (this module returns the context only).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from .masking import lengths_to_mask, resolve_lengths

SHARE_MODES = ("none", "kv", "layer")


class LinformerProjection(nn.Module):
    """A learned (max_len, k) sequence-axis projection (share="layer": one object given to every layer)."""

    def __init__(self, max_len: int, k: int = 256):
        super().__init__()
        self.max_len = max_len
        self.k = k
        self.weight = nn.Parameter(torch.empty(max_len, k))
        nn.init.normal_(self.weight, std=1.0)

    def forward(self, x: torch.Tensor, valid: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Project x (batch, length, dim) to (batch, k, dim) using, per item, only its valid rows.

        `valid` is the (batch, length) mask and `lengths` the (batch,) valid lengths. Pad rows of the matrix
        are zeroed per item (no loop over the batch), so pad frames contribute nothing.
        """
        scale = valid.to(x.dtype) / lengths.clamp(min=1).to(x.dtype).sqrt()[:, None]  # (batch, length)
        per_item = self.weight[: x.shape[1]].to(x.dtype)[None] * scale[..., None]  # (batch, length, k)
        return per_item.transpose(1, 2) @ x

    def extra_repr(self) -> str:
        return f"max_len={self.max_len}, k={self.k}"


class LinformerSelfAttention(nn.Module):
    """Multi-head Linformer self-attention: (batch, length, hidden_size) -> context of the same shape.

    share: "none" (separate `key_projection` and `value_projection`), "kv" (one `projection` for keys and
    values), "layer" (one `projection` for keys and values shared by all layers: pass the same
    `LinformerProjection(max_len, k)` object as `shared_projection` to every layer; model.parameters()
    counts it once). Padded output frames are zero.
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        max_len: int,
        k: int = 256,
        share: str = "none",
        dropout: float = 0.0,
        shared_projection: LinformerProjection | None = None,
        bias: bool = True,
    ):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"Linformer: hidden_size {hidden_size} not divisible by num_heads {num_heads}")
        if share not in SHARE_MODES:
            raise ValueError(f"Linformer: share must be one of {SHARE_MODES}, got {share!r}")
        if (share == "layer") != (shared_projection is not None):
            raise ValueError(
                "Linformer: share='layer' needs shared_projection=LinformerProjection(max_len, k), created "
                f"once and passed to every layer; other modes must not pass one (got share={share!r})"
            )
        if shared_projection is not None and (shared_projection.max_len, shared_projection.k) != (max_len, k):
            raise ValueError(
                f"Linformer: shared_projection has (max_len, k) = ({shared_projection.max_len}, "
                f"{shared_projection.k}), but this layer was given ({max_len}, {k})"
            )
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.max_len = max_len
        self.k = k
        self.share = share
        self.dropout = dropout

        self.query = nn.Linear(hidden_size, hidden_size, bias=bias)
        self.key = nn.Linear(hidden_size, hidden_size, bias=bias)
        self.value = nn.Linear(hidden_size, hidden_size, bias=bias)
        if share == "none":
            self.key_projection = LinformerProjection(max_len, k)
            self.value_projection = LinformerProjection(max_len, k)
        else:
            self.projection = shared_projection if share == "layer" else LinformerProjection(max_len, k)

    def _projections(self) -> tuple[LinformerProjection, LinformerProjection]:
        if self.share == "none":
            return self.key_projection, self.value_projection
        return self.projection, self.projection

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, n, hidden) -> (batch, heads, n, head_dim)."""
        return x.view(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self,
        hidden_states: torch.Tensor,
        mask: torch.Tensor | None = None,
        lengths: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """hidden_states (batch, length, hidden); mask (batch, length), True on real frames, or lengths."""
        batch, length, _ = hidden_states.shape
        if length > self.max_len:
            raise ValueError(
                f"Linformer: input has {length} frames but the projections cover max_len={self.max_len}; "
                "create the layers with a larger max_len (e.g. the source model's max_position_embeddings) "
                "or truncate the inputs"
            )
        lengths = resolve_lengths(hidden_states, mask, lengths)
        if lengths is None:
            lengths = torch.full((batch,), length, device=hidden_states.device)
        elif bool((lengths > length).any()):
            raise ValueError(f"Linformer: lengths {lengths.tolist()} exceed the input length {length}")
        valid = lengths_to_mask(lengths, length)

        key_projection, value_projection = self._projections()
        keys = key_projection(self.key(hidden_states), valid, lengths)  # (batch, k, hidden)
        values = value_projection(self.value(hidden_states), valid, lengths)
        context = F.scaled_dot_product_attention(
            self._split_heads(self.query(hidden_states)),
            self._split_heads(keys),
            self._split_heads(values),
            dropout_p=self.dropout if self.training else 0.0,
        )  # softmax(q k^T / sqrt(head_dim)) v, with dropout on the attention probabilities
        context = context.transpose(1, 2).reshape(batch, length, self.hidden_size)
        return context * valid[..., None].to(context.dtype)

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, max_len={self.max_len}, k={self.k}, share={self.share!r}"
