"""CALDBrain on the toy task: every guidance mode end to end, kill-and-resume, distillation effect, start-up
errors, non-finite steps, snapshots, precision."""

import math
import os
import random
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from toy_task import ToyBrain, ToyNet, fit, make_brain, make_dataset

from cald_brain.distill.losses import layerwise_distillation_loss
from cald_brain.recipe import RecipeError
from cald_brain.run_control import STOP_EXIT_CODE, StopRequest

STEPS_PER_EPOCH = 6  # 24 items, batch 4


def adam(lr: float = 3e-3):
    return lambda params: torch.optim.Adam(params, lr=lr)


def params_of(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def assert_same_params(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=f"parameter {key} differs")


def count_calls(net: torch.nn.Module) -> list[int]:
    """A list that grows by one at each forward of `net`."""
    calls = []
    net.register_forward_hook(lambda *_: calls.append(1))
    return calls


class RecordingBrain(ToyBrain):
    """Records, for each train micro-batch, the optimizer step it ran at and what the plan's teacher held."""

    def on_fit_batch_start(self, batch, should_step):
        teacher = self.guidance.teacher
        self.records = getattr(self, "records", [])
        self.records.append(
            {
                "step": self.optimizer_step,
                "waypoint": getattr(teacher, "current", None),
                "teacher_params": None if teacher is None else params_of(teacher.net),
            }
        )


class KilledRun(Exception):
    pass


class KillingBrain(ToyBrain):
    """Dies at the `kill_at`-th train micro-batch (after its optimizer step, before any checkpoint of it)."""

    kill_at = 0

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        self.seen = getattr(self, "seen", 0) + 1
        if self.seen == self.kill_at:
            raise KilledRun


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    """A plain teacher fine-tuning run (unguided transformer) writing snapshots every 2 steps; returns its
    save folder, its final state and the student state at every even step."""
    folder = tmp_path_factory.mktemp("teacher") / "save"
    states = {}

    class SnapshotRecorder(ToyBrain):
        def on_fit_batch_end(self, batch, outputs, loss, should_step):
            states[self.optimizer_step] = params_of(self.student)

    brain = make_brain(
        folder, student=ToyNet("attention"), brain_class=SnapshotRecorder, snapshot_every_steps=2
    )
    fit(brain)
    torch.save(brain.student.state_dict(), folder.parent / "final.ckpt")
    return folder, states


# --- modes ----------------------------------------------------------------------------------------


def test_unguided_never_runs_a_teacher(tmp_path):
    teacher = ToyNet("attention")
    calls = count_calls(teacher)
    brain = make_brain(tmp_path, guidance_mode="unguided", teacher_net=teacher, alpha_ld=15.0, alpha_kd=1.0)
    before = params_of(brain.student)
    fit(brain)
    assert brain.optimizer_step == 2 * STEPS_PER_EPOCH
    assert not calls and brain.guidance.teacher is None
    assert set(brain.train_stats) == {"loss", "task", "skipped_steps", "lr"}
    assert any(not torch.equal(before[k], v) for k, v in params_of(brain.student).items())


def test_target_teacher_runs_every_step_and_never_changes(tmp_path, teacher_run):
    save, _ = teacher_run
    teacher = ToyNet("attention")
    calls = count_calls(teacher)
    brain = make_brain(
        tmp_path, guidance_mode="target", teacher_net=teacher, teacher_path=str(save.parent / "final.ckpt")
    )
    fit(brain)
    assert len(calls) == 2 * STEPS_PER_EPOCH
    assert_same_params(params_of(teacher), torch.load(save.parent / "final.ckpt"))
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert {"ld", "ld_1", "ld_2", "ld_3"} <= set(brain.train_stats) and "kd" not in brain.train_stats


@pytest.mark.parametrize(("cycle", "accumulation"), [(3, 1), (2, 2)])
def test_trajectory_teacher_updates_exactly_every_cycle(tmp_path, cycle, accumulation):
    brain = make_brain(
        tmp_path,
        brain_class=RecordingBrain,
        run_opts={"grad_accumulation_factor": accumulation},
        guidance_mode="trajectory",
        teacher_net=ToyNet("attention"),
        teacher_opt_class=adam(1e-3),
        teacher_update_cycle=cycle,
        alpha_kd=1.0,
    )
    fit(brain, batch_size=4 // accumulation)
    # the teacher's parameters at the first micro-batch of each optimizer step: which steps changed them
    by_step = {}
    for record in brain.records:
        by_step.setdefault(record["step"], record["teacher_params"])
    steps = sorted(by_step)
    changed = [
        t
        for t, nxt in zip(steps, steps[1:], strict=False)
        if any(not torch.equal(by_step[t][k], by_step[nxt][k]) for k in by_step[t])
    ]
    total = brain.optimizer_step
    assert total == 2 * STEPS_PER_EPOCH
    assert changed == [t for t in range(total - 1) if (t + 1) % cycle == 0]
    assert "teacher_task" in brain.train_stats and "kd" in brain.train_stats


def test_waypoint_switches_snapshots_at_the_right_steps(tmp_path, teacher_run):
    save, states = teacher_run
    assert sorted(int(p.stem.split("_")[1]) for p in (save / "snapshots").glob("step_*.ckpt")) == list(
        range(2, 13, 2)
    )
    for n in range(2, 13, 2):  # each snapshot is the teacher run's student after n optimizer steps
        assert_same_params(torch.load(save / "snapshots" / f"step_{n}.ckpt"), states[n])
    brain = make_brain(
        tmp_path,
        brain_class=RecordingBrain,
        guidance_mode="waypoint",
        teacher_net=ToyNet("attention"),
        teacher_path=str(save),
    )
    fit(brain)
    for record in brain.records:
        t = record["step"]
        expected = min(n for n in range(2, 13, 2) if n > t) if t < 12 else 12
        assert record["waypoint"] == expected
        assert_same_params(record["teacher_params"], states[expected])


@pytest.mark.parametrize("run_opts", [{}, {"optimizer_step_limit": 90_000}], ids=["epochs", "step-limit"])
def test_hybrid_stops_distilling_and_frees_teacher(tmp_path, teacher_run, run_opts):
    """The switch is the fraction of the planned steps: the epochs' 12, also under a step limit the epochs
    end first (the speech recipes' 90,000 on a small corpus)."""
    save, _ = teacher_run
    teacher = ToyNet("attention")
    calls = count_calls(teacher)
    brain = make_brain(
        tmp_path,
        guidance_mode="hybrid",
        teacher_net=teacher,
        teacher_path=str(save.parent / "final.ckpt"),
        distill_until_fraction=5 / 12,  # of 2 epochs x 6 steps -> switch at step 5
        run_opts=run_opts,
    )
    fit(brain)
    assert brain.guidance.switch_step == 5 and len(calls) == 5
    assert all(p.device.type == "meta" for p in teacher.parameters())
    assert "ld" not in brain.train_stats  # epoch 2 is after the switch


def test_student_init_from_teacher_copies_non_attention_weights_once(tmp_path, teacher_run):
    save, _ = teacher_run
    keys = dict(guidance_mode="target", teacher_path=str(save.parent / "final.ckpt"), student_init="teacher")
    teacher_state = torch.load(save.parent / "final.ckpt")
    brain = make_brain(
        tmp_path, teacher_net=ToyNet("attention"), run_opts={"optimizer_step_limit": 0}, **keys
    )
    initial = params_of(brain.student)
    fit(brain)
    student = params_of(brain.student)
    copied = [k for k in student if k in teacher_state and teacher_state[k].shape == student[k].shape]
    assert {k for k in student if ".mixer." not in k} <= set(copied)  # all non-attention weights
    assert "blocks.0.mixer.in_proj.weight" not in copied  # the student's own mixer weights are kept
    for key, value in student.items():
        assert torch.equal(value, teacher_state[key] if key in copied else initial[key]), key
    # a run that resumes from a checkpoint is never re-initialised from the teacher
    brain = make_brain(
        tmp_path / "b", teacher_net=ToyNet("attention"), run_opts={"ckpt_interval_steps": 1}, **keys
    )
    fit(brain)
    trained = params_of(brain.student)
    brain = make_brain(tmp_path / "b", teacher_net=ToyNet("attention"), **keys)
    fit(brain)  # both epochs are done: only start-up and recovery happen
    assert_same_params(params_of(brain.student), trained)


def test_teacher_run_checkpoints_feed_a_target_run_and_evaluate_is_student_only(tmp_path):
    """Teacher run with validation (SpeechBrain checkpoints keyed by ERR) -> target run picking the best one
    from the save folder -> evaluate() on the student alone."""
    valid = make_dataset(n_items=8, seed=1)
    teacher_brain = make_brain(tmp_path / "teacher", student=ToyNet("attention"), epochs=3)
    fit(teacher_brain, valid=valid)
    checkpoints = teacher_brain.checkpointer.list_checkpoints()
    best = min((c for c in checkpoints if "ERR" in c.meta), key=lambda c: c.meta["ERR"])
    teacher = ToyNet("attention")
    calls = count_calls(teacher)
    brain = make_brain(
        tmp_path / "student",
        guidance_mode="target",
        teacher_net=teacher,
        teacher_path=str(tmp_path / "teacher"),
        teacher_min_key="ERR",
        epochs=1,
    )
    fit(brain, valid=valid)
    assert_same_params(params_of(teacher), torch.load(best.paramfiles["student"]))
    assert len(calls) == STEPS_PER_EPOCH  # train steps only: VALID runs the student alone
    brain.evaluate(valid, min_key="ERR", test_loader_kwargs={"batch_size": 4})
    assert len(calls) == STEPS_PER_EPOCH
    assert 0.0 <= brain.last_stats["ERR"] <= 1.0


# --- resume ---------------------------------------------------------------------------------------


def seeded_teacher(seed: int = 1) -> ToyNet:
    torch.manual_seed(seed)
    return ToyNet("attention")


def trajectory_keys() -> dict:
    return dict(
        guidance_mode="trajectory",
        teacher_net=seeded_teacher(),
        teacher_opt_class=adam(1e-3),
        teacher_lr_scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.9),
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.8),
        teacher_update_cycle=2,
        alpha_kd=1.0,
    )


def run_killed_and_resumed(folder, keys_fn, kill_at: int, opts: dict, batch_size: int = 4) -> ToyBrain:
    brain = make_brain(folder, brain_class=KillingBrain, run_opts=opts, **keys_fn())
    brain.kill_at = kill_at
    with pytest.raises(KilledRun):
        fit(brain, batch_size=batch_size)
    resumed = make_brain(folder, run_opts=opts, **keys_fn())
    fit(resumed, batch_size=batch_size)
    return resumed


@pytest.mark.parametrize(
    ("kill_at", "accumulation", "interval"),
    [
        (5, 1, 2),  # mid epoch 1 (6 micro-batches per epoch)
        (9, 1, 2),  # mid epoch 2
        (8, 2, 1),  # 12 micro-batches of 2 per epoch: a save after micro-batch 7 (mid-window) is deferred
    ],
)
def test_trajectory_kill_and_resume_matches_uninterrupted(tmp_path, kill_at, accumulation, interval):
    opts = {"ckpt_interval_steps": interval, "grad_accumulation_factor": accumulation}
    reference = make_brain(tmp_path / "ref", run_opts=opts, **trajectory_keys())
    fit(reference, batch_size=4 // accumulation)
    resumed = run_killed_and_resumed(tmp_path / "killed", trajectory_keys, kill_at, opts, 4 // accumulation)
    assert resumed.optimizer_step == reference.optimizer_step == 2 * STEPS_PER_EPOCH
    assert_same_params(params_of(resumed.student), params_of(reference.student))
    ref_teacher, res_teacher = reference.guidance.teacher, resumed.guidance.teacher
    assert_same_params(params_of(res_teacher.net), params_of(ref_teacher.net))
    ref_opt, res_opt = ref_teacher.optimizer.state_dict(), res_teacher.optimizer.state_dict()
    for key in ref_opt["state"]:
        torch.testing.assert_close(res_opt["state"][key]["exp_avg"], ref_opt["state"][key]["exp_avg"])
    assert res_teacher.lr_scheduler.state_dict() == ref_teacher.lr_scheduler.state_dict()
    assert resumed.lr_scheduler.state_dict() == reference.lr_scheduler.state_dict()
    for key, value in reference.train_stats.items():
        assert resumed.train_stats[key] == pytest.approx(value, rel=1e-5), key


def test_waypoint_kill_and_resume_matches_uninterrupted(tmp_path, teacher_run):
    save, states = teacher_run

    def keys():
        return dict(guidance_mode="waypoint", teacher_net=ToyNet("attention"), teacher_path=str(save))

    reference = make_brain(tmp_path / "ref", **keys())
    fit(reference)
    resumed = run_killed_and_resumed(tmp_path / "killed", keys, kill_at=8, opts={"ckpt_interval_steps": 2})
    assert resumed.optimizer_step == reference.optimizer_step
    assert_same_params(params_of(resumed.student), params_of(reference.student))
    assert resumed.guidance.teacher.current == 12
    # the checkpoint written after 6 steps records its last step (5) and the snapshot it used (step_6)
    assert resumed.guidance.recovered_state == {
        "mode": "waypoint",
        "step": 5,
        "waypoint": 6,
        "released": False,
    }


class NoisyBrain(ToyBrain):
    """Input noise drawn from torch, NumPy and Python's generators: a resumed run only matches the
    uninterrupted one if the checkpoint restores all three."""

    def prepare_batch(self, batch, stage):
        batch = super().prepare_batch(batch, stage)
        if stage == stage.TRAIN:
            x = batch.x.data
            noise = torch.randn_like(x) + float(np.random.rand()) + random.random()
            batch.x.data.copy_(x + 0.1 * noise)
        return batch


class NoisyKillingBrain(NoisyBrain, KillingBrain):
    pass


def test_kill_and_resume_restores_every_random_generator(tmp_path):
    opts = {"ckpt_interval_steps": 2}
    np.random.seed(0), random.seed(0)  # (make_brain seeds torch)
    reference = make_brain(tmp_path / "ref", brain_class=NoisyBrain, run_opts=opts)
    fit(reference)
    np.random.seed(0), random.seed(0)
    killed = make_brain(tmp_path / "killed", brain_class=NoisyKillingBrain, run_opts=opts)
    killed.kill_at = 5
    with pytest.raises(KilledRun):
        fit(killed)
    resumed = make_brain(tmp_path / "killed", brain_class=NoisyBrain, run_opts=opts)
    fit(resumed)
    assert resumed.optimizer_step == reference.optimizer_step
    for key, value in params_of(reference.student).items():
        assert torch.equal(params_of(resumed.student)[key], value), key


class SignalledBrain(ToyBrain):
    """Sends itself `stop_signal` during the 3rd micro-batch."""

    stop_signal = signal.SIGUSR1

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        self.seen = getattr(self, "seen", 0) + 1
        if self.seen == 3:
            os.kill(os.getpid(), self.stop_signal)


# SIGUSR1: SLURM's warning before the time limit; SIGTERM: `kill`, scancel, preemption, a container runtime.
# Both exit 85 (the SLURM template requeues the job), ignoring further stop signals while exiting.
@pytest.mark.parametrize("stop_signal", [signal.SIGUSR1, signal.SIGTERM], ids=lambda s: s.name)
def test_a_stop_signal_saves_at_the_end_of_the_step_and_exits(stop_signal, tmp_path, caplog):
    opts = {"grad_accumulation_factor": 2}  # micro-batch 3 is inside the 2nd accumulation window
    reference = make_brain(tmp_path / "ref", run_opts=opts)
    fit(reference, batch_size=2)
    brain = make_brain(tmp_path / "run", brain_class=SignalledBrain, run_opts=opts)
    brain.stop_signal = stop_signal
    with pytest.raises(SystemExit) as stopped:
        fit(brain, batch_size=2)
    assert stopped.value.code == STOP_EXIT_CODE
    assert signal.getsignal(signal.SIGUSR1) == signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
    StopRequest.install()  # what the next run does
    assert f"Stopped on {stop_signal.name}" in caplog.text and "run the same command again" in caplog.text
    assert brain.step == 4 and brain.optimizer_step == 2  # finished the window, then saved
    (ckpt,) = brain.checkpointer.list_checkpoints()
    assert not ckpt.meta["end-of-epoch"]
    resumed = make_brain(tmp_path / "run", run_opts=opts)
    fit(resumed, batch_size=2)
    assert_same_params(params_of(resumed.student), params_of(reference.student))


class NanEvalBrain(ToyBrain):
    """A model whose outputs are NaN at evaluation."""

    def task_loss(self, outputs, batch, stage):
        loss = super().task_loss(outputs, batch, stage)
        return loss * float("nan") if stage != stage.TRAIN else loss


def test_nonfinite_valid_and_test_losses_are_reported_as_nan(tmp_path):
    valid = make_dataset(n_items=8, seed=1)
    brain = make_brain(tmp_path, brain_class=NanEvalBrain, epochs=1)
    fit(brain, valid=valid)
    assert math.isnan(brain.last_stats["loss"])  # SpeechBrain's average skips non-finite batches: 0.0
    brain.evaluate(valid, test_loader_kwargs={"batch_size": 4})
    assert math.isnan(brain.last_stats["loss"])
    assert math.isfinite(brain.train_stats["loss"])


# --- distillation effect --------------------------------------------------------------------------


def hidden_distance(student: torch.nn.Module, teacher: torch.nn.Module) -> float:
    dataset = make_dataset()
    batch = [dataset[i] for i in range(len(dataset))]
    lengths = torch.tensor([len(item["x"]) for item in batch])
    x = torch.nn.utils.rnn.pad_sequence([item["x"] for item in batch], batch_first=True)
    with torch.no_grad():
        s, t = student(x, lengths), teacher(x, lengths)
        return layerwise_distillation_loss(s.hidden_states, t.hidden_states, s.mask)[0].item()


def test_layerwise_distillation_pulls_hidden_states_to_teacher(tmp_path, teacher_run):
    save, _ = teacher_run
    teacher = ToyNet("attention")
    teacher.load_state_dict(torch.load(save.parent / "final.ckpt"))
    distances = {}
    for name, keys in {
        "unguided": dict(guidance_mode="unguided"),
        "ld_only": dict(
            guidance_mode="target", teacher_path=str(save.parent / "final.ckpt"), alpha_task=0.0, alpha_ld=1.0
        ),
    }.items():
        brain = make_brain(
            tmp_path / name, teacher_net=ToyNet("attention"), epochs=5, opt_class=adam(1e-2), **keys
        )
        distances["start"] = hidden_distance(brain.student, teacher)
        fit(brain)
        distances[name] = hidden_distance(brain.student, teacher)
    assert distances["ld_only"] < 0.3 * distances["unguided"]
    assert distances["ld_only"] < 0.3 * distances["start"]


# --- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("depth", "width", "message"), [(2, 16, "depth mismatch"), (3, 12, "shape mismatch")]
)
def test_mismatched_teacher_stops_before_any_step(tmp_path, depth, width, message):
    teacher = ToyNet("attention", depth=depth, width=width)
    path = tmp_path / "odd_teacher.ckpt"
    torch.save(teacher.state_dict(), path)
    brain = make_brain(tmp_path / "run", guidance_mode="target", teacher_net=teacher, teacher_path=str(path))
    with pytest.raises(ValueError, match=re.escape(f"teacher {path} does not match the student: {message}")):
        fit(brain)
    assert brain.optimizer_step == 0


def test_missing_teacher_and_empty_snapshot_folder_stop_at_start(tmp_path):
    missing = tmp_path / "nowhere" / "CKPT+best"
    brain = make_brain(
        tmp_path / "a", guidance_mode="target", teacher_net=ToyNet(), teacher_path=str(missing)
    )
    with pytest.raises(FileNotFoundError, match=re.escape(f"teacher checkpoint {missing} does not exist")):
        fit(brain)
    (tmp_path / "teacher_save").mkdir()
    brain = make_brain(
        tmp_path / "b",
        guidance_mode="waypoint",
        teacher_net=ToyNet(),
        teacher_path=str(tmp_path / "teacher_save"),
    )
    with pytest.raises(FileNotFoundError, match="no waypoint snapshots"):
        fit(brain)
    assert brain.optimizer_step == 0


class NanBrain(ToyBrain):
    """Returns a NaN task loss on the micro-batches listed in `nan_at` (1-based, counted over the run)."""

    nan_at: set[int] = set()

    def task_loss(self, outputs, batch, stage):
        loss = super().task_loss(outputs, batch, stage)
        if stage == stage.TRAIN:
            self.seen = getattr(self, "seen", 0) + 1
            if self.seen in self.nan_at or ("all_from" in self.__dict__ and self.seen >= self.all_from):
                return loss * float("nan")
        return loss


def test_nonfinite_steps_are_skipped_and_counted(tmp_path):
    brain = make_brain(tmp_path, brain_class=NanBrain, epochs=1)
    brain.nan_at = {2, 5}
    fit(brain)
    assert brain.optimizer_step == STEPS_PER_EPOCH - 2
    assert brain.train_stats["skipped_steps"] == 2
    assert all(torch.isfinite(p).all() for p in brain.student.parameters())


def test_too_many_nonfinite_in_a_row_stops(tmp_path):
    brain = make_brain(tmp_path, brain_class=NanBrain, run_opts={"nonfinite_patience": 2})
    brain.all_from = 3
    with pytest.raises(
        RuntimeError, match=r"not finite for 3 optimizer steps in a row .*nonfinite_patience=2"
    ):
        fit(brain)
    assert brain.optimizer_step == 2


def test_bf16_autocast_trajectory_runs(tmp_path):
    brain = make_brain(tmp_path, run_opts={"precision": "bf16"}, epochs=1, **trajectory_keys())
    fit(brain)
    assert brain.optimizer_step == STEPS_PER_EPOCH
    assert all(torch.isfinite(p).all() for p in brain.guidance.teacher.net.parameters())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_cuda_mixed_precision_trajectory_kill_and_resume(tmp_path, precision):
    """On CUDA under autocast (fp16: a GradScaler for the student and one for the joint teacher, both
    checkpointed): a run killed mid-epoch and resumed ends like the uninterrupted one."""
    opts = {"device": "cuda:0", "precision": precision, "ckpt_interval_steps": 2}
    reference = make_brain(tmp_path / "ref", run_opts=opts, **trajectory_keys())
    fit(reference)
    resumed = run_killed_and_resumed(tmp_path / "killed", trajectory_keys, 5, opts)
    assert resumed.optimizer_step == reference.optimizer_step == 2 * STEPS_PER_EPOCH
    assert resumed.guidance.teacher.scaler.is_enabled() == (precision == "fp16")
    if precision == "fp16":
        assert resumed.guidance.teacher.scaler.get_scale() == reference.guidance.teacher.scaler.get_scale()
    assert_same_params(params_of(resumed.student), params_of(reference.student))
    assert_same_params(params_of(resumed.guidance.teacher.net), params_of(reference.guidance.teacher.net))
    assert all(torch.isfinite(p).all() for p in resumed.student.parameters())


@pytest.mark.slow
def test_ddp_two_ranks_stay_in_sync(tmp_path):
    """torchrun, 2 CPU ranks (gloo): student (DDP-wrapped) and joint teacher (gradients all-reduced by
    CALDBrain) end identical on both ranks; snapshots are written once."""
    toy = Path(__file__).parents[1] / "toy_task.py"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(toy),
        str(tmp_path),
    ]
    subprocess.run(cmd, check=True, timeout=300, cwd=toy.parent)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert ranks[0]["steps"] == ranks[1]["steps"] == 2 * 3  # 12 items per rank, batch 2, accumulation 2
    for net in ("student", "teacher"):
        assert_same_params(ranks[0][net], ranks[1][net])
    assert sorted(p.name for p in (tmp_path / "save" / "snapshots").iterdir()) == [
        "step_2.ckpt",
        "step_4.ckpt",
        "step_6.ckpt",
    ]


def test_epoch_shorter_than_accumulation_window_stops(tmp_path):
    """An epoch of fewer batches than grad_accumulation_factor would never step (SpeechBrain flushes the
    gradients at each epoch end): the run stops naming the option instead of training nothing."""
    brain = make_brain(tmp_path, run_opts={"grad_accumulation_factor": 4}, epochs=1)
    with pytest.raises(RecipeError, match="grad_accumulation_factor=4"):
        fit(brain, dataset=make_dataset(n_items=8), batch_size=4)  # 2 batches per epoch
    assert brain.optimizer_step == 0
