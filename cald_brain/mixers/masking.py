"""Padding helpers shared by the mixers. Convention: a boolean mask (batch, length), True = real frame;
padding is always at the end of each item."""

import torch


def lengths_to_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(batch,) valid lengths -> (batch, max_len) boolean mask, True on real frames."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def resolve_lengths(
    x: torch.Tensor, mask: torch.Tensor | None = None, lengths: torch.Tensor | None = None
) -> torch.Tensor | None:
    """Valid lengths from either a mask or lengths (None when neither is given: no padding).

    Raises ValueError for a mask whose shape does not match `x`, or for a mask with holes (padding must be
    at the end of each item).
    """
    if mask is None:
        return None if lengths is None else lengths.to(device=x.device, dtype=torch.long)
    if mask.shape != x.shape[:2]:
        raise ValueError(f"padding mask has shape {tuple(mask.shape)}, expected {tuple(x.shape[:2])}")
    mask = mask.to(device=x.device, dtype=torch.bool)
    found = mask.sum(dim=1)
    if not torch.compiler.is_exporting() and not torch.equal(mask, lengths_to_mask(found, mask.shape[1])):
        # (a data-dependent check: skipped while torch.export traces the model)
        raise ValueError("padding mask must be True on a prefix of each item (right padding only)")
    return found


def reverse_padded(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Reverse each item of (batch, length, ...) within its first `lengths[b]` frames; padding stays put."""
    if lengths is None:
        return x.flip(1)
    length = x.shape[1]
    pos = torch.arange(length, device=x.device)[None, :]
    idx = torch.where(pos < lengths[:, None], lengths[:, None] - 1 - pos, pos)
    idx = idx.view(*idx.shape, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(1, idx)
