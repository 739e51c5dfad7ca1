"""tools/slurm/cald.sbatch + torchrun_node.sh with stand-ins for srun / scancel / scontrol / torchrun.

A stop (USR1 before the time limit, TERM on preemption or scancel) must reach the training process whichever
processes the cluster signals — every process of the job step, only the step's process group (torchrun starts
its workers in sessions of their own), or only the batch script — and the job must then be requeued once;
the requeued job resumes and writes its test line once. Two array tasks on one node both train (real
torchrun, distinct rendezvous ports).
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT

from cald_brain.run_control import STOP_EXIT_CODE

SH = "#!/usr/bin/env bash\n"
FAKES = {
    # srun runs the task (torchrun_node.sh) once, here, in a process group of its own (as a job step is)
    "srun": SH + 'exec setsid "$@"\n',
    # scancel --signal=USR1 JOB (the batch script forwarding a stop): the weakest delivery, the step's
    # process group only
    "scancel": SH + 'kill -USR1 -- -"$(cat "$FAKE_DIR/node.pid")"\n',
    "scontrol": SH
    + 'if [[ $1 == show ]]; then echo localhost; else echo "$*" >> "$FAKE_DIR/scontrol.log"; fi\n',
    # torchrun: the worker in a session of its own, TERM passed on to it (as the elastic agent does)
    "torchrun": SH
    + 'echo $PPID > "$FAKE_DIR/node.pid"; echo $$ > "$FAKE_DIR/torchrun.pid"\n'
    + "for a; do [[ $a == *.py ]] && script=$a; done\n"
    + f'setsid "{sys.executable}" "$script" & child=$!\n'
    + "trap 'kill -TERM $child' TERM\n"
    + "while kill -0 $child 2>/dev/null; do wait $child || true; done\n"
    + "status=0; wait $child || status=$?\n"
    + 'echo "torchrun: worker exited with $status"; exit $status\n',
}

# The training process's side of the protocol (cald_brain.run_control.StopRequest + CALDBrain): a stop signal
# is served at the end of the current step with a checkpoint and exit status 85 (further stop signals ignored
# from then on: the cluster and the scripts may deliver it more than once); a resumed run continues from its
# checkpoint; the test line is written once training is done.
WORKER = f"""
import os, signal, sys, time
fake = os.environ["FAKE_DIR"]
stop = []
for signum in (signal.SIGUSR1, signal.SIGTERM):
    signal.signal(signum, lambda s, f: stop.append(s))
open(os.path.join(fake, "worker.pid"), "w").write(str(os.getpid()))
progress = os.path.join(fake, "progress")
step = int(open(progress).read()) if os.path.exists(progress) else 0
while step < int(os.environ["STEPS"]):
    time.sleep(0.02)
    step += 1
    if stop:
        for signum in (signal.SIGUSR1, signal.SIGTERM):  # a repeated stop must not kill the exiting process
            signal.signal(signum, signal.SIG_IGN)
        open(progress, "w").write(str(step))
        print("checkpoint saved at step", step, flush=True)
        sys.exit({STOP_EXIT_CODE})
open(os.path.join(fake, "test_lines"), "a").write("test line\\n")
print("trained", flush=True)
"""


def slurm_env(tmp_path: Path, bin_dir: Path, **more: str) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "FAKE_DIR": str(tmp_path),
        "SLURM_JOB_ID": "77",
        "SLURM_SUBMIT_DIR": str(ROOT),
        "SLURM_JOB_NODELIST": "node1",
        "SLURM_JOB_NUM_NODES": "1",
        "SLURM_NODEID": "0",
        "CALD_GPUS_PER_NODE": "1",
        **more,
    }


def stand_ins(tmp_path: Path, fakes: dict[str, str]) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in fakes.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return bin_dir


def pid(tmp_path: Path, name: str) -> int:
    return int((tmp_path / f"{name}.pid").read_text())


def deliver(how: str, signum: int, job: subprocess.Popen, tmp_path: Path) -> None:
    """Signal the job as a cluster does: every process of the step, the step's process group, or the batch
    script only."""
    if how == "step":
        for name in ("node", "torchrun", "worker"):
            os.kill(pid(tmp_path, name), signum)
    elif how == "process-group":
        os.killpg(pid(tmp_path, "node"), signum)
    else:
        job.send_signal(signum)


@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGTERM], ids=["USR1", "TERM"])
@pytest.mark.parametrize("how", ["step", "process-group", "script"])
def test_stop_reaches_the_worker_requeues_once_and_resumes(tmp_path, how, signum):
    bin_dir = stand_ins(tmp_path, FAKES)
    worker = tmp_path / "train.py"
    worker.write_text(WORKER)
    env = slurm_env(tmp_path, bin_dir, STEPS="100000")
    command = ["bash", str(ROOT / "tools" / "slurm" / "cald.sbatch"), str(worker)]
    job = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    while not (tmp_path / "worker.pid").exists() and job.poll() is None:
        time.sleep(0.02)
    deliver(how, signum, job, tmp_path)
    out, _ = job.communicate(timeout=60)
    assert job.returncode == 0, out
    assert "checkpoint saved" in out and f"torchrun: worker exited with {STOP_EXIT_CODE}" in out
    assert (tmp_path / "scontrol.log").read_text() == "requeue 77\n"
    assert not (tmp_path / "test_lines").exists()

    (tmp_path / "worker.pid").unlink()
    requeued = subprocess.run(
        command, env={**env, "STEPS": "200"}, capture_output=True, text=True, timeout=60
    )
    assert requeued.returncode == 0, requeued.stdout + requeued.stderr
    assert "trained" in requeued.stdout
    assert (tmp_path / "test_lines").read_text() == "test line\n"
    assert (tmp_path / "scontrol.log").read_text() == "requeue 77\n"  # not requeued again


def test_a_job_that_finished_is_not_requeued(tmp_path):
    """A stop arriving after the worker finished (or that never reached it) does not requeue a done job."""
    bin_dir = stand_ins(tmp_path, FAKES)
    worker = tmp_path / "train.py"
    worker.write_text(WORKER)
    env = slurm_env(tmp_path, bin_dir, STEPS="0")
    job = subprocess.run(
        ["bash", str(ROOT / "tools" / "slurm" / "cald.sbatch"), str(worker)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert job.returncode == 0, job.stdout + job.stderr
    assert (tmp_path / "test_lines").read_text() == "test line\n"
    assert not (tmp_path / "scontrol.log").exists()


RENDEZVOUS_WORKER = """
import os, sys, time
import torch.distributed as dist
dist.init_process_group("gloo")
time.sleep(2)
dist.barrier()
dist.destroy_process_group()
open(os.environ["TRAINED"], "w").write(os.environ["MASTER_PORT"])
"""


@pytest.mark.slow
def test_two_array_tasks_on_one_node_both_train(tmp_path):
    """Two array tasks on one node at the same time: each rendezvous (real torchrun) on a port of its own."""
    fakes = {name: FAKES[name] for name in ("scontrol", "scancel")}
    fakes["srun"] = SH + 'exec "$@"\n'
    fakes["torchrun"] = SH + f'exec "{Path(sys.executable).parent / "torchrun"}" "$@"\n'
    bin_dir = stand_ins(tmp_path, fakes)
    tasks = tmp_path / "tasks.txt"
    tasks.write_text("hparams/a.yaml\nhparams/b.yaml\n")
    worker = tmp_path / "train.py"
    worker.write_text(RENDEZVOUS_WORKER)
    jobs = [
        subprocess.Popen(
            ["bash", str(ROOT / "tools" / "slurm" / "cald.sbatch"), str(worker)],
            env=slurm_env(
                tmp_path,
                bin_dir,
                SLURM_JOB_ID=f"90{task}",
                SLURM_ARRAY_TASK_ID=str(task),
                CALD_TASKS_FILE=str(tasks),
                TRAINED=str(tmp_path / f"trained{task}"),
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for task in (0, 1)
    ]
    outputs = [job.communicate(timeout=240)[0] for job in jobs]
    for job, out in zip(jobs, outputs, strict=True):
        assert job.returncode == 0, out
    ports = {(tmp_path / f"trained{task}").read_text() for task in (0, 1)}
    assert len(ports) == 2


def test_array_task_without_a_line_stops(tmp_path):
    bin_dir = stand_ins(tmp_path, FAKES)
    tasks = tmp_path / "tasks.txt"
    tasks.write_text("hparams/a.yaml\n")
    job = subprocess.run(
        ["bash", str(ROOT / "tools" / "slurm" / "cald.sbatch"), "train.py"],
        env=slurm_env(tmp_path, bin_dir, SLURM_ARRAY_TASK_ID="3", CALD_TASKS_FILE=str(tasks)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert job.returncode == 1
    assert f"ERROR: {tasks} has no line 4 (array task 3)" in job.stderr
