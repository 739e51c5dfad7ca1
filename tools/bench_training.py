"""Time per optimizer step of training: fine-tuning the transformer teacher vs CALD in each guidance mode.

At a chosen width (`--size base` by default, random weights, no download; see bench_longform.py), each row
runs the engine's real training step, `CALDBrain.fit_batch` with the TED-LIUM recipe's CTC hooks (student
forward, teacher forward, objective, backward, clipping, AdamW step), on one random batch of `--batch`
utterances of lengths spread over `--seconds MIN MAX` (29 output units, random transcripts), with the
recipes' loss weights (alpha_task 1, alpha_kd 1, alpha_ld 15) and what a recipe run trains with: every
network in train mode as `Brain.fit` sets it (dropout, SpecAugment time masking; the teacher's attention then
takes PyTorch's dropout path, not the fused one), the recipe's `encoder_overrides` (dropouts 0.2,
mask_time_prob 0.1, read from recipes/TEDLIUM/hparams/bimamba2_target.yaml), LayerDrop off so that every step
runs every layer (the recipes keep the checkpoint's 0.1: a tenth of the layers skipped on average, teacher and
student alike):

  teacher     fine-tuning the transformer itself on CTC (guidance_mode unguided, as wav2vec2_ctc.yaml)
  unguided    the BiMamba2 student on CTC alone
  target      student + frozen teacher (teacher forward without gradients; task + KD + LD)
  trajectory  student + jointly trained teacher (teacher forward with gradients, its backward and AdamW step)
  waypoint    student + teacher loaded from a snapshot (one snapshot here, so no reloads: as target)
  hybrid      as target, before its switch step (the steps timed here)
  target-unshared  target with the frozen feature encoder run twice, once per network (what every guided
              step did before student and teacher shared it; `cald_brain.models.front_end`)

Each row runs in a fresh subprocess: `--warmup` untimed steps, then the median wall time of `--steps` steps
(on CUDA between device synchronisations), and the peak memory of the timed steps (CPU: the process's VmHWM
after a reset; CUDA: torch's peak allocation). The last column is the step time over the teacher's.
With --flops, one more (untimed) step counts the GFLOP of its matrix products, convolutions and attention,
forward and backward (`bench_longform.count_gflop`), and the table adds them and their ratio to the
teacher's: the step-time ratio a fully efficient implementation would reach.

Usage: python tools/bench_training.py [--device cpu|cuda] [--size base|large] [--batch 4] [--seconds 8 15]
                                      [--steps 5] [--warmup 2] [--modes teacher unguided target ...]
                                      [--precision fp32|bf16|fp16] [--threads N] [--flops] [--out DIR]
Writes training.json and training.md (the table) to --out (default results/bench/training).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from cald_brain.scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
longform = load_script(Path(__file__).with_name("bench_longform.py"), "bench_longform")

RECIPE_HPARAMS = ROOT / "recipes" / "TEDLIUM" / "hparams" / "bimamba2_target.yaml"
MODES = ("teacher", "unguided", "target", "trajectory", "waypoint", "hybrid", "target-unshared")
DEFAULT_MODES = MODES[:-1]
NUM_UNITS = 29  # the TED-LIUM recipe's characters + blank
LR = 3e-4


def make_batch(batch: int, seconds: tuple[float, float], seed: int = 0):
    """A PaddedBatch of random waveforms (lengths evenly spread over `seconds`) and random transcripts."""
    from speechbrain.dataio.batch import PaddedBatch

    from cald_brain.models.long_audio import SAMPLE_RATE

    gen = torch.Generator().manual_seed(seed)
    items = []
    for i in range(batch):
        length = seconds[0] + (seconds[1] - seconds[0]) * (i / max(batch - 1, 1))
        n_samples = round(length * SAMPLE_RATE)
        tokens = torch.randint(1, NUM_UNITS, (round(length * 12),), generator=gen)  # ~12 characters a second
        items.append({"id": f"utt{i}", "sig": torch.randn(n_samples, generator=gen), "tokens": tokens})
    return PaddedBatch(items)


def recipe_encoder_overrides() -> dict:
    """The TED-LIUM recipe's `encoder_overrides` (dropouts, SpecAugment masking) with LayerDrop off."""
    from cald_brain.recipe import resolved_top_level

    top = resolved_top_level(str(RECIPE_HPARAMS), {"data_folder": "unused"})
    return {**top["encoder_overrides"], "layerdrop": 0.0}


def hparams_for(mode: str, folder: str, snapshots: str) -> tuple[torch.nn.Module, dict]:
    """(the network trained, the CALDBrain hparams) of one row."""
    mode = mode.removesuffix("-unshared")
    from cald_brain.models import SpeechEncoder, SpeechModel

    overrides = recipe_encoder_overrides()

    def model(mixer: str | None) -> torch.nn.Module:
        encoder = SpeechEncoder(
            folder, mixer, longform.STUDENT if mixer else None, config_overrides=overrides
        )
        return SpeechModel(encoder, NUM_UNITS)

    hparams = {
        "opt_class": lambda params: torch.optim.AdamW(params, lr=LR),
        "blank_index": 0,
        "guidance_mode": "unguided" if mode == "teacher" else mode,
        "alpha_task": 1.0,
        "alpha_kd": 1.0,
        "alpha_ld": 15.0,
        "teacher_train_mode": True,
    }
    if mode == "teacher":
        return model(None), hparams
    student = model("bimamba2")
    if mode == "unguided":
        return student, hparams
    teacher = model(None)
    hparams["teacher_net"] = teacher
    if mode in ("target", "hybrid"):
        hparams["teacher_from_source"] = True
    if mode == "hybrid":
        hparams["distill_until_step"] = 10**9
    if mode == "waypoint":
        from cald_brain.distill import save_snapshot

        save_snapshot(teacher.state_dict(), snapshots, 0)
        hparams["teacher_path"] = snapshots
    if mode == "trajectory":
        hparams["teacher_opt_class"] = lambda params: torch.optim.AdamW(params, lr=LR)
    return student, hparams


def measure(args: argparse.Namespace, mode: str, folder: str) -> dict:
    """One row (run in a child process): build the brain, warm up, time `args.steps` optimizer steps."""
    import speechbrain as sb

    from cald_brain.tasks.ctc import CTCBrain

    device = torch.device(args.device)
    batch = make_batch(args.batch, tuple(args.seconds))
    times = []
    with tempfile.TemporaryDirectory() as snapshots:  # the waypoint teacher's snapshot folder
        net, hparams = hparams_for(mode, folder, snapshots)
        run_opts = {"device": args.device, "precision": args.precision, "noprogressbar": True}
        brain = CTCBrain(units=None, modules={"student": net}, hparams=hparams, run_opts=run_opts)
        brain.on_fit_start()
        if mode.endswith("-unshared"):
            brain.front_end.unlink()
        brain.on_stage_start(sb.Stage.TRAIN, 1)  # as Brain.fit starts each epoch
        brain.modules.train()
        for step in range(args.warmup + args.steps):
            if step == args.warmup:
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                else:
                    longform.reset_peak_memory()
            brain.step = step + 1
            start = time.perf_counter()
            brain.fit_batch(batch)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
        gflop = longform.count_gflop(lambda: brain.fit_batch(batch)) if args.flops else None
    timed = times[args.warmup :]
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        peak = longform.memory_gib("VmHWM")
    row = dict(seconds=statistics.median(timed), seconds_all=timed, peak_gib=peak, steps=brain.optimizer_step)
    return row if gflop is None else {**row, "gflop": gflop}


def table(results: list[dict]) -> str:
    teacher = next((r for r in results if r["mode"] == "teacher" and "seconds" in r), None)
    flops = any("gflop" in r for r in results)
    header = ["mode", "s / step (median)", "peak GiB", "/ teacher fine-tuning"]
    header += ["GFLOP / step", "FLOPs / teacher's"] if flops else []
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        if "seconds" not in r:
            lines.append(f"| {r['mode']} | {r['failed']} |" + " - |" * (len(header) - 2))
            continue
        cells = [r["mode"], f"{r['seconds']:.2f}", f"{r['peak_gib']:.2f}"]
        cells.append(f"{r['seconds'] / teacher['seconds']:.2f}x" if teacher else "-")
        if flops:
            cells.append(f"{r['gflop']:.0f}" if "gflop" in r else "-")
            known = teacher is not None and "gflop" in teacher and "gflop" in r
            cells.append(f"{r['gflop'] / teacher['gflop']:.2f}x" if known else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--size", choices=sorted(longform.SIZES), default="base")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seconds", type=float, nargs=2, default=[8.0, 15.0], metavar=("MIN", "MAX"))
    parser.add_argument("--steps", type=int, default=5, help="timed optimizer steps (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed optimizer steps first")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(DEFAULT_MODES))
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--flops", action="store_true", help="count each row's GFLOP (one more, untimed step)"
    )
    parser.add_argument("--out", type=Path, default=Path("results/bench/training"))
    parser.add_argument("--child", nargs=2, metavar=("MODE", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: no CUDA device is available here")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(measure(args, *args.child)))
        return
    passed = [a for a in sys.argv[1:] if a != "--child"]
    results = []
    with tempfile.TemporaryDirectory() as folder:
        longform.write_standin_apart(args.size, Path(folder))
        load = os.getloadavg()
        for mode in args.modes:
            done = subprocess.run(
                [sys.executable, __file__, *passed, "--child", mode, folder], capture_output=True, text=True
            )
            row = {"mode": mode}
            if done.returncode == 0:
                row.update(json.loads(done.stdout.strip().splitlines()[-1]))
                print(f"  {mode:10s} {row['seconds']:.2f} s/step, {row['peak_gib']:.2f} GiB", flush=True)
            else:
                row["failed"] = f"failed (exit {done.returncode})"
                print(f"  {mode:10s} failed:\n{done.stderr[-3000:]}", file=sys.stderr, flush=True)
            results.append(row)
    config = dict(
        size=args.size,
        device=args.device,
        precision=args.precision,
        batch=args.batch,
        seconds=args.seconds,
        steps=args.steps,
        warmup=args.warmup,
        threads=args.threads or torch.get_num_threads(),
        flops=args.flops,
        torch=torch.__version__,
        cpu_count=os.cpu_count(),
        load_average_start=load,
        load_average_end=os.getloadavg(),
    )
    args.out.mkdir(parents=True, exist_ok=True)
    longform.write_atomically(
        args.out / "training.json", json.dumps(dict(config=config, results=results), indent=1)
    )
    text = table(results)
    longform.write_atomically(args.out / "training.md", text + "\n")
    print(text)
    print(f"wrote {args.out}/training.json, training.md")


if __name__ == "__main__":
    main()
