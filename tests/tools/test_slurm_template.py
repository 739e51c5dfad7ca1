"""tools/slurm/cald.sbatch with stand-ins for srun/scancel/scontrol/torchrun: USR1 sent to the batch script
(SLURM's `--signal=B:USR1@180`) reaches the training process through torchrun, which survives it; the training
process stops with STOP_EXIT_CODE and the job is requeued."""

import os
import signal
import subprocess
import sys
import time

from conftest import ROOT

SH = "#!/usr/bin/env bash\n"
FAKES = {
    # srun runs the task (torchrun_node.sh) once, here
    "srun": SH + 'exec "$@"\n',
    # scancel --signal=USR1 JOB: signal every process of the step (here: torchrun and the worker)
    "scancel": SH + 'kill -USR1 $(cat "$FAKE_DIR/torchrun.pid") $(cat "$FAKE_DIR/worker.pid")\n',
    "scontrol": SH
    + 'if [[ $1 == show ]]; then echo localhost; else echo "$*" >> "$FAKE_DIR/scontrol.log"; fi\n',
    # torchrun starts the script as a child and waits for it, as the elastic agent does
    "torchrun": SH
    + 'echo $$ > "$FAKE_DIR/torchrun.pid"\n'
    + "for a; do [[ $a == *.py ]] && script=$a; done\n"
    + f'"{sys.executable}" "$script"\n'
    + 'status=$?; echo "torchrun: worker exited with $status"; exit $status\n',
}

WORKER = """
import os, sys, time
sys.path.insert(0, {root!r})
from cald_brain.run_control import STOP_EXIT_CODE, StopRequest
StopRequest.install()
open(os.path.join(os.environ["FAKE_DIR"], "worker.pid"), "w").write(str(os.getpid()))
while not StopRequest.requested:
    time.sleep(0.05)
print("checkpoint saved")
sys.exit(STOP_EXIT_CODE)
"""


def test_usr1_before_the_time_limit_stops_training_and_requeues(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in FAKES.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    worker = tmp_path / "train.py"
    worker.write_text(WORKER.format(root=str(ROOT)))
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "FAKE_DIR": str(tmp_path),
        "SLURM_JOB_ID": "77",
        "SLURM_SUBMIT_DIR": str(ROOT),
        "SLURM_JOB_NODELIST": "node1",
        "SLURM_JOB_NUM_NODES": "1",
        "SLURM_NODEID": "0",
    }
    job = subprocess.Popen(
        ["bash", str(ROOT / "tools" / "slurm" / "cald.sbatch"), str(worker)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    while not (tmp_path / "worker.pid").exists() and job.poll() is None:
        time.sleep(0.05)
    job.send_signal(signal.SIGUSR1)
    out, _ = job.communicate(timeout=60)
    assert job.returncode == 0, out
    assert "checkpoint saved" in out and "torchrun: worker exited with 85" in out  # torchrun survived USR1
    assert "requeueing job 77" in out
    assert (tmp_path / "scontrol.log").read_text() == "requeue 77\n"
