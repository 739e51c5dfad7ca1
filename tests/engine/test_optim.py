"""Optimizer groups (lr_by_prefix, weight decay), the reference learning-rate schedule, and gradient clipping
of every parameter group."""

import math

import pytest
import torch
from toy_task import ToyBrain, ToyNet, fit, make_brain

from cald_brain.optim import WarmupExpDecay, param_groups, warmup_exp_decay_factor


def test_groups_follow_longest_prefix_and_skip_frozen():
    net = ToyNet("attention")
    net.embed.weight.requires_grad_(False)
    groups = param_groups(net.named_parameters(), {"head": 0.1, "blocks": 0.01, "blocks.1": 0.001})
    by_lr = {g.get("lr"): {id(p) for p in g["params"]} for g in groups}
    assert by_lr[None] == {id(net.embed.bias)}  # the default group: optimizer's lr; frozen weight left out
    assert by_lr[0.1] == {id(p) for p in net.head.parameters()}
    assert by_lr[0.001] == {id(p) for p in net.blocks[1].parameters()}
    assert by_lr[0.01] == {id(p) for i in (0, 2) for p in net.blocks[i].parameters()}


def test_prefix_must_match_whole_module_names():
    net = ToyNet("attention")
    with pytest.raises(ValueError, match="'hea'"):
        param_groups(net.named_parameters(), {"hea": 0.1})


def test_no_prefix_gives_one_group():
    net = ToyNet("attention")
    (group,) = param_groups(net.named_parameters(), None)
    assert len(group["params"]) == len(list(net.parameters())) and "lr" not in group


def test_student_and_joint_teacher_optimizers_get_the_head_lr(tmp_path):
    teacher = ToyNet("attention")
    brain = make_brain(
        tmp_path,
        epochs=1,
        guidance_mode="trajectory",
        teacher_net=teacher,
        teacher_opt_class=lambda params: torch.optim.Adam(params, lr=1e-4),
        lr_by_prefix={"head": 0.05},
    )
    fit(brain)
    student_groups = brain.optimizer.param_groups
    assert [g["lr"] for g in student_groups] == [3e-3, 0.05]
    assert {id(p) for p in student_groups[1]["params"]} == {id(p) for p in brain.student.head.parameters()}
    teacher_groups = brain.guidance.teacher.optimizer.param_groups
    assert [g["lr"] for g in teacher_groups] == [1e-4, 0.05]
    assert {id(p) for p in teacher_groups[1]["params"]} == {id(p) for p in teacher.head.parameters()}


# --- weight decay groups ----------------------------------------------------------------------------------


def test_weight_decay_groups_exclude_biases_and_layer_norm_and_compose_with_lr_prefixes():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer_norm = torch.nn.LayerNorm(4)  # excluded by name, as in the reference
            self.final_layer_norm = torch.nn.LayerNorm(4)  # the reference decays this one's weight
            self.body = torch.nn.Linear(4, 4)
            self.head = torch.nn.Linear(4, 2)

    net = Net()
    groups = param_groups(net.named_parameters(), {"head": 0.1}, weight_decay=5e-3)
    names = {id(p): n for n, p in net.named_parameters()}
    got = [(g.get("lr"), g["weight_decay"], sorted(names[id(p)] for p in g["params"])) for g in groups]
    assert got == [
        (None, 5e-3, ["body.weight", "final_layer_norm.weight"]),
        (None, 0.0, ["body.bias", "final_layer_norm.bias", "layer_norm.bias", "layer_norm.weight"]),
        (0.1, 5e-3, ["head.weight"]),
        (0.1, 0.0, ["head.bias"]),
    ]
    opt = torch.optim.AdamW(groups, lr=1e-3, weight_decay=0.5)  # the groups' values win
    assert [g["weight_decay"] for g in opt.param_groups] == [5e-3, 0.0, 5e-3, 0.0]


def test_student_optimizer_gets_weight_decay_groups(tmp_path):
    brain = make_brain(
        tmp_path,
        epochs=1,
        opt_class=lambda params: torch.optim.AdamW(params, lr=1e-3),
        weight_decay=5e-3,
        no_decay_modules=["norm1", "norm2"],
    )
    fit(brain)
    decayed = {id(p) for g in brain.optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    expected = {
        id(p) for n, p in brain.student.named_parameters() if not n.endswith("bias") and ".norm" not in n
    }
    assert decayed == expected


# --- the reference learning-rate schedule -----------------------------------------------------------------


def reference_lr(step: int, max_lr=3e-4, final_lr=1.5e-6, warmup=5000, decay=75000) -> float:
    """speech/models/model.py learning_rate_schedule × max_lr, written out for the reference values."""
    if step < warmup:
        return max_lr * step / warmup
    if step <= warmup:
        return max_lr
    if step < warmup + decay:
        return max_lr * math.exp(-(step - warmup) * math.log(max_lr / final_lr) / decay)
    return final_lr


def run_schedule(opt, scheduler, steps: int) -> list[float]:
    """lr used by each of `steps` optimizer steps (the Brain steps the scheduler after the optimizer)."""
    used = []
    for _ in range(steps):
        used.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    return used


def make_scheduler(lr=3e-4, **overrides):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    settings = dict(warmup_steps=5000, decay_steps=75000, final_lr_ratio=1.5e-6 / 3e-4)
    settings.update(overrides)
    return opt, WarmupExpDecay(opt, **settings)


@pytest.mark.parametrize("step", [0, 1, 2500, 4999, 5000, 5001, 40000, 79999, 80000, 90000])
def test_warmup_exp_decay_matches_the_reference_closed_form(step):
    assert warmup_exp_decay_factor(step, 5000, 75000, 1.5e-6 / 3e-4) * 3e-4 == pytest.approx(
        reference_lr(step), rel=1e-9
    )


def test_scheduler_follows_the_schedule_step_by_step_for_every_group():
    opt = torch.optim.SGD(
        [
            {"params": [torch.nn.Parameter(torch.zeros(1))]},
            {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 1.0},
        ],
        lr=0.5,
    )
    scheduler = WarmupExpDecay(opt, warmup_steps=4, decay_steps=6, final_lr_ratio=0.01, plateau_steps=2)
    seen = []
    for _ in range(14):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        scheduler.step()
    factors = [0, 0.25, 0.5, 0.75, 1, 1, 1] + [0.01 ** (k / 6) for k in range(1, 6)] + [0.01, 0.01]
    assert seen == [pytest.approx([0.5 * f, 1.0 * f]) for f in factors]


def test_scheduler_state_dict_resumes_exactly():
    opt, scheduler = make_scheduler(warmup_steps=10, decay_steps=20, final_lr_ratio=0.1)
    whole = run_schedule(opt, scheduler, 40)
    opt, scheduler = make_scheduler(warmup_steps=10, decay_steps=20, final_lr_ratio=0.1)
    first = run_schedule(opt, scheduler, 13)
    saved = scheduler.state_dict(), opt.state_dict()
    opt, scheduler = make_scheduler(warmup_steps=10, decay_steps=20, final_lr_ratio=0.1)  # a new process
    scheduler.load_state_dict(saved[0])
    opt.load_state_dict(saved[1])
    assert first + run_schedule(opt, scheduler, 27) == whole


def test_scheduler_rejects_bad_settings():
    with pytest.raises(ValueError, match="final_lr_ratio"):
        make_scheduler(final_lr_ratio=0.0)
    with pytest.raises(ValueError, match="decay_steps > 0"):
        make_scheduler(decay_steps=0)


# --- gradient clipping ------------------------------------------------------------------------------------


def test_clipping_covers_every_parameter_group(tmp_path):
    """SpeechBrain clips only param_groups[0]; with lr_by_prefix the head is its own group and must be
    clipped too: one norm over all groups, at most max_grad_norm after the step's clip."""
    seen = {}

    def record_and_step(opt):
        grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
        seen["head"] = torch.linalg.vector_norm(
            torch.cat([p.grad.flatten() for p in opt.param_groups[1]["params"]])
        )
        seen["total"] = torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads]))
        type(opt).step(opt)

    brain = make_brain(
        tmp_path,
        epochs=1,
        opt_class=lambda params: torch.optim.SGD(params, lr=1e-3),
        lr_by_prefix={"head": 1e-3},
        max_grad_norm=1e-3,
    )
    original = brain.init_optimizers

    def init_and_patch():
        original()
        brain.optimizer.step = lambda *a, **k: record_and_step(brain.optimizer)

    brain.init_optimizers = init_and_patch
    fit(brain)
    assert seen["total"] <= 1e-3 * (1 + 1e-4)
    assert 0 < seen["head"] <= 1e-3 * (1 + 1e-4)


class KillingToyBrain(ToyBrain):
    """Dies at its `kill_at`-th train micro-batch (after that micro-batch, before any checkpoint of it)."""

    kill_at = 0

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        self.seen = getattr(self, "seen", 0) + 1
        if self.seen == self.kill_at:
            raise KeyboardInterrupt


def test_reference_optimizer_setup_kill_and_resume_matches_uninterrupted(tmp_path):
    """WarmupExpDecay + weight-decay and lr groups + clipping of every group + accumulation: a run killed in
    epoch 2 and resumed ends with the same parameters, optimizer and scheduler state."""
    opts = {"ckpt_interval_steps": 1, "grad_accumulation_factor": 2}

    def brain(folder, brain_class=ToyBrain):
        return make_brain(
            folder,
            brain_class=brain_class,
            run_opts=opts,
            opt_class=lambda params: torch.optim.AdamW(params, lr=3e-3),
            lr_scheduler=lambda opt: WarmupExpDecay(opt, warmup_steps=2, decay_steps=4, final_lr_ratio=0.1),
            lr_by_prefix={"head": 1e-2},
            weight_decay=5e-3,
            max_grad_norm=0.5,
        )

    reference = brain(tmp_path / "ref")
    fit(reference, batch_size=2)
    killed = brain(tmp_path / "killed", KillingToyBrain)
    killed.kill_at = 17  # 12 micro-batches per epoch: mid epoch 2, mid accumulation window
    with pytest.raises(KeyboardInterrupt):
        fit(killed, batch_size=2)
    resumed = brain(tmp_path / "killed")
    fit(resumed, batch_size=2)
    assert resumed.optimizer_step == reference.optimizer_step == 12
    for (name, a), b in zip(reference.student.named_parameters(), resumed.student.parameters(), strict=True):
        assert torch.equal(a, b), name
    assert resumed.lr_scheduler.state_dict() == reference.lr_scheduler.state_dict()
    assert [g["lr"] for g in resumed.optimizer.param_groups] == [
        g["lr"] for g in reference.optimizer.param_groups
    ]
