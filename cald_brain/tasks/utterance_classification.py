"""Utterance classification (SLURP scenario and action, or intents; VoxCeleb1 speakers): the brain (per-unit
cross-entropy, accuracy, best checkpoint by accuracy), the datasets built from the prepared manifests and
`run`, the one entry point a recipe's train.py calls. A recipe's train.py only says which manifest columns
hold the labels (one `LabelHead` each) and how many loss units an utterance counts (see
`cross_entropy_per_unit`).

Several heads (SLURP's scenario and action, as the CALD reference trains them): the model's logits are the
heads' side by side (`cald_brain.models.SpeechModel` with a list of sizes); the task loss is the mean of the
heads' losses, ``ACC`` (which picks the best checkpoint) the mean of their accuracies, and ``ACC_<joint>``
the fraction of utterances with every head right (SLURP's intent accuracy).

Manifests are the prepare scripts' CSVs (``ID, duration, wav, <label columns>, ...``, ``wav`` relative to
``$data_root``) plus one label file per head (one label per line, line i = class i;
`cald_brain.data.manifests`).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True)
class LabelHead:
    """One classifier head: the manifest column it predicts and its label set (line i of `file` = class i)."""

    key: str
    file: Path
    labels: tuple[str, ...]

    @classmethod
    def read(cls, key: str, file: str | Path) -> LabelHead:
        return cls(key, Path(file), tuple(read_labels(Path(file))))


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


def heads_cross_entropy(
    head_logits: Sequence[torch.Tensor], targets: torch.Tensor, units: torch.Tensor
) -> torch.Tensor:
    """Mean over the heads of `cross_entropy_per_unit` (targets: (batch, heads)): the reference's classifier
    loss, the heads' summed cross-entropies added, divided by the number of heads (and by the units)."""
    losses = [cross_entropy_per_unit(x, targets[:, i], units) for i, x in enumerate(head_logits)]
    return torch.stack(losses).mean()


class ClassificationStats:
    """Predictions of one evaluation stage (one class index per head and utterance): accuracies, and a
    per-utterance predictions file."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.predictions: list[tuple[int, ...]] = []
        self.targets: list[tuple[int, ...]] = []

    def append(self, ids: Sequence[str], head_logits: Sequence[torch.Tensor], targets: torch.Tensor) -> None:
        """targets: (batch, heads) class indices."""
        self.ids.extend(ids)
        predictions = torch.stack([x.argmax(dim=-1) for x in head_logits], dim=-1)
        self.predictions.extend(tuple(p) for p in predictions.tolist())
        self.targets.extend(tuple(t) for t in targets.tolist())

    def head_accuracies(self) -> list[float]:
        """Fraction of correct predictions of each head (0 when nothing was evaluated)."""
        heads = len(self.targets[0]) if self.targets else 0
        return [
            sum(p[h] == t[h] for p, t in zip(self.predictions, self.targets, strict=True)) / len(self.ids)
            for h in range(heads)
        ]

    def accuracy(self) -> float:
        """Mean of the heads' accuracies (0 when nothing was evaluated)."""
        accuracies = self.head_accuracies()
        return sum(accuracies) / len(accuracies) if accuracies else 0.0

    def joint_accuracy(self) -> float:
        """Fraction of utterances with every head right (0 when nothing was evaluated)."""
        if not self.ids:
            return 0.0
        return sum(p == t for p, t in zip(self.predictions, self.targets, strict=True)) / len(self.ids)

    def write_predictions(self, path: str | Path, heads: Sequence[LabelHead]) -> None:
        """CSV with label names, written atomically: ``ID,target,prediction,correct`` for one head; with
        several, ``<key>_target,<key>_prediction`` per head, then ``correct`` (every head right)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            if len(heads) == 1:
                writer.writerow(["ID", "target", "prediction", "correct"])
            else:
                names = [f"{h.key}_{column}" for h in heads for column in ("target", "prediction")]
                writer.writerow(["ID", *names, "correct"])
            for uid, pred, target in zip(self.ids, self.predictions, self.targets, strict=True):
                cells = [
                    label
                    for h, head in enumerate(heads)
                    for label in (head.labels[target[h]], head.labels[pred[h]])
                ]
                writer.writerow([uid, *cells, int(pred == target)])
        os.replace(tmp, path)


class UtteranceClassificationBrain(CALDBrain):
    """One label per utterance and head from a pooled `cald_brain.models.SpeechModel` (teacher and student
    alike).

    Batches carry ``sig`` (waveforms, relative lengths), ``label`` (a tuple of class indices, one per head)
    and ``loss_units`` (see `cross_entropy_per_unit`), the last two as plain lists (SpeechBrain pads tensors,
    not numbers). Dev accuracy (``ACC``, the mean over heads) picks the best checkpoint; with several heads
    ``ACC_<key>`` per head and ``ACC_<joint_name>`` (every head right) are logged beside it. The test stage
    writes ``test_predictions_file`` and ``test_metrics_file`` (hparams keys).
    """

    best_key = "ACC"
    best_is_max = True

    def __init__(self, heads: Sequence[LabelHead], joint_name: str = "joint", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.heads = list(heads)
        self.head_sizes = [len(head.labels) for head in self.heads]
        self.joint_name = joint_name
        self.stats = ClassificationStats()

    def forward_model(self, model, batch, stage) -> ModelOutputs:
        return model(*batch.sig)

    def task_loss(self, outputs: ModelOutputs, batch, stage) -> torch.Tensor:
        device = outputs.logits.device
        return heads_cross_entropy(
            outputs.logits.split(self.head_sizes, dim=-1),
            torch.as_tensor(batch.label, device=device),
            torch.as_tensor(batch.loss_units, device=device),
        )

    def update_metrics(self, outputs: ModelOutputs, batch, stage) -> None:
        self.stats.append(
            batch.id, outputs.logits.split(self.head_sizes, dim=-1), torch.as_tensor(batch.label)
        )

    def on_stage_start(self, stage, epoch=None) -> None:
        if stage != sb.Stage.TRAIN:
            self.stats = ClassificationStats()

    def stage_metrics(self, stage) -> dict[str, float]:
        metrics = {"ACC": self.stats.accuracy()}
        if len(self.heads) > 1:
            accuracies = self.stats.head_accuracies() or [0.0] * len(self.heads)
            metrics.update({f"ACC_{h.key}": a for h, a in zip(self.heads, accuracies, strict=True)})
            metrics[f"ACC_{self.joint_name}"] = self.stats.joint_accuracy()
        return metrics

    def test_results(self, stats: dict[str, float]) -> dict[str, float]:
        return {**{k: v for k, v in stats.items() if k.startswith("ACC")}, "utterances": len(self.stats.ids)}

    def write_test_files(self) -> None:
        self.stats.write_predictions(self.hparams.test_predictions_file, self.heads)


def label_pipeline(heads: Sequence[LabelHead]) -> Callable:
    """Dynamic item: the heads' manifest columns -> ``label`` (a tuple of class indices, one per head)."""
    indices = [{label: i for i, label in enumerate(head.labels)} for head in heads]

    @sb.utils.data_pipeline.takes(*[head.key for head in heads])
    @sb.utils.data_pipeline.provides("label")
    def encode(*values: str) -> tuple[int, ...]:
        for head, index, value in zip(heads, indices, values, strict=True):
            if value not in index:
                raise KeyError(
                    f"{head.key} {value!r} is not in {head.file}: the manifests and the label file come from "
                    "different preparations; prepare again into a fresh save_folder"
                )
        return tuple(index[value] for index, value in zip(indices, values, strict=True))

    return encode


def check_heads(heads: Sequence[LabelHead], hparams: dict, key: str = "num_outputs") -> None:
    """Before training: the head sizes in ``hparams[key]`` (an int for one head, a list for several) must
    match the prepared label sets, and logit distillation (alpha_kd > 0) needs a single head."""
    sizes = [len(head.labels) for head in heads]
    value = hparams[key]
    expected = sizes[0] if len(heads) == 1 else sizes
    given = value if isinstance(value, int) else list(value)
    if given != expected and not (len(heads) == 1 and given == [sizes[0]]):
        listed = ", ".join(f"{head.file} lists {len(head.labels)} {head.key} labels" for head in heads)
        fix = str(expected).replace(" ", "")
        raise RecipeError(f"{key} is {value} but {listed}: set --{key}={fix}")
    if len(heads) > 1 and hparams.get("alpha_kd", 0.0) > 0:
        raise RecipeError(
            f"alpha_kd is {hparams['alpha_kd']} but the classifier has {len(heads)} heads "
            f"({', '.join(head.key for head in heads)}): logit distillation is one softmax over one head. "
            "Set --alpha_kd=0 (the reference's classifier runs use 0) or train a single head"
        )


def build_datasets(
    hparams: dict,
    heads: Sequence[LabelHead],
    units_item: Callable,
    train_items: Sequence[Callable] = (),
    segmented: bool = False,
) -> dict[str, sb.dataio.dataset.DynamicItemDataset]:
    """Train/dev/test datasets from ``<save_folder>/{train,dev,test}.csv`` with ``sig`` (whole files, or with
    ``segmented`` the manifests' ``start``/``stop`` seconds of them), ``label`` (the ``heads``' columns
    through their label files) and ``loss_units`` (``units_item``, a dynamic item providing it);
    ``train_items`` (e.g. a random crop replacing ``sig``) apply to the training set only. Dev and test are
    sorted by duration (less padding)."""
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
    sb.dataio.dataset.add_dynamic_item(items, label_pipeline(heads))
    sb.dataio.dataset.add_dynamic_item(items, units_item)
    sb.dataio.dataset.set_output_keys(items, ["id", "sig", "label", "loss_units"])
    return datasets


def run(
    hparams: dict, run_opts: dict, datasets: dict, heads: Sequence[LabelHead], joint_name: str = "joint"
) -> UtteranceClassificationBrain:
    """Fit on train (dev accuracy picks the best checkpoint; the batches come from the hparams'
    `train_sampler`), test that checkpoint, then export it to <output_folder>/student (with the labels)."""
    brain = UtteranceClassificationBrain(
        heads=heads,
        joint_name=joint_name,
        modules=hparams["modules"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    brain.fit_datasets(datasets["train"], datasets["dev"])
    brain.test_best(datasets["test"])
    labels = list(heads[0].labels) if len(heads) == 1 else {head.key: list(head.labels) for head in heads}
    export_best(brain, labels=labels, sampling_rate=hparams["sample_rate"], joint_name=joint_name)
    brain.log_next_steps()
    return brain
