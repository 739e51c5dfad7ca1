"""Attention surgery: replace every self-attention of a Hugging Face model by a linear-time mixer, in place.

One `Adapter` per model family says where the attention modules are, how to read their weights and which
module stands in their place; adapters register themselves by `config.model_type`.
"""

import json
import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel

from .build import INITS, MIXERS, AttentionWeights, MixerFactory, MixerSpec, init_from_attention
from .modules import CALD_ATTN_IMPLEMENTATION, MixerAttention

logger = logging.getLogger(__name__)

CONVERSION_KEY = "cald_conversion"
_DERIVED_KWARGS = ("d_model", "hidden_size", "num_heads", "shared_projection")


class Adapter:
    """How one model family is converted. Subclasses set the class attributes and the three methods.

    model_types: the `config.model_type` values handled. default_mixer: used when convert() gets mixer=None.
    causal: the family is a causal LM (only causal mixers fit). owns_output_projection: the replaced module
    includes the attention's output projection (a Linformer host then gets its own `out_proj`).
    host_class: the MixerAttention subclass whose forward matches what the family's layers call.
    uses_mask_interface: the model builds its attention masks through `transformers.masking_utils`, so the
    student's attn_implementation is switched to the 2-D padding-mask pass-through.
    """

    model_types: tuple[str, ...] = ()
    default_mixer: str = ""
    causal: bool = False
    owns_output_projection: bool = True
    host_class: type[MixerAttention] = MixerAttention
    uses_mask_interface: bool = True

    def check(self, config: PreTrainedConfig) -> None:
        """Raise for configurations of the family that cannot be converted."""

    def attention_sites(self, model: PreTrainedModel) -> list[tuple[nn.Module, str]]:
        """(parent module, attribute name) of every self-attention module to replace, in layer order."""
        raise NotImplementedError

    def attention_weights(self, attention: nn.Module) -> AttentionWeights:
        """The Q/K/V(/O) projections of one attention module."""
        raise NotImplementedError

    def mixer_defaults(self, mixer: str) -> dict[str, Any]:
        """Mixer arguments this family uses unless the caller gives them (recorded with the conversion)."""
        return {}

    def linformer_defaults(self, config: PreTrainedConfig) -> dict[str, Any]:
        """Linformer arguments from the source config (max_len, dropout), unless the caller gives them."""
        return {}

    def prepare(self, model: PreTrainedModel) -> None:
        """Family-specific settings of the converted model (called once, after the replacement)."""
        if self.uses_mask_interface:
            model.set_attn_implementation(CALD_ATTN_IMPLEMENTATION)


_ADAPTERS: dict[str, Adapter] = {}


def register_adapter(adapter: Adapter) -> Adapter:
    """Make `adapter` handle its model types (a later registration of the same type replaces the earlier)."""
    for model_type in adapter.model_types:
        _ADAPTERS[model_type] = adapter
    return adapter


def supported_model_types() -> tuple[str, ...]:
    return tuple(sorted(_ADAPTERS))


def adapter_for(model_type: str) -> Adapter:
    if model_type not in _ADAPTERS:
        raise ValueError(
            f"cald_brain.convert has no adapter for model_type {model_type!r}; supported model types: "
            f"{', '.join(supported_model_types())}"
        )
    return _ADAPTERS[model_type]


@dataclass(frozen=True)
class ParameterCount:
    """Parameters (elements) of a conversion: kept untouched, removed with the attention modules, added with
    the new mixers; `copied` of the added ones were initialised from the attention weights."""

    kept: int
    removed: int
    added: int
    copied: int

    @property
    def before(self) -> int:
        return self.kept + self.removed

    @property
    def after(self) -> int:
        return self.kept + self.added

    def __str__(self) -> str:
        return (
            f"kept {self.kept:,}, removed (attention) {self.removed:,}, added (mixers) {self.added:,} "
            f"({self.copied:,} copied from attention); total {self.before:,} -> {self.after:,}"
        )


def _numel(modules: list[nn.Module]) -> int:
    """Elements of the distinct parameters of `modules` (a parameter shared by several counts once)."""
    params = {id(p): p for m in modules for p in m.parameters()}
    return sum(p.numel() for p in params.values())


def _resolve_direction(
    adapter: Adapter, spec: MixerSpec, model_type: str, unidirectional: bool | None
) -> bool:
    """Whether the student mixes causally; raises when the mixer does not fit the family."""
    if adapter.causal:
        if spec.bidirectional:
            raise ValueError(
                f"mixer={spec.name!r} sees future tokens, but {model_type!r} is a causal LM; use "
                "mixer='mamba' or 'mamba2'"
            )
        if unidirectional is False:
            raise ValueError(
                f"{model_type!r} is a causal LM: its student is unidirectional (drop unidirectional)"
            )
        return True
    if spec.bidirectional:
        if unidirectional:
            raise ValueError(
                f"mixer={spec.name!r} is bidirectional; unidirectional=True needs 'mamba' or 'mamba2'"
            )
        return False
    if not unidirectional:
        raise ValueError(
            f"mixer={spec.name!r} is causal, but {model_type!r} is a bidirectional encoder: each frame would "
            "only see the past. Pass unidirectional=True to accept that, or use 'bimamba2' / 'linformer'"
        )
    return True


def _check_arguments(mixer: str, init: str, mixer_kwargs: dict[str, Any]) -> MixerSpec:
    if mixer not in MIXERS:
        raise ValueError(f"unknown mixer {mixer!r}; choose one of {', '.join(MIXERS)}")
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    derived = [k for k in _DERIVED_KWARGS if k in mixer_kwargs]
    if derived:
        raise ValueError(f"mixer_kwargs {derived} are taken from the model being converted; remove them")
    try:
        json.dumps(mixer_kwargs)
    except TypeError as err:
        raise ValueError(
            f"mixer_kwargs must be JSON values (they are saved in config.{CONVERSION_KEY}): {err}"
        ) from None
    return MIXERS[mixer]


def _linformer_source_names(
    attention: nn.Module, weights: AttentionWeights, has_out_proj: bool
) -> dict[str, str]:
    """{name in the host: name in the replaced attention} of the tensors a Linformer host takes over unchanged
    (its query/key/value, and out_proj when it has one): they keep their role, but live under `mixer.`."""
    names = {id(p): n for n, p in attention.named_parameters()}
    roles = [("mixer.query", weights.query), ("mixer.key", weights.key), ("mixer.value", weights.value)]
    if has_out_proj and weights.output is not None:
        roles.append(("out_proj", weights.output))
    found = {}
    for role, (weight, bias) in roles:
        for suffix, tensor in (("weight", weight), ("bias", bias)):
            if tensor is not None and id(tensor) in names:
                found[f"{role}.{suffix}"] = names[id(tensor)]
    return found


def teacher_state_for_student(
    student: nn.Module, teacher_state: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """`teacher_state` (a state dict of the unconverted model, or of a module holding it at the same path as
    the student holds its converted copy) plus, under the student's names, the tensors conversion moved:
    a Linformer's query/key/value live at `<attention>.mixer.query` where the teacher has
    `<attention>.query` (BERT/RoBERTa) or `<attention>.q_proj` (wav2vec2). `student_init: teacher` loads
    this, so the student starts from the teacher's fine-tuned Q/K/V as the reference does."""
    renamed = {}
    for path, module in student.named_modules():
        prefix = f"{path}." if path else ""
        for new, old in getattr(module, "source_names", {}).items():
            if prefix + old in teacher_state:
                renamed[prefix + new] = teacher_state[prefix + old]
    return {**teacher_state, **renamed}


def _declare_shared_parameters(model: nn.Module, hosts: list[MixerAttention]) -> None:
    """Declare parameters shared by several hosts (Linformer share="layer") as tied to their first occurrence,
    through `_tied_weights_keys` (which save_pretrained reads), so the checkpoint stores them once."""
    module_names = {id(module): name for name, module in model.named_modules()}
    first: dict[int, str] = {}
    for host in hosts:
        for name, parameter in host.named_parameters(remove_duplicate=False):
            if id(parameter) not in first:
                first[id(parameter)] = f"{module_names[id(host)]}.{name}"
            else:
                host._tied_weights_keys = {
                    **getattr(host, "_tied_weights_keys", {}),
                    name: first[id(parameter)],
                }


def convert(
    model: PreTrainedModel,
    mixer: str | None = None,
    init: str = "random",
    *,
    unidirectional: bool | None = None,
    **mixer_kwargs: Any,
) -> PreTrainedModel:
    """Replace every self-attention of `model` by a linear-time mixer, in place; returns `model`.

    mixer: "bimamba2", "mamba2", "mamba" or "linformer"; None takes the family's default (audio encoders:
        bimamba2, text encoders: linformer, causal LMs: mamba).
    init: "random" (new mixer weights keep their own initialisation, as in the CALD reference) or "attention"
        (Mamba mixers start from the replaced Q/K/V/O, see `cald_brain.convert.build`). Linformer copies
        Q/K/V(/O) for both.
    unidirectional: must be True to put a causal mixer (mamba, mamba2) into a bidirectional encoder; implied
        for causal LMs.
    mixer_kwargs: arguments of the mixer (e.g. d_state=64, or k=256, share="kv", max_len=512 for Linformer).

    Every parameter outside the replaced modules is left untouched. The settings are recorded in
    `config.cald_conversion` (so `load_student` can rebuild the student from a saved folder), and the
    parameter accounting in `model.cald_parameter_count` (also logged at INFO level).
    """
    config = model.config
    if getattr(config, CONVERSION_KEY, None):
        raise ValueError(
            f"this model is already converted (config.{CONVERSION_KEY}={getattr(config, CONVERSION_KEY)})"
        )
    adapter = adapter_for(config.model_type)
    mixer = mixer or adapter.default_mixer
    spec = _check_arguments(mixer, init, mixer_kwargs)
    mixer_kwargs = {**adapter.mixer_defaults(mixer), **mixer_kwargs}
    unidirectional = _resolve_direction(adapter, spec, config.model_type, unidirectional)
    adapter.check(config)

    sites = adapter.attention_sites(model)
    attentions = [getattr(parent, name) for parent, name in sites]
    removed, before = _numel(attentions), _numel([model])
    factory = MixerFactory(
        mixer,
        mixer_kwargs,
        config.hidden_size,
        config.num_attention_heads,
        adapter.linformer_defaults(config),
    )
    hosts, copied = [], 0
    for (parent, name), attention in zip(sites, attentions, strict=True):
        new_mixer = factory()
        out_proj = None
        if mixer == "linformer" and adapter.owns_output_projection:
            out_proj = nn.Linear(config.hidden_size, config.hidden_size)
        host = adapter.host_class(new_mixer, takes_mask=spec.bidirectional, out_proj=out_proj)
        reference = next(attention.parameters())
        host.to(device=reference.device, dtype=reference.dtype).train(attention.training)
        weights = adapter.attention_weights(attention)
        copied += init_from_attention(new_mixer, out_proj, weights, init)
        if mixer == "linformer":
            host.source_names = _linformer_source_names(attention, weights, out_proj is not None)
        setattr(parent, name, host)
        hosts.append(host)
    _declare_shared_parameters(model, hosts)
    adapter.prepare(model)

    setattr(
        config,
        CONVERSION_KEY,
        {"mixer": mixer, "mixer_kwargs": dict(mixer_kwargs), "init": init, "unidirectional": unidirectional},
    )
    counts = ParameterCount(kept=before - removed, removed=removed, added=_numel(hosts), copied=copied)
    model.cald_parameter_count = counts
    logger.info(
        "converted %s (%s): %d attention modules -> %s (init=%s); parameters: %s",
        type(model).__name__,
        config.model_type,
        len(hosts),
        mixer,
        init,
        counts,
    )
    return model
