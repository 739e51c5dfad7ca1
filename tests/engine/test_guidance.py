"""Guidance schedule and teachers on their own (no Brain): which teacher, weights and alphas at step t;
checkpoint and snapshot resolution; start-up errors."""

import re

import pytest
import torch
from speechbrain.utils.checkpoints import Checkpointer
from toy_task import ToyNet

from cald_brain.distill.guidance import Guidance, GuidanceConfig
from cald_brain.distill.snapshots import list_snapshots, resolve_checkpoint_file, save_snapshot
from cald_brain.distill.teachers import FrozenTeacher, JointTeacher, SnapshotTeacher


def marked_state(value: float) -> dict[str, torch.Tensor]:
    """A teacher state dict whose head bias is filled with `value` (identifies which file is loaded)."""
    torch.manual_seed(0)
    state = ToyNet("attention").state_dict()
    state["head.bias"] = torch.full_like(state["head.bias"], value)
    return state


def head_mark(net: torch.nn.Module) -> float:
    return float(net.head.bias[0])


def guidance(**keys) -> Guidance:
    keys.setdefault("teacher_net", ToyNet("attention"))
    total_steps = keys.pop("total_steps", None)
    g = Guidance(GuidanceConfig(**keys))
    g.setup("cpu", total_steps=total_steps)
    return g


def test_unguided_never_plans_a_teacher():
    g = Guidance(GuidanceConfig(guidance_mode="unguided", alpha_kd=1.0, alpha_ld=15.0, teacher_net=ToyNet()))
    g.setup("cpu")
    g.start(0)
    for step in range(5):
        plan = g.plan(step)
        assert plan.teacher is None and not plan.update_teacher
        assert (plan.alpha_task, plan.alpha_kd, plan.alpha_ld) == (1.0, 0.0, 0.0)
    assert g.teacher is None and g.recoverables() == {"guidance": g}


def test_target_teacher_is_frozen_and_loaded(tmp_path):
    torch.save(marked_state(7.0), tmp_path / "teacher.ckpt")
    g = guidance(guidance_mode="target", teacher_path=str(tmp_path / "teacher.ckpt"), alpha_kd=1.0)
    g.start(0)
    assert isinstance(g.teacher, FrozenTeacher)
    assert head_mark(g.teacher.net) == 7.0
    assert not any(p.requires_grad for p in g.teacher.net.parameters())
    for step in (0, 10, 10_000):
        plan = g.plan(step)
        assert plan.teacher is g.teacher and not plan.update_teacher
        assert (plan.alpha_kd, plan.alpha_ld) == (1.0, 15.0)


def test_teacher_train_mode_choice(tmp_path):
    torch.save(marked_state(0.0), tmp_path / "t.ckpt")
    for train_mode in (True, False):
        g = guidance(
            guidance_mode="target", teacher_path=str(tmp_path / "t.ckpt"), teacher_train_mode=train_mode
        )
        assert g.teacher.net.training is train_mode


@pytest.mark.parametrize("cycle", [1, 3])
def test_trajectory_updates_every_cycle(cycle):
    g = guidance(
        guidance_mode="trajectory",
        teacher_update_cycle=cycle,
        teacher_opt_class=lambda params: torch.optim.SGD(params, lr=0.1),
        teacher_lr_scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1),
    )
    g.start(0)
    assert isinstance(g.teacher, JointTeacher)
    updates = [step for step in range(12) if g.plan(step).update_teacher]
    assert updates == [step for step in range(12) if (step + 1) % cycle == 0]
    assert set(g.recoverables()) == {"guidance", "teacher", "teacher_optimizer", "teacher_lr_scheduler"}
    assert all(p.requires_grad for p in g.teacher.net.parameters())


def test_trajectory_teacher_still_updates_without_distillation():
    g = guidance(
        guidance_mode="trajectory", alpha_ld=0.0, teacher_opt_class=lambda p: torch.optim.SGD(p, lr=0.1)
    )
    assert g.plan(0).teacher is g.teacher and g.plan(0).update_teacher


def test_waypoint_picks_first_snapshot_after_step(tmp_path):
    for step in (2, 4, 6):
        save_snapshot(marked_state(float(step)), tmp_path / "save" / "snapshots", step)
    g = guidance(guidance_mode="waypoint", teacher_path=str(tmp_path / "save"))
    assert isinstance(g.teacher, SnapshotTeacher)
    g.start(0)
    expected = {0: 2, 1: 2, 2: 4, 3: 4, 4: 6, 5: 6, 6: 6, 9: 6}
    for step, snap in expected.items():
        plan = g.plan(step)
        assert g.teacher.current == snap
        assert head_mark(plan.teacher.net) == snap
    # resuming at step 3 loads step_4 directly; the snapshot folder itself is accepted too
    g2 = guidance(guidance_mode="waypoint", teacher_path=str(tmp_path / "save" / "snapshots"))
    g2.start(3)
    assert g2.teacher.current == 4 and head_mark(g2.teacher.net) == 4


def test_hybrid_switch_step_and_release(tmp_path):
    torch.save(marked_state(1.0), tmp_path / "t.ckpt")
    g = guidance(guidance_mode="hybrid", teacher_path=str(tmp_path / "t.ckpt"), distill_until_step=3)
    g.start(0)
    plans = [g.plan(step) for step in range(6)]
    assert [p.teacher is not None for p in plans] == [True, True, True, False, False, False]
    assert all(p.alpha_ld == 0 and p.alpha_kd == 0 and p.alpha_task == 1 for p in plans[3:])
    assert g.released and all(p.device.type == "meta" for p in g.teacher.net.parameters())


def test_hybrid_fraction_and_resume_past_switch(tmp_path):
    torch.save(marked_state(1.0), tmp_path / "t.ckpt")
    g = guidance(
        guidance_mode="hybrid",
        teacher_path=str(tmp_path / "t.ckpt"),
        distill_until_fraction=0.4,
        total_steps=50,
    )
    assert g.switch_step == 20
    g.start(25)  # resumed after the switch: the teacher is never loaded
    assert g.released and g.plan(25).teacher is None
    with pytest.raises(ValueError, match="optimizer_step_limit"):
        guidance(guidance_mode="hybrid", teacher_path=str(tmp_path / "t.ckpt"), distill_until_fraction=0.4)
    with pytest.raises(ValueError, match="exactly one of distill_until_step, distill_until_fraction"):
        guidance(guidance_mode="hybrid", teacher_path=str(tmp_path / "t.ckpt"))


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match="guidance_mode='targeted' is not one of"):
        GuidanceConfig(guidance_mode="targeted")
    with pytest.raises(ValueError, match="teacher_opt_class"):
        guidance(guidance_mode="trajectory")
    with pytest.raises(ValueError, match="needs teacher_net"):
        guidance(guidance_mode="target", teacher_path="x", teacher_net=None)
    with pytest.raises(ValueError, match="needs teacher_path"):
        guidance(guidance_mode="waypoint")
    with pytest.raises(ValueError, match="student_init=teacher needs guidance_mode target or hybrid"):
        guidance(guidance_mode="waypoint", teacher_path=str(tmp_path), student_init="teacher")
    with pytest.raises(ValueError, match="alpha_task=0 leaves nothing to train"):
        GuidanceConfig(alpha_task=0.0)


def test_missing_teacher_checkpoint_and_empty_snapshot_folder(tmp_path):
    missing = tmp_path / "no_such_run"
    with pytest.raises(FileNotFoundError, match=re.escape(f"teacher checkpoint {missing} does not exist")):
        guidance(guidance_mode="target", teacher_path=str(missing))
    with pytest.raises(FileNotFoundError, match=re.escape(f"waypoint teacher_path {missing} does not exist")):
        guidance(guidance_mode="waypoint", teacher_path=str(missing))
    (tmp_path / "save" / "snapshots").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"no waypoint snapshots .* snapshot_every_steps > 0"):
        guidance(guidance_mode="waypoint", teacher_path=str(tmp_path / "save"))


def save_ckpt(checkpointer: Checkpointer, net: torch.nn.Module, meta: dict) -> None:
    checkpointer.add_recoverable("student", net)
    checkpointer.save_checkpoint(meta=meta)


def test_resolve_checkpoint_file_variants(tmp_path):
    net = ToyNet("attention")
    save = tmp_path / "save"
    checkpointer = Checkpointer(save)
    with pytest.raises(FileNotFoundError, match="no CKPT"):
        resolve_checkpoint_file(save)
    save_ckpt(checkpointer, net, {"WER": 30.0, "ACC": 0.5})
    only = resolve_checkpoint_file(save)
    assert only.name == "student.ckpt"
    save_ckpt(checkpointer, net, {"WER": 20.0, "ACC": 0.4})
    save_ckpt(checkpointer, net, {"brain_intra_epoch_ckpt": True})
    with pytest.raises(ValueError, match="holds 3 checkpoints; set teacher_min_key"):
        resolve_checkpoint_file(save)
    by_wer = resolve_checkpoint_file(save, min_key="WER")
    by_acc = resolve_checkpoint_file(save, max_key="ACC")
    assert by_wer != by_acc and by_acc == only
    with pytest.raises(ValueError, match="meta key 'CER'"):
        resolve_checkpoint_file(save, min_key="CER")
    assert resolve_checkpoint_file(by_wer.parent) == by_wer  # a CKPT+* folder
    assert resolve_checkpoint_file(by_wer) == by_wer  # a file
    with pytest.raises(FileNotFoundError, match="has no model.ckpt .*teacher_ckpt_key"):
        resolve_checkpoint_file(by_wer.parent, ckpt_key="model")


def test_teacher_checkpoint_must_fit_teacher_net(tmp_path):
    torch.save(ToyNet("attention", depth=2).state_dict(), tmp_path / "small.ckpt")
    g = guidance(guidance_mode="target", teacher_path=str(tmp_path / "small.ckpt"))
    with pytest.raises(RuntimeError, match="small.ckpt does not fit teacher_net"):
        g.start(0)


def test_snapshot_files(tmp_path):
    state = {"w": torch.arange(3.0)}
    path = save_snapshot(state, tmp_path / "snaps", 10)
    save_snapshot(state, tmp_path / "snaps", 2)
    assert path.name == "step_10.ckpt" and not list((tmp_path / "snaps").glob("*.tmp"))
    assert [step for step, _ in list_snapshots(tmp_path / "snaps")] == [2, 10]  # numeric order
    torch.testing.assert_close(torch.load(path)["w"], state["w"])


def test_guidance_state_roundtrip(tmp_path):
    for step in (2, 4):
        save_snapshot(marked_state(float(step)), tmp_path / "snapshots", step)
    g = guidance(guidance_mode="waypoint", teacher_path=str(tmp_path))
    g.start(2)
    g.plan(2)
    g._save(tmp_path / "guidance.ckpt")
    g2 = guidance(guidance_mode="waypoint", teacher_path=str(tmp_path))
    g2._recover(tmp_path / "guidance.ckpt", end_of_epoch=False)
    assert g2.recovered_state == {"mode": "waypoint", "step": 2, "waypoint": 4, "released": False}


def test_hybrid_keep_kd_drops_only_the_layerwise_term_at_the_switch(tmp_path):
    """The reference's TED-LIUM hybrid: alpha_LD -> 0 at the switch, logit distillation from the frozen
    teacher goes on (so the teacher stays loaded, also when resuming past the switch)."""
    torch.save(marked_state(1.0), tmp_path / "t.ckpt")
    keys = dict(
        guidance_mode="hybrid",
        teacher_path=str(tmp_path / "t.ckpt"),
        distill_until_step=3,
        alpha_kd=1.0,
        hybrid_keep_kd=True,
    )
    g = guidance(**keys)
    g.start(0)
    plans = [g.plan(step) for step in range(6)]
    assert all(p.teacher is g.teacher and p.alpha_kd == 1.0 and not p.update_teacher for p in plans)
    assert [p.alpha_ld for p in plans] == [15.0, 15.0, 15.0, 0.0, 0.0, 0.0]
    assert not g.released
    resumed = guidance(**keys)
    resumed.start(25)  # resumed past the switch: the teacher is still loaded for KD
    assert head_mark(resumed.teacher.net) == 1.0 and resumed.plan(25).alpha_kd == 1.0
    with pytest.raises(ValueError, match="hybrid_keep_kd.*alpha_kd > 0"):
        GuidanceConfig(guidance_mode="hybrid", hybrid_keep_kd=True)
    with pytest.raises(ValueError, match="hybrid_keep_kd.*guidance_mode hybrid"):
        GuidanceConfig(guidance_mode="target", hybrid_keep_kd=True, alpha_kd=1.0)


@pytest.mark.parametrize("max_grad_norm", [None, 0.01])
def test_joint_teacher_clipping_is_its_own_setting(max_grad_norm):
    """teacher_max_grad_norm None (the reference) leaves the teacher's gradient as it is."""
    g = guidance(
        guidance_mode="trajectory",
        teacher_opt_class=lambda params: torch.optim.SGD(params, lr=1.0),
        teacher_max_grad_norm=max_grad_norm,
    )
    net = g.teacher.net
    before = torch.cat([p.detach().flatten().clone() for p in net.parameters()])
    x, lengths = torch.randn(2, 5, 6), torch.tensor([5, 3])
    loss = net(x, lengths).logits.pow(2).sum() * 100
    grad_norm = torch.linalg.vector_norm(
        torch.cat(
            [g_.flatten() for g_ in torch.autograd.grad(loss, list(net.parameters()), retain_graph=True)]
        )
    )
    g.teacher.backward(loss, 1)
    g.teacher.step()
    moved = torch.linalg.vector_norm(torch.cat([p.detach().flatten() for p in net.parameters()]) - before)
    expected = grad_norm if max_grad_norm is None else torch.tensor(max_grad_norm)
    assert grad_norm > 1.0
    torch.testing.assert_close(moved, expected, rtol=1e-4, atol=0)


def test_teacher_from_source_keeps_the_built_weights_and_needs_no_file():
    net = ToyNet("attention")
    net.head.bias.data.fill_(3.0)
    g = guidance(guidance_mode="target", teacher_from_source=True, teacher_net=net, student_init="teacher")
    g.start(0)
    assert isinstance(g.teacher, FrozenTeacher) and g.teacher.file is None
    assert head_mark(g.teacher.net) == 3.0
    assert not any(p.requires_grad for p in g.teacher.net.parameters())
    init = g.student_init_state()
    assert torch.equal(init["head.bias"], net.head.bias.detach())
    assert g.plan(0).teacher is g.teacher


@pytest.mark.parametrize(
    "keys",
    [
        {"guidance_mode": "waypoint", "teacher_from_source": True},
        {"guidance_mode": "target", "teacher_from_source": True, "teacher_path": "t.ckpt"},
    ],
)
def test_teacher_from_source_only_for_target_and_hybrid_without_a_path(keys):
    with pytest.raises(ValueError, match="teacher_from_source"):
        guidance(**keys)
