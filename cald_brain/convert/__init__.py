"""Attention surgery on Hugging Face transformers: linear-time students for CALD.

    from cald_brain.convert import convert, load_and_convert, load_student
    student = load_and_convert("facebook/wav2vec2-large-lv60", "bimamba2", model_class=AutoModelForCTC)
    student.save_pretrained(folder); same = load_student(folder)

Supported model types (one adapter module per family): wav2vec2, hubert, data2vec-audio, wavlm (wav2vec2.py),
bert, roberta (bert.py), gpt_neox (gpt_neox.py). See docs/CONVERSION.md.
"""

from . import bert, gpt_neox, wav2vec2  # noqa: F401  (each registers its adapter)
from .build import AttentionWeights
from .core import (
    Adapter,
    ParameterCount,
    adapter_for,
    convert,
    register_adapter,
    supported_model_types,
    teacher_state_for_student,
)
from .loading import (
    build_student,
    load_and_convert,
    load_config,
    load_pretrained,
    load_student,
    load_weights,
    resolve_source,
)
from .modules import CALD_ATTN_IMPLEMENTATION, MixerAttention

__all__ = [
    "Adapter",
    "AttentionWeights",
    "CALD_ATTN_IMPLEMENTATION",
    "MixerAttention",
    "ParameterCount",
    "adapter_for",
    "build_student",
    "convert",
    "load_and_convert",
    "load_config",
    "load_pretrained",
    "load_student",
    "load_weights",
    "register_adapter",
    "resolve_source",
    "supported_model_types",
    "teacher_state_for_student",
]
