"""Whole recordings in one call: the transformer teacher vs its BiMamba2 student vs the attention-free floor.

At a chosen width (`--size base`: wav2vec2-base's config, 768 x 12, group-norm feature encoder; `large`:
large-lv60's, 1024 x 24, layer-norm feature encoder), with random weights (no download), over recording
lengths in minutes, each model transcribes one random recording with `SpeechModel.forward_long` (CTC head,
32 units):

  teacher  the transformer (SDPA attention: memory linear, time quadratic in the length)
  student  its BiMamba2 conversion (d_state 128, headdim 64, as the recipes)
  floor    the same encoder with its token mixers removed (each attention replaced by the identity): the
           bound a linear-time student is measured against
  (--plain adds `<model>_plain` rows: the plain `SpeechModel.forward` of the same model, for comparison)

Each measurement runs in a fresh subprocess (so measurements never share an allocator or caches): it builds
the model, warms up on one second of audio, returns freed memory to the system (malloc_trim), resets the
high-water mark (/proc/self/clear_refs) and times one call on the whole recording. Reported: wall time (s),
real-time factor (wall time / audio duration) and the process's peak resident memory during that call
(VmHWM, GiB: weights, waveform and activations together; the JSON also has the resident memory before it).
Before each run the time and memory are estimated from the same model's previous length (memory linear, time
linear, for the teacher quadratic); a run whose estimate exceeds the available memory or `--time-budget` is
skipped and marked so in the table.

With --flops, a second, untimed call on the same recording counts the matrix-product, convolution and
attention GFLOP of each row (`count_gflop`), and the ratio columns add the FLOP ratio: the time ratio a fully
efficient implementation would reach.

Usage: python tools/bench_longform.py [--size base|large] [--minutes 1 5 10 30 60] [--threads N] [--plain]
                                      [--model-minutes teacher=1,5 floor=1,5,10] [--resume] [--flops]
                                      [--models teacher student floor] [--out results/bench/longform]
Writes longform.json, longform.md (the table) and longform.png (time and memory against length) to --out.
"""

import argparse
import ctypes
import gc
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from cald_brain.scripts import load_script

MODELS = ("teacher", "student", "floor")
STUDENT = {"d_state": 128, "headdim": 64}
NUM_UNITS = 32
# wav2vec2-base / -large-lv60 shapes: the configs the GPU stand-in maker builds (one table for both tools)
_LAYOUTS = load_script(
    Path(__file__).with_name("samples") / "wav2vec2_standin.py", "wav2vec2_standin"
).LAYOUTS
SIZES = {"base": _LAYOUTS["base"], "large": _LAYOUTS["large-lv60"]}


def write_standin(size: str, folder: Path) -> None:
    """A randomly initialised Wav2Vec2 of `size` with its feature extractor settings, saved into `folder`."""
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    torch.manual_seed(0)
    config = Wav2Vec2Config(**SIZES[size], layerdrop=0.0)
    Wav2Vec2Model(config).save_pretrained(folder)
    stable = config.do_stable_layer_norm
    Wav2Vec2FeatureExtractor(do_normalize=stable, return_attention_mask=stable).save_pretrained(folder)


def write_standin_apart(size: str, folder: Path) -> None:
    """`write_standin` in a child process, so that the benchmark's own process never starts torch's
    OpenMP threads: with OMP_WAIT_POLICY=ACTIVE they would spin for good and take a core from every
    measurement."""
    subprocess.run([sys.executable, __file__, "--standin", size, str(folder)], check=True)


def build(model: str, folder: str) -> nn.Module:
    """teacher, student or floor as a SpeechModel with a CTC head, in eval mode."""
    from cald_brain.convert.wav2vec2 import AudioMixerAttention
    from cald_brain.models import SpeechEncoder, SpeechModel

    student = model == "student"
    encoder = SpeechEncoder(folder, "bimamba2" if student else None, STUDENT if student else None)
    if model == "floor":
        for layer in encoder.model.encoder.layers:
            layer.attention = AudioMixerAttention(nn.Identity(), takes_mask=False)
    return SpeechModel(encoder, NUM_UNITS).eval()


def memory_gib(key: str) -> float:
    """VmHWM (peak) or VmRSS (now) of this process, GiB."""
    found = re.search(rf"{key}:\s+(\d+) kB", Path("/proc/self/status").read_text())
    return int(found.group(1)) / 2**20


def reset_peak_memory() -> None:
    """Give freed heap memory back to the system and restart the high-water mark from the current RSS."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")


def measure(model: str, folder: str, minutes: float, piece_seconds: float, flops: bool = False) -> dict:
    """One measurement (run in a child process): build, warm up, time one whole-recording call; with `flops`,
    a second, untimed call on the same recording counts its GFLOP (`count_gflop`)."""
    from cald_brain.models.long_audio import SAMPLE_RATE

    plain = model.endswith("_plain")
    net = build(model.removesuffix("_plain"), folder)
    torch.manual_seed(0)

    def call(wav: torch.Tensor) -> None:
        with torch.no_grad():
            if plain:
                net(wav, torch.ones(1))
            else:
                net.forward_long(wav, piece_seconds)

    call(torch.randn(1, SAMPLE_RATE))
    wav = torch.randn(1, round(minutes * 60 * SAMPLE_RATE))
    reset_peak_memory()
    before = memory_gib("VmRSS")
    start = time.perf_counter()
    call(wav)
    seconds = time.perf_counter() - start
    row = dict(seconds=seconds, rtf=seconds / (minutes * 60), peak_gib=memory_gib("VmHWM"), before_gib=before)
    if flops:
        row["gflop"] = count_gflop(lambda: call(wav))
    return row


def count_gflop(fn: Callable[[], object]) -> float:
    """GFLOP (multiply-add = 2) of the matrix products, convolutions and attention that `fn()` runs, forward
    and backward, counted by torch's FlopCounterMode, whose table is completed with the CPU ops it lacks: the
    in-place batched GEMM of the pure-PyTorch scan (`baddbmm_`) and the fused CPU attention, forward and
    backward. Element-wise work (norms, activations, dropout, the scan's decays) is not counted: the count is
    the work that a fully efficient implementation cannot avoid, so time ratios are read against FLOP
    ratios."""
    from torch.utils import flop_counter

    def baddbmm_(self_shape, a_shape, b_shape, *args, **kwargs) -> int:
        batch, rows, inner = a_shape
        return 2 * batch * rows * inner * b_shape[-1]

    def cpu_attention(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
        return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)

    def cpu_attention_backward(grad_shape, query_shape, key_shape, value_shape, *args, **kwargs) -> int:
        # the four products of the written-out backward; the kernel's recomputed scores (which torch's own
        # formula adds) are avoidable work
        return 2 * flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)

    missing = {
        torch.ops.aten.baddbmm_: baddbmm_,
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_attention,
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: cpu_attention_backward,
    }
    with flop_counter.FlopCounterMode(display=False, custom_mapping=missing) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def available_gib() -> float:
    found = re.search(r"MemAvailable:\s+(\d+) kB", Path("/proc/meminfo").read_text())
    return int(found.group(1)) / 2**20


def estimate(model: str, minutes: float, done: list[dict]) -> dict | None:
    """Time and memory of `model` at `minutes` from its last measured length (None when there is none)."""
    previous = [r for r in done if r["model"] == model and "seconds" in r]
    if not previous:
        return None
    last = previous[-1]
    ratio = minutes / last["minutes"]
    quadratic = model.startswith("teacher")
    growth = (last["peak_gib"] - last["before_gib"]) * ratio  # what the call added, scaled with the length
    return dict(
        seconds=last["seconds"] * ratio ** (2 if quadratic else 1), peak_gib=last["before_gib"] + growth
    )


def model_minutes(text: str) -> tuple[str, list[float]]:
    """ "teacher=1,5" -> ("teacher", [1.0, 5.0]) (argparse type of --model-minutes)."""
    model, sep, minutes = text.partition("=")
    if model not in MODELS or not sep:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected MODEL=M,M with MODEL one of {', '.join(MODELS)}"
        )
    return model, [float(m) for m in minutes.split(",")]


def measured_before(args: argparse.Namespace, settings: dict) -> dict[tuple[str, float], dict]:
    """With --resume: the rows in --out/longform.partial.json from an interrupted run of the same settings."""
    partial = args.out / "longform.partial.json"
    if not (args.resume and partial.is_file()):
        return {}
    saved = json.loads(partial.read_text())
    if saved["settings"] != settings:
        sys.exit(
            f"ERROR: {partial} was measured with {saved['settings']}, not {settings}: "
            "remove it or drop --resume"
        )
    return {(r["model"], r["minutes"]): r for r in saved["results"] if "seconds" in r}


def run(args: argparse.Namespace, folder: str) -> list[dict]:
    """Every model at every length; the rows so far are kept in --out/longform.partial.json as they come
    (--resume takes them up again)."""
    args.out.mkdir(parents=True, exist_ok=True)
    settings = dict(size=args.size, threads=args.threads, piece_seconds=args.piece_seconds, flops=args.flops)
    before = measured_before(args, settings)
    models = [*args.models, *(f"{m}_plain" for m in args.models if args.plain)]
    results = []
    for minutes in args.minutes:
        for model in models:
            row = dict(model=model, minutes=minutes)
            guess = estimate(model, minutes, results)
            if (model, minutes) in before:
                row = before[model, minutes]
            elif minutes not in args.model_minutes.get(model.removesuffix("_plain"), [minutes]):
                row["skipped"] = "not run (--model-minutes)"
            elif guess and guess["peak_gib"] > 0.9 * available_gib():
                row["skipped"] = f"needs ~{guess['peak_gib']:.0f} GiB, {available_gib():.0f} GiB available"
            elif guess and guess["seconds"] > args.time_budget:
                row["skipped"] = f"~{guess['seconds'] / 60:.0f} min estimated > --time-budget"
            else:
                command = [sys.executable, __file__, "--child", model, folder, str(minutes)]
                command += ["--piece-seconds", str(args.piece_seconds)] + ["--flops"] * args.flops
                if args.threads:
                    command += ["--threads", str(args.threads)]
                done = subprocess.run(command, capture_output=True, text=True)
                if done.returncode == 0:
                    row.update(json.loads(done.stdout.strip().splitlines()[-1]))
                else:
                    row["skipped"] = f"failed (exit {done.returncode})"
                    print(done.stderr[-2000:], file=sys.stderr)
            results.append(row)
            partial = dict(settings=settings, results=results)
            write_atomically(args.out / "longform.partial.json", json.dumps(partial, indent=1))
            shown = (
                row.get("skipped")
                or f"{row['seconds']:.1f} s, RTF {row['rtf']:.3f}, {row['peak_gib']:.2f} GiB"
            )
            print(f"  {minutes:g} min {model:14s} {shown}", flush=True)
    return results


def table(results: list[dict]) -> str:
    """Markdown: one row per length, s (RTF, peak GiB) per model, then student/teacher and student/floor."""
    rows = {(r["model"], r["minutes"]): r for r in results}
    models = list(dict.fromkeys(r["model"] for r in results))
    ratios = [
        (a, b) for a, b in (("student", "teacher"), ("student", "floor")) if a in models and b in models
    ]
    header = ["minutes", *(f"{m} s (RTF, GiB)" for m in models)]
    header += [f"{a}/{b} time (memory)" for a, b in ratios]
    if any("gflop" in r for r in results):
        header[1 + len(models) :] = [f"{a}/{b} time (memory), FLOPs" for a, b in ratios]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for minutes in dict.fromkeys(r["minutes"] for r in results):
        cells = [f"{minutes:g}"]
        for model in models:
            r = rows[model, minutes]
            cells.append(r.get("skipped") or f"{r['seconds']:.1f} ({r['rtf']:.3f}, {r['peak_gib']:.2f})")
        for a, b in ratios:
            ra, rb = rows[a, minutes], rows[b, minutes]
            if "seconds" not in ra or "seconds" not in rb:
                cells.append("-")
                continue
            cell = f"{ra['seconds'] / rb['seconds']:.2f}x ({ra['peak_gib'] / rb['peak_gib']:.2f}x)"
            if "gflop" in ra and "gflop" in rb:
                cell += f", FLOPs {ra['gflop'] / rb['gflop']:.2f}x"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: list[dict], title: str, path: Path) -> bool:
    """Wall time and peak memory against length; False (and a message) when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for model in dict.fromkeys(r["model"] for r in results):
        points = [
            (r["minutes"], r["seconds"], r["peak_gib"])
            for r in results
            if r["model"] == model and "seconds" in r
        ]
        if points:
            minutes, seconds, peak = zip(*points, strict=True)
            axes[0].plot(minutes, seconds, marker="o", label=model)
            axes[1].plot(minutes, peak, marker="o", label=model)
    for ax, ylabel in zip(axes, ("wall time (s)", "peak resident memory (GiB)"), strict=True):
        ax.set(xlabel="recording length (minutes)", ylabel=ylabel, title=title)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="base")
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 5, 10, 30, 60])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--plain", action="store_true", help="also time the plain forward of each model")
    parser.add_argument(
        "--piece-seconds", type=float, default=20.0, help="feature-encoder piece (forward_long)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--model-minutes",
        nargs="+",
        type=model_minutes,
        default=[],
        metavar="MODEL=M,M",
        help="the lengths at which MODEL runs (default: every --minutes), e.g. teacher=1,5: its time grows "
        "quadratically",
    )
    parser.add_argument("--resume", action="store_true", help="keep the rows of longform.partial.json")
    parser.add_argument(
        "--flops", action="store_true", help="also count each call's GFLOP (a second, untimed call)"
    )
    parser.add_argument("--time-budget", type=float, default=3600.0, help="skip runs estimated longer (s)")
    parser.add_argument("--out", type=Path, default=Path("results/bench/longform"))
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--child", nargs=3, metavar=("MODEL", "FOLDER", "MINUTES"), help=argparse.SUPPRESS)
    parser.add_argument("--standin", nargs=2, metavar=("SIZE", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.model_minutes = dict(args.model_minutes)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        model, folder, minutes = args.child
        print(json.dumps(measure(model, folder, float(minutes), args.piece_seconds, args.flops)))
        return
    if args.standin:
        write_standin(args.standin[0], Path(args.standin[1]))
        return
    with tempfile.TemporaryDirectory() as folder:
        write_standin_apart(args.size, Path(folder))
        load = os.getloadavg()
        results = run(args, folder)
    config = dict(
        size=args.size,
        threads=args.threads or torch.get_num_threads(),
        piece_seconds=args.piece_seconds,
        torch=torch.__version__,
        cpu_count=os.cpu_count(),
        load_average_start=load,
        load_average_end=os.getloadavg(),
    )
    write_atomically(args.out / "longform.json", json.dumps(dict(config=config, results=results), indent=1))
    text = table(results)
    write_atomically(args.out / "longform.md", text + "\n")
    (args.out / "longform.partial.json").unlink()
    print(text)
    threads = config["threads"]
    title = f"wav2vec2-{args.size} width, {threads} thread{'s' * (threads > 1)}, forward_long"
    plotted = not args.no_plot and plot(results, title, args.out / "longform.png")
    print(f"wrote {args.out}/longform.json, longform.md" + (", longform.png" if plotted else ""))


if __name__ == "__main__":
    main()
