"""Text classification (GLUE, IMDB): `TextTask` (what a recipe's task table says about one task), the
metrics, the datasets built from the manifests `prepare.py` writes, the brain (cross-entropy, or MSE for STS-B
regression; best checkpoint by the task's main metric on dev) and `run`, the one entry point a recipe's
train.py calls. The task tables themselves (GLUE's nine tasks, IMDB) live in the recipe folders.

The tokenising collate function is the YAML's (`collate_fn: !new:cald_brain.data.text.TextCollator` in each
`*_dataloader_opts`), with the tokenizer loaded from `pretrained_source`, like the model.
"""

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import stats

from cald_brain.brain import CALDBrain
from cald_brain.data.text import TextBatch, manifest_dataset
from cald_brain.export import export_best
from cald_brain.models.outputs import ModelOutputs


@dataclass(frozen=True)
class TextTask:
    """One classification task.

    name: the `--task` value. folder: the task folder name as distributed (GLUE).
    text, text_pair, label: manifest-source column names (text_pair None: single sentences).
    labels: the label strings in class-index order (None: regression, one output).
    metrics: reported metrics, the first one selects the best checkpoint.
    dev_splits: the labelled evaluation files (`dev`; MNLI: matched and mismatched).
    columns: field names of header-less files (CoLA); None: the file's header row names them.
    hybrid_switch_step: the reference's hybrid switch (optimizer step where distillation stops), if any.
    """

    name: str
    folder: str
    text: str
    text_pair: str | None
    label: str
    labels: tuple[str, ...] | None
    metrics: tuple[str, ...] = ("accuracy",)
    dev_splits: tuple[str, ...] = ("dev",)
    columns: tuple[str, ...] | None = None
    hybrid_switch_step: int | None = None

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)

    @property
    def pair(self) -> bool:
        return self.text_pair is not None


SCORE_KEY = "dev_score"  # checkpoint meta key: the task's main metric on dev (teacher_max_key of students)


# --- metrics --------------------------------------------------------------------------------------------


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(predictions == labels))


def f1(predictions: np.ndarray, labels: np.ndarray) -> float:
    """F1 of the positive class (1), as GLUE reports it for MRPC and QQP; 0 when there is no true positive."""
    true_positive = float(np.sum((predictions == 1) & (labels == 1)))
    if true_positive == 0:
        return 0.0
    precision = true_positive / float(np.sum(predictions == 1))
    recall = true_positive / float(np.sum(labels == 1))
    return 2 * precision * recall / (precision + recall)


def matthews(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Matthews correlation of binary predictions (CoLA); 0 when a row or column of the confusion matrix is
    empty (e.g. a constant predictor), as scikit-learn returns."""
    tp = float(np.sum((predictions == 1) & (labels == 1)))
    tn = float(np.sum((predictions == 0) & (labels == 0)))
    fp = float(np.sum((predictions == 1) & (labels == 0)))
    fn = float(np.sum((predictions == 0) & (labels == 1)))
    denominator = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return 0.0 if denominator == 0 else (tp * tn - fp * fn) / denominator


def pearson(predictions: np.ndarray, labels: np.ndarray) -> float:
    return float(stats.pearsonr(predictions, labels)[0])


def spearman(predictions: np.ndarray, labels: np.ndarray) -> float:
    return float(stats.spearmanr(predictions, labels)[0])


METRICS = {"accuracy": accuracy, "f1": f1, "matthews": matthews, "pearson": pearson, "spearman": spearman}


def compute_metrics(task: TextTask, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The task's metrics (as fractions, or correlations) of class predictions / regression outputs."""
    return {name: METRICS[name](predictions, labels) for name in task.metrics}


# --- data -----------------------------------------------------------------------------------------------


def build_datasets(hparams: dict[str, Any], task: TextTask) -> dict[str, Any]:
    """Datasets of the manifests `<save_folder>/<split>.json` of `train` and the task's evaluation splits."""
    return {
        split: manifest_dataset(os.path.join(hparams["save_folder"], f"{split}.json"), task.pair)
        for split in ("train", *task.dev_splits)
    }


# --- brain ----------------------------------------------------------------------------------------------


class TextClassificationBrain(CALDBrain):
    """Sequence classification hooks; student and teacher are cald_brain.models.TextClassifier networks.

    `task` says the labels (None: regression) and the metrics, the first of which, on the first evaluation
    split, picks the best checkpoint (checkpoint meta key `dev_score`). `evaluate_splits` tests every
    evaluation split; `test_metrics_file` holds the results of all of them.
    """

    best_key = SCORE_KEY
    best_is_max = True

    def __init__(self, task: TextTask, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.task = task
        self.eval_split = task.dev_splits[0]
        self.results: dict[str, dict[str, float]] = {}

    def forward_model(self, model, batch: TextBatch, stage) -> ModelOutputs:
        return model(**batch.inputs)

    def task_loss(self, outputs: ModelOutputs, batch: TextBatch, stage) -> torch.Tensor:
        logits = outputs.logits.float()
        if self.task.labels is None:
            return torch.nn.functional.mse_loss(logits.squeeze(-1), batch.labels)
        return torch.nn.functional.cross_entropy(logits, batch.labels)

    def update_metrics(self, outputs: ModelOutputs, batch: TextBatch, stage) -> None:
        logits = outputs.logits.float()
        predicted = logits.squeeze(-1) if self.task.labels is None else logits.argmax(-1)
        self.predictions.append(predicted.cpu())
        self.references.append(batch.labels.cpu())

    def on_stage_start(self, stage, epoch=None) -> None:
        self.predictions: list[torch.Tensor] = []
        self.references: list[torch.Tensor] = []

    def stage_metrics(self, stage) -> dict[str, float]:
        predictions = torch.cat(self.predictions).numpy()
        references = torch.cat(self.references).numpy()
        return compute_metrics(self.task, predictions, references)

    def checkpoint_meta(self, metrics: dict[str, float]) -> dict[str, float]:
        return {SCORE_KEY: metrics[self.task.metrics[0]]}

    def test_log_meta(self) -> dict[str, Any]:
        return {"split": self.eval_split}

    def test_results(self, stats: dict[str, float]) -> dict[str, dict[str, float]]:
        self.results[self.eval_split] = super().test_results(stats)
        return self.results

    def evaluate_splits(self, datasets: dict[str, Any]) -> None:
        """Evaluate the best checkpoint (by the task's main metric) on each labelled evaluation split."""
        self.results = {}
        for split in self.task.dev_splits:
            self.eval_split = split
            self.test_best(datasets[split])


def run(hparams: dict[str, Any], run_opts: Any, datasets: dict, task: TextTask) -> TextClassificationBrain:
    """Fit on `train` (the best checkpoint chosen on the first evaluation split), evaluate that checkpoint on
    every evaluation split of the task, then export it to <output_folder>/student (with the tokenizer of the
    YAML's `text_collator` and the task's labels)."""
    brain = TextClassificationBrain(
        task=task,
        modules=hparams["modules"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    brain.fit_datasets(datasets["train"], datasets[task.dev_splits[0]])
    brain.evaluate_splits(datasets)
    export_best(brain, tokenizer=hparams["text_collator"].tokenizer, labels=task.labels)
    brain.log_next_steps()
    return brain
