"""Utterance classification (SLURP intents, VoxCeleb1 speakers): the brain (per-unit cross-entropy,
accuracy, best checkpoint by accuracy), the datasets built from the prepared manifests and `run`, the one
entry point a recipe's train.py calls. A recipe's train.py only says which manifest column holds the label
and how many loss units an utterance counts (see `cross_entropy_per_unit`).

Manifests are the prepare scripts' CSVs (``ID, duration, wav, <label column>, ...``, ``wav`` relative to
``$data_root``) plus a label file (one label per line, line i = class i; `cald_brain.data.manifests`).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import speechbrain as sb
import torch

from cald_brain.brain import CALDBrain
from cald_brain.data.audio import audio_pipeline
from cald_brain.data.manifests import read_labels
from cald_brain.export import export_best
from cald_brain.models.outputs import ModelOutputs
from cald_brain.recipe import RecipeError

SPLITS = ("train", "dev", "test")


def cross_entropy_per_unit(logits: torch.Tensor, targets: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    """Sum of the utterances' cross-entropies divided by the sum of their loss units.

    The CALD reference normalises every task loss by target characters (`loss_normalize_type=sample`), and
    its classifier runs keep that divisor: the transcript's characters for SLURP, the 3 characters of the
    placeholder label "123" for VoxCeleb1. The layerwise loss is scaled by the same count, so dividing the
    cross-entropy this way (and `distill_scale: accumulation`) keeps alpha_LD meaning what it means there.
    With one unit per utterance this is the plain mean cross-entropy.
    """
    losses = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="none")
    return losses.sum() / units.to(losses.dtype).sum()


class ClassificationStats:
    """Predictions of one evaluation stage: accuracy, and a per-utterance predictions file."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.predictions: list[int] = []
        self.targets: list[int] = []

    def append(self, ids: Sequence[str], logits: torch.Tensor, targets: torch.Tensor) -> None:
        self.ids.extend(ids)
        self.predictions.extend(logits.argmax(dim=-1).tolist())
        self.targets.extend(targets.tolist())

    def accuracy(self) -> float:
        """Fraction of correct predictions (0 when nothing was evaluated)."""
        if not self.ids:
            return 0.0
        return sum(p == t for p, t in zip(self.predictions, self.targets, strict=True)) / len(self.ids)

    def write_predictions(self, path: str | Path, labels: Sequence[str]) -> None:
        """CSV ``ID,target,prediction,correct`` with label names, written atomically."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["ID", "target", "prediction", "correct"])
            for uid, pred, target in zip(self.ids, self.predictions, self.targets, strict=True):
                writer.writerow([uid, labels[target], labels[pred], int(pred == target)])
        os.replace(tmp, path)


class UtteranceClassificationBrain(CALDBrain):
    """One label per utterance from a pooled `cald_brain.models.SpeechModel` (teacher and student alike).

    Batches carry ``sig`` (waveforms, relative lengths), ``label`` (class indices) and ``loss_units`` (see
    `cross_entropy_per_unit`), the last two as plain lists (SpeechBrain pads tensors, not numbers). Dev
    accuracy (``ACC``) picks the best checkpoint; the test stage writes ``test_predictions_file`` and
    ``test_metrics_file`` (hparams keys).
    """

    best_key = "ACC"
    best_is_max = True

    def __init__(self, labels: Sequence[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.labels = list(labels)
        self.stats = ClassificationStats()

    def forward_model(self, model, batch, stage) -> ModelOutputs:
        return model(*batch.sig)

    def task_loss(self, outputs: ModelOutputs, batch, stage) -> torch.Tensor:
        device = outputs.logits.device
        targets = torch.as_tensor(batch.label, device=device)
        return cross_entropy_per_unit(
            outputs.logits, targets, torch.as_tensor(batch.loss_units, device=device)
        )

    def update_metrics(self, outputs: ModelOutputs, batch, stage) -> None:
        self.stats.append(batch.id, outputs.logits, torch.as_tensor(batch.label))

    def on_stage_start(self, stage, epoch=None) -> None:
        if stage != sb.Stage.TRAIN:
            self.stats = ClassificationStats()

    def stage_metrics(self, stage) -> dict[str, float]:
        return {"ACC": self.stats.accuracy()}

    def test_results(self, stats: dict[str, float]) -> dict[str, float]:
        return {"ACC": stats["ACC"], "utterances": len(self.stats.ids)}

    def write_test_files(self) -> None:
        self.stats.write_predictions(self.hparams.test_predictions_file, self.labels)


def label_pipeline(labels: Sequence[str], label_key: str, label_file: str | Path) -> Callable:
    """Dynamic item: manifest column ``label_key`` -> ``label`` (the class index, an int)."""
    index = {label: i for i, label in enumerate(labels)}

    @sb.utils.data_pipeline.takes(label_key)
    @sb.utils.data_pipeline.provides("label")
    def encode(value: str) -> int:
        if value not in index:
            raise KeyError(
                f"{label_key} {value!r} is not in {label_file}: the manifests and the label file come from "
                "different preparations; prepare again into a fresh save_folder"
            )
        return index[value]

    return encode


def check_num_classes(labels: Sequence[str], num_classes: int, key: str, label_file: str | Path) -> None:
    """The head size in the hparams must match the prepared label set."""
    if len(labels) != num_classes:
        raise RecipeError(
            f"{key} is {num_classes} but {label_file} lists {len(labels)} classes: set --{key}={len(labels)}"
        )


def build_datasets(
    hparams: dict,
    label_key: str,
    label_file: str | Path,
    units_item: Callable,
    train_items: Sequence[Callable] = (),
    segmented: bool = False,
) -> tuple[dict[str, sb.dataio.dataset.DynamicItemDataset], list[str]]:
    """Train/dev/test datasets from ``<save_folder>/{train,dev,test}.csv`` with ``sig`` (whole files, or with
    ``segmented`` the manifests' ``start``/``stop`` seconds of them),
    ``label`` (from ``label_key`` through ``label_file``) and ``loss_units`` (``units_item``, a dynamic
    item providing it); ``train_items`` (e.g. a random crop replacing ``sig``) apply to the training set
    only. Dev and test are sorted by duration (less padding). Returns the datasets and the labels."""
    labels = read_labels(Path(label_file))
    datasets = {}
    for split in SPLITS:
        data = sb.dataio.dataset.DynamicItemDataset.from_csv(
            csv_path=os.path.join(hparams["save_folder"], f"{split}.csv"),
            replacements={"data_root": hparams["data_folder"]},
        )
        datasets[split] = data if split == "train" else data.filtered_sorted(sort_key="duration")
    items = list(datasets.values())
    sb.dataio.dataset.add_dynamic_item(items, audio_pipeline(hparams["sample_rate"], segmented=segmented))
    for item in train_items:
        datasets["train"].add_dynamic_item(item)
    sb.dataio.dataset.add_dynamic_item(items, label_pipeline(labels, label_key, label_file))
    sb.dataio.dataset.add_dynamic_item(items, units_item)
    sb.dataio.dataset.set_output_keys(items, ["id", "sig", "label", "loss_units"])
    return datasets, labels


def run(hparams: dict, run_opts: dict, datasets: dict, labels: Sequence[str]) -> UtteranceClassificationBrain:
    """Fit on train (dev accuracy picks the best checkpoint; the batches come from the hparams'
    `train_sampler`), test that checkpoint, then export it to <output_folder>/student (with the labels)."""
    brain = UtteranceClassificationBrain(
        labels=labels,
        modules=hparams["modules"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    brain.fit_datasets(datasets["train"], datasets["dev"])
    brain.test_best(datasets["test"])
    export_best(brain, labels=labels, sampling_rate=hparams["sample_rate"])
    brain.log_next_steps()
    return brain
