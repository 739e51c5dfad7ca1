"""Teachers for CALD guidance (the files they are loaded from are found by `snapshots.py`).

- `FrozenTeacher` (target / hybrid modes): a transformer with the weights of a teacher run's checkpoint, never
  updated (`requires_grad=False`).
- `JointTeacher` (trajectory mode): a transformer started from the source model and trained in the same run on
  the task loss, with its own optimizer, LR scheduler and GradScaler, every `update_cycle` student steps.
- `SnapshotTeacher` (waypoint mode): the snapshots `step_<N>.ckpt` that a teacher run wrote every K steps; at
  student step t it holds the first snapshot with N > t (the last one after the end).
"""

import logging
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

from cald_brain.distill.snapshots import list_snapshots, resolve_checkpoint_file
from cald_brain.optim import NO_DECAY_MODULES, param_groups

logger = logging.getLogger(__name__)


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state dict saved with torch.save (tensors only) onto the CPU."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict (found {type(state).__name__})")
    return state


def load_into(net: torch.nn.Module, path: Path) -> None:
    """Strictly load the state dict at `path` into `net`; a mismatch names the file."""
    try:
        net.load_state_dict(load_state_dict(path), strict=True)
    except RuntimeError as err:
        raise RuntimeError(f"teacher checkpoint {path} does not fit teacher_net: {err}") from err


# ----------------------------------------------------------------------------------------------------------
# Teachers
# ----------------------------------------------------------------------------------------------------------


class Teacher:
    """A teacher network plus where its weights come from; `net` is what the recipe's `forward_model` runs.

    Subclasses set `trainable` and implement `setup` (start-up: move to device, build what the checkpointer
    must know about) and `start` (after checkpoint recovery: load the weights step `t` needs).
    """

    trainable = False

    def __init__(self, net: torch.nn.Module, train_mode: bool = True, source: str = "teacher_net"):
        self.net = net
        self.train_mode = train_mode
        self.source = source  # shown in error messages: where the weights come from

    def setup(self, device: str | torch.device, grad_scaler: bool = False) -> None:
        """Move the teacher to `device` and set train/eval mode."""
        del grad_scaler
        self.net.to(device)
        self.net.train(self.train_mode)

    def start(self, step: int) -> None:
        """Load the weights needed at student optimizer step `step` (called after checkpoint recovery)."""

    def prepare(self, step: int) -> None:
        """Called before every teacher forward; switches weights when step `step` needs others."""

    def recoverables(self) -> dict[str, object]:
        """Objects to register with the checkpointer (name -> object)."""
        return {}

    def release(self) -> None:
        """Free the teacher's memory for the rest of the run (its parameters move to the meta device, which
        frees them even while other references to the module, e.g. hparams, remain)."""
        self.net.to("meta")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def drop_gradients(self) -> None:
        """Discard accumulated gradients (skipped step, or an incomplete window at the end of an epoch)."""
        self.net.zero_grad(set_to_none=True)

    def freeze(self) -> None:
        """Never compute gradients for the teacher's parameters."""
        self.net.requires_grad_(False)


class FrozenTeacher(Teacher):
    """Target / hybrid teacher: fixed weights from a teacher run's best checkpoint, or (path None) the weights
    `net` was built with, e.g. a pretrained language model that is itself the target."""

    def __init__(
        self,
        net: torch.nn.Module,
        path: str | Path | None,
        ckpt_key: str = "student",
        min_key: str | None = None,
        max_key: str | None = None,
        train_mode: bool = True,
    ):
        super().__init__(net, train_mode, source=str(path) if path is not None else "teacher_net as loaded")
        self.path = Path(path) if path is not None else None
        self.ckpt_key, self.min_key, self.max_key = ckpt_key, min_key, max_key
        self.file: Path | None = None

    def setup(self, device: str | torch.device, grad_scaler: bool = False) -> None:
        """Resolve the checkpoint file (errors name the path) and move the frozen net to `device`."""
        if self.path is not None:
            self.file = resolve_checkpoint_file(self.path, self.ckpt_key, self.min_key, self.max_key)
            self.source = str(self.file)
        self.freeze()
        super().setup(device, grad_scaler)

    def start(self, step: int) -> None:
        """Load the teacher weights (once); without a path the net keeps the weights it was built with."""
        if self.file is None:
            logger.info("Target teacher: teacher_net with the weights of its pretrained source")
            return
        load_into(self.net, self.file)
        logger.info(f"Target teacher loaded from {self.file}")


class SnapshotTeacher(Teacher):
    """Waypoint teacher: at step t the first snapshot with step > t; the last one once t passed them all."""

    def __init__(self, net: torch.nn.Module, path: str | Path, train_mode: bool = True):
        super().__init__(net, train_mode, source=str(path))
        self.path = Path(path)
        self.snapshots: list[tuple[int, Path]] = []
        self.current: int | None = None  # step N of the loaded snapshot

    def setup(self, device: str | torch.device, grad_scaler: bool = False) -> None:
        """List the snapshots (error if none) and move the frozen net to `device`."""
        self.snapshots = list_snapshots(self.path)
        logger.info(
            f"Waypoint teacher: {len(self.snapshots)} snapshots in {self.snapshots[0][1].parent} "
            f"(steps {', '.join(str(n) for n, _ in self.snapshots)})"
        )
        self.freeze()
        super().setup(device, grad_scaler)

    def snapshot_for(self, step: int) -> tuple[int, Path]:
        """(N, file) of the snapshot used at student step `step`."""
        for snap_step, file in self.snapshots:
            if snap_step > step:
                return snap_step, file
        return self.snapshots[-1]

    def start(self, step: int) -> None:
        self.current = None
        self.prepare(step)

    def prepare(self, step: int) -> None:
        snap_step, file = self.snapshot_for(step)
        if snap_step != self.current:
            load_into(self.net, file)
            self.current, self.source = snap_step, str(file)
            logger.info(f"Waypoint teacher at student step {step}: loaded snapshot {file}")


class JointTeacher(Teacher):
    """Trajectory teacher: trained on the task loss in the same run, stepping every `update_cycle` student
    optimizer steps (on steps t with (t + 1) % update_cycle == 0). Its gradient norm is clipped at
    `max_grad_norm` (None: not clipped, as the reference's joint teacher); `lr_by_prefix`, `weight_decay` and
    `no_decay_modules` build its parameter groups like the student's (cald_brain.optim.param_groups)."""

    trainable = True

    def __init__(
        self,
        net: torch.nn.Module,
        opt_class: Callable,
        lr_scheduler: Callable | None = None,
        update_cycle: int = 1,
        train_mode: bool = True,
        lr_by_prefix: dict[str, float] | None = None,
        max_grad_norm: float | None = None,
        weight_decay: float | None = None,
        no_decay_modules: tuple[str, ...] = NO_DECAY_MODULES,
    ):
        super().__init__(net, train_mode, source="teacher_net (trained jointly)")
        self.lr_by_prefix = lr_by_prefix
        self.max_grad_norm = max_grad_norm
        self.weight_decay, self.no_decay_modules = weight_decay, no_decay_modules
        if update_cycle < 1:
            raise ValueError(f"teacher_update_cycle must be >= 1, got {update_cycle}")
        self.opt_class, self.lr_scheduler_class = opt_class, lr_scheduler
        self.update_cycle = update_cycle
        self.optimizer: torch.optim.Optimizer | None = None
        self.lr_scheduler = None
        self.scaler: torch.GradScaler | None = None

    def setup(self, device: str | torch.device, grad_scaler: bool = False) -> None:
        """Move to `device`; build the optimizer, LR scheduler and GradScaler (enabled for fp16 on CUDA)."""
        super().setup(device, grad_scaler)
        if not any(p.requires_grad for p in self.net.parameters()):
            raise ValueError("trajectory teacher_net has no trainable parameters")
        self.optimizer = self.opt_class(
            param_groups(
                self.net.named_parameters(), self.lr_by_prefix, self.weight_decay, self.no_decay_modules
            )
        )
        if self.lr_scheduler_class is not None:
            self.lr_scheduler = self.lr_scheduler_class(self.optimizer)
        self.scaler = torch.GradScaler(torch.device(device).type, enabled=grad_scaler)

    def recoverables(self) -> dict[str, object]:
        found = {"teacher": self.net, "teacher_optimizer": self.optimizer}
        if self.lr_scheduler is not None:
            found["teacher_lr_scheduler"] = self.lr_scheduler
        if self.scaler.is_enabled():
            found["teacher_scaler"] = self.scaler
        return found

    def updates_at(self, step: int) -> bool:
        """Whether the teacher takes an optimizer step together with student optimizer step `step`."""
        return (step + 1) % self.update_cycle == 0

    def backward(self, loss: torch.Tensor, accumulation: int) -> None:
        """Back-propagate the teacher's task loss of one micro-batch (scaled like the student's)."""
        self.scaler.scale(loss / accumulation).backward()

    def step(self) -> None:
        """Average gradients across ranks (the teacher is not DDP-wrapped), clip, step, advance the LR."""
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            for p in params:  # every rank must reduce the same list, even if a parameter got no gradient here
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            all_reduce_mean([p.grad for p in params])
        self.scaler.unscale_(self.optimizer)
        if self.max_grad_norm is not None and self.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.lr_scheduler is not None:
            self.lr_scheduler.step()


def all_reduce_mean(tensors: list[torch.Tensor], bucket_numel: int = 2**24) -> None:
    """In-place mean of `tensors` over all ranks, in flat buckets of about `bucket_numel` elements."""
    world = dist.get_world_size()
    bucket: list[torch.Tensor] = []
    size = 0
    for i, tensor in enumerate(tensors):
        bucket.append(tensor)
        size += tensor.numel()
        if size >= bucket_numel or i == len(tensors) - 1:
            flat = torch.cat([t.reshape(-1) for t in bucket])
            dist.all_reduce(flat)
            flat /= world
            offset = 0
            for t in bucket:
                t.copy_(flat[offset : offset + t.numel()].view_as(t))
                offset += t.numel()
            bucket, size = [], 0
