#!/usr/bin/env bash
# GPU checks of cald_brain, for a CUDA machine (run from the repository root; logs go to $OUT, default
# results/gpu_check):
#   1. the `cuda`-marked tests: mamba_ssm / causal_conv1d kernels against the pure-PyTorch path (Mamba,
#      Mamba2, BiMamba2: outputs and gradients on padded batches) and the mixed-precision kill-and-resume test;
#   2. the TED-LIUM trajectory recipe with its full-size defaults (headdim 64, d_state 128, bf16, duration
#      batches) on a randomly initialised wav2vec2-base stand-in (tools/samples/wav2vec2_standin.py), sample
#      data (only the micro-batch size and accumulation lowered, so that the 20 sample utterances make steps);
#   3. tools/bench_mixers.py on the GPU (the mixers against attention and transformers' Mamba2);
#   4. tools/bench_generation.py: Pythia-1B-sized teacher vs its Mamba student (random weights), bf16.
# Needs the kernels installed (tools/installers/install_cuda_kernels.sh); says so if they do not import.
set -uo pipefail
OUT=${OUT:-results/gpu_check}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
"$PYTHON" - <<'PY'
import torch
from cald_brain.mixers.ops.kernels import cuda_kernels
print("torch", torch.__version__, "|", torch.cuda.get_device_name(), "| kernels import:", cuda_kernels() is not None)
PY
status=0
timeout 150 "$PYTHON" -m pytest -q -rs -p no:cacheprovider -m cuda tests/unit tests/engine/test_brain.py \
    2>&1 | tee "$OUT/pytest_cuda.log" || status=1
"$PYTHON" tools/samples/wav2vec2_standin.py /tmp/wav2vec2-base-standin >/dev/null
timeout 120 "$PYTHON" recipes/TEDLIUM/train.py recipes/TEDLIUM/hparams/bimamba2_trajectory.yaml \
    --data_folder=tests/samples/TEDLIUM_release-3 --pretrained_source=/tmp/wav2vec2-base-standin \
    --output_folder=/tmp/gpu_check_tedlium --device=cuda:0 --number_of_epochs=3 --max_batch_items=4 --grad_accumulation_factor=2 --noprogressbar \
    >"$OUT/tedlium_full_size.log" 2>&1 || status=1
grep -E "epoch: |Error|error|Traceback" "$OUT/tedlium_full_size.log" | cut -c1-400
timeout 90 "$PYTHON" tools/bench_mixers.py --device cuda --lengths 1000 4000 16000 --repeats 5 --no-plot \
    --out "$OUT/bench" 2>&1 | tee "$OUT/bench_mixers.log" || status=1
timeout 100 "$PYTHON" tools/bench_generation.py --pythia 1b --contexts 512,2048,8192 --new_tokens 32 \
    --device cuda --dtype bfloat16 2>&1 | tee "$OUT/bench_generation.log" || status=1
exit $status
