"""tools/bench_training.py: each row's training step runs through the engine (on the tiny model)."""

import argparse

import pytest
from conftest import TINY_WAV2VEC2, load_repo_script

bench = load_repo_script("tools/bench_training.py", "bench_training")


@pytest.mark.parametrize("mode", ["teacher", "trajectory", "waypoint", "target-unshared"])
def test_a_row_takes_optimizer_steps(mode):
    args = argparse.Namespace(
        device="cpu", batch=2, seconds=[0.5, 0.7], warmup=1, steps=1, precision="fp32", flops=False
    )
    row = bench.measure(args, mode, str(TINY_WAV2VEC2))
    assert row["steps"] == 2 and len(row["seconds_all"]) == 1 and row["seconds"] > 0
    assert row["peak_gib"] > 0


def test_sharing_the_feature_encoder_removes_its_flops():
    """--flops: the shared step does the work of the unshared one minus one feature-encoder pass."""
    from cald_brain.models import SpeechEncoder

    args = argparse.Namespace(
        device="cpu", batch=2, seconds=[0.5, 0.7], warmup=0, steps=1, precision="fp32", flops=True
    )
    shared, unshared = (
        bench.measure(args, m, str(TINY_WAV2VEC2))["gflop"] for m in ("target", "target-unshared")
    )
    encoder = SpeechEncoder(str(TINY_WAV2VEC2)).model.feature_extractor
    padded = bench.make_batch(2, (0.5, 0.7)).sig[0]
    assert unshared - shared == pytest.approx(bench.longform.count_gflop(lambda: encoder(padded)), rel=1e-9)


def test_table_ratios_are_over_the_teacher_step():
    rows = [
        {"mode": "teacher", "seconds": 2.0, "peak_gib": 1.0},
        {"mode": "target", "seconds": 2.5, "peak_gib": 1.5},
        {"mode": "hybrid", "failed": "failed (exit 1)"},
    ]
    text = bench.table(rows)
    assert "| target | 2.50 | 1.50 | 1.25x |" in text and "| hybrid | failed (exit 1) | - | - |" in text


def test_rows_train_as_a_recipe_run_does(monkeypatch):
    """Every network steps in train mode, as `Brain.fit` sets it, with the recipe's dropouts and masking:
    a row timed in eval mode would skip dropout and SpecAugment and give the teacher its fused attention."""
    from cald_brain.tasks.ctc import CTCBrain

    seen = []
    fit_batch = CTCBrain.fit_batch

    def recording(brain, batch):
        seen.append([m.training for m in brain.modules.modules()])
        return fit_batch(brain, batch)

    monkeypatch.setattr(CTCBrain, "fit_batch", recording)
    args = argparse.Namespace(
        device="cpu", batch=2, seconds=[0.5, 0.7], warmup=0, steps=1, precision="fp32", flops=False
    )
    bench.measure(args, "target", str(TINY_WAV2VEC2))
    assert seen and all(all(modes) for modes in seen)
    overrides = bench.recipe_encoder_overrides()
    assert overrides == {
        "hidden_dropout": 0.2,
        "activation_dropout": 0.2,
        "feat_proj_dropout": 0.2,
        "mask_time_prob": 0.1,
        "layerdrop": 0.0,
    }
    student, hparams = bench.hparams_for("target", str(TINY_WAV2VEC2), "unused")
    for net in (student, hparams["teacher_net"]):
        config = net.encoder.model.config
        assert (config.hidden_dropout, config.mask_time_prob, config.layerdrop) == (0.2, 0.1, 0.0)
