"""The guidance schedule of CALD: for optimizer step t, which teacher runs, the loss weights, and whether the
joint teacher updates. The five modes (unguided, target, trajectory, waypoint, hybrid) live only here and in
`teachers.py`; the Brain asks `Guidance.plan(t)` and never looks at the mode name.
"""

import logging
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import yaml
from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks

from cald_brain.distill.teachers import (
    FrozenTeacher,
    JointTeacher,
    SnapshotTeacher,
    Teacher,
    load_state_dict,
)
from cald_brain.optim import NO_DECAY_MODULES

logger = logging.getLogger(__name__)

MODES = ("unguided", "target", "trajectory", "waypoint", "hybrid")
STUDENT_INITS = ("source", "teacher")


def config_from_hparams(cls: type, hparams: dict[str, Any]) -> Any:
    """Build the dataclass `cls` from the top-level hparams keys named like its fields (missing keys keep the
    field defaults)."""
    return cls(**{f.name: hparams[f.name] for f in fields(cls) if f.name in hparams})


@dataclass
class GuidanceConfig:
    """Top-level YAML keys of the guidance schedule (see docs/ENGINE.md for each)."""

    guidance_mode: str = "unguided"
    student_init: str = "source"
    teacher_net: torch.nn.Module | None = None
    teacher_path: str | None = None
    teacher_from_source: bool = False
    teacher_ckpt_key: str = "student"
    teacher_min_key: str | None = None
    teacher_max_key: str | None = None
    teacher_train_mode: bool = True
    teacher_update_cycle: int = 1
    teacher_opt_class: Any = None
    teacher_lr_scheduler: Any = None
    teacher_max_grad_norm: float | None = None
    lr_by_prefix: dict[str, float] | None = None
    weight_decay: float | None = None
    no_decay_modules: tuple[str, ...] = NO_DECAY_MODULES
    distill_until_step: int | None = None
    distill_until_fraction: float | None = None
    hybrid_keep_kd: bool = False
    alpha_task: float = 1.0
    alpha_kd: float = 0.0
    alpha_ld: float = 15.0

    def __post_init__(self):
        if self.guidance_mode not in MODES:
            raise ValueError(f"guidance_mode={self.guidance_mode!r} is not one of {', '.join(MODES)}")
        if self.student_init not in STUDENT_INITS:
            raise ValueError(f"student_init={self.student_init!r} is not one of {', '.join(STUDENT_INITS)}")
        for name in ("alpha_task", "alpha_kd", "alpha_ld"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.alpha_task == 0 and self.guidance_mode in ("unguided", "hybrid"):
            raise ValueError(f"alpha_task=0 leaves nothing to train with guidance_mode={self.guidance_mode}")
        if self.hybrid_keep_kd and (self.guidance_mode != "hybrid" or self.alpha_kd <= 0):
            raise ValueError(
                "hybrid_keep_kd: true keeps logit distillation after the hybrid switch: it needs "
                f"guidance_mode hybrid and alpha_kd > 0 (got {self.guidance_mode}, alpha_kd={self.alpha_kd})"
            )


@dataclass(frozen=True)
class StepPlan:
    """What one optimizer step does. `teacher` is None when no teacher forward is needed."""

    teacher: Teacher | None
    alpha_task: float
    alpha_kd: float
    alpha_ld: float
    update_teacher: bool = False


@register_checkpoint_hooks
class Guidance:
    """The guidance schedule and its teacher.

    Life cycle (driven by CALDBrain.on_fit_start): `setup()` validates the configuration and builds the
    teacher (start-up errors name keys and paths), `recoverables()` are registered with the checkpointer, the
    checkpoint is recovered, `start(step)` loads the teacher weights step `step` needs; then `plan(t)` at
    every step. The schedule's own state (mode, current waypoint, hybrid switch) is a checkpoint recoverable.
    """

    def __init__(self, config: GuidanceConfig):
        self.config = config
        self.mode = config.guidance_mode
        self.teacher: Teacher | None = None
        self.switch_step: int | None = None
        self.released = False
        self.last_step: int | None = None  # last step planned (saved with the waypoint it used)
        self.recovered_state: dict[str, Any] | None = None

    @classmethod
    def from_hparams(cls, hparams: dict[str, Any]) -> "Guidance":
        return cls(config_from_hparams(GuidanceConfig, hparams))

    # --- start-up -------------------------------------------------------------------------------------------

    def setup(
        self, device: str | torch.device, total_steps: int | None = None, grad_scaler: bool = False
    ) -> None:
        """Validate the mode's keys, build and place the teacher. `total_steps` resolves
        `distill_until_fraction`; `grad_scaler` enables fp16 loss scaling for a joint teacher."""
        cfg = self.config
        if self.mode == "unguided":
            if cfg.student_init == "teacher":
                raise ValueError(
                    "student_init=teacher needs guidance_mode target or hybrid (and a teacher_path)"
                )
            return
        if cfg.teacher_net is None:
            raise ValueError(f"guidance_mode={self.mode} needs teacher_net (the teacher network) in the YAML")
        if cfg.teacher_from_source and (self.mode not in ("target", "hybrid") or cfg.teacher_path):
            raise ValueError(
                "teacher_from_source: true (the frozen teacher is teacher_net as loaded from its pretrained "
                f"source) needs guidance_mode target or hybrid and no teacher_path (got {self.mode}, "
                f"teacher_path={cfg.teacher_path!r})"
            )
        if self.mode in ("target", "hybrid", "waypoint") and cfg.teacher_path is None:
            if not cfg.teacher_from_source:
                raise ValueError(
                    f"guidance_mode={self.mode} needs teacher_path (the teacher run's checkpoint folder), or "
                    "teacher_from_source: true when the pretrained model itself is the teacher"
                )
        if cfg.student_init == "teacher" and self.mode not in ("target", "hybrid"):
            raise ValueError(
                f"student_init=teacher needs guidance_mode target or hybrid, not {self.mode}: the student is "
                "initialised from the teacher checkpoint at teacher_path"
            )
        if self.mode in ("target", "hybrid"):
            self.teacher = FrozenTeacher(
                cfg.teacher_net,
                cfg.teacher_path,
                cfg.teacher_ckpt_key,
                cfg.teacher_min_key,
                cfg.teacher_max_key,
                cfg.teacher_train_mode,
            )
        elif self.mode == "waypoint":
            self.teacher = SnapshotTeacher(cfg.teacher_net, cfg.teacher_path, cfg.teacher_train_mode)
        else:
            if cfg.teacher_opt_class is None:
                raise ValueError(
                    "guidance_mode=trajectory needs teacher_opt_class (e.g. !name:torch.optim.AdamW with lr) "
                    "for the jointly trained teacher"
                )
            self.teacher = JointTeacher(
                cfg.teacher_net,
                cfg.teacher_opt_class,
                cfg.teacher_lr_scheduler,
                cfg.teacher_update_cycle,
                cfg.teacher_train_mode,
                cfg.lr_by_prefix,
                cfg.teacher_max_grad_norm,
                cfg.weight_decay,
                cfg.no_decay_modules,
            )
        if self.mode == "hybrid":
            self.switch_step = self._resolve_switch_step(total_steps)
            kept = "; logit distillation kept after it" if cfg.hybrid_keep_kd else ""
            logger.info(f"Hybrid guidance: distillation until optimizer step {self.switch_step}{kept}")
        self.teacher.setup(device, grad_scaler)

    def _resolve_switch_step(self, total_steps: int | None) -> int:
        cfg = self.config
        if (cfg.distill_until_step is None) == (cfg.distill_until_fraction is None):
            raise ValueError(
                "guidance_mode=hybrid needs exactly one of distill_until_step, distill_until_fraction"
            )
        if cfg.distill_until_step is not None:
            return int(cfg.distill_until_step)
        if not 0.0 <= cfg.distill_until_fraction <= 1.0:
            raise ValueError(f"distill_until_fraction must be in [0, 1], got {cfg.distill_until_fraction}")
        if total_steps is None:
            raise ValueError(
                "distill_until_fraction needs the total number of optimizer steps: set optimizer_step_limit, "
                "or use an epoch counter with a limit, or give distill_until_step instead"
            )
        return round(cfg.distill_until_fraction * total_steps)

    def recoverables(self) -> dict[str, object]:
        """Objects the checkpointer must save/restore: the schedule and the teacher's trainable state."""
        found = {"guidance": self}
        if self.teacher is not None:
            found.update(self.teacher.recoverables())
        return found

    def student_init_state(self) -> dict[str, torch.Tensor] | None:
        """The teacher state dict to initialise the student from (`student_init: teacher`), else None."""
        if self.config.student_init != "teacher":
            return None
        if self.teacher.file is None:  # teacher_from_source: the weights teacher_net was built with
            return {k: v.detach().clone() for k, v in self.teacher.net.state_dict().items()}
        return load_state_dict(self.teacher.file)

    def start(self, step: int) -> None:
        """After checkpoint recovery: load the weights step `step` needs (none past a hybrid switch)."""
        if self.teacher is None:
            return
        if self.recovered_state is not None and self.recovered_state["mode"] != self.mode:
            logger.warning(
                f"Resuming a {self.recovered_state['mode']}-guided checkpoint with guidance_mode={self.mode}"
            )
        if self._needs_teacher(step):
            self.teacher.start(step)
        else:
            self._release(step)
        self._check_recovered_waypoint()

    def _check_recovered_waypoint(self) -> None:
        """Warn when the snapshots no longer give the waypoint the checkpointed run used at its last step."""
        state = self.recovered_state
        if state is None or state.get("waypoint") is None or not isinstance(self.teacher, SnapshotTeacher):
            return
        now = self.teacher.snapshot_for(state["step"])[0]
        if now != state["waypoint"]:
            logger.warning(
                f"The checkpointed run was guided by snapshot step_{state['waypoint']} at step "
                f"{state['step']}; "
                f"the snapshots in {self.config.teacher_path} now give step_{now} (were they changed?)"
            )

    # --- per step -------------------------------------------------------------------------------------------

    def _switched(self, step: int) -> bool:
        """Past the hybrid switch (never for the other modes)."""
        return self.switch_step is not None and step >= self.switch_step

    def _needs_teacher(self, step: int) -> bool:
        if self.teacher is None:
            return False
        return self.teacher.trainable or not self._switched(step) or self.config.hybrid_keep_kd

    def plan(self, step: int) -> StepPlan:
        """The plan for optimizer step `step` (= optimizer steps already done). Switches the teacher's weights
        when needed (waypoint); at the hybrid switch drops the layerwise term, and the teacher too (freed)
        unless `hybrid_keep_kd` keeps logit distillation from it."""
        cfg = self.config
        self.last_step = step
        if not self._needs_teacher(step):
            if self.teacher is not None:
                self._release(step)
            return StepPlan(None, cfg.alpha_task, 0.0, 0.0)
        alpha_ld = 0.0 if self._switched(step) else cfg.alpha_ld
        update = self.teacher.trainable and self.teacher.updates_at(step)
        if not (cfg.alpha_kd > 0 or alpha_ld > 0 or update):
            return StepPlan(None, cfg.alpha_task, 0.0, 0.0)
        self.teacher.prepare(step)
        return StepPlan(self.teacher, cfg.alpha_task, cfg.alpha_kd, alpha_ld, update)

    def _release(self, step: int) -> None:
        if not self.released:
            self.teacher.release()
            self.released = True
            logger.info(f"Hybrid guidance: distillation off from optimizer step {step}; teacher freed")

    def _waypoint(self) -> int | None:
        return getattr(self.teacher, "current", None)

    # --- checkpoint -----------------------------------------------------------------------------------------

    @mark_as_saver
    def _save(self, path: Path) -> None:
        state = {
            "mode": self.mode,
            "step": self.last_step,
            "waypoint": self._waypoint(),
            "released": self.released,
        }
        with open(path, "w", encoding="utf-8") as f:
            yaml.safe_dump(state, f)

    @mark_as_loader
    def _recover(self, path: Path, end_of_epoch: bool) -> None:
        del end_of_epoch
        with open(path, encoding="utf-8") as f:
            self.recovered_state = yaml.safe_load(f)
