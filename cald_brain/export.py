"""Export a trained student as a self-contained folder that `cald_brain.inference.load` and Hugging Face
(`Auto*.from_pretrained(folder, trust_remote_code=True)`, `pipeline`) both read.

    export_student(asr.modules.student, output_folder + "/student", units=CTCUnits.from_label_encoder(enc),
                   card=ModelCard.for_run(output_folder, hparams, asr.optimizer_step))

Every recipe run ends with `export_best(brain, units= | labels= | tokenizer=, ...)`, which does that for the
best checkpoint into `<output_folder>/student`.

The folder (written atomically: a temporary folder renamed into place):
    config.json              CaldConfig: the backbone's config with its conversion record, the task head,
                             feature settings, labels; `auto_map` -> the two files below
    model.safetensors        every weight (backbone and head) under the task class's names
    configuration_cald.py    remote code: imports cald_brain's classes (cald_brain must be installed)
    modeling_cald.py
    preprocessor_config.json speech: Wav2Vec2FeatureExtractor (sampling rate, do_normalize, attention mask)
    vocab.json, tokenizer_config.json ...   CTC characters as a Wav2Vec2CTCTokenizer (blank = "<pad>",
                             space = "|"); sentencepiece.model for SentencePiece units; text and LM models:
                             the model's tokenizer
    README.md                model card: recipe, hparams file, guidance mode, training steps, test metrics
"""

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from speechbrain.utils.distributed import if_main_process
from torch import nn
from transformers import PreTrainedTokenizerBase, Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor

from cald_brain.convert.core import CONVERSION_KEY
from cald_brain.models import CausalLM, SpeechModel, TextClassifier
from cald_brain.models.hub import TASK_CLASSES, TASKS, CaldConfig

BLANK_TOKEN = "<pad>"  # Wav2Vec2CTCTokenizer drops its pad token when decoding: the CTC blank
WORD_DELIMITER = "|"  # ... and turns its word delimiter into a space
SENTENCEPIECE_FILE = "sentencepiece.model"
PIPELINE_TAGS = {
    "ctc": "automatic-speech-recognition",
    "audio-classification": "audio-classification",
    "text-classification": "text-classification",
    "causal-lm": "text-generation",
}


@dataclass(frozen=True)
class CTCUnits:
    """A CTC model's output units: characters (`characters[i]` is unit i, the blank's entry any text) or a
    SentencePiece model file (its ids are the units); `blank_index` is the CTC blank."""

    blank_index: int
    characters: tuple[str, ...] | None = None
    sentencepiece_model: str | None = None

    def __post_init__(self) -> None:
        if (self.characters is None) == (self.sentencepiece_model is None):
            raise ValueError("CTCUnits needs exactly one of characters= or sentencepiece_model=")

    @classmethod
    def from_label_encoder(cls, encoder: Any) -> "CTCUnits":
        """From SpeechBrain's CTCTextEncoder (the recipes' label_encoder.txt)."""
        characters = tuple(encoder.ind2lab[i] for i in range(len(encoder)))
        return cls(encoder.get_blank_index(), characters=characters)


@dataclass(frozen=True)
class ModelCard:
    """What the README.md of an exported student reports (every field optional)."""

    recipe: str = ""
    hparams_file: str = ""
    guidance_mode: str = ""
    training_steps: int | None = None
    test_metrics: Mapping[str, Any] = field(default_factory=dict)
    base_model: str = ""

    @classmethod
    def for_run(
        cls, output_folder: str | os.PathLike, hparams: Mapping[str, Any], training_steps: int | None = None
    ) -> "ModelCard":
        """The card of a recipe run: the hparams file it was started with and its recipe (`run_origin`),
        `guidance_mode` and `pretrained_source` from `hparams` (teacher runs have no guidance mode), the test
        metrics from <output_folder>/test_metrics.json when written."""
        folder = Path(output_folder)
        metrics = folder / "test_metrics.json"
        source = str(hparams.get("pretrained_source", ""))
        recipe, hparams_file = run_origin(folder)
        return cls(
            recipe=recipe,
            hparams_file=hparams_file,
            guidance_mode=str(hparams.get("guidance_mode", "none (teacher fine-tuning)")),
            training_steps=training_steps,
            test_metrics=json.loads(metrics.read_text()) if metrics.is_file() else {},
            base_model=os.path.abspath(source) if os.path.isdir(source) else source,
        )


def run_origin(output_folder: Path) -> tuple[str, str]:
    """(recipe script, hparams file) of the run in `output_folder`: the hparams file is the one named in the
    header of SpeechBrain's copy, hyperparams.yaml (`# <absolute path>` on its second line), the recipe the
    train.py of the folder above its hparams/ folder. Without that header: ("", the copy)."""
    copy = output_folder / "hyperparams.yaml"
    header = copy.read_text(encoding="utf-8").splitlines()[:2] if copy.is_file() else []
    if len(header) < 2 or not header[0].startswith("# Generated") or not header[1].startswith("# "):
        return "", str(copy)
    hparams_file = Path(header[1][2:].strip())
    recipe = hparams_file.parent.parent / "train.py"
    return str(recipe) if recipe.is_file() else "", str(hparams_file)


def task_of(module: nn.Module) -> str:
    """The exported task of a cald_brain network."""
    if isinstance(module, SpeechModel):
        return "ctc" if module.pooling is None else "audio-classification"
    if isinstance(module, TextClassifier):
        return "text-classification"
    if isinstance(module, CausalLM):
        return "causal-lm"
    raise TypeError(
        f"cannot export a {type(module).__name__}: give the student network (cald_brain.models.SpeechModel, "
        "TextClassifier or CausalLM)"
    )


def backbone_of(module: nn.Module) -> nn.Module:
    """The Hugging Face model inside a cald_brain network."""
    return module.encoder.model if isinstance(module, SpeechModel) else module.model


def make_config(
    module: nn.Module,
    units: CTCUnits | None,
    labels: Sequence[str] | Mapping[str, Sequence[str]] | None,
    sampling_rate: int,
    joint_name: str = "joint",
) -> CaldConfig:
    """The CaldConfig describing `module` (checked against the units / labels given). A classifier with
    several heads records their names (`label_heads`) and `joint_name`; its id2label lists the heads' labels
    side by side, as its logits."""
    task = task_of(module)
    backbone = backbone_of(module).config
    settings: dict[str, Any] = {}
    if isinstance(module, SpeechModel):
        num_outputs = module.head.out_features
        settings = dict(
            num_outputs=module.num_outputs,
            sampling_rate=sampling_rate,
            do_normalize=bool(module.encoder.normalize_wav),
        )
        if module.pooling is not None:
            settings["pooling"] = module.pooling.kind
            if module.pooling.attention is not None:
                settings["attention_channels"] = module.pooling.attention.conv.conv.in_channels
    if task == "ctc":
        if units is None:
            raise ValueError("a CTC student needs its units= (CTCUnits) to be exported")
        if units.characters is not None and len(units.characters) != num_outputs:
            raise ValueError(f"{len(units.characters)} characters for a CTC head of {num_outputs} outputs")
        settings.update(
            blank_index=units.blank_index,
            ctc_units="characters" if units.characters is not None else "sentencepiece",
        )
    several = isinstance(module, SpeechModel) and len(module.head_sizes) > 1
    if several:
        if not isinstance(labels, Mapping):
            raise ValueError(
                f"a classifier with {len(module.head_sizes)} heads needs labels={{head name: its labels}}"
            )
        sizes = [len(names) for names in labels.values()]
        if sizes != list(module.head_sizes):
            raise ValueError(f"labels of {sizes} classes for heads of {list(module.head_sizes)} outputs")
        settings.update(label_heads=list(labels), joint_name=joint_name)
        labels = [label for names in labels.values() for label in names]  # id2label: the heads side by side
    elif isinstance(labels, Mapping):
        raise ValueError("labels={head: labels} is for classifiers with several heads; give the label list")
    if task in ("audio-classification", "text-classification") and labels is not None:
        outputs = sum(module.head_sizes) if task == "audio-classification" else backbone.num_labels
        if len(labels) != outputs:
            raise ValueError(f"{len(labels)} labels for a classifier of {outputs} outputs")
        settings["id2label"] = dict(enumerate(labels))
    class_name, autos = TASKS[task]
    return CaldConfig(
        cald_task=task,
        cald_backbone={k: v for k, v in backbone.to_dict().items() if k != "_name_or_path"},
        architectures=[class_name],
        auto_map={
            "AutoConfig": "configuration_cald.CaldConfig",
            **{auto: f"modeling_cald.{class_name}" for auto in autos},
        },
        tie_word_embeddings=False,  # the backbone ties its own weights
        **settings,
    )


def _remote_code(folder: Path, class_name: str) -> None:
    """The two files `auto_map` points at: thin imports of cald_brain's classes."""
    note = "# Remote code of an exported CALD student: the classes live in cald_brain (pip install it).\n"
    (folder / "configuration_cald.py").write_text(
        f'{note}from cald_brain.models.hub import CaldConfig\n\n__all__ = ["CaldConfig"]\n'
    )
    (folder / "modeling_cald.py").write_text(
        f'{note}from cald_brain.models.hub import {class_name}\n\n__all__ = ["{class_name}"]\n'
    )


def _save_units(folder: Path, units: CTCUnits) -> None:
    """Characters as a Wav2Vec2CTCTokenizer (so the ASR pipeline decodes them), or the SentencePiece model."""
    if units.sentencepiece_model is not None:
        shutil.copyfile(units.sentencepiece_model, folder / SENTENCEPIECE_FILE)
        return
    vocab = {}
    for index, char in enumerate(units.characters):
        token = BLANK_TOKEN if index == units.blank_index else WORD_DELIMITER if char == " " else char
        if token in vocab:
            raise ValueError(f"CTC unit {char!r} appears twice (or clashes with {BLANK_TOKEN!r} / '|')")
        vocab[token] = index
    vocab_file = folder / "vocab.json"
    vocab_file.write_text(json.dumps(vocab, ensure_ascii=False, indent=1))
    tokenizer = Wav2Vec2CTCTokenizer(
        str(vocab_file),
        unk_token=BLANK_TOKEN,
        pad_token=BLANK_TOKEN,
        bos_token=None,
        eos_token=None,
        word_delimiter_token=WORD_DELIMITER,
    )
    tokenizer.save_pretrained(folder)


def model_card(config: CaldConfig, card: ModelCard) -> str:
    """README.md of the folder: YAML front matter, then what the model is, how it was trained, results and
    how to load it."""
    conversion = config.cald_backbone.get(CONVERSION_KEY, {})
    family = config.cald_backbone.get("model_type", "")
    front = [
        "---",
        "library_name: transformers",
        f"pipeline_tag: {PIPELINE_TAGS[config.cald_task]}",
        "tags: [cald, linear-time, distillation, "
        + ", ".join(filter(None, [conversion.get("mixer"), family]))
        + "]",
    ]
    if card.base_model:
        front.append(f"base_model: {card.base_model}")
    front.append("---")
    trained = [
        ("recipe", card.recipe),
        ("hparams file", card.hparams_file),
        ("guidance mode", card.guidance_mode),
        ("optimizer steps", "" if card.training_steps is None else str(card.training_steps)),
        ("converted from", card.base_model),
        ("conversion", json.dumps(conversion) if conversion else ""),
    ]
    mixer = conversion.get("mixer")
    if mixer:
        title = f"# CALD student ({config.cald_task}: {family} with {mixer} mixers)"
        about = (
            "A linear-time student trained with cald_brain (CALD layerwise distillation): every "
            f"self-attention of the {family} model is replaced by a {mixer} mixer."
        )
    else:
        title = f"# CALD teacher ({config.cald_task}: {family} transformer)"
        about = f"The {family} transformer fine-tuned by a cald_brain recipe (a teacher run, not converted)."
    lines = [
        *front,
        "",
        title,
        "",
        about,
        "",
        "## Training",
        "",
        *[f"- {name}: {value}" for name, value in trained if value],
        "",
        "## Results (test set)",
        "",
        *([f"- {k}: {v}" for k, v in card.test_metrics.items()] or ["- not evaluated"]),
        "",
        "## Use",
        "",
        "```python",
        "from cald_brain.inference import load",
        'model = load("path/to/this/folder")  # or python -m cald_brain.inference FOLDER INPUT...',
        "```",
        "",
        f'Hugging Face (needs `pip install cald_brain`): `pipeline("{PIPELINE_TAGS[config.cald_task]}", '
        "model=FOLDER, trust_remote_code=True)` or the Auto classes in config.json's auto_map, with "
        "`trust_remote_code=True` (without it transformers refuses to load the model).",
        "",
    ]
    return "\n".join(lines)


def replace_folder(tmp: Path, folder: Path) -> None:
    """Move the finished `tmp` into `folder`, replacing what was there."""
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def export_student(
    module: nn.Module,
    folder: str | os.PathLike,
    *,
    units: CTCUnits | None = None,
    labels: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    sampling_rate: int = 16000,
    card: ModelCard | None = None,
    joint_name: str = "joint",
) -> Path:
    """Write the student network `module` (SpeechModel, TextClassifier or CausalLM, or DDP around one; its
    task follows from it) to `folder` as described in the module docstring, replacing an earlier export; call
    it on the main process only. Returns the folder.

    units: CTC students' output units. labels: classifiers' class names (index order); for a speech classifier
    with several heads, {head name: its class names} in head order, and `joint_name` names the prediction of
    every head together (SLURP: "intent"). tokenizer: text and LM students' tokenizer. sampling_rate: speech
    students' input rate. card: the model card's training facts.
    """
    folder = Path(folder)
    if isinstance(module, nn.parallel.DistributedDataParallel):
        module = module.module
    config = make_config(module, units, labels, sampling_rate, joint_name)
    if config.cald_task in ("text-classification", "causal-lm") and tokenizer is None:
        raise ValueError(f"a {config.cald_task} student needs its tokenizer= to be exported")
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    wrapper = TASK_CLASSES[config.cald_task](config, net=module)
    wrapper.save_pretrained(tmp)
    _remote_code(tmp, config.architectures[0])
    if isinstance(module, SpeechModel):
        Wav2Vec2FeatureExtractor(
            sampling_rate=sampling_rate, do_normalize=config.do_normalize, return_attention_mask=True
        ).save_pretrained(tmp)
    if units is not None:
        _save_units(tmp, units)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    (tmp / "README.md").write_text(model_card(config, card or ModelCard()))
    replace_folder(tmp, folder)
    return folder


def export_best(brain: Any, **task_inputs: Any) -> Path | None:
    """End of a recipe run: the student of `brain` (a CALDBrain whose test stage loaded the best checkpoint)
    exported to `<output_folder>/student` with the run's model card (`ModelCard.for_run`: the steps of that
    checkpoint, the test metrics), on the main process only. `task_inputs`: export_student's units / labels /
    tokenizer / sampling_rate. Returns the folder (None on other processes)."""
    if not if_main_process():
        return None
    hparams = vars(brain.hparams)
    output_folder = hparams["output_folder"]
    card = ModelCard.for_run(output_folder, hparams, brain.optimizer_step)
    return export_student(brain.student, Path(output_folder) / "student", card=card, **task_inputs)
