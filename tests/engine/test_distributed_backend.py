"""CPU runs under torchrun pick the gloo backend themselves (NCCL needs GPUs)."""

import socket
import subprocess
import sys
import textwrap

import pytest
import speechbrain as sb

from cald_brain.recipe import RecipeError, cpu_distributed_backend


def options(argv: list[str]):
    return sb.parse_arguments(["x.yaml", *argv])[1]


def test_cpu_under_torchrun_takes_gloo(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    assert cpu_distributed_backend(options(["--device=cpu"])).distributed_backend == "gloo"
    assert cpu_distributed_backend(options(["--device=cuda:0"])).distributed_backend == "nccl"


def test_single_process_and_explicit_backends_are_kept(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    assert (
        cpu_distributed_backend(options(["--device=cpu"])).distributed_backend == "nccl"
    )  # no process group
    monkeypatch.setenv("RANK", "1")
    kept = cpu_distributed_backend(options(["--device=cpu", "--distributed_backend=gloo"]))
    assert kept.distributed_backend == "gloo"
    with pytest.raises(
        RecipeError, match="--distributed_backend=nccl needs GPUs.*--distributed_backend=gloo"
    ):
        cpu_distributed_backend(options(["--device=cpu", "--distributed_backend=nccl"]))


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tmp_path):
    """A real 2-process torchrun on the CPU, with --device=cpu only, joins a gloo process group."""
    recipe = tmp_path / "recipe"
    (recipe / "hparams").mkdir(parents=True)
    (recipe / "hparams" / "run.yaml").write_text(f"output_folder: {tmp_path / 'out'}\n")
    (recipe / "train.py").write_text(
        textwrap.dedent(
            """
            import os
            import torch.distributed as dist
            from cald_brain.recipe import start_recipe
            start_recipe(os.path.dirname(os.path.abspath(__file__)))
            with open(f"backend{dist.get_rank()}.txt", "w") as f:
                f.write(dist.get_backend())
            dist.destroy_process_group()
            """
        )
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}"]
        + [str(recipe / "train.py"), "hparams/run.yaml", "--device=cpu"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [(tmp_path / f"backend{rank}.txt").read_text() for rank in (0, 1)] == ["gloo", "gloo"]
