"""Compute a frozen front end once per step for student and teacher.

In every guided mode the student and its teacher hold the same frozen convolutional feature encoder: the
recipes freeze it (`freeze_feature_encoder: True`) and the student starts from the teacher's source weights
or from the teacher itself. Its output is then the same for both networks, and at base width on a CPU it is
about a quarter of the teacher's forward pass. `share_front_end` links the two modules: when one of them is
called on an input that the other has just processed, with equal weights and neither needing gradients, it
returns the other's output instead of computing it again. Every condition is checked on each call (inputs
and weights compared exactly, a few milliseconds), so a teacher snapshot with other weights, an unfrozen
encoder or a different batch simply computes its own output: sharing never changes a result.

The link replaces the modules' `forward` on the instance only: module structure and state-dict keys stay as
they are.
"""

from collections.abc import Callable

import torch
from torch import nn


def _autocast_state(device_type: str) -> tuple[bool, torch.dtype | None]:
    enabled = torch.is_autocast_enabled(device_type)
    return enabled, torch.get_autocast_dtype(device_type) if enabled else None


class SharedFrontEnd:
    """The last output of any linked module, reused by the others when input, weights and autocast agree.

    `offers` counts calls that found another module's output held, `hits` those that reused it (the engine
    logs both once an epoch: fewer hits than offers means the encoders differ and each runs its own);
    `clear()` drops the held tensors (the engine calls it after every batch, so no activation outlives it)."""

    def __init__(self) -> None:
        self.modules: list[nn.Module] = []
        self.hits = self.offers = 0
        self._last: tuple[nn.Module, torch.Tensor, tuple, torch.Tensor] | None = None

    def link(self, module: nn.Module) -> None:
        """Route `module`'s calls through this cache (idempotent)."""
        if any(m is module for m in self.modules):
            return
        original: Callable = module.forward
        module.forward = lambda inputs: self._forward(module, original, inputs)
        self.modules.append(module)

    def unlink(self) -> None:
        """Give every linked module its own forward back (e.g. to time the step without sharing)."""
        for module in self.modules:
            del module.forward
        self.modules, self._last = [], None

    def clear(self) -> None:
        """Drop the held output (and the input it was computed from)."""
        self._last = None

    def _forward(self, module: nn.Module, original: Callable, inputs: torch.Tensor) -> torch.Tensor:
        autocast = _autocast_state(inputs.device.type)
        if self._last is not None and self._last[0] is not module:
            owner, last_inputs, last_autocast, output = self._last
            self.offers += 1
            if (
                last_autocast == autocast
                and not any(p.requires_grad for p in module.parameters())
                and _same_tensor(inputs, last_inputs)
                and _same_weights(module, owner)
            ):
                self.hits += 1
                return output
        output = original(inputs)
        # an output that needs gradients belongs to its own graph: never hand it to another network
        self._last = None if output.requires_grad else (module, inputs, autocast, output)
        return output


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a is b:
        return True
    return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    """Equal parameters and buffers, name by name (same names, dtypes, devices and values)."""
    sa, sb = a.state_dict(keep_vars=True), b.state_dict(keep_vars=True)
    return sa.keys() == sb.keys() and all(_same_tensor(sa[k].detach(), sb[k].detach()) for k in sa)


def share_front_end(student: nn.Module, teacher: nn.Module) -> SharedFrontEnd | None:
    """Link the frozen front ends of `student` and `teacher` (each model's `frozen_front_end()`, e.g. the
    wav2vec2 convolutional feature encoder), or None when either model has none to share."""
    modules = [getattr(net, "frozen_front_end", lambda: None)() for net in (student, teacher)]
    if any(m is None for m in modules) or modules[0] is modules[1]:
        return None
    shared = SharedFrontEnd()
    for module in modules:
        shared.link(module)
    return shared
