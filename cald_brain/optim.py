"""Optimizer parameter groups with their own learning rates, chosen by parameter-name prefix.

Fine-tuning a pretrained encoder with a freshly initialised task head wants two learning rates (SpeechBrain's
wav2vec2 recipes use two optimizers for this): a small one for the pretrained weights and a large one for
the head. `lr_by_prefix: {head: 0.01}` in a recipe's YAML gives every parameter whose name starts with
`head` (names as in the network's `named_parameters()`) that learning rate; the rest keeps the optimizer's.
"""

from collections.abc import Iterable

import torch


def param_groups(
    named_parameters: Iterable[tuple[str, torch.nn.Parameter]], lr_by_prefix: dict[str, float] | None
) -> list[dict]:
    """Split trainable parameters into optimizer groups.

    The first group holds the parameters no prefix matches (it keeps the optimizer's `lr`); then one group
    per prefix with `lr` set. A prefix matches a name equal to it or starting with `prefix + "."`; the longest
    matching prefix wins. A prefix that matches no trainable parameter is an error (a typo would otherwise
    silently train the head at the encoder's rate).
    """
    lr_by_prefix = dict(lr_by_prefix or {})
    prefixes = sorted(lr_by_prefix, key=len, reverse=True)
    default: list[torch.nn.Parameter] = []
    grouped: dict[str, list[torch.nn.Parameter]] = {p: [] for p in prefixes}
    for name, param in named_parameters:
        if not param.requires_grad:
            continue
        match = next((p for p in prefixes if name == p or name.startswith(p + ".")), None)
        (grouped[match] if match is not None else default).append(param)
    unused = [p for p in prefixes if not grouped[p]]
    if unused:
        raise ValueError(
            f"lr_by_prefix: no trainable parameter name starts with {', '.join(map(repr, unused))}; "
            "use module paths of the network, e.g. 'head' or 'encoder.model.encoder.layers.0'"
        )
    groups = [{"params": default}] if default else []
    groups += [{"params": grouped[p], "lr": float(lr_by_prefix[p])} for p in prefixes]
    return groups
