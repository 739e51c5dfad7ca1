"""The one way the model wrappers build a network: the pretrained transformer (teacher) or its conversion
(student), both through `cald_brain.convert` so hub names, folders and config overrides behave alike."""

from typing import Any

from transformers import AutoModel, PreTrainedModel

from cald_brain.convert import load_and_convert, load_pretrained


def load_model(
    source: str,
    model_class: Any = AutoModel,
    mixer: str | None = None,
    mixer_kwargs: dict[str, Any] | None = None,
    init: str = "random",
    config_overrides: dict[str, Any] | None = None,
) -> PreTrainedModel:
    """The transformer when `mixer` is None, else its conversion to `mixer` (see cald_brain.convert)."""
    if mixer is None:
        if mixer_kwargs:
            raise ValueError(f"mixer_kwargs {sorted(mixer_kwargs)} were given without a mixer; set mixer:")
        return load_pretrained(source, model_class, config_overrides=config_overrides)
    return load_and_convert(
        source,
        mixer,
        init=init,
        model_class=model_class,
        config_overrides=config_overrides,
        **(mixer_kwargs or {}),
    )


def given_or_loaded(
    source: str | PreTrainedModel,
    model_class: Any,
    mixer: str | None,
    mixer_kwargs: dict[str, Any] | None,
    init: str,
    config_overrides: dict[str, Any] | None,
) -> PreTrainedModel:
    """`source` itself when it is a built model (a wrapper around a rebuilt student: nothing else may then be
    set), else `load_model` of it."""
    if not isinstance(source, PreTrainedModel):
        return load_model(source, model_class, mixer, mixer_kwargs, init, config_overrides)
    if mixer is not None or mixer_kwargs or config_overrides:
        raise ValueError(
            "mixer, mixer_kwargs and config_overrides apply to a source to load, not a built model"
        )
    return source
