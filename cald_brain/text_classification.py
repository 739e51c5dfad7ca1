"""Text classification with CALD, shared by the GLUE and IMDB recipes: the task table (inputs, labels and
the metrics each task is reported with), the metrics, the datasets and loaders built from the manifests
`prepare.py` writes, and the `TextClassification` brain (cross-entropy, or MSE for STS-B regression).

The recipes' `train.py` only resolve their task and data, as the task table says what everything else
needs.
"""

import inspect
import json
import logging
import math
import os
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import speechbrain as sb
import torch
from scipy import stats
from speechbrain.utils.distributed import if_main_process

from cald_brain.brain import CALDBrain, ModelOutputs
from cald_brain.data.text import TextBatch, TextCollator, manifest_dataset
from cald_brain.distill.snapshots import save_snapshot
from cald_brain.models.text import load_tokenizer
from cald_brain.recipe import RecipeError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TextTask:
    """One classification task.

    name: the `--task` value. folder: the task folder name as distributed (GLUE) .
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


BINARY = ("0", "1")
NLI2 = ("entailment", "not_entailment")
# Label orders as Hugging Face's GLUE processors; column names from the distributed files' headers.
GLUE_TASKS: dict[str, TextTask] = {
    task.name: task
    for task in (
        TextTask(
            "cola", "CoLA", "sentence", None, "label", BINARY, ("matthews", "accuracy"),
            columns=("source", "label", "label_notes", "sentence"),
        ),
        TextTask("sst2", "SST-2", "sentence", None, "label", BINARY, hybrid_switch_step=5000),
        TextTask("mrpc", "MRPC", "#1 String", "#2 String", "Quality", BINARY, ("f1", "accuracy")),
        TextTask(
            "qqp", "QQP", "question1", "question2", "is_duplicate", BINARY, ("f1", "accuracy"),
            hybrid_switch_step=40000,
        ),
        TextTask("stsb", "STS-B", "sentence1", "sentence2", "score", None, ("pearson", "spearman")),
        TextTask(
            "mnli", "MNLI", "sentence1", "sentence2", "gold_label",
            ("contradiction", "entailment", "neutral"), dev_splits=("dev_matched", "dev_mismatched"),
        ),
        TextTask("qnli", "QNLI", "question", "sentence", "label", NLI2, hybrid_switch_step=10000),
        TextTask("rte", "RTE", "sentence1", "sentence2", "label", NLI2),
        TextTask("wnli", "WNLI", "sentence1", "sentence2", "label", BINARY),
    )
}  # fmt: skip
IMDB_TASK = TextTask(
    "imdb",
    "aclImdb",
    "text",
    None,
    "label",
    ("neg", "pos"),
    dev_splits=("dev", "test"),
    hybrid_switch_step=3000,
)
SCORE_KEY = "dev_score"  # checkpoint meta key: the task's main metric on dev (teacher_max_key of students)


def glue_task(name: str) -> TextTask:
    if name not in GLUE_TASKS:
        raise RecipeError(f"--task={name!r} is not a GLUE task; use one of {', '.join(GLUE_TASKS)}")
    return GLUE_TASKS[name]


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


def text_datasets(hparams: dict[str, Any], task: TextTask, splits: tuple[str, ...]) -> dict[str, Any]:
    """Datasets of the manifests `<save_folder>/<split>.json`, and the tokenising collate function set into
    every `*_dataloader_opts` (the tokenizer comes from `pretrained_source`, like the model)."""
    collator = TextCollator(
        load_tokenizer(hparams["pretrained_source"]), hparams["max_length"], regression=task.labels is None
    )
    for key in ("train_dataloader_opts", "valid_dataloader_opts", "test_dataloader_opts"):
        hparams[key]["collate_fn"] = collator
    return {
        split: manifest_dataset(os.path.join(hparams["save_folder"], f"{split}.json"), task.pair)
        for split in splits
    }


def with_total_steps(scheduler_class: Any, total: int | None) -> Any:
    """`scheduler_class` with `total_steps=total` bound when it takes a `total_steps` argument the YAML left
    out (WarmupLinearDecay); otherwise unchanged."""
    if scheduler_class is None:
        return None
    parameter = inspect.signature(scheduler_class).parameters.get("total_steps")
    if parameter is None or parameter.default is not inspect.Parameter.empty:
        return scheduler_class
    if total is None:
        raise RecipeError("the lr scheduler needs total_steps: set number_of_epochs or optimizer_step_limit")
    return partial(scheduler_class, total_steps=total)


# --- brain ----------------------------------------------------------------------------------------------


class TextClassification(CALDBrain):
    """Sequence classification hooks; student and teacher are cald_brain.models.TextClassifier networks.

    Needs `self.task` (a TextTask). The teacher run may keep a waypoint snapshot at the end of every epoch
    (`snapshot_every_epoch: True`, as the reference's `--checkpointing_steps epoch`). A `lr_scheduler` or
    `teacher_lr_scheduler` with a `total_steps` argument left out of the YAML (WarmupLinearDecay) gets the
    run's planned optimizer steps.
    """

    task: TextTask

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

    def on_fit_start(self) -> None:
        total = self.total_optimizer_steps()
        self.lr_scheduler_class = with_total_steps(self.lr_scheduler_class, total)
        config = self.guidance.config
        config.teacher_lr_scheduler = with_total_steps(config.teacher_lr_scheduler, total)
        super().on_fit_start()
        if getattr(self.hparams, "snapshot_every_epoch", False):
            self.snapshot_folder = self._resolve_snapshot_folder()

    def on_stage_start(self, stage, epoch=None) -> None:
        self.predictions: list[torch.Tensor] = []
        self.references: list[torch.Tensor] = []

    def on_stage_end(self, stage, stage_loss, epoch=None) -> None:
        stage_stats = self.stage_stats(stage, stage_loss)
        if stage == sb.Stage.TRAIN:
            self.train_stats = stage_stats
            if getattr(self.hparams, "snapshot_every_epoch", False) and if_main_process():
                path = save_snapshot(self.student.state_dict(), self.snapshot_folder, self.optimizer_step)
                logger.info(f"Epoch waypoint snapshot written: {path}")
            return
        predictions = torch.cat(self.predictions).numpy()
        references = torch.cat(self.references).numpy()
        stage_stats.update(compute_metrics(self.task, predictions, references))
        if stage == sb.Stage.VALID:
            meta = {SCORE_KEY: stage_stats[self.task.metrics[0]]}
            self.log_validation(epoch, stage_stats, meta=meta, max_keys=[SCORE_KEY])
            return
        self.log_test(stage_stats, split=self.eval_split)
        self.test_results[self.eval_split] = {k: v for k, v in stage_stats.items() if k != "loss"}
        if if_main_process():
            with open(self.hparams.test_metrics_file, "w", encoding="utf-8") as w:
                json.dump(self.test_results, w, indent=2)

    def evaluate_splits(self, datasets: dict[str, Any]) -> None:
        """Evaluate the best checkpoint (by the task's main metric) on each labelled evaluation split; the
        results of all splits go to `test_metrics_file`."""
        self.test_results: dict[str, dict[str, float]] = {}
        for split in self.task.dev_splits:
            self.eval_split = split
            self.evaluate(
                datasets[split],
                max_key=SCORE_KEY,
                test_loader_kwargs=self.hparams.test_dataloader_opts,
            )


def fit_and_evaluate(hparams: dict[str, Any], run_opts: Any, task: TextTask, datasets: dict) -> None:
    """A recipe's training run: fit on `train` (the best checkpoint chosen on the first evaluation split),
    then evaluate that checkpoint on every evaluation split of the task."""
    brain = TextClassification(
        modules=hparams["modules"], hparams=hparams, run_opts=run_opts, checkpointer=hparams["checkpointer"]
    )
    brain.task = task
    brain.fit(
        brain.hparams.epoch_counter,
        datasets["train"],
        datasets[task.dev_splits[0]],
        train_loader_kwargs=hparams["train_dataloader_opts"],
        valid_loader_kwargs=hparams["valid_dataloader_opts"],
    )
    brain.evaluate_splits(datasets)
