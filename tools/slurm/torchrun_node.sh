#!/usr/bin/env bash
# Started by srun once per node: one torchrun per node, CALD_GPUS_PER_NODE processes, rendezvous on MASTER_ADDR.
# Batch sizes in the YAML files are per process (GPU).
set -euo pipefail
script=$1; shift
exec torchrun \
  --nproc_per_node="${CALD_GPUS_PER_NODE}" \
  --nnodes="${SLURM_JOB_NUM_NODES}" \
  --node_rank="${SLURM_NODEID}" \
  --master_addr="${MASTER_ADDR}" \
  --master_port="${MASTER_PORT}" \
  "$script" "$@" --noprogressbar
