"""Linear-time token mixers, each a drop-in for one self-attention module.

Parameter names and shapes follow mamba_ssm, so state dicts move between the pure-PyTorch (CPU) path and the
CUDA kernels. The kernel choice is made inside each mixer, never by the caller.
"""

from importlib import import_module

_EXPORTS = {
    "Mamba2": ".mamba2",
    "Mamba": ".mamba",
    "BiMamba2": ".bidirectional",
    "LinformerSelfAttention": ".linformer",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    """Import a mixer module on first use, so `import cald_brain.mixers` stays cheap."""
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
