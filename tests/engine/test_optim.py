"""lr_by_prefix: parameter groups by name prefix, for the student optimizer and the joint teacher's."""

import pytest
import torch
from toy_task import ToyNet, fit, make_brain

from cald_brain.optim import param_groups


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
