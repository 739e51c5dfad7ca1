"""GPU checks of the mixers' kernel path, run by tools/gpu/verify_kernels.sh.

    python tools/gpu/kernel_checks.py imports            which kernel pieces import, and why not
    python tools/gpu/kernel_checks.py warmup [--items I ...]   compile and autotune the Triton kernels
    python tools/gpu/kernel_checks.py report [--deadline UNIX_TIME] [--no-bf16]
        kernel path vs our pure-PyTorch path on the same CUDA module: errors (fp32), then timings

The report measures what the tests only bound: for outputs and gradients, the relative error
||kernel - torch|| / ||torch|| and the largest absolute difference. Then the median time of forward (no grad)
and forward + backward for each path. When mamba_ssm's CUDA extension is missing but its Triton ops import,
Mamba2 and BiMamba2 are still checked with those ops ("triton-only"; causal_conv1d, or a torch stand-in).
"""

import argparse
import importlib
import sys
import time
import traceback
from types import SimpleNamespace

import torch
import torch.nn.functional as F

import cald_brain.mixers.mamba as mamba_module
import cald_brain.mixers.mamba2 as mamba2_module
from cald_brain.mixers import BiMamba2, Mamba, Mamba2
from cald_brain.mixers.ops.kernels import cuda_kernels

KERNEL_IMPORTS = [
    ("causal_conv1d", "causal_conv1d_fn"),
    ("mamba_ssm.ops.selective_scan_interface", "selective_scan_fn"),
    ("mamba_ssm.ops.selective_scan_interface", "mamba_inner_fn"),
    ("mamba_ssm.ops.triton.layernorm_gated", "rmsnorm_fn"),
    ("mamba_ssm.ops.triton.ssd_combined", "mamba_chunk_scan_combined"),
]


def try_import(module: str, name: str | None = None):
    """(object, None) or (None, one-line reason)."""
    try:
        obj = importlib.import_module(module)
        return (getattr(obj, name) if name else obj), None
    except Exception as e:  # noqa: BLE001 - any failure is a finding to print
        return None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def check_imports() -> None:
    for ext in ("causal_conv1d_cuda", "selective_scan_cuda"):
        module, why = try_import(ext)
        print(f"  {ext:45s} {'ok ' + module.__file__ if module else 'FAILED ' + why}")
    mamba_ssm, why = try_import("mamba_ssm")
    if mamba_ssm is None:
        print(f"  import mamba_ssm FAILED {why}")
    else:
        for module, error in getattr(mamba_ssm, "_import_errors", {}).items():
            print(f"  mamba_ssm/__init__: {module} FAILED {error}")
    for module, name in KERNEL_IMPORTS:
        obj, why = try_import(module, name)
        print(f"  {module}.{name:28s} {'ok' if obj else 'FAILED ' + why}")
    found = "ALL KERNELS" if cuda_kernels() else "None (pure-PyTorch path only)"
    print(f"  cald_brain cuda_kernels(): {found}")
    if not torch.cuda.is_available():
        return
    # Smoke calls of the CUDA extensions (no Triton autotuning here): catch "no kernel image" at once.
    x = torch.randn(2, 64, 50, device="cuda")
    conv, _ = try_import("causal_conv1d", "causal_conv1d_fn")
    scan, _ = try_import("mamba_ssm.ops.selective_scan_interface", "selective_scan_fn")
    for label, fn in [
        ("causal_conv1d_fn", lambda: conv(x, torch.randn(64, 4, device="cuda"), None, activation="silu")),
        (
            "selective_scan_fn",
            lambda: scan(
                x,
                torch.rand_like(x),
                -torch.rand(64, 16, device="cuda"),
                torch.randn(2, 16, 50, device="cuda"),
                torch.randn(2, 16, 50, device="cuda"),
                delta_softplus=True,
            ),
        ),
    ]:
        try:
            out = fn()
            torch.cuda.synchronize()
            print(f"  smoke {label}: ok, finite={bool(torch.isfinite(out).all())}")
        except Exception as e:  # noqa: BLE001
            print(f"  smoke {label}: FAILED {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")


def causal_conv1d_torch(x, weight, bias=None, activation=None, **_):
    """Stand-in for causal_conv1d_fn (x (batch, channels, length)) when causal_conv1d is not built. Its output
    has the kernel's layout (channels-last when x is), so the Triton kernels after it see the same strides."""
    out = F.conv1d(x, weight.unsqueeze(1), bias, padding=weight.shape[-1] - 1, groups=x.shape[1])
    out = out[..., : x.shape[-1]]
    out = F.silu(out) if activation in ("silu", "swish") else out
    return out.transpose(1, 2).contiguous().transpose(1, 2) if x.stride(1) == 1 else out


def mamba2_kernels(triton_only: bool = False) -> tuple[SimpleNamespace | None, str]:
    """The kernels Mamba2 would use, and a label; the Triton ops alone when the full set does not import
    (or when asked: the warm-up runs while causal_conv1d is still being built)."""
    if cuda_kernels() is not None and not triton_only:
        return cuda_kernels(), "kernels"
    scan, _ = try_import("mamba_ssm.ops.triton.ssd_combined", "mamba_chunk_scan_combined")
    norm, _ = try_import("mamba_ssm.ops.triton.layernorm_gated", "rmsnorm_fn")
    if scan is None or norm is None:
        return None, "none"
    conv = None if triton_only else try_import("causal_conv1d", "causal_conv1d_fn")[0]
    label = "triton-only" + ("" if conv else " (torch conv)")
    return SimpleNamespace(
        causal_conv1d_fn=conv or causal_conv1d_torch, mamba_chunk_scan_combined=scan, rmsnorm_fn=norm
    ), label


def set_path(kernels: SimpleNamespace | None) -> None:
    """Route Mamba2 / BiMamba2 (and Mamba) through `kernels`, or the pure-PyTorch path when None."""
    mamba2_module.use_cuda_kernels = lambda x: kernels if (kernels is not None and x.is_cuda) else None
    full = kernels if kernels is not None and hasattr(kernels, "mamba_inner_fn") else None
    mamba_module.use_cuda_kernels = lambda x: full if x.is_cuda else None


def run_once(model, u, lengths, backward: bool):
    kwargs = {} if lengths is None else {"lengths": lengths}
    if not backward:
        with torch.no_grad():
            return model(u, **kwargs), None
    model.zero_grad(set_to_none=True)
    u = u.detach().requires_grad_()
    out = model(u, **kwargs)
    out.backward(torch.ones_like(out) * 0.01 + out.detach() * 0.1)
    return out.detach(), [u.grad] + [p.grad for p in model.parameters()]


def errors(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item(), (a - b).abs().max().item()


def accuracy(name, model, u, lengths, kernels) -> None:
    set_path(kernels)
    out_k, grads_k = run_once(model, u, lengths, backward=True)
    set_path(None)
    out_t, grads_t = run_once(model, u, lengths, backward=True)
    rel, mx = errors(out_k, out_t)
    names = ["input"] + [n for n, _ in model.named_parameters()]
    worst = max(
        ((errors(gk, gt)[0], n) for n, gk, gt in zip(names, grads_k, grads_t, strict=True) if gk is not None),
        default=(float("nan"), "-"),
    )
    rel_in, _ = errors(grads_k[0], grads_t[0])
    print(
        f"  {name:34s} out rel {rel:8.1e} max {mx:8.1e} | grad input rel {rel_in:8.1e} | "
        f"worst param grad rel {worst[0]:8.1e} ({worst[1]})"
    )


def timed(fn, repeats: int) -> float:
    """Median milliseconds of fn() over `repeats` runs, after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def time_row(model, shape, dtype, kernels) -> str:
    """Forward and forward + backward times of both paths, and the kernel path's speed-up."""
    u = torch.randn(*shape, device="cuda", dtype=dtype)
    ms = {}
    for path, k in (("torch", None), ("kern", kernels)):
        set_path(k)
        ms[path, "fwd"] = timed(lambda: run_once(model, u, None, False), 5)
        ms[path, "fb"] = timed(lambda: run_once(model, u, None, True), 5)
    return " | ".join(
        f"{ms['torch', mode]:9.2f} {ms['kern', mode]:9.2f} {ms['torch', mode] / ms['kern', mode]:5.1f}"
        for mode in ("fwd", "fb")
    )


def timings(kernels, dtype, deadline: float) -> None:
    print(f"\n== timings, {str(dtype)[6:]}, ms (median of 5; CUDA events), batch 8, d_model 768")
    print(
        f"  {'model':26s} {'L':>5s} | {'fwd torch':>9s} {'fwd kern':>9s} {'x':>5s} | "
        f"{'f+b torch':>9s} {'f+b kern':>9s} {'x':>5s}"
    )
    rows = [
        ("BiMamba2(768)", lambda: BiMamba2(768)),
        ("Mamba2(768, expand=1)", lambda: Mamba2(768, expand=1)),
    ]
    if cuda_kernels() is not None:
        rows.append(("Mamba(768) (v1)", lambda: Mamba(768)))  # its torch path loops over steps: L=1000 only
    for length in (1000, 4000):
        for name, make in rows:
            if name.startswith("Mamba(") and length > 1000:
                continue
            head = f"  {name:26s} {length:5d} |"
            if time.time() > deadline - 15:
                print(f"{head} skipped (deadline)")
                continue
            try:
                print(head, time_row(make().to("cuda", dtype), (8, length, 768), dtype, kernels), flush=True)
            except Exception as e:  # noqa: BLE001
                print(f"{head} FAILED {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            torch.cuda.empty_cache()


def check_odd_channels(kernels, deadline: float) -> None:
    """Conv channels 36 + 2 * 5 = 46, not a multiple of 8: causal_conv1d needs the channels-first layout."""
    if time.time() > deadline - 30:
        return
    torch.manual_seed(0)
    model = Mamba2(36, d_state=5, headdim=12, expand=1).cuda()
    u = torch.randn(2, 300, 36, device="cuda")
    head = "\n== conv channels 46 (not a multiple of 8), forward:"
    try:
        set_path(kernels)
        out_k = run_once(model, u, None, False)[0]
        set_path(None)
        print(f"{head} rel error {errors(out_k, run_once(model, u, None, False)[0])[0]:.1e}")
    except Exception as e:  # noqa: BLE001
        print(f"{head} FAILED {type(e).__name__}: {e}")


def report(deadline: float, bf16: bool) -> None:
    kernels, label = mamba2_kernels()
    print(f"Mamba2 / BiMamba2 kernel path: {label}; Mamba: {'kernels' if cuda_kernels() else 'none'}")
    if kernels is None:
        print("nothing to compare: no kernels import")
        return
    dev = "cuda"
    torch.manual_seed(0)

    print("\n== accuracy, float32: kernel path vs pure-PyTorch path, same module and inputs")
    lengths = torch.tensor([700, 513, 64, 1], device=dev)
    cases = [
        ("Mamba2(256, expand=1, ngroups=2)", Mamba2(256, expand=1, ngroups=2), (2, 700, 256), None),
        ("BiMamba2(256), lengths 700/513/64/1", BiMamba2(256), (4, 700, 256), lengths),
    ]
    if cuda_kernels() is not None:
        cases += [
            ("Mamba(64) fast path", Mamba(64), (2, 300, 64), None),
            ("Mamba(64) unfused", Mamba(64, use_fast_path=False), (2, 300, 64), None),
        ]
    for name, model, shape, lens in cases:
        if time.time() > deadline - 20:
            print(f"  {name}: skipped (deadline)")
            continue
        try:
            accuracy(name, model.to(dev), torch.randn(*shape, device=dev), lens, kernels)
        except Exception:  # noqa: BLE001
            print(f"  {name}: FAILED\n{traceback.format_exc(limit=4)}")

    timings(kernels, torch.float32, deadline)
    check_odd_channels(kernels, deadline)
    if bf16:
        timings(kernels, torch.bfloat16, deadline)
    set_path(None)


# What the tests and the report run through Triton, in the order they need it. Autotuning (~140 kernel
# configurations per head size, state size and dtype) is what costs; its results go to Triton's disk cache
# (TRITON_CACHE_AUTOTUNING=1), so later processes only load them.
WARMUP = [
    (
        "Mamba2(256, expand=1, ngroups=2) float32",
        lambda: Mamba2(256, expand=1, ngroups=2),
        torch.float32,
        True,
    ),
    ("BiMamba2(256) float32", lambda: BiMamba2(256), torch.float32, True),
    ("BiMamba2(768) float32", lambda: BiMamba2(768), torch.float32, True),
    (
        "Mamba2(36, d_state=5, headdim=12) forward",
        lambda: Mamba2(36, d_state=5, headdim=12, expand=1),
        torch.float32,
        False,
    ),
    ("BiMamba2(768) bfloat16", lambda: BiMamba2(768), torch.bfloat16, True),
]


def warmup(items: list[int]) -> None:
    """Compile and autotune the Triton kernels ahead of the tests (run while the CUDA extensions build)."""
    kernels, label = mamba2_kernels(triton_only=True)
    if kernels is None:
        print("warm-up: the Triton ops do not import", flush=True)
        return
    set_path(kernels)
    for name, make, dtype, backward in (WARMUP[i] for i in items):
        start = time.time()
        try:
            model = make().cuda().to(dtype)
            run_once(model, torch.randn(2, 300, model.d_model, device="cuda", dtype=dtype), None, backward)
            torch.cuda.synchronize()
            print(f"warm-up {name} ({label}): {time.time() - start:.0f}s", flush=True)
        except Exception:  # noqa: BLE001
            print(f"warm-up {name} ({label}): FAILED\n{traceback.format_exc(limit=6)}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=["imports", "warmup", "report"])
    parser.add_argument("--deadline", type=float, default=time.time() + 300, help="unix time to stop by")
    parser.add_argument("--no-bf16", action="store_true", help="time float32 only")
    parser.add_argument(
        "--items",
        type=int,
        nargs="+",
        default=list(range(len(WARMUP))),
        help="warm-up: which items of WARMUP, in this order (default all)",
    )
    args = parser.parse_args()
    if args.what == "imports":
        check_imports()
    elif not torch.cuda.is_available():
        sys.exit(f"{args.what}: no CUDA device")
    elif args.what == "warmup":
        warmup(args.items)
    else:
        report(args.deadline, bf16=not args.no_bf16)


if __name__ == "__main__":
    main()
