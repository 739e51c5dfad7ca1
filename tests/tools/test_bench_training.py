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
