#!/usr/bin/env bash
# Started by srun once per node: one torchrun per node, CALD_GPUS_PER_NODE processes, rendezvous on MASTER_ADDR.
# Batch sizes in the YAML files are per process (GPU).
# A stop (USR1, or TERM) reaching this script is forwarded as USR1 to the training processes, which checkpoint at
# the end of the optimizer step and exit with status 85: torchrun starts them in sessions of their own, so a
# signal sent to this step's process group alone would not reach them. torchrun itself ignores USR1 (it would
# die of it); the workers install their own handler.
set -euo pipefail
script=$1; shift
trap '' USR1
torchrun \
  --nproc_per_node="${CALD_GPUS_PER_NODE}" \
  --nnodes="${SLURM_JOB_NUM_NODES}" \
  --node_rank="${SLURM_NODEID}" \
  --master_addr="${MASTER_ADDR}" \
  --master_port="${MASTER_PORT}" \
  "$script" "$@" --noprogressbar &
agent=$!
forward() { pkill -USR1 -P "$agent" || true; }  # torchrun's children: the training processes
trap forward USR1 TERM
while kill -0 "$agent" 2>/dev/null; do  # a trapped signal interrupts `wait`: wait again until it exited
  wait "$agent" || true
done
status=0
wait "$agent" || status=$?  # its exit status (the shell keeps it)
exit "$status"
