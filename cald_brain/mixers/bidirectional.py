"""Bidirectional Mamba2: the drop-in replacement of a speech transformer's self-attention used by CALD."""

import torch
from torch import nn

from .mamba2 import Mamba2
from .masking import lengths_to_mask, resolve_lengths, reverse_padded


class BiMamba2(nn.Module):
    """Two independent Mamba2 mixers, one reading each item forwards, one backwards; outputs summed.

    The backward mixer reads each item reversed within its own valid length (padding stays at the end), so
    with right padding neither direction ever sees a padded frame: outputs on real frames do not depend on the
    padding, and padded output frames are exactly zero. Then, in this order: `residual_inside` adds the input,
    `drop_non_finite` zeroes inf/NaN values, `post_norm` applies a LayerNorm (`norm`).
    Submodules: `mamba_fwd`, `mamba_bwd` (mamba_ssm Mamba2 layout each) and optionally `norm`.
    """

    def __init__(
        self,
        d_model: int,
        expand: int = 1,
        residual_inside: bool = False,
        post_norm: bool = False,
        drop_non_finite: bool = False,
        **mamba2_kwargs,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.residual_inside = residual_inside
        self.drop_non_finite = drop_non_finite
        self.mamba_fwd = Mamba2(d_model, expand=expand, **mamba2_kwargs)
        self.mamba_bwd = Mamba2(d_model, expand=expand, **mamba2_kwargs)
        factory_kwargs = {k: mamba2_kwargs[k] for k in ("device", "dtype") if k in mamba2_kwargs}
        self.norm = nn.LayerNorm(d_model, **factory_kwargs) if post_norm else None

    def forward(
        self,
        hidden_states: torch.Tensor,
        mask: torch.Tensor | None = None,
        lengths: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(batch, length, d_model) -> same. `mask` (batch, length) is True on real frames (right padding
        only), or give the valid `lengths` (batch,); neither means no padding."""
        lengths = resolve_lengths(hidden_states, mask, lengths)
        backward = self.mamba_bwd(reverse_padded(hidden_states, lengths))
        out = self.mamba_fwd(hidden_states).add_(reverse_padded(backward, lengths))  # in place: a new tensor
        if self.residual_inside:
            out = out.add_(hidden_states)
        if self.drop_non_finite:
            out = torch.where(torch.isfinite(out), out, 0.0)
        if self.norm is not None:
            out = self.norm(out)
        if lengths is not None:  # exact zeros, even where padded frames held inf or NaN
            out = out.masked_fill(~lengths_to_mask(lengths, out.shape[1]).unsqueeze(-1), 0.0)
        return out

    def forward_in_pieces(self, hidden_states: torch.Tensor, piece: int) -> torch.Tensor:
        """Inference on one long unpadded sequence: `forward` with each direction computed `piece` steps at a
        time, its state carried across pieces (`Mamba2.forward_in_pieces`): equal up to float rounding, with
        the mixers' temporaries for one piece only."""
        out = self.mamba_fwd.forward_in_pieces(hidden_states, piece)
        out = self.mamba_bwd.forward_in_pieces(hidden_states, piece, reverse=True, out=out)
        if self.residual_inside:
            out = out.add_(hidden_states)
        if self.drop_non_finite:
            out = torch.where(torch.isfinite(out), out, 0.0)
        return out if self.norm is None else self.norm(out)
