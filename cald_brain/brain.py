"""CALDBrain: a speechbrain.Brain that trains a student with task loss + cross-architecture layerwise
distillation, following a guidance schedule (unguided / target / trajectory / waypoint / hybrid).

Task brains (cald_brain.tasks) implement `forward_model` (run one network), `task_loss`, and for evaluation
`update_metrics` and `stage_metrics` with the `best_key` that picks the best checkpoint; CALDBrain owns the
train loader, the train/eval steps, the teacher, the objective, optimizer and scheduler stepping (with
`total_steps` bound), non-finite handling, waypoint snapshots (by steps or epochs), the end-of-stage logging
and checkpointing of all of it (random number generators included, so a resumed run continues exactly), and
stops cleanly on SIGUSR1. See docs/ENGINE.md.
"""

import inspect
import json
import logging
import math
import os
import sys
from functools import partial
from pathlib import Path
from typing import Any

import speechbrain as sb
import torch
import torch.distributed as dist
import yaml
from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks
from speechbrain.utils.distributed import if_main_process
from torch.utils.data import DataLoader

from cald_brain.checkpoints import RandomStates
from cald_brain.distill.guidance import Guidance, StepPlan, config_from_hparams
from cald_brain.distill.losses import (
    DistillLossConfig,
    check_hidden_match,
    distill_scale_factor,
    layerwise_distillation_loss,
    logit_distillation_loss,
)
from cald_brain.distill.snapshots import SNAPSHOT_DIRNAME, save_snapshot
from cald_brain.distill.teachers import Teacher
from cald_brain.models.front_end import SharedFrontEnd, share_front_end
from cald_brain.models.outputs import ModelOutputs
from cald_brain.optim import NO_DECAY_MODULES, param_groups
from cald_brain.recipe import RecipeError, next_steps_text
from cald_brain.run_control import RUN_OPTION_TYPES, StoppedOnSignal, StopRequest, check_run_options
from cald_brain.tracking import with_tracking

logger = logging.getLogger(__name__)


def move_to_device(batch: Any, device: str | torch.device) -> Any:
    """Move a batch (PaddedBatch or anything with `.to`, tensors, and dicts/lists/tuples of them) to `device`;
    other leaves (ids, strings) stay as they are."""
    if isinstance(batch, dict):
        return {key: move_to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, (list, tuple)) and not hasattr(batch, "_fields"):
        return type(batch)(move_to_device(value, device) for value in batch)
    if hasattr(batch, "to"):
        return batch.to(device)
    return batch


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


def train_loader_kwargs(hparams: dict[str, Any], train_set: Any, batch_sampler: Any = None) -> dict[str, Any]:
    """The train loader's options, the same way for every task: `train_dataloader_opts`, plus a batch sampler
    when the batches do not come from the loader's batch_size: `batch_sampler` as given (a task that builds
    its own), else the one the hparams' `train_sampler` (a callable, YAML `!name:`) builds over `train_set`.
    With a batch sampler, `train_dataloader_opts` must not size or order the batches.

    A batch sampler with `shards_itself = True` goes to the DataLoader as it is, also under DDP, and its
    `set_epoch(epoch)` is called every epoch (`CALDBrain._train_loader_specifics`)."""
    opts = dict(hparams["train_dataloader_opts"])
    if batch_sampler is None and hparams.get("train_sampler") is not None:
        batch_sampler = hparams["train_sampler"](train_set)
    if batch_sampler is None:
        return opts
    clashing = sorted({"batch_size", "shuffle", "sampler", "batch_sampler", "drop_last"} & set(opts))
    if clashing:
        raise RecipeError(
            f"train_dataloader_opts sets {', '.join(clashing)}, but the training batches come from a batch "
            "sampler (train_sampler): remove them and size the batches with the sampler's keys and "
            "grad_accumulation_factor"
        )
    return {**opts, "batch_sampler": batch_sampler}


def write_json(path: str | Path, value: Any) -> None:
    """`value` as indented JSON, written atomically (tmp + rename)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2)
    os.replace(tmp, path)


class TermAverages:
    """Running averages of the logged loss terms over the micro-batches of an epoch (each term over the
    micro-batches where it was computed and finite; NaN if it was never finite, rather than a made-up 0)."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, terms: dict[str, torch.Tensor]) -> None:
        values = torch.stack([value.detach().float() for value in terms.values()]).tolist()
        for key, value in zip(terms, values, strict=True):
            finite = math.isfinite(value)
            self.sums[key] = self.sums.get(key, 0.0) + (value if finite else 0.0)
            self.counts[key] = self.counts.get(key, 0) + finite

    def averages(self) -> dict[str, float]:
        return {key: self.sums[key] / self.counts[key] if self.counts[key] else math.nan for key in self.sums}

    def state_dict(self) -> dict[str, dict]:
        return {"sums": dict(self.sums), "counts": dict(self.counts)}

    def load_state_dict(self, state: dict[str, dict]) -> None:
        self.sums, self.counts = dict(state["sums"]), dict(state["counts"])


@register_checkpoint_hooks
class CALDBrain(sb.Brain):
    """Brain for CALD training and for the plain teacher fine-tuning run (guidance_mode: unguided).

    `modules` must hold the student as `student`. The guidance schedule, loss settings and snapshot settings
    come from top-level hparams keys (docs/ENGINE.md); `opt_class` may be passed or given as hparams key.
    """

    def __init__(self, modules=None, opt_class=None, hparams=None, run_opts=None, checkpointer=None):
        hparams = dict(hparams or {})
        if not modules or "student" not in modules:
            raise ValueError(
                "CALDBrain needs the student network as modules['student'] (YAML: modules: {student: ...})"
            )
        super().__init__(modules, opt_class or hparams.get("opt_class"), hparams, run_opts, checkpointer)
        self._check_run_options()
        self.guidance = Guidance.from_hparams(hparams)
        self.loss_config = config_from_hparams(DistillLossConfig, hparams)
        self.snapshot_every_steps = int(hparams.get("snapshot_every_steps") or 0)
        self.snapshot_every_epoch = bool(hparams.get("snapshot_every_epoch", False))
        self.snapshot_folder = hparams.get("snapshot_folder")
        self.lr_scheduler_class = hparams.get("lr_scheduler")
        self.lr_by_prefix = hparams.get("lr_by_prefix")
        self.weight_decay = hparams.get("weight_decay")
        self.no_decay_modules = hparams.get("no_decay_modules", NO_DECAY_MODULES)
        self.lr_scheduler = None
        self.student = self.modules.student  # unwrapped: what checkpoints and snapshots save
        # The train loader draws its workers' seed from its own generator, re-seeded from the epoch number,
        # so creating its iterator after a mid-epoch resume neither shifts the global generators restored
        # from the checkpoint nor gives the workers other seeds than the uninterrupted run's.
        self.loader_seed = torch.initial_seed()
        self.loader_generator = torch.Generator()
        if self.checkpointer is not None:
            self.checkpointer.add_recoverable("student", self.student)
            self.checkpointer.add_recoverable("rng", RandomStates())
        if "train_logger" in hparams:
            self.hparams.train_logger = with_tracking(hparams)  # plus TensorBoard / W&B (`logger`)
        self.log_every_n_steps = int(hparams.get("log_every_n_steps") or 0)
        self.term_averages = TermAverages()
        self.step_averages = TermAverages()  # since the last step line
        self.skipped_steps = 0  # this epoch
        self.nonfinite_in_a_row = 0
        self._window_finite = True
        self._stop_now = False  # a stop request agreed by every rank at the end of the last window
        self._evaluating = False
        self._teacher_checked = False
        self._epoch_counter = None
        self._epoch = 0  # the epoch being trained (step lines)
        self._train_loader = None
        self.front_end: SharedFrontEnd | None = None  # student and teacher share it (on_fit_start)

    def _check_run_options(self) -> None:
        """SpeechBrain run options (command line or YAML) converted to their declared types: the command line
        leaves e.g. optimizer_step_limit a string, which would fail at the first comparison."""
        options = {key: getattr(self, key) for key in RUN_OPTION_TYPES if hasattr(self, key)}
        try:
            typed = check_run_options(options)
        except TypeError as err:
            raise TypeError(f"run option {err}") from err
        for key, value in typed.items():
            setattr(self, key, value)

    # --- task hooks -----------------------------------------------------------------------------------------

    best_key: str = ""  # the stage_metrics key (VALID) that picks the best checkpoint
    best_is_max: bool = False  # True: the highest best_key is best (accuracy); False: the lowest (error rate)

    def forward_model(self, model: torch.nn.Module, batch: Any, stage: sb.Stage) -> ModelOutputs:
        """Run one network (the student, or the teacher) on `batch`. Must be implemented by the task."""
        raise NotImplementedError("the task's CALDBrain subclass must implement forward_model()")

    def task_loss(self, outputs: ModelOutputs, batch: Any, stage: sb.Stage) -> torch.Tensor:
        """Task loss (CTC, CE, ...) of one network's outputs. Must be implemented by the task."""
        raise NotImplementedError("the task's CALDBrain subclass must implement task_loss()")

    def update_metrics(self, outputs: ModelOutputs, batch: Any, stage: sb.Stage) -> None:
        """Add the student's predictions to the stage metrics (VALID/TEST only). Optional."""

    def stage_metrics(self, stage: sb.Stage) -> dict[str, float]:
        """The task's metrics of the VALID/TEST stage that ends, from what `update_metrics` gathered; they
        are logged after the loss. Optional."""
        return {}

    def checkpoint_meta(self, metrics: dict[str, float]) -> dict[str, float]:
        """What a validation checkpoint records (`best_key` must be one of its keys): the metrics."""
        return metrics

    def test_results(self, stats: dict[str, float]) -> dict[str, Any]:
        """What `test_metrics_file` holds after a test stage (`stats`: the loss, then the metrics)."""
        return {key: value for key, value in stats.items() if key != "loss"}

    def write_test_files(self) -> None:
        """More files a test stage writes (main process only), e.g. per-item predictions. Optional."""

    def prepare_batch(self, batch: Any, stage: sb.Stage) -> Any:
        """Move the batch to the device. Override (calling super) to add data augmentation: the result is fed
        to both student and teacher, so they see the same input."""
        return move_to_device(batch, self.device)

    def stage_stats(self, stage: sb.Stage, stage_loss: float) -> dict[str, float]:
        """{"loss": stage_loss}, plus at TRAIN the epoch averages of the logged terms and `skipped_steps`.

        The TRAIN loss is the average over the micro-batches with a finite loss (NaN if none was); a
        VALID/TEST loss is NaN if any batch's was not finite."""
        stats = {"loss": stage_loss}
        if stage == sb.Stage.TRAIN:
            stats.update(self.term_averages.averages())
            stats["skipped_steps"] = self.skipped_steps
            stats["lr"] = self.current_lr()
        return stats

    def current_lr(self) -> float:
        """The learning rate of the student optimizer's first parameter group (what the next step uses)."""
        return self.optimizer.param_groups[0]["lr"]

    def valid_log_meta(self) -> dict[str, Any]:
        """Logged after epoch and steps at each validation (e.g. the learning rate). Optional."""
        return {}

    def test_log_meta(self) -> dict[str, Any]:
        """Logged after the loaded checkpoint's epoch at each test (e.g. the split's name). Optional."""
        return {}

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """End of a stage. TRAIN: keep its stats for the validation log (and write the epoch's snapshot with
        `snapshot_every_epoch`). VALID: log train and valid stats, checkpoint with `checkpoint_meta` and keep
        the `checkpoints_to_keep` best by `best_key`. TEST: log, write `test_metrics_file` and the task's
        test files."""
        stats = self.stage_stats(stage, stage_loss)
        if stage == sb.Stage.TRAIN:
            self.train_stats = stats
            if self.front_end is not None and self.front_end.offers:
                hits, offers = self.front_end.hits, self.front_end.offers
                differ = "" if hits else " (student and teacher encoders differ: each ran its own)"
                logger.info(
                    f"Frozen front end shared in {hits} of {offers} teacher forwards this epoch{differ}"
                )
                self.front_end.hits = self.front_end.offers = 0
            if self.snapshot_every_epoch:
                self._save_snapshot("Epoch waypoint")
            return
        metrics = self.stage_metrics(stage)
        stats.update(metrics)
        if stage == sb.Stage.VALID:
            self.hparams.train_logger.log_stats(
                stats_meta={"epoch": epoch, "steps": self.optimizer_step, **self.valid_log_meta()},
                train_stats=self.train_stats,
                valid_stats=stats,
            )
            self.checkpointer.save_and_keep_only(
                meta=self.checkpoint_meta(metrics),
                num_to_keep=self.hparams.checkpoints_to_keep,
                **{"max_keys" if self.best_is_max else "min_keys": [self.best_key]},
            )
            return
        self.hparams.train_logger.log_stats(
            stats_meta={"Epoch loaded": self.hparams.epoch_counter.current, **self.test_log_meta()},
            test_stats=stats,
        )
        if if_main_process():
            write_json(self.hparams.test_metrics_file, self.test_results(stats))
            self.write_test_files()

    # --- fit and test -----------------------------------------------------------------------------------

    def fit_datasets(self, train_set: Any, valid_set: Any, batch_sampler: Any = None) -> None:
        """`fit` over the hparams' `epoch_counter`, the train loader as `train_loader_kwargs` builds it (with
        `batch_sampler` if the task builds one) and `valid_dataloader_opts`. A batch sampler with an `epochs`
        attribute (SegmentedBatches: its segments) decides the run's number of epochs: the epoch counter's
        limit is set to it here (the YAML cannot know it: it depends on the grad_accumulation_factor run
        option)."""
        loader_kwargs = train_loader_kwargs(vars(self.hparams), train_set, batch_sampler)
        epochs = getattr(loader_kwargs.get("batch_sampler"), "epochs", None)
        if epochs is not None:
            self.hparams.epoch_counter.limit = epochs
        self.fit(
            self.hparams.epoch_counter,
            train_set,
            valid_set,
            train_loader_kwargs=loader_kwargs,
            valid_loader_kwargs=self.hparams.valid_dataloader_opts,
        )

    def test_best(self, test_set: Any) -> None:
        """Evaluate the best checkpoint (by `best_key`) on `test_set` with `test_dataloader_opts`."""
        self.evaluate(
            test_set,
            **{"max_key" if self.best_is_max else "min_key": self.best_key},
            test_loader_kwargs=self.hparams.test_dataloader_opts,
        )

    def is_teacher_run(self) -> bool:
        """The transformer's own fine-tuning run: unguided, and no converted mixer anywhere in the student
        (a converted model records its conversion in its config)."""
        from cald_brain.convert.core import CONVERSION_KEY  # here: transformers only when needed

        converted = any(
            getattr(getattr(m, "config", None), CONVERSION_KEY, None) for m in self.student.modules()
        )
        return self.guidance.mode == "unguided" and not converted

    def log_next_steps(self, argv: list[str] | None = None) -> None:
        """End of a recipe run (the tasks' `run`): after a teacher run, log the commands of the students that
        distil from it, with the same arguments and its checkpoints as `--teacher_path` (main process)."""
        if self.checkpointer is None or not if_main_process() or not self.is_teacher_run():
            return
        logger.info(
            next_steps_text(sys.argv if argv is None else argv, str(self.checkpointer.checkpoints_dir))
        )

    # --- start-up -------------------------------------------------------------------------------------------

    def fit(
        self,
        epoch_counter,
        train_set,
        valid_set=None,
        progressbar=None,
        train_loader_kwargs={},  # noqa: B006 (SpeechBrain's signature)
        valid_loader_kwargs={},  # noqa: B006
    ):
        """SpeechBrain's fit; remembers the epoch counter and train loader to size hybrid schedules, and
        handles SIGUSR1 (save a checkpoint at the end of the optimizer step, then exit)."""
        self._epoch_counter = epoch_counter
        StopRequest.install()
        if isinstance(train_set, DataLoader):
            self._train_loader = train_set
        super().fit(
            epoch_counter, train_set, valid_set, progressbar, train_loader_kwargs, valid_loader_kwargs
        )

    def make_dataloader(self, dataset, stage, ckpt_prefix="dataloader-", **loader_kwargs):
        """SpeechBrain's loader; the train loader draws its workers' seeds from `loader_generator` (re-seeded
        every epoch in `_fit_train`) and is remembered to size the run (`total_optimizer_steps`)."""
        if stage == sb.Stage.TRAIN:
            loader_kwargs.setdefault("generator", self.loader_generator)
        loader = super().make_dataloader(dataset, stage, ckpt_prefix, **loader_kwargs)
        if stage == sb.Stage.TRAIN:
            self._train_loader = loader
        return loader

    def _train_loader_specifics(self, dataset, loader_kwargs):
        """Overrides SpeechBrain's hook for batch samplers with `shards_itself = True` (DurationBatchSampler,
        SegmentedBatches): such a sampler goes to the DataLoader as it is, also under DDP (SpeechBrain would
        wrap it in a DistributedSamplerWrapper, which needs a length fixed at construction and reorders), and
        becomes `train_sampler`, so that SpeechBrain calls its `set_epoch` every epoch (also without DDP)."""
        if getattr(loader_kwargs.get("batch_sampler"), "shards_itself", False):
            self.train_sampler = loader_kwargs["batch_sampler"]
            return loader_kwargs
        return super()._train_loader_specifics(dataset, loader_kwargs)

    def _fit_train(self, train_set, epoch, enable):
        """SpeechBrain's train stage, with the train loader's generator seeded for this epoch. An epoch of
        fewer batches than one accumulation window would never take an optimizer step: that stops the run."""
        try:
            batches = len(self._train_loader)
        except TypeError:  # no loader yet, or an iterable dataset of unknown length
            batches = None
        if batches is not None and batches < self.grad_accumulation_factor:
            raise RecipeError(
                f"the training set gives {batches} batch(es) per epoch, fewer than grad_accumulation_factor="
                f"{self.grad_accumulation_factor}: no optimizer step would ever be taken. Lower "
                "--grad_accumulation_factor, or the batch size / max_batch_length, or add training data."
            )
        self.loader_generator.manual_seed(self.loader_seed + epoch)
        self._epoch = epoch
        super()._fit_train(train_set, epoch, enable)

    def total_optimizer_steps(self) -> int | None:
        """Planned optimizer steps of the run: whichever ends it first of optimizer_step_limit and epochs ×
        steps per epoch (None when neither is known)."""
        limit = getattr(self._epoch_counter, "limit", None)
        by_epochs = None
        if limit is not None and self._train_loader is not None:
            by_epochs = limit * (len(self._train_loader) // self.grad_accumulation_factor)
        if self.optimizer_step_limit is None:
            return by_epochs
        return min(int(self.optimizer_step_limit), by_epochs or int(self.optimizer_step_limit))

    def on_fit_start(self):
        """Bind the run's planned optimizer steps into schedulers that need them (`with_total_steps`), build
        the teacher, register every stateful object, initialise the student from the teacher if
        asked (fresh runs only), then SpeechBrain's start (compile, DDP, optimizers, recovery), then load the
        teacher weights for the recovered step."""
        total = self.total_optimizer_steps()
        self.lr_scheduler_class = with_total_steps(self.lr_scheduler_class, total)
        config = self.guidance.config
        config.teacher_lr_scheduler = with_total_steps(config.teacher_lr_scheduler, total)
        self.guidance.setup(self.device, total, self.scaler.is_enabled())
        if self.guidance.teacher is not None:
            self.front_end = share_front_end(self.student, self.guidance.teacher.net)
            if self.front_end is not None:
                logger.info("Frozen front end: computed once a batch for student and teacher while identical")
        if self.checkpointer is not None:
            for name, obj in self.guidance.recoverables().items():
                self.checkpointer.add_recoverable(name, obj)
        if self.snapshot_every_steps > 0 or self.snapshot_every_epoch:
            self.snapshot_folder = self._resolve_snapshot_folder()
        init_state = self.guidance.student_init_state()
        fresh = self.checkpointer is None or self.checkpointer.find_checkpoint() is None
        if init_state is not None and fresh:
            self._init_student(init_state)
        super().on_fit_start()
        self.guidance.start(self.optimizer_step)

    def init_optimizers(self):
        """SpeechBrain's student optimizer (`opt_class`), with `lr_by_prefix` / `weight_decay` parameter
        groups over the student's parameter names when set, plus the optional step-wise `lr_scheduler`."""
        if (self.lr_by_prefix or self.weight_decay is not None) and self.opt_class is not None:
            student_ids = {id(p) for p in self.student.parameters()}
            groups = param_groups(
                self.student.named_parameters(), self.lr_by_prefix, self.weight_decay, self.no_decay_modules
            )
            others = [
                (n, p)
                for n, p in self.modules.named_parameters()
                if p.requires_grad and id(p) not in student_ids
            ]
            if others:  # other trainable modules keep the optimizer's lr
                groups += param_groups(others, None, self.weight_decay, self.no_decay_modules)
            self.optimizer = self.opt_class(groups)
            self.optimizers_dict = {"opt_class": self.optimizer}
            if self.checkpointer is not None:
                self.checkpointer.add_recoverable("optimizer", self.optimizer)
        else:
            super().init_optimizers()
        if self.optimizers_dict is None:
            raise ValueError(
                "CALDBrain needs a student optimizer: set opt_class (YAML key or constructor argument)"
            )
        if self.lr_scheduler_class is not None:
            self.lr_scheduler = self.lr_scheduler_class(self.optimizer)
            if self.checkpointer is not None:
                self.checkpointer.add_recoverable("lr_scheduler", self.lr_scheduler)

    def _resolve_snapshot_folder(self) -> Path:
        if self.snapshot_folder is not None:
            return Path(self.snapshot_folder)
        if self.checkpointer is None:
            raise ValueError(
                "snapshot_every_steps > 0 or snapshot_every_epoch needs snapshot_folder or a checkpointer "
                "(its folder is used)"
            )
        return Path(self.checkpointer.checkpoints_dir) / SNAPSHOT_DIRNAME

    def _init_student(self, state: dict[str, torch.Tensor]) -> None:
        """student_init: teacher: copy every teacher tensor whose name and shape exist in the student (names
        of tensors that conversion moved, e.g. Linformer's Q/K/V, mapped first)."""
        from cald_brain.convert import teacher_state_for_student  # here: transformers only when needed

        own = self.student.state_dict()
        state = teacher_state_for_student(self.student, state)
        shared = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        if not shared:
            raise ValueError(
                f"student_init=teacher: no tensor of {self.guidance.teacher.source} matches the student's "
                "parameter names and shapes; check that teacher and student come from the same source model"
            )
        self.student.load_state_dict(shared, strict=False)
        kept = sorted(set(own) - set(shared))
        examples = f" (e.g. {', '.join(kept[:3])})" if kept else ""
        logger.info(
            f"Student initialised from {self.guidance.teacher.source}: "
            f"{len(shared)}/{len(own)} tensors copied; {len(kept)} kept from the source/conversion{examples}"
        )

    # --- train step -----------------------------------------------------------------------------------------

    def fit_batch(self, batch):
        """One micro-batch: student (+ teacher) forward, objective, backward; optimizer step(s) at the end
        of an accumulation window. Returns the detached total loss."""
        if self.step == 1:
            self._start_epoch()
        self._evaluating = False
        should_step = self.step % self.grad_accumulation_factor == 0
        batch = self.prepare_batch(batch, sb.Stage.TRAIN)
        plan = self.guidance.plan(self.optimizer_step)
        self.on_fit_batch_start(batch, should_step)
        with self.no_sync(not should_step):
            with self.training_ctx:
                student = self.forward_model(self.modules.student, batch, sb.Stage.TRAIN)
                teacher = self._teacher_forward(plan, batch)
                loss, terms = self._objective(plan, student, teacher, batch)
            self._window_finite &= bool(torch.isfinite(loss))
            self.scaler.scale(loss / self.grad_accumulation_factor).backward()
        if plan.update_teacher:
            self._window_finite &= bool(torch.isfinite(terms["teacher_task"]))
            plan.teacher.backward(terms["teacher_task"], self.grad_accumulation_factor)
        self.term_averages.add({"loss": loss, **terms})
        if self.log_every_n_steps > 0:
            self.step_averages.add({"loss": loss, **terms})
        if self.front_end is not None:
            self.front_end.clear()
        if should_step:
            self._finish_window(plan)
        self.on_fit_batch_end(batch, student, loss, should_step)
        return loss.detach().cpu()

    def _start_epoch(self) -> None:
        """First batch of an epoch (not after a mid-epoch resume): reset the epoch's averages and drop what a
        last, incomplete accumulation window of the previous epoch left behind."""
        self.term_averages = TermAverages()
        self.skipped_steps = 0
        self._window_finite = True
        if self.guidance.teacher is not None:
            self.guidance.teacher.drop_gradients()

    def _teacher_forward(self, plan: StepPlan, batch: Any) -> ModelOutputs | None:
        """Teacher outputs for the plan: none, under no_grad, or with grad when the joint teacher updates."""
        if plan.teacher is None:
            return None
        with torch.set_grad_enabled(plan.update_teacher):
            return self.forward_model(plan.teacher.net, batch, sb.Stage.TRAIN)

    def _objective(
        self, plan: StepPlan, student: ModelOutputs, teacher: ModelOutputs | None, batch: Any
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(alpha_task * task + scale * (alpha_kd * KD + alpha_ld * LD), every term for logging; scale from
        `distill_scale`)."""
        cfg = self.loss_config
        scale = distill_scale_factor(cfg.distill_scale, self.grad_accumulation_factor)
        task = self.task_loss(student, batch, sb.Stage.TRAIN)
        terms = {"task": task}
        loss = plan.alpha_task * task if plan.alpha_task > 0 else task.new_zeros(())
        if teacher is not None:
            if not self._teacher_checked:
                self._check_teacher(student, teacher, plan.teacher)
            if plan.alpha_ld > 0:
                ld, per_layer = layerwise_distillation_loss(
                    student.hidden_states,
                    teacher.hidden_states,
                    student.mask,
                    cfg.ld_norm,
                    cfg.loss_reduction,
                    cfg.ld_skip_first,
                    cfg.ld_skip_last,
                )
                loss = loss + plan.alpha_ld * scale * ld
                terms["ld"] = ld
                terms.update({f"ld_{i}": value for i, value in per_layer.items()})
            if plan.alpha_kd > 0:
                kd = logit_distillation_loss(
                    student.logits,
                    teacher.logits,
                    student.mask if student.frame_level else None,
                    cfg.kd_temperature,
                    cfg.kd_temperature_squared,
                    cfg.loss_reduction,
                )
                loss = loss + plan.alpha_kd * scale * kd
                terms["kd"] = kd
            if plan.update_teacher:
                terms["teacher_task"] = self.task_loss(teacher, batch, sb.Stage.TRAIN)
        return loss, terms

    def _check_teacher(self, student: ModelOutputs, teacher: ModelOutputs, source: Teacher) -> None:
        """First teacher batch: hidden states, logits and masks of teacher and student must pair up."""
        try:
            check_hidden_match(student.hidden_states, teacher.hidden_states)
            if student.logits.shape != teacher.logits.shape:
                raise ValueError(
                    f"logit shapes differ: student {tuple(student.logits.shape)}, "
                    f"teacher {tuple(teacher.logits.shape)}"
                )
            if (student.mask is None) != (teacher.mask is None) or (
                student.mask is not None and not torch.equal(student.mask, teacher.mask)
            ):
                raise ValueError("student and teacher return different padding masks for the same batch")
        except ValueError as err:
            raise ValueError(f"teacher {source.source} does not match the student: {err}") from err
        self._teacher_checked = True

    def _finish_window(self, plan: StepPlan) -> None:
        """End of an accumulation window: step everything, or skip the step if any loss was not finite; note
        a stop request (SIGUSR1) that the intra-epoch checkpoint logic then serves."""
        finite, self._stop_now = self._ranks_agree(self._window_finite, StopRequest.requested)
        self._window_finite = True
        if not finite:
            self._skip_step(plan)
            return
        self.nonfinite_in_a_row = 0
        self.optimizers_step()
        if self.lr_scheduler is not None:
            self.lr_scheduler.step()
        if plan.update_teacher:
            plan.teacher.step()
        if self.snapshot_every_steps > 0 and self.optimizer_step % self.snapshot_every_steps == 0:
            self._save_snapshot()
        if self.log_every_n_steps > 0 and self.optimizer_step % self.log_every_n_steps == 0:
            self._log_step_line()

    def _log_step_line(self) -> None:
        """Every `log_every_n_steps` optimizer steps: a train_log.txt line (and the added logger's scalars)
        with the loss terms averaged over the micro-batches since the last one, and the learning rate, e.g.
        `step: 200, epoch: 1 - train loss: 9.1, train task: 8.7, train ld: 1.2, ..., train lr: 1.00e-04`."""
        stats = {**self.step_averages.averages(), "lr": self.current_lr()}
        self.step_averages = TermAverages()
        self.hparams.train_logger.log_stats(
            stats_meta={"step": self.optimizer_step, "epoch": self._epoch}, train_stats=stats
        )

    def optimizers_step(self):
        """SpeechBrain's optimizers_step, but clipping the gradient norm over every parameter group of each
        optimizer (SpeechBrain clips only `param_groups[0]`, which leaves e.g. an `lr_by_prefix` head or the
        no-decay group unclipped), like the reference's clip over all parameters. `max_grad_norm` None or
        <= 0: no clipping."""
        if self.optimizers_dict is not None:
            valid_optimizers = self.freeze_optimizers(self.optimizers_dict)
        elif self.opt_class is not None:
            valid_optimizers = {"optimizer": self.optimizer}
        else:
            return
        for opt in valid_optimizers.values():
            self.scaler.unscale_(opt)
        if self.max_grad_norm is not None and self.max_grad_norm > 0:
            for opt in valid_optimizers.values():
                params = [p for group in opt.param_groups for p in group["params"]]
                torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        if not self.scaler.is_enabled() and self.skip_nonfinite_grads:
            self.check_gradients()
        for opt in valid_optimizers.values():
            self.scaler.step(opt)
        self.scaler.update()
        for opt in valid_optimizers.values():
            opt.zero_grad(set_to_none=True)
        self.optimizer_step += 1

    def _should_save_intra_epoch_ckpt(self, last_ckpt_time, steps_since_ckpt):
        """SpeechBrain's intra-epoch checkpoint decision, deferred to the end of an accumulation window: the
        gradients accumulated inside a window are not checkpointed, so resuming there would be inexact.
        A stop request forces a checkpoint there."""
        if self.step % self.grad_accumulation_factor != 0:
            return False
        if self._stop_now:
            return True
        return super()._should_save_intra_epoch_ckpt(last_ckpt_time, steps_since_ckpt)

    def _save_intra_epoch_ckpt(self):
        """SpeechBrain's intra-epoch checkpoint; after a stop request, exit once it is written."""
        if self.checkpointer is not None:
            super()._save_intra_epoch_ckpt()
        if self._stop_now:
            StopRequest.requested = False  # served
            where = self.checkpointer.checkpoints_dir if self.checkpointer is not None else None
            raise StoppedOnSignal(f"a checkpoint in {where}" if where else "nothing (no checkpointer)")

    def _ranks_agree(self, all_of: bool, any_of: bool) -> tuple[bool, bool]:
        """(`all_of` is True on every rank, `any_of` is True on some rank): every rank skips the same steps
        and stops at the same step."""
        if not (dist.is_available() and dist.is_initialized()):
            return all_of, any_of
        value = torch.tensor([int(all_of), int(not any_of)], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
        return bool(value[0].item()), not bool(value[1].item())

    def _skip_step(self, plan: StepPlan) -> None:
        self.zero_grad(set_to_none=True)
        if plan.teacher is not None:
            plan.teacher.drop_gradients()
        self.skipped_steps += 1
        self.nonfinite_in_a_row += 1
        logger.warning(
            f"Non-finite loss at optimizer step {self.optimizer_step}: step skipped "
            f"({self.nonfinite_in_a_row} in a row, nonfinite_patience={self.nonfinite_patience})"
        )
        if self.nonfinite_in_a_row > self.nonfinite_patience:
            raise RuntimeError(
                f"Loss was not finite for {self.nonfinite_in_a_row} optimizer steps in a row (more than "
                f"nonfinite_patience={self.nonfinite_patience}); stopping. Try a lower learning rate, "
                "--precision=bf16 or fp32 instead of fp16, check the data of the last batches, or raise "
                "--nonfinite_patience. Wrap fit() in torch.autograd.detect_anomaly() to find the source."
            )

    def _save_snapshot(self, what: str = "Waypoint") -> None:
        if if_main_process():
            path = save_snapshot(self.student.state_dict(), self.snapshot_folder, self.optimizer_step)
            logger.info(f"{what} snapshot written: {path}")

    # --- eval step ------------------------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate_batch(self, batch, stage):
        """Student only: task loss and metrics."""
        self._evaluating = True
        batch = self.prepare_batch(batch, stage)
        with self.evaluation_ctx:
            outputs = self.forward_model(self.modules.student, batch, stage)
            loss = self.task_loss(outputs, batch, stage)
        if self.front_end is not None:  # no teacher reads it here: do not hold the activations
            self.front_end.clear()
        self.update_metrics(outputs, batch, stage)
        return loss.detach().cpu()

    def update_average(self, loss, avg_loss):
        """SpeechBrain's running average; at VALID/TEST a non-finite batch loss makes the stage loss NaN
        (SpeechBrain leaves it out, so a model that outputs NaN would report a loss of 0)."""
        if self._evaluating and not torch.isfinite(loss):
            return math.nan
        return super().update_average(loss, avg_loss)

    # --- checkpoint -----------------------------------------------------------------------------------------

    @mark_as_saver
    def _save(self, path):
        """SpeechBrain's brain state plus the non-finite counters and the epoch's running term averages, so
        a resumed run logs the same averages."""
        state = {
            "step": self.step,
            "avg_train_loss": self.avg_train_loss,
            "optimizer_step": self.optimizer_step,
            "skipped_steps": self.skipped_steps,
            "nonfinite_in_a_row": self.nonfinite_in_a_row,
            "term_averages": self.term_averages.state_dict(),
            "step_averages": self.step_averages.state_dict(),
        }
        with open(path, "w", encoding="utf-8") as f:
            yaml.safe_dump(state, f)

    @mark_as_loader
    def _recover(self, path, end_of_epoch):
        """Counterpart of `_save` (checkpoints without the added keys load with their defaults)."""
        super()._recover(path, end_of_epoch)
        with open(path, encoding="utf-8") as f:
            state = yaml.safe_load(f)
        self.skipped_steps = state.get("skipped_steps", 0)
        self.nonfinite_in_a_row = state.get("nonfinite_in_a_row", 0)
        empty = {"sums": {}, "counts": {}}
        self.term_averages.load_state_dict(state.get("term_averages", empty))
        self.step_averages.load_state_dict(state.get("step_averages", empty))
