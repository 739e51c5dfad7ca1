"""WarmupCosine against the CALD reference's construction (lm/open_instruct/retrain_mamba_distill.py):
transformers' cosine schedule over lr_decay_steps with 3 % warm-up, each factor raised to min_lr / lr, and
min_lr / lr after lr_decay_steps."""

import pytest
import torch
from transformers import get_scheduler

from cald_brain.optim import WarmupCosine, warmup_cosine_factor


def reference_factors(decay_steps: int, warmup_ratio: float, min_ratio: float, steps: int) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = get_scheduler(
        "cosine",
        optimizer=opt,
        num_training_steps=decay_steps,
        num_warmup_steps=int(decay_steps * warmup_ratio),
    )
    fn = sched.lr_lambdas[0]
    return [max(fn(x), min_ratio) if x < decay_steps else min_ratio for x in range(steps)]


@pytest.mark.parametrize("decay_steps", [100, 12000])
def test_factor_matches_reference(decay_steps):
    expected = reference_factors(decay_steps, 0.03, 0.1, decay_steps + 20)
    got = [warmup_cosine_factor(x, decay_steps, 0.03, 0.1) for x in range(decay_steps + 20)]
    assert got == pytest.approx(expected, abs=1e-12)


def test_scheduler_steps_and_resumes():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([param], lr=3e-4)
    sched = WarmupCosine(opt, decay_steps=100, warmup_ratio=0.03, min_lr_ratio=0.1)
    assert opt.param_groups[0]["lr"] == pytest.approx(3e-5)  # step 0: warm-up factor 0, floored
    for _ in range(50):
        opt.step()
        sched.step()
    lr = opt.param_groups[0]["lr"]
    assert lr == pytest.approx(3e-4 * warmup_cosine_factor(50, 100, 0.03, 0.1))
    opt2 = torch.optim.AdamW([param], lr=3e-4)
    resumed = WarmupCosine(opt2, decay_steps=100, warmup_ratio=0.03, min_lr_ratio=0.1)
    resumed.load_state_dict(sched.state_dict())
    opt2.step()
    resumed.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(3e-4 * warmup_cosine_factor(51, 100, 0.03, 0.1))
    with pytest.raises(ValueError, match="decay_steps > 0"):
        WarmupCosine(opt, decay_steps=0)
