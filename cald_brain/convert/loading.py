"""Loading: a transformer checkpoint converted in one call, and a saved student rebuilt exactly."""

import copy
import json
import os
import re
from typing import Any

import torch
import transformers
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel

from .core import CONVERSION_KEY, convert

# A Hugging Face hub repository id: "name" or "org/name" (letters, digits, "-", "_", ".").
_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def _looks_like_path(source: str) -> bool:
    """True when `source` cannot be a hub name or was evidently meant as a folder: it starts with ".", "/" or
    "~", has the platform's separator (other than "/"), is not of the form "org/name", or its first part is an
    existing folder (e.g. "results/student" where results/ exists)."""
    if source.startswith((".", "/", "~")) or (os.sep != "/" and os.sep in source) or ".." in source:
        return True
    if _HUB_NAME.fullmatch(source) is None:
        return True
    return "/" in source and os.path.isdir(source.split("/")[0])


def _missing_folder_message(source: str) -> str:
    """ "folder X does not exist", naming the deepest part of its path that does and what it holds."""
    message = f"model folder {source!r} does not exist"
    parent = os.path.dirname(os.path.abspath(os.path.expanduser(source)))
    while not os.path.isdir(parent):
        parent = os.path.dirname(parent)
    entries = sorted(os.listdir(parent))
    shown = ", ".join(entries[:10]) + (", ..." if len(entries) > 10 else "")
    return (
        f"{message} ({parent} exists and holds: {shown or 'nothing'}). Give a folder with config.json and "
        "model.safetensors (check the path), or a Hugging Face hub name such as 'facebook/wav2vec2-base'"
    )


def resolve_source(source: str | os.PathLike) -> str:
    """The one rule for "folder or hub name", used by every loader: an existing folder is a local
    checkpoint; a value that looks like a path (see `_looks_like_path`) but does not exist raises
    FileNotFoundError saying that the folder does not exist, naming the deepest existing part of the path;
    any other text is a hub name ("org/name", found in the Hugging Face cache, or downloaded unless
    HF_HUB_OFFLINE=1)."""
    source = os.fspath(source)
    if os.path.isdir(source):
        return source
    if _looks_like_path(source):
        raise FileNotFoundError(_missing_folder_message(source))
    return source


def load_config(source: str | os.PathLike, overrides: dict[str, Any] | None = None) -> PretrainedConfig:
    """The checkpoint's config with `overrides` applied (e.g. hidden_dropout, layerdrop, mask_time_prob).

    Every override must name an existing config attribute, so a misspelt key fails instead of being ignored.
    """
    source = resolve_source(source)
    config = _from_pretrained(AutoConfig, source)
    unknown = sorted(key for key in (overrides or {}) if not hasattr(config, key))
    if unknown:
        raise ValueError(
            f"config_overrides {unknown} are not settings of {source}'s {type(config).__name__}; "
            "check the spelling against its config.json"
        )
    for key, value in (overrides or {}).items():
        setattr(config, key, value)
    return config


def _from_pretrained(cls: Any, source: str, **kwargs: Any) -> Any:
    """`cls.from_pretrained(source)`, with a hub name that cannot be found reported as such."""
    try:
        return cls.from_pretrained(source, **kwargs)
    except OSError as err:
        if os.path.isdir(source):
            raise
        raise FileNotFoundError(
            f"{source!r} is neither a local folder nor a model found on the Hugging Face hub or in its cache "
            f"(HF_HOME, offline with HF_HUB_OFFLINE=1): {err}"
        ) from err


def load_pretrained(
    source: str | os.PathLike,
    model_class: type[PreTrainedModel] | Any = AutoModel,
    model_kwargs: dict[str, Any] | None = None,
    config_overrides: dict[str, Any] | None = None,
) -> PreTrainedModel:
    """The transformer itself (a teacher): `model_class.from_pretrained` of a hub name or local folder (see
    `resolve_source`), its config changed by `config_overrides` first (see `load_config`).

    model_class: AutoModel (default), another Auto class (e.g. AutoModelForCTC) or a model class;
    model_kwargs: passed to from_pretrained (e.g. num_labels).
    """
    source = resolve_source(source)
    config = load_config(source, config_overrides)
    return _from_pretrained(model_class, source, config=config, **(model_kwargs or {}))


def load_and_convert(
    source: str | os.PathLike,
    mixer: str | None = None,
    *,
    init: str = "random",
    unidirectional: bool | None = None,
    model_class: type[PreTrainedModel] | Any = AutoModel,
    model_kwargs: dict[str, Any] | None = None,
    config_overrides: dict[str, Any] | None = None,
    **mixer_kwargs: Any,
) -> PreTrainedModel:
    """A student: `load_pretrained` (same arguments), then `convert` (mixer, init, unidirectional,
    mixer_kwargs)."""
    model = load_pretrained(source, model_class, model_kwargs, config_overrides)
    return convert(model, mixer, init, unidirectional=unidirectional, **mixer_kwargs)


def _read_state_dict(folder: str) -> dict[str, torch.Tensor]:
    """The weights save_pretrained wrote: model.safetensors or its sharded index."""
    single = os.path.join(folder, "model.safetensors")
    if os.path.isfile(single):
        return load_file(single)
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        state_dict = {}
        for shard in shards:
            state_dict.update(load_file(os.path.join(folder, shard)))
        return state_dict
    raise FileNotFoundError(f"{folder} has neither model.safetensors nor model.safetensors.index.json")


def _saved_names_to_parameter_names(model: PreTrainedModel, state_dict: dict[str, torch.Tensor]) -> dict:
    """transformers >= 5 saves some weights under their original checkpoint names and renames them when
    loading (e.g. GPT-NeoX's `lm_head.weight` is saved as `embed_out.weight`); apply the model's key renamings
    as `from_pretrained` does. transformers 4 saves parameter names as they are (no renaming module)."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightRenaming, rename_source_key
    except ImportError:
        return state_dict
    renamings = [t for t in get_model_conversion_mapping(model) if isinstance(t, WeightRenaming)]
    return {rename_source_key(key, renamings, [])[0]: value for key, value in state_dict.items()}


def _model_class(config) -> type[PreTrainedModel] | Any:
    """The class save_pretrained recorded in config.architectures, else AutoModel."""
    architectures = getattr(config, "architectures", None) or []
    if architectures and hasattr(transformers, architectures[0]):
        return getattr(transformers, architectures[0])
    return AutoModel


def _aliases(model: PreTrainedModel, name: str) -> set[str]:
    """Every name of the parameter called `name` (tied/shared parameters have several; save_pretrained keeps
    one of them)."""
    parameter = model.get_parameter(name)
    return {n for n, p in model.named_parameters(remove_duplicate=False) if p is parameter}


def build_student(
    config: PretrainedConfig, model_class: type[PreTrainedModel] | Any = None
) -> PreTrainedModel:
    """A student with fresh weights from a config recording its conversion (`config.cald_conversion`): the
    model built from the config, then converted as recorded. `config` is not modified.

    model_class: the class to build (default: config.architectures[0], else AutoModel).
    """
    record = getattr(config, CONVERSION_KEY, None)
    if not record:
        raise ValueError(
            f"this {type(config).__name__} has no {CONVERSION_KEY!r}: it is not a converted student. Convert "
            "a transformer checkpoint with load_and_convert() instead."
        )
    config = copy.deepcopy(config)
    delattr(config, CONVERSION_KEY)
    model_class = model_class or _model_class(config)
    model = model_class.from_config(config) if hasattr(model_class, "from_config") else model_class(config)
    return convert(
        model,
        record["mixer"],
        record["init"],
        unidirectional=record["unidirectional"],
        **record["mixer_kwargs"],
    )


def load_weights(model: PreTrainedModel, folder: str | os.PathLike) -> PreTrainedModel:
    """Load every weight `save_pretrained` wrote in `folder` into `model`, strictly (a missing or unexpected
    tensor raises, naming the folder); returns `model`."""
    folder = os.fspath(folder)
    state_dict = _saved_names_to_parameter_names(model, _read_state_dict(folder))
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    missing = [key for key in missing if not _aliases(model, key) & state_dict.keys()]
    if missing or unexpected:
        raise RuntimeError(
            f"weights in {folder} do not match the rebuilt model: missing {missing}, unexpected {unexpected}"
        )
    return model


def load_student(
    folder: str | os.PathLike, model_class: type[PreTrainedModel] | Any = None
) -> PreTrainedModel:
    """Rebuild a student saved with `save_pretrained`: `build_student` from its config, then every saved
    weight loaded strictly (`load_weights`). Returned in eval mode, like `from_pretrained`.

    model_class: the class to build (default: config.architectures[0], else AutoModel).
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"student folder {folder!r} does not exist")
    config = AutoConfig.from_pretrained(folder)
    if not getattr(config, CONVERSION_KEY, None):
        raise ValueError(
            f"{os.path.join(folder, 'config.json')} has no {CONVERSION_KEY!r}: it is not a converted "
            "student. Convert a transformer checkpoint with load_and_convert() instead."
        )
    return load_weights(build_student(config, model_class), folder).eval()
