#!/usr/bin/env bash
# Build causal-conv1d and mamba-ssm from their sdists for Hopper (sm_90) only, then run the CUDA tests of the
# mixers and time them on the GPU: the kernel path against our pure-PyTorch path.
#
# Run from the repository root on a GPU machine, with the sdists in .gpu/ (see tools/gpu/README.md):
#     bash tools/gpu/verify_kernels.sh
# Everything is written under $OUT (default .gpu/out): at most 8 files, one folder, as the device tool wants.
# Nothing is installed into the Python environment: both packages are built in place under $GPU_WORK and put
# on PYTHONPATH. A failed or timed-out build is reported (log tail) and the script goes on with what imports.
#
# Environment knobs: PY (python, default python3), OUT, GPU_WORK (build dir, default /tmp/cald_gpu),
# BUDGET_S (whole-run budget in seconds, default 500; later steps shrink or are skipped to fit),
# BUILD_TIMEOUT_S (default 330), MAX_JOBS (default: all cores), CUDA_ARCH (default 90),
# KEEP_COMPLEX=1 (build mamba_ssm's complex-weight selective scan too; dropped by default, unused here),
# SKIP_BUILD=1 (reuse an earlier build in GPU_WORK), SKIP_GPU=1 (build and import only: for a machine
# without GPU), PATCH_ONLY=1 (unpack and patch the sources, then stop), PREBUILT=fallback|only|never (use
# .gpu/prebuilt-cp<py>-torch2.11-cu130-sm<arch>.tar.xz when a build fails (default), instead of building,
# or never).
set -euo pipefail

T0=$(date +%s)
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO"
PY=${PY:-python3}
OUT=${OUT:-$REPO/.gpu/out}
WORK=${GPU_WORK:-/tmp/cald_gpu}
BUDGET_S=${BUDGET_S:-500}
BUILD_TIMEOUT_S=${BUILD_TIMEOUT_S:-330}
ARCH=${CUDA_ARCH:-90}
CC_VERSION=1.7.0
MS_VERSION=2.3.2.post1
CC_DIR=$WORK/causal_conv1d-$CC_VERSION
MS_DIR=$WORK/mamba_ssm-$MS_VERSION
mkdir -p "$OUT" "$WORK"
LOG=$OUT/summary.txt
: >"$LOG"

say() { echo "[$(($(date +%s) - T0))s] $*" | tee -a "$LOG"; }
left() { echo $((BUDGET_S - ($(date +%s) - T0))); }
# Seconds a step may take: its own cap, or what is left of the budget less a reserve for the steps after it.
step_limit() { local cap=$1 reserve=$2 l; l=$(($(left) - reserve)); ((l < cap)) && cap=$l; echo "$cap"; }

# ---------------------------------------------------------------------------------------------- environment
{
    echo "== machine"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || echo "no nvidia-smi"
    echo "cores: $(nproc)  python: $(command -v "$PY")"
    "$PY" - <<'EOF' 2>&1 || true
import importlib, sys
import torch
print("python", sys.version.split()[0], "| torch", torch.__version__, "cuda", torch.version.cuda,
      "cxx11abi", torch._C._GLIBCXX_USE_CXX11_ABI, "| gpu", torch.cuda.is_available() and torch.cuda.get_device_name())
for name in ("triton", "transformers", "huggingface_hub", "einops", "packaging", "setuptools", "wheel", "ninja"):
    try:
        print(f"  {name} {getattr(importlib.import_module(name), '__version__', '?')}")
    except Exception as e:
        print(f"  {name} MISSING ({type(e).__name__}: {e})")
EOF
} 2>&1 | tee -a "$LOG"

if [[ -z ${CUDA_HOME:-} ]]; then
    if [[ -x /usr/local/cuda/bin/nvcc ]]; then
        CUDA_HOME=/usr/local/cuda
    elif command -v nvcc >/dev/null; then
        CUDA_HOME=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")
    fi
fi
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export PATH=$CUDA_HOME/bin:$PATH
say "CUDA_HOME=$CUDA_HOME: $("$CUDA_HOME/bin/nvcc" --version 2>&1 | grep -o 'release [0-9.]*' || echo 'no nvcc')"
command -v ninja >/dev/null || say "WARNING: no ninja on PATH: torch would compile one file at a time"
# The bindings (.cpp) include Python.h. A Python without its -dev headers gets the carried ones, if any, for
# its version (.gpu/python-include/python3.X: any 3.X.y headers do, the ABI is fixed within 3.X).
PY_INCLUDE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
if [[ ! -f $PY_INCLUDE/Python.h ]]; then
    carried=$REPO/.gpu/python-include/$(basename "$PY_INCLUDE")
    if [[ -f $carried/Python.h ]]; then
        export CPATH=$carried${CPATH:+:$CPATH}
        say "no Python.h in $PY_INCLUDE: using the carried $carried"
    else
        say "WARNING: no Python.h in $PY_INCLUDE nor in $carried: the .cpp bindings will not compile"
    fi
fi

# ---------------------------------------------------------------------------------------------------- build
# sm_90 only: setup.py's list of -gencode flags is replaced (torch then adds none of its own, since the flags
# name an arch). -lineinfo and ptxas' verbose report are dropped (smaller, quieter, a little faster). The
# prebuilt-wheel download (no network there) is never reached: we call build_ext, not bdist_wheel.
patch_setup() {
    "$PY" - "$1" "$ARCH" <<'EOF'
import pathlib, sys
path, arch = pathlib.Path(sys.argv[1]) / "setup.py", sys.argv[2]
src = path.read_text()
anchor = "    # HACK: The compiler flag -D_GLIBCXX_USE_CXX11_ABI"
if src.count(anchor) != 1:
    sys.exit(f"{path}: anchor for the arch patch not found")
src = src.replace(anchor, f'    cc_flag = ["-gencode", "arch=compute_{arch},code=sm_{arch}"]  # patched\n\n{anchor}')
for flag in ('"--ptxas-options=-v",', '"-lineinfo",'):
    src = src.replace(flag, "")
old = "from wheel.bdist_wheel import bdist_wheel as _bdist_wheel"
src = src.replace(old, f"try:\n    {old}\nexcept ImportError:\n    from setuptools import Command as _bdist_wheel")
path.write_text(src)
EOF
}

# mamba_ssm's complex-weight selective scan (complex A) is unused by Mamba and by us; dropping it removes
# three of the nine .cu files and half the work of the other three. The .cpp dispatch is patched to raise
# for complex A, so nothing references the dropped instantiations (the import below proves the link).
drop_complex() {
    "$PY" - "$1" <<'EOF'
import pathlib, re, sys
root = pathlib.Path(sys.argv[1])
setup = root / "setup.py"
src = setup.read_text()
for kind in ("fp32", "fp16", "bf16"):
    line = f'                "csrc/selective_scan/selective_scan_bwd_{kind}_complex.cu",\n'
    if line not in src:
        sys.exit(f"{setup}: {line.strip()} not found")
    src = src.replace(line, "")
setup.write_text(src)
for kind in ("fp32", "fp16", "bf16"):
    cu = root / f"csrc/selective_scan/selective_scan_fwd_{kind}.cu"
    text, n = re.subn(r"template void selective_scan_fwd_cuda<[^,]+, complex_t>\(SSMParamsBase &params, cudaStream_t stream\);\n?",
                      "", cu.read_text())
    if n != 1:
        sys.exit(f"{cu}: complex instantiation not found")
    cu.write_text(text)
cpp = root / "csrc/selective_scan/selective_scan.cpp"
text = cpp.read_text()
old = """    } else if (WTYPE == at::ScalarType::ComplexFloat) {                              \\
        using weight_t = c10::complex<float>;                                        \\
        __VA_ARGS__();                                                               \\
    } else {"""
if text.count(old) != 1:
    sys.exit(f"{cpp}: complex dispatch not found")
cpp.write_text(text.replace(old, "    } else {"))
EOF
}

# The package's __init__ re-exports models (Mamba3, MambaLMHeadModel, ...) whose imports can fail for reasons
# unrelated to the kernels (transformers API drift, a missing selective_scan_cuda). Make each re-export
# optional and record why it failed, so the Triton ops stay importable and the reason gets reported.
guard_init() {
    "$PY" - "$1" <<'EOF'
import pathlib, sys
init = pathlib.Path(sys.argv[1]) / "mamba_ssm" / "__init__.py"
src = init.read_text()
head = src.split("\n\n")[0]  # __version__ = ...
assert head.startswith("__version__"), head
imports = [line for line in src.splitlines() if line.startswith("from mamba_ssm.")]
body = [head, "", "# patched by tools/gpu/verify_kernels.sh: each re-export is optional", "_import_errors = {}"]
for line in imports:
    body += ["try:", f"    {line}", "except Exception as _e:",
             f"    _import_errors[{line.split()[1]!r}] = f'{{type(_e).__name__}}: {{_e}}'"]
init.write_text("\n".join(body) + "\n")
EOF
}

# Split the heavy translation units so the cores share them; the code compiled is unchanged. nvcc compiles
# one .cu on one core, and a few files dominate: causal_conv1d_bwd.cu (18 explicit instantiations, ~1000
# kernels, ~10 CPU-minutes) and each selective_scan_*.cu (one instantiation fanning out to 5 launch shapes).
# causal_conv1d: one file per group of its `template void` lines (each channel-last bwd one alone).
# selective_scan: each launch shape (kNThreads, kNItems) of the CUDA branch becomes an explicit
# instantiation in a file of its own, and the original file declares them `extern template`.
split_units() {
    "$PY" - "$1" "$2" <<'PYEOF'
import pathlib, re, sys
root, package = pathlib.Path(sys.argv[1]), sys.argv[2]
setup = root / "setup.py"
setup_src = setup.read_text()


def replace_source(rel, parts):
    global setup_src
    line = f'"{rel}",'
    if setup_src.count(line) != 1:
        sys.exit(f"{setup}: source {rel} not found")
    setup_src = setup_src.replace(line, ", ".join(f'"{part}"' for part in parts) + ",")


if package == "causal_conv1d":
    for stem in ("causal_conv1d_bwd", "causal_conv1d_fwd"):
        path = root / "csrc" / f"{stem}.cu"
        lines = path.read_text().splitlines(keepends=True)
        inst = [line for line in lines if line.startswith("template void ")]
        body = "".join(line for line in lines if not line.startswith("template void "))
        if len(inst) < 2:
            sys.exit(f"{path}: expected several explicit instantiations, found {len(inst)}")
        heavy = [[line] for line in inst if "channellast_bwd" in line]
        light = [line for line in inst if "channellast_bwd" not in line]
        parts = []
        for i, group in enumerate(heavy + [light[i : i + 3] for i in range(0, len(light), 3)]):
            part = path.with_name(f"{stem}_part{i}.cu")
            part.write_text(body + "".join(group))
            parts.append(f"csrc/{part.name}")
        replace_source(f"csrc/{stem}.cu", parts)
else:
    ss = root / "csrc" / "selective_scan"
    shapes = {}
    for direction in ("fwd", "bwd"):
        cuh = (ss / f"selective_scan_{direction}_kernel.cuh").read_text()
        dispatch = cuh[cuh.index(f"void selective_scan_{direction}_cuda("):]
        cuda_branch = dispatch[dispatch.index("#ifndef USE_ROCM") : dispatch.index("#else")]
        shapes[direction] = re.findall(
            rf"selective_scan_{direction}_launch<(\d+), (\d+), input_t, weight_t>", cuda_branch)
        if len(shapes[direction]) < 2:
            sys.exit(f"selective_scan_{direction}_kernel.cuh: launch shapes not found")
    pattern = re.compile(
        r"template void selective_scan_(fwd|bwd)_cuda<([^,]+), ([^>]+)>\((\w+) &params, cudaStream_t stream\);")
    for cu in sorted(ss.glob("selective_scan_*_*.cu")):
        rel = f"csrc/selective_scan/{cu.name}"
        if f'"{rel}",' not in setup_src:
            continue  # dropped (complex)
        text = cu.read_text()
        found = pattern.findall(text)
        if not found:
            sys.exit(f"{cu}: no explicit instantiation found")
        parts, externs = [], []
        for direction, input_t, weight_t, params in found:
            for threads, items in shapes[direction]:
                decl = (f"template void selective_scan_{direction}_launch<{threads}, {items}, {input_t}, "
                        f"{weight_t}>({params} &params, cudaStream_t stream);\n")
                externs.append("extern " + decl)
                tag = "c" if "complex" in weight_t else ""
                part = cu.with_name(f"{cu.stem}_{tag}{threads}x{items}.cu")
                part.write_text(f'#include "selective_scan_{direction}_kernel.cuh"\n\n{decl}')
                parts.append(f"csrc/selective_scan/{part.name}")
        first = pattern.search(text).start()
        cu.write_text(text[:first] + "".join(externs) + "\n" + text[first:])
        replace_source(rel, parts + [rel])


# Heaviest first, since ninja starts jobs in this order: channel-last conv backward, scan backward parts, the
# .cpp bindings (g++ on torch's headers), forward parts, then the light rest.
def weight(source):
    match = re.search(r"causal_conv1d_bwd_part(\d+)", source)
    if match:
        return 0 if int(match.group(1)) < 9 else 3
    if re.search(r"_bwd_.*_\d+x\d+\.cu", source):
        return 1
    if source.endswith(".cpp"):
        return 2
    return 3 if re.search(r"(_part\d+|_\d+x\d+)\.cu", source) else 4


block = re.search(r"sources=\[(.*?)\]", setup_src, re.S)
sources = re.findall(r'"([^"]+)"', block.group(1))
ordered = "".join(f'\n                "{s}",' for s in sorted(sources, key=weight))
setup_src = setup_src[: block.start(1)] + ordered + "\n            " + setup_src[block.end(1) :]
setup.write_text(setup_src)
PYEOF
}

export PYTHONPATH="$REPO:$CC_DIR:$MS_DIR${PYTHONPATH:+:$PYTHONPATH}"
# Autotuning results go to disk too, so each later process reuses them.
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-$WORK/triton_cache} TRITON_CACHE_AUTOTUNING=1
WARMUP_PID='' WARMUP2_PID=''

BUILD_OK=1
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    for f in ".gpu/causal_conv1d-$CC_VERSION.tar.gz" ".gpu/mamba_ssm-$MS_VERSION.tar.gz"; do
        [[ -f $f ]] || { say "missing $f: carry .gpu (tools/gpu/README.md)"; exit 2; }
    done
    say "unpacking and patching the sdists into $WORK"
    rm -rf "$CC_DIR" "$MS_DIR"
    tar -xzf ".gpu/causal_conv1d-$CC_VERSION.tar.gz" -C "$WORK"
    tar -xzf ".gpu/mamba_ssm-$MS_VERSION.tar.gz" -C "$WORK"
    patch_setup "$CC_DIR"
    patch_setup "$MS_DIR"
    [[ ${KEEP_COMPLEX:-0} == 1 ]] || drop_complex "$MS_DIR"
    split_units "$CC_DIR" causal_conv1d
    split_units "$MS_DIR" mamba_ssm
    guard_init "$MS_DIR"
    if [[ ${PATCH_ONLY:-0} == 1 ]]; then say "PATCH_ONLY=1: sources patched in $WORK"; exit 0; fi

    # The Triton ops need no build: compile and autotune them on the idle GPU while the CPUs build (niced, so
    # the two warm-up processes keep a core each): what the tests need first, the bfloat16 timings beside it.
    if [[ ${SKIP_GPU:-0} != 1 ]] && nvidia-smi -L >/dev/null 2>&1; then
        say "Triton warm-up in the background (log: warmup.txt)"
        wlimit=$(step_limit $((BUILD_TIMEOUT_S + 60)) 150)
        timeout -k 5 "$wlimit" "$PY" tools/gpu/kernel_checks.py warmup --items 0 1 2 >>"$OUT/warmup.txt" 2>&1 &
        WARMUP_PID=$!
        timeout -k 5 "$wlimit" "$PY" tools/gpu/kernel_checks.py warmup --items 4 3 >>"$OUT/warmup.txt" 2>&1 &
        WARMUP2_PID=$!
    fi

    export MAX_JOBS=${MAX_JOBS:-$(nproc)} TORCH_CUDA_ARCH_LIST="${ARCH:0:-1}.${ARCH: -1}"
    export CAUSAL_CONV1D_FORCE_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE
    export CFLAGS="${CFLAGS:-} -g0"  # the .cpp bindings: Python's -g makes g++ ~40 % slower on torch's headers
    limit=$(step_limit "$BUILD_TIMEOUT_S" 120)
    ((limit >= 60)) || limit=60  # (timeout 0 would mean no limit)
    build() {  # name dir: build in place, log to $OUT/build_<name>.log, time it
        local name=$1 dir=$2 start rc=0
        start=$(date +%s)
        (cd "$dir" && timeout -k 10 "$limit" nice -n 10 "$PY" setup.py build_ext --inplace) \
            >"$OUT/build_$name.log" 2>&1 || rc=$?
        echo "$rc $(($(date +%s) - start))" >"$WORK/$name.status"
    }
    # A prebuilt pair (.gpu/prebuilt-*.tar.xz, from this same script on another machine) stands in for a build
    # that fails, or replaces the build with PREBUILT=only; PREBUILT=never ignores it.
    prebuilt() {  # name: unpack its .so, if there is one for this Python
        local tarball=.gpu/prebuilt-cp${PY_TAG}-torch2.11-cu130-sm$ARCH.tar.xz
        [[ ${PREBUILT:-fallback} != never && -f $tarball ]] || return 1
        tar -xJf "$tarball" -C "$WORK" --wildcards "$1-*/*.so" && say "$1: using the prebuilt .so from $tarball"
    }
    PY_TAG=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')
    if [[ ${PREBUILT:-fallback} == only ]]; then
        for name in causal_conv1d mamba_ssm; do prebuilt "$name" || BUILD_OK=0; done
    else
        say "building both in parallel (MAX_JOBS=$MAX_JOBS each, sm_$ARCH, limit ${limit}s)"
        build causal_conv1d "$CC_DIR" &
        CC_PID=$!
        build mamba_ssm "$MS_DIR" &
        wait "$CC_PID" $!
        for name in causal_conv1d mamba_ssm; do
            read -r rc secs <"$WORK/$name.status"
            if [[ $rc == 0 ]]; then
                say "build $name: ok in ${secs}s: $(cd "$WORK" && ls -s --block-size=M "$name"-*/*.so | tr '\n' ' ')"
            else
                BUILD_OK=0
                [[ $rc == 124 || $rc == 137 ]] && why="TIMED OUT" || why="FAILED (rc $rc)"
                say "build $name: $why after ${secs}s; errors and log tail:"
                { grep -m 20 -E "error|Error|FAILED" "$OUT/build_$name.log" | cut -c1-400 || true; echo "..."
                  grep -v -E '^\[[0-9]+/[0-9]+\] ' "$OUT/build_$name.log" | tail -n 15 | cut -c1-400
                } | tee -a "$LOG"
                prebuilt "$name" || true
            fi
        done
        # Per-file compile times from ninja's log (start/end in ms), slowest first.
        for dir in "$CC_DIR" "$MS_DIR"; do
            find "$dir/build" -name .ninja_log -exec awk 'NR > 1 {printf "  %6.1fs  %s\n", ($2 - $1) / 1000, $4}' {} \; \
                | sort -rn | head -n 5 | sed "s|$WORK/||" | tee -a "$LOG" || true
        done
    fi
fi

# The tests need the first two warm-up items (float32, head size 64, state 128); the rest (d_model 768,
# bfloat16) only the timing report, so the warm-up may go on beside the tests.
if [[ -n $WARMUP_PID ]]; then
    say "waiting for the warm-up of what the tests run"
    while kill -0 "$WARMUP_PID" 2>/dev/null && ! grep -q "^warm-up BiMamba2(256)" "$OUT/warmup.txt"; do
        sleep 2
    done
    { grep "^warm-up\|Error" "$OUT/warmup.txt" || true; } | tail -n 20 | tee -a "$LOG"
fi

# -------------------------------------------------------------------------------------------- import check
say "import check"
"$PY" tools/gpu/kernel_checks.py imports 2>&1 | tee -a "$LOG" || say "import check crashed"
if [[ ${SKIP_GPU:-0} == 1 ]]; then
    say "SKIP_GPU=1: done (build and import only)"
    exit 0
fi

# -------------------------------------------------------------------------------------------------- tests
limit=$(step_limit 240 60)
((limit >= 30)) || limit=30
say "pytest -m cuda (limit ${limit}s; the first calls autotune the Triton kernels)"
rc=0  # pytest's exit status, also the script's (with the build's)
timeout -k 5 "$limit" "$PY" -m pytest -q -m cuda -rs -p no:cacheprovider --durations=5 \
    tests/test_mamba2.py tests/test_mamba.py tests/test_bimamba2.py 2>&1 | tee "$OUT/pytest.txt" || rc=$?
tail -n 3 "$OUT/pytest.txt" >>"$LOG"
say "pytest exit $rc"

# ------------------------------------------------------------------------ accuracy numbers and timings
for pid in $WARMUP_PID $WARMUP2_PID; do
    if kill -0 "$pid" 2>/dev/null; then
        say "waiting for the rest of the warm-up"
        wait "$pid" || say "warm-up exit $?"
    fi
done
[[ -z $WARMUP_PID ]] || { grep "^warm-up" "$OUT/warmup.txt" || true; } | tail -n 5 | tee -a "$LOG"
limit=$(step_limit 200 5)
if ((limit > 20)); then
    say "accuracy and timing (limit ${limit}s)"
    timeout -k 5 "$limit" "$PY" tools/gpu/kernel_checks.py report --deadline $(($(date +%s) + limit - 10)) 2>&1 \
        | tee "$OUT/report.txt" || say "report exit $?"
else
    say "no time left for the timing report"
fi
say "done: build $([[ $BUILD_OK == 1 ]] && echo ok || echo FAILED), pytest exit $rc"
echo; echo "=============================== summary ($OUT/summary.txt)"; cat "$LOG"
[[ $BUILD_OK == 1 && $rc == 0 ]]
