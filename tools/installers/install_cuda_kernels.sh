#!/usr/bin/env bash
# Install the optional CUDA kernels of the mixers (mamba-ssm, causal-conv1d) into the current Python
# environment, then check that they import. Run it on the GPU machine, after torch, from anywhere:
#
#     bash tools/installers/install_cuda_kernels.sh
#
# Both packages compile against the installed torch, hence --no-build-isolation. They first look for a
# matching prebuilt wheel on their release pages; to compile from source instead (no network, or no wheel
# for this torch / CUDA), set FORCE_BUILD=1 (nvcc needed; MAX_JOBS limits parallel compile jobs).
# Environment: PYTHON (default: python3), FORCE_BUILD (0 | 1).
set -euo pipefail
PYTHON=${PYTHON:-python3}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.version.cuda else 1)" 2>/dev/null; then
    echo "ERROR: $PYTHON has no CUDA build of torch; install torch for your CUDA version first." >&2
    exit 1
fi
if [[ "${FORCE_BUILD:-0}" == 1 ]]; then
    command -v nvcc >/dev/null || { echo "ERROR: FORCE_BUILD=1 needs nvcc on PATH (CUDA toolkit)." >&2; exit 1; }
    export CAUSAL_CONV1D_FORCE_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE
fi

"$PYTHON" -m pip install --no-build-isolation "$REPO[cuda]"
"$PYTHON" - <<'PY'
from cald_brain.mixers.ops.kernels import cuda_kernels

if cuda_kernels() is None:
    raise SystemExit("ERROR: mamba_ssm / causal_conv1d were installed but do not import; see the pip log.")
print("CUDA kernels import: the mixers use them for CUDA tensors.")
PY
