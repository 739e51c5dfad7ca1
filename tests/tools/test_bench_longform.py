"""tools/bench_longform.py: what it skips (estimates from the previous length: the teacher's time grows
quadratically, memory linearly above the model's own) and the table's ratios."""

import pytest
from conftest import load_repo_script

bench = load_repo_script("tools/bench_longform.py", "bench_longform")


def row(model: str, minutes: float, seconds: float, peak: float, before: float = 1.0) -> dict:
    return dict(
        model=model,
        minutes=minutes,
        seconds=seconds,
        rtf=seconds / minutes / 60,
        peak_gib=peak,
        before_gib=before,
    )


def test_estimates_scale_from_the_previous_length():
    done = [row("teacher", 1, 10.0, 2.0), row("student", 1, 8.0, 1.5)]
    teacher = bench.estimate("teacher", 4, done)
    student = bench.estimate("student", 4, done)
    assert teacher == {"seconds": 160.0, "peak_gib": 1.0 + 4 * 1.0}
    assert student == {"seconds": 32.0, "peak_gib": 1.0 + 4 * 0.5}
    assert bench.estimate("floor", 4, done) is None  # nothing measured yet: run it


def test_runs_that_would_not_fit_are_skipped_and_said_so(monkeypatch, tmp_path):
    class Args:
        minutes, models, plain, piece_seconds, threads = [1, 60], ["teacher"], False, 20, 1
        time_budget, model_minutes, resume, size, out = 100.0, {}, False, "base", tmp_path
        flops = False

    class Done:
        returncode = 0
        stdout = '{"seconds": 10.0, "rtf": 0.17, "peak_gib": 2.0, "before_gib": 1.0}\n'

    monkeypatch.setattr(bench.subprocess, "run", lambda *a, **k: Done())
    monkeypatch.setattr(bench, "available_gib", lambda: 1000.0)
    results = bench.run(Args, "unused")
    assert "seconds" in results[0]
    assert "estimated > --time-budget" in results[1]["skipped"]  # 60^2 x 10 s
    assert "estimated > --time-budget" in bench.table(results)
    Args.time_budget = 10.0**9
    monkeypatch.setattr(bench, "available_gib", lambda: 24.0)
    assert bench.run(Args, "unused")[1]["skipped"] == "needs ~61 GiB, 24 GiB available"  # 1 + 60 x 1 GiB


def test_table_gives_student_ratios_at_every_length():
    results = [row("teacher", 1, 20.0, 2.0), row("student", 1, 10.0, 1.0), row("floor", 1, 8.0, 0.8)]
    text = bench.table(results)
    assert (
        "| 1 | 20.0 (0.333, 2.00) | 10.0 (0.167, 1.00) | 8.0 (0.133, 0.80) | 0.50x (0.50x) | 1.25x (1.25x) |"
        in text
    )


def test_flop_ratios_join_the_time_ratios():
    results = [row("student", 1, 12.0, 1.0), row("floor", 1, 8.0, 0.8)]
    results[0]["gflop"], results[1]["gflop"] = 150.0, 100.0
    text = bench.table(results)
    assert "student/floor time (memory), FLOPs |" in text and "| 1.50x (1.25x), FLOPs 1.50x |" in text


def test_flop_count_covers_products_the_cpu_scan_and_fused_attention():
    """count_gflop: nn.Linear forward and backward, the scan's in-place baddbmm_, and SDPA's fused CPU
    kernel, forward and backward (missing from torch's own table), are all counted at 2 FLOPs per
    multiply-add."""
    torch = bench.torch

    def flops(fn) -> int:
        return round(bench.count_gflop(fn) * 1e9)

    linear, x = torch.nn.Linear(4, 3), torch.randn(5, 4, requires_grad=True)
    assert flops(lambda: linear(x)) == 2 * 5 * 4 * 3
    assert flops(lambda: linear(x).sum().backward()) == 3 * (2 * 5 * 4 * 3)
    a, b = torch.randn(2, 3, 4), torch.randn(2, 4, 5)
    assert flops(lambda: torch.zeros(2, 3, 5).baddbmm_(a, b)) == 2 * 2 * 3 * 4 * 5
    q = torch.randn(1, 2, 16, 8)  # (batch, heads, length, head dim)
    attention = 2 * (2 * 1 * 2 * 16 * 16 * 8)  # scores and weighted sum
    with torch.no_grad():
        assert flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q)) == attention
    # with gradients: the fused kernel's backward counts as the products of the attention written out
    q.requires_grad_(True)

    def fused() -> None:
        torch.nn.functional.scaled_dot_product_attention(q, q, q).sum().backward()

    def written_out() -> None:
        (torch.softmax(q @ q.transpose(-1, -2) / 8**0.5, dim=-1) @ q).sum().backward()

    assert flops(fused) == flops(written_out) == 3 * attention


def test_teacher_lengths_and_resume(monkeypatch, tmp_path):
    """--model-minutes teacher=1 leaves the other lengths to the other models; --resume measures only what
    the interrupted run's partial file lacks."""

    class Args:
        minutes, models, plain, piece_seconds, threads = [1, 5], ["teacher", "student"], False, 20, 2
        time_budget, model_minutes, resume, size, out = 10.0**9, {"teacher": [1]}, False, "base", tmp_path
        flops = False

    measured = []

    def child(command, **kwargs):
        measured.append((command[3], float(command[5])))  # python SCRIPT --child MODEL FOLDER MINUTES ...
        done = type("Done", (), {"returncode": 0})()
        done.stdout = '{"seconds": 1.0, "rtf": 0.1, "peak_gib": 2.0, "before_gib": 1.0}\n'
        return done

    monkeypatch.setattr(bench.subprocess, "run", child)
    monkeypatch.setattr(bench, "available_gib", lambda: 1000.0)
    results = bench.run(Args, "unused")
    assert measured == [("teacher", 1.0), ("student", 1.0), ("student", 5.0)]
    assert results[2] == {"model": "teacher", "minutes": 5, "skipped": "not run (--model-minutes)"}
    partial = tmp_path / "longform.partial.json"
    saved = bench.json.loads(partial.read_text())
    saved["results"] = saved["results"][:2]  # interrupted after two rows
    partial.write_text(bench.json.dumps(saved))
    Args.resume = True
    measured.clear()
    assert bench.run(Args, "unused") == results
    assert measured == [("student", 5.0)]
    Args.threads = 1
    with pytest.raises(SystemExit, match="remove it or drop --resume"):
        bench.run(Args, "unused")


def test_model_minutes_option():
    assert bench.model_minutes("floor=1,5") == ("floor", [1.0, 5.0])
    with pytest.raises(bench.argparse.ArgumentTypeError, match="MODEL=M,M"):
        bench.model_minutes("attention=1")
