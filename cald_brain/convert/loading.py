"""Loading: a transformer checkpoint converted in one call, and a saved student rebuilt exactly."""

import json
import os
from typing import Any

import torch
import transformers
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, PreTrainedModel

from .core import CONVERSION_KEY, convert


def _looks_like_path(source: str) -> bool:
    """A local path rather than a hub name ("org/name"): absolute, starting with . or ~, or 3+ parts."""
    return os.path.isabs(source) or source.startswith((".", "~")) or source.count("/") > 1


def load_and_convert(
    source: str | os.PathLike,
    mixer: str | None = None,
    *,
    init: str = "random",
    unidirectional: bool | None = None,
    model_class: type[PreTrainedModel] | Any = AutoModel,
    model_kwargs: dict[str, Any] | None = None,
    **mixer_kwargs: Any,
) -> PreTrainedModel:
    """Load a transformer (hub name or local folder) with `model_class.from_pretrained` and convert it.

    model_class: AutoModel (default), another Auto class (e.g. AutoModelForCTC) or a model class;
    model_kwargs: passed to from_pretrained (e.g. num_labels). The other arguments are `convert`'s.
    """
    source = os.fspath(source)
    if not os.path.isdir(source) and (_looks_like_path(source) or os.path.exists(source)):
        raise FileNotFoundError(
            f"model folder {source!r} does not exist (give a folder with config.json and model.safetensors, "
            "or a Hugging Face hub name such as 'facebook/wav2vec2-base')"
        )
    model = model_class.from_pretrained(source, **(model_kwargs or {}))
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


def load_student(
    folder: str | os.PathLike, model_class: type[PreTrainedModel] | Any = None
) -> PreTrainedModel:
    """Rebuild a student saved with `save_pretrained`: the model built from its config, converted with the
    recorded `config.cald_conversion`, then every saved weight loaded strictly. Returned in eval mode, like
    `from_pretrained`.

    model_class: the class to build (default: config.architectures[0], else AutoModel).
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"student folder {folder!r} does not exist")
    config = AutoConfig.from_pretrained(folder)
    record = getattr(config, CONVERSION_KEY, None)
    if not record:
        raise ValueError(
            f"{os.path.join(folder, 'config.json')} has no {CONVERSION_KEY!r}: it is not a converted "
            "student. Convert a transformer checkpoint with load_and_convert() instead."
        )
    delattr(config, CONVERSION_KEY)
    model_class = model_class or _model_class(config)
    model = model_class.from_config(config) if hasattr(model_class, "from_config") else model_class(config)
    convert(
        model,
        record["mixer"],
        record["init"],
        unidirectional=record["unidirectional"],
        **record["mixer_kwargs"],
    )
    state_dict = _read_state_dict(folder)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    missing = [key for key in missing if not _aliases(model, key) & state_dict.keys()]
    if missing or unexpected:
        raise RuntimeError(
            f"weights in {folder} do not match the rebuilt student: missing {missing}, "
            f"unexpected {unexpected}"
        )
    return model.eval()
