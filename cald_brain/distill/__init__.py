"""Cross-architecture layerwise distillation: losses, the guidance schedule and its teachers.

`CALDBrain` (cald_brain.brain) drives these; recipes only set the YAML keys documented in docs/ENGINE.md.
"""

from cald_brain.distill.guidance import MODES, Guidance, GuidanceConfig, StepPlan
from cald_brain.distill.losses import (
    DistillLossConfig,
    layerwise_distillation_loss,
    logit_distillation_loss,
    normalize_hidden,
)
from cald_brain.distill.snapshots import list_snapshots, resolve_checkpoint_file, save_snapshot
from cald_brain.distill.teachers import FrozenTeacher, JointTeacher, SnapshotTeacher, Teacher

__all__ = [
    "MODES",
    "DistillLossConfig",
    "FrozenTeacher",
    "Guidance",
    "GuidanceConfig",
    "JointTeacher",
    "SnapshotTeacher",
    "StepPlan",
    "Teacher",
    "layerwise_distillation_loss",
    "list_snapshots",
    "logit_distillation_loss",
    "normalize_hidden",
    "resolve_checkpoint_file",
    "save_snapshot",
]
