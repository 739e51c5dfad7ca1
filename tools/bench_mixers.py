"""Benchmark of the Mamba2 mixers against attention and transformers' Mamba2, on CPU or on a CUDA GPU.

Times the forward pass (no_grad) and forward + backward of, at width d_model, batch `--batch`, float32:
  mamba2     cald_brain Mamba2(d_model, expand=1)
  bimamba2   cald_brain BiMamba2(d_model) (two Mamba2, as CALD puts in place of attention)
  attention  one self-attention layer: q/k/v/o projections + torch SDPA, 12 heads
  hf_mamba2  transformers' Mamba2Mixer (its pure-PyTorch path) loaded with the mamba2 state dict

Method: implementations are interleaved within each round (so machine load hits all alike) and the median
wall time over rounds is reported, after one untimed warm-up call each. The machine's load average is saved
with the results: on a shared CPU, timings with 2 threads degrade much more under load than with 1
(`--threads 1`). Peak extra memory comes from one more, untimed call: freed heap memory is first returned
to the system (malloc_trim), the high-water mark reset (/proc/self/clear_refs), and VmHWM - VmRSS read from
/proc/self/status afterwards: the resident memory the call adds on top of weights and inputs. GFLOP/s uses
nominal FLOPs (multiply-add = 2): for the Mamba2 layers the projections, the convolution and the chunked
scan with 64-step chunks (the same count for ours and transformers', so their GFLOP/s compare like their
times); for attention the four projections and the two L x L products. Forward + backward counts 3x.

On CUDA (`--device cuda`) every mixer takes the mamba_ssm / causal_conv1d kernels when they import
(`pip install --no-build-isolation ".[cuda]"`), times are taken between device synchronisations, and peak
extra memory is torch's peak allocation during the call.

Usage: python tools/bench_mixers.py [--device cpu|cuda] [--lengths 500 1000 2000 4000 8000] [--repeats 5]
                                    [--impls mamba2 bimamba2 attention hf_mamba2] [--modes fwd fwdbwd]
Writes results/bench/bench_mixers.json and results/bench/bench_mixers.png.
"""

import argparse
import ctypes
import gc
import json
import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cald_brain.mixers import BiMamba2, Mamba2

IMPLS = ("mamba2", "bimamba2", "attention", "hf_mamba2")
MODES = ("fwd", "fwdbwd")
SCAN_CHUNK = 64


class Attention(nn.Module):
    """A standard self-attention layer (as in wav2vec2 / BERT): q, k, v, o projections around SDPA."""

    def __init__(self, d_model: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d_model, d_model) for _ in range(4))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch, length, d_model = hidden_states.shape

        def heads(proj: nn.Linear) -> torch.Tensor:
            return proj(hidden_states).view(batch, length, self.num_heads, -1).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(self.q_proj), heads(self.k_proj), heads(self.v_proj))
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, d_model))


def hf_mamba2_like(model: Mamba2) -> nn.Module:
    """transformers' Mamba2Mixer configured like `model` and loaded with its state dict."""
    from transformers import Mamba2Config
    from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer
    from transformers.utils import logging

    logging.set_verbosity_error()  # it warns on every call that mamba_ssm's kernels are missing
    config = Mamba2Config(
        hidden_size=model.d_model,
        num_heads=model.nheads,
        head_dim=model.headdim,
        n_groups=model.ngroups,
        state_size=model.d_state,
        expand=model.expand,
        conv_kernel=model.d_conv,
        chunk_size=model.chunk_size,
        layer_norm_epsilon=1e-5,
        use_bias=False,
        use_conv_bias=True,
        num_hidden_layers=1,
    )
    mixer = Mamba2Mixer(config, layer_idx=0)
    mixer.load_state_dict(model.state_dict(), strict=True)
    return mixer


def mamba2_flops(model: Mamba2, length: int) -> float:
    """Nominal forward FLOPs of one Mamba2 layer for one sequence."""
    H, P, G, N = model.nheads, model.headdim, model.ngroups, model.d_state
    proj = 2 * model.d_model * (model.in_proj.out_features + model.out_proj.in_features)
    conv = 2 * model.conv_dim * model.d_conv
    scan = 2 * SCAN_CHUNK * (G * N + H * P) + 4 * H * P * N  # C·Bᵀ, scores @ x; states in and out
    return float(length * (proj + conv + scan))


def attention_flops(d_model: int, length: int) -> float:
    return float(length * 8 * d_model**2 + 4 * length**2 * d_model)


def cpu_model() -> str:
    found = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
    return found.group(1) if found else platform.machine()


def memory_kib() -> tuple[int, int]:
    """(VmHWM, VmRSS) of this process in KiB."""
    status = Path("/proc/self/status").read_text()
    return tuple(int(re.search(rf"{key}:\s+(\d+)", status).group(1)) for key in ("VmHWM", "VmRSS"))


def wall_ms(call: Callable[[], None], device: torch.device) -> float:
    """Wall time of one call; on CUDA, from an idle device until the call's kernels have finished."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    call()
    if cuda:
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) * 1e3


def peak_extra_mib(call: Callable[[], None], device: torch.device) -> float:
    """Memory one call adds at its peak: on CUDA torch's peak allocation above what was allocated before;
    on CPU the resident memory, with no freed memory left cached by malloc beforehand."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        call()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current VmRSS
    _, rss_before = memory_kib()
    call()
    peak, _ = memory_kib()
    return (peak - rss_before) / 1024


def make_call(module: nn.Module, x: torch.Tensor, mode: str) -> Callable[[], None]:
    if mode == "fwd":

        def call() -> None:
            with torch.no_grad():
                module(x)
    else:
        x = x.detach().requires_grad_()

        def call() -> None:
            module.zero_grad(set_to_none=True)
            x.grad = None
            module(x).square().mean().backward()

    return call


def run(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    d = args.d_model
    mamba2 = Mamba2(d, expand=1)
    bimamba2 = BiMamba2(d)
    if args.cpu_chunk:
        for module in (mamba2, bimamba2.mamba_fwd, bimamba2.mamba_bwd):
            module.cpu_chunk_size = args.cpu_chunk
    modules = {
        "mamba2": mamba2,
        "bimamba2": bimamba2,
        "attention": Attention(d, num_heads=args.heads),
        "hf_mamba2": hf_mamba2_like(mamba2) if "hf_mamba2" in args.impls else None,
    }
    flops = {
        "mamba2": lambda n: mamba2_flops(mamba2, n),
        "bimamba2": lambda n: 2 * mamba2_flops(mamba2, n),
        "attention": lambda n: attention_flops(d, n),
        "hf_mamba2": lambda n: mamba2_flops(mamba2, n),
    }
    for module in modules.values():
        if module is not None:
            module.to(device)
    results = []
    load_start = os.getloadavg()
    if device.type == "cpu" and torch.get_num_threads() > 1 and load_start[0] > 0.5:
        print(
            f"warning: load average {load_start[0]:.1f}: with {torch.get_num_threads()} threads on shared "
            "cores every parallel op may wait for a descheduled thread; consider --threads 1"
        )
    for length in args.lengths:
        x = torch.randn(args.batch, length, d, device=device)
        keys = [(impl, mode) for impl in args.impls for mode in args.modes]
        calls = {(impl, mode): make_call(modules[impl].eval(), x, mode) for impl, mode in keys}
        for (impl, mode), call in list(calls.items()):
            try:
                call()  # warm-up
            except torch.OutOfMemoryError:  # reported as OOM in the table; the other rows still run
                del calls[impl, mode]
                torch.cuda.empty_cache()
                results.append(dict(impl=impl, mode=mode, length=length, oom=True))
                print(f"  L={length:5d} {mode:6s} {impl:10s} out of memory", flush=True)
        samples = {key: [] for key in calls}
        for _ in range(args.repeats):
            for key, call in calls.items():
                samples[key].append(wall_ms(call, device))
        for (impl, mode), times in samples.items():
            ms = statistics.median(times)
            nominal = flops[impl](length) * args.batch * (1 if mode == "fwd" else 3)
            peak = peak_extra_mib(calls[impl, mode], device)
            results.append(
                dict(
                    impl=impl,
                    mode=mode,
                    length=length,
                    ms=ms,
                    ms_min=min(times),
                    ms_all=times,
                    peak_mib=peak,
                    gflops=nominal / ms / 1e6,
                )
            )
            print(f"  L={length:5d} {mode:6s} {impl:10s} {ms:9.1f} ms {peak:7.0f} MiB", flush=True)
    return dict(
        config=dict(
            d_model=d,
            batch=args.batch,
            dtype="float32",
            heads=args.heads,
            repeats=args.repeats,
            threads=torch.get_num_threads(),
            torch=torch.__version__,
            device=str(device),
            gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            cpu=cpu_model(),
            cpu_count=os.cpu_count(),
            load_average_start=load_start,
            load_average_end=os.getloadavg(),
            cpu_chunk=mamba2.cpu_chunk_size,
            flops_scan_chunk=SCAN_CHUNK,
        ),
        results=results,
    )


def table(report: dict) -> str:
    """Markdown table: one row per (mode, length), ms (MiB, GFLOP/s) per impl and the key ratios."""
    rows = {(r["mode"], r["length"], r["impl"]): r for r in report["results"]}
    impls = [i for i in IMPLS if any(k[2] == i for k in rows)]
    header = ["mode", "L"] + [f"{i} ms (MiB, GFLOP/s)" for i in impls]
    ratios = [("hf_mamba2", "mamba2", "HF / Mamba2"), ("attention", "bimamba2", "attention / BiMamba2")]
    ratios = [r for r in ratios if r[0] in impls and r[1] in impls]
    header += [name for _, _, name in ratios]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for mode, length in sorted({(k[0], k[1]) for k in rows}, key=lambda k: (MODES.index(k[0]), k[1])):
        cells = [mode, str(length)]
        for impl in impls:
            r = rows.get((mode, length, impl))
            if r is None:
                cells.append("-")
            elif r.get("oom"):
                cells.append("out of memory")
            else:
                cells.append(f"{r['ms']:.0f} ({r['peak_mib']:.0f}, {r['gflops']:.0f})")
        for num, den, _ in ratios:
            a, b = rows.get((mode, length, num)), rows.get((mode, length, den))
            timed = a and b and not a.get("oom") and not b.get("oom")
            cells.append(f"{a['ms'] / b['ms']:.2f}x" if timed else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = sorted({r["mode"] for r in report["results"]}, key=MODES.index)
    fig, axes = plt.subplots(1, len(modes), figsize=(6 * len(modes), 4.5), squeeze=False)
    for ax, mode in zip(axes[0], modes, strict=True):
        for impl in IMPLS:
            points = sorted(
                (r["length"], r["ms"])
                for r in report["results"]
                if r["impl"] == impl and r["mode"] == mode and not r.get("oom")
            )
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=impl)
        config = report["config"]
        what = "forward" if mode == "fwd" else "forward + backward"
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="sequence length (frames)",
            ylabel="ms per call (median)",
            title=f"{what}, batch {config['batch']}, d={config['d_model']}, {config.get('device', 'cpu')}",
        )
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--lengths", type=int, nargs="+", default=[500, 1000, 2000, 4000, 8000])
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (median reported)")
    parser.add_argument("--impls", nargs="+", choices=IMPLS, default=list(IMPLS))
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--d-model", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12, help="attention heads")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--cpu-chunk", type=int, default=None, help="chunk of our CPU scan (default: ours)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("results/bench"))
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args()
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: no CUDA device is available here")
    if args.threads:
        torch.set_num_threads(args.threads)
    report = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_mixers.json").write_text(json.dumps(report, indent=1))
    print(table(report))
    if not args.no_plot:
        plot(report, args.out / "bench_mixers.png")
    print(f"wrote {args.out}/bench_mixers.json" + ("" if args.no_plot else " and bench_mixers.png"))


if __name__ == "__main__":
    main()
