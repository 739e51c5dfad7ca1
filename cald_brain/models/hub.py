"""Hugging Face classes of an exported student (`cald_brain.export`): one config class and one model class
per task, each holding the cald_brain network it runs (`net`: SpeechModel, TextClassifier or CausalLM), so
`cald_brain.inference` and `transformers.Auto*.from_pretrained(folder, trust_remote_code=True)` run the same
module on the same weights.

The config's `model_type` ("cald_student") is unknown to transformers: an exported folder loads through the
Auto classes only with `trust_remote_code=True`, via the two small files it ships (`configuration_cald.py`,
`modeling_cald.py`, which import these classes); without it transformers refuses, and never builds the
transformer with random attention in the student's place.

config.json holds the backbone's own config (`cald_backbone`, with its `cald_conversion` record), the head
(`cald_task`, `pooling`, `attention_channels`, `id2label`) and, for speech, the feature settings
(`sampling_rate`, `do_normalize`) and CTC units (`blank_index`, `ctc_units`).
"""

import json
import os
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    GenerationConfig,
    GenerationMixin,
    PreTrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import CausalLMOutput, SequenceClassifierOutput

from cald_brain.convert import build_student, load_weights
from cald_brain.convert.core import CONVERSION_KEY

from .causal_lm import CausalLM
from .generation import generate
from .speech import SpeechEncoder, SpeechModel
from .text import TextClassifier

MODEL_TYPE = "cald_student"
# Task -> (model class name in modeling_cald.py, the Auto classes that load it).
TASKS = {
    "ctc": ("CaldForCTC", ("AutoModel", "AutoModelForCTC")),
    "audio-classification": ("CaldForAudioClassification", ("AutoModel", "AutoModelForAudioClassification")),
    "text-classification": (
        "CaldForSequenceClassification",
        ("AutoModel", "AutoModelForSequenceClassification"),
    ),
    "causal-lm": ("CaldForCausalLM", ("AutoModel", "AutoModelForCausalLM")),
}


class CaldConfig(PreTrainedConfig):
    """Config of an exported student: the backbone's config dict plus the task head's settings."""

    model_type = MODEL_TYPE

    def __init__(
        self,
        cald_task: str = "ctc",
        cald_backbone: dict[str, Any] | None = None,
        pooling: str | None = None,
        attention_channels: int = 128,
        num_outputs: int | list[int] | None = None,
        label_heads: list[str] | None = None,
        joint_name: str | None = None,
        sampling_rate: int | None = None,
        do_normalize: bool | None = None,
        blank_index: int | None = None,
        ctc_units: str | None = None,
        **kwargs: Any,
    ) -> None:
        if cald_task not in TASKS:
            raise ValueError(f"cald_task must be one of {', '.join(TASKS)}, got {cald_task!r}")
        self.cald_task = cald_task
        self.cald_backbone = cald_backbone or {}
        self.pooling = pooling
        self.attention_channels = attention_channels
        self.num_outputs = num_outputs  # a list: one size per head, logits side by side
        self.label_heads = label_heads  # names of the heads (several heads only)
        self.joint_name = joint_name  # name of every head's prediction together (several heads only)
        self.sampling_rate = sampling_rate
        self.do_normalize = do_normalize
        self.blank_index = blank_index
        self.ctc_units = ctc_units  # "characters" (vocab.json) or "sentencepiece" (tokenizer.model)
        super().__init__(**kwargs)

    def backbone_config(self) -> PreTrainedConfig:
        """The backbone's transformers config (its conversion record included)."""
        values = dict(self.cald_backbone)
        if "model_type" not in values:
            raise ValueError("config.json's cald_backbone has no model_type: the export is incomplete")
        return AutoConfig.for_model(values.pop("model_type"), **values)


def build_backbone(config: PreTrainedConfig, model_class: Any) -> PreTrainedModel:
    """A student rebuilt as its conversion record says (`build_student`), or the plain transformer when the
    config records none (an exported teacher)."""
    if getattr(config, CONVERSION_KEY, None):
        return build_student(config, model_class)
    return model_class.from_config(config)


def build_net(config: CaldConfig) -> nn.Module:
    """The cald_brain network the config describes, with fresh weights (backbone and head)."""
    backbone = config.backbone_config()
    if config.cald_task in ("ctc", "audio-classification"):
        encoder = SpeechEncoder(
            build_backbone(backbone, AutoModel),
            normalize_wav=bool(config.do_normalize),
            freeze_feature_encoder=False,
        )
        return SpeechModel(encoder, config.num_outputs, config.pooling, config.attention_channels)
    if config.cald_task == "text-classification":
        return TextClassifier(
            build_backbone(backbone, AutoModelForSequenceClassification), backbone.num_labels
        )
    return CausalLM(build_backbone(backbone, AutoModelForCausalLM))


class CaldPreTrainedModel(PreTrainedModel):
    """Base of the task classes: `net` is the network; `from_pretrained` rebuilds it from the config and
    loads the folder's weights strictly (no random weight is ever left in place)."""

    config_class = CaldConfig
    base_model_prefix = "net"
    main_input_name = "input_values"

    def __init__(self, config: CaldConfig, net: nn.Module | None = None) -> None:
        """net: the trained network to wrap (`cald_brain.export`); None builds it from the config."""
        super().__init__(config)
        self.net = build_net(config) if net is None else net
        self.post_init()

    def init_weights(self) -> None:
        """Nothing to initialise: the network keeps the weights it has (trained ones when `cald_brain.export`
        wraps it; transformers would otherwise re-initialise the mixers, which its backbone does not mark as
        initialised) and `from_pretrained` then loads every weight."""

    def _init_weights(self, module: nn.Module) -> None:
        """See `init_weights`."""

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, *model_args: Any, **kwargs: Any
    ) -> "CaldPreTrainedModel":
        """The exported student in `pretrained_model_name_or_path` (a folder, or a hub repository downloaded
        with the usual `revision`, `cache_dir`, `token` arguments), in eval mode; `dtype` / `torch_dtype`
        and `device_map` (one device) are honoured, other loading options ignored."""
        folder = os.fspath(pretrained_model_name_or_path)
        if not os.path.isdir(folder):
            from huggingface_hub import snapshot_download

            folder = snapshot_download(
                folder,
                revision=kwargs.get("revision"),
                cache_dir=kwargs.get("cache_dir"),
                token=kwargs.get("token"),
            )
        config = kwargs.get("config")
        if not isinstance(config, CaldConfig):
            config = CaldConfig.from_pretrained(folder)
        model = load_weights(cls(config), folder).eval()
        dtype = kwargs.get("dtype", kwargs.get("torch_dtype"))
        if isinstance(dtype, torch.dtype):
            model = model.to(dtype)
        device = kwargs.get("device_map")
        if isinstance(device, str | torch.device | int) and device != "auto":
            model = model.to(device)
        return model


def relative_lengths(
    mask: torch.Tensor | None, batch: int, length: int, device: torch.device
) -> torch.Tensor:
    """SpeechBrain relative lengths (batch,) from a (batch, samples) padding mask (None: all full)."""
    if mask is None:
        return torch.ones(batch, device=device)
    return mask.sum(dim=1).to(torch.float32) / length


class CaldSpeechModel(CaldPreTrainedModel):
    """A speech student on raw waveforms `input_values` (batch, samples), with the feature extractor's
    `attention_mask` when the batch is padded."""

    def run(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None) -> Any:
        lens = relative_lengths(attention_mask, *input_values.shape, input_values.device)
        return self.net(input_values, lens)


class CaldForCTC(CaldSpeechModel):
    """Frame-level CTC logits (batch, frames, units); decode greedily (blank = config.blank_index)."""

    def forward(
        self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any
    ) -> CausalLMOutput:
        out = self.run(input_values, attention_mask)
        return CausalLMOutput(logits=out.logits, hidden_states=out.hidden_states)


class CaldForAudioClassification(CaldSpeechModel):
    """Pooled per-utterance logits (batch, classes); labels in config.id2label."""

    def forward(
        self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any
    ) -> SequenceClassifierOutput:
        out = self.run(input_values, attention_mask)
        return SequenceClassifierOutput(logits=out.logits, hidden_states=out.hidden_states)


class CaldForSequenceClassification(CaldPreTrainedModel):
    """Text classification logits (batch, classes) of single texts or pairs, tokenised by the folder's
    tokenizer."""

    main_input_name = "input_ids"

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> SequenceClassifierOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        out = self.net(input_ids, attention_mask, token_type_ids)
        return SequenceClassifierOutput(logits=out.logits, hidden_states=out.hidden_states)


class CaldForCausalLM(CaldPreTrainedModel, GenerationMixin):
    """Next-token logits; `generate` decodes with the student's recurrent cache
    (`cald_brain.models.generation`: constant memory per token), greedy or sampled."""

    main_input_name = "input_ids"

    def __init__(self, config: CaldConfig, net: nn.Module | None = None) -> None:
        super().__init__(config, net)
        self.generation_config = GenerationConfig.from_model_config(config.backbone_config())

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any
    ) -> CausalLMOutput:
        out = self.net(input_ids, attention_mask)
        return CausalLMOutput(logits=out.logits, hidden_states=out.hidden_states)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        generation_config: GenerationConfig | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Prompt + new tokens (batch, length), as `GenerationMixin.generate` returns them. Reads
        max_new_tokens (or max_length), do_sample, temperature and eos_token_id from `generation_config`
        and keyword arguments; beam search and other strategies raise."""
        config = generation_config or self.generation_config
        settings = {**config.to_dict(), **{k: v for k, v in kwargs.items() if hasattr(config, k)}}
        if (settings.get("num_beams") or 1) != 1 or (settings.get("num_return_sequences") or 1) != 1:
            raise ValueError(
                "a CALD student generates greedily or by sampling only (num_beams=1, one sequence)"
            )
        max_new = settings.get("max_new_tokens")
        if max_new is None:
            max_new = settings.get("max_length", 20) - input_ids.shape[1]
        eos = settings.get("eos_token_id")
        eos = eos[0] if isinstance(eos, list) else eos
        temperature = (settings.get("temperature") or 1.0) if settings.get("do_sample") else 0.0
        return generate(
            self.net.model,
            input_ids,
            max_new_tokens=max(int(max_new), 1),
            temperature=temperature,
            eos_token_id=eos,
            attention_mask=attention_mask,
        )


TASK_CLASSES: dict[str, type[CaldPreTrainedModel]] = {
    "ctc": CaldForCTC,
    "audio-classification": CaldForAudioClassification,
    "text-classification": CaldForSequenceClassification,
    "causal-lm": CaldForCausalLM,
}


def is_exported(folder: str | os.PathLike) -> bool:
    """Whether `folder` holds an exported student (a config.json of model_type "cald_student"), rather than a
    plain Hugging Face checkpoint."""
    config_file = os.path.join(folder, "config.json")
    if not os.path.isfile(config_file):
        return False
    with open(config_file, encoding="utf-8") as handle:
        return json.load(handle).get("model_type") == MODEL_TYPE


def load_exported(folder: str | os.PathLike, device: str | torch.device = "cpu") -> CaldPreTrainedModel:
    """The exported student in `folder` as its task class, in eval mode on `device`."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"model folder {folder} does not exist")
    config_file = os.path.join(folder, "config.json")
    if not os.path.isfile(config_file):
        raise FileNotFoundError(
            f"{config_file} does not exist: give the folder a run exported (<output_folder>/student, or "
            "tools/export.py RUN_FOLDER)"
        )
    config = CaldConfig.from_pretrained(folder)
    if getattr(config, "model_type", None) != MODEL_TYPE or not config.cald_backbone:
        raise ValueError(f"{config_file} is not an exported CALD student (model_type {MODEL_TYPE!r})")
    model = TASK_CLASSES[config.cald_task].from_pretrained(folder, config=config)
    return model.to(device)
