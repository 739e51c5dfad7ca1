#!/usr/bin/env bash
# Started by srun once per node: one torchrun per node, CALD_GPUS_PER_NODE processes, rendezvous on MASTER_ADDR.
# Batch sizes in the YAML files are per process (GPU).
# USR1 (cald.sbatch forwards it before the time limit) must reach the training processes, which checkpoint and
# exit; torchrun itself would die of it, so it ignores it (the training processes install their own handler).
set -euo pipefail
trap '' USR1
script=$1; shift
exec torchrun \
  --nproc_per_node="${CALD_GPUS_PER_NODE}" \
  --nnodes="${SLURM_JOB_NUM_NODES}" \
  --node_rank="${SLURM_NODEID}" \
  --master_addr="${MASTER_ADDR}" \
  --master_port="${MASTER_PORT}" \
  "$script" "$@" --noprogressbar
