#!/usr/bin/env python3
"""The README's main job: the whole CALD pipeline on the embedded mini TED-LIUM 3 sample.

1. fine-tune a small pretrained Wav2Vec2 (the transformer teacher; by default
   tests/samples/models/small-wav2vec2, made by tools/samples/tiny_wav2vec2.py) with CTC;
2. convert it to BiMamba2 and fine-tune the student with trajectory guidance, and unguided for contrast;
3. decode the test set with each, then print WER/CER, encoder parameter counts and the encoder forward time
   of teacher and student on a long input.

Each step is the recipe's own command (`python recipes/TEDLIUM/train.py hparams/X.yaml ...`), run in a
subprocess with its log under the output folder; a finished step is not run again (delete its folder to
redo it), an interrupted one resumes from its last checkpoint.

    python tools/demo.py [--output_folder results/demo] [--long_input_seconds 120] [--pretrained_source DIR]
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "TEDLIUM" / "train.py"
SAMPLE = ROOT / "tests" / "samples" / "TEDLIUM_release-3"
PRETRAINED = ROOT / "tests" / "samples" / "models" / "small-wav2vec2"

# Sizes for a 2-core CPU: the recipe defaults are the paper's (90k steps of 3-4 dynamic micro-batches in bf16
# on GPUs); these are the overrides (recipes/TEDLIUM/README.md, "Try it on the sample"): micro-batches of 4
# utterances, one per optimizer step, fp32, a short warm-up, a faster CTC head. Per run: a trajectory step
# costs about two plain steps (student + joint teacher), hence fewer epochs.
COMMON_OVERRIDES = {
    "max_batch_items": 4,
    "grad_accumulation_factor": 1,
    "precision": "fp32",
    "warmup_steps": 20,
    "head_lr": 0.01,
    "ckpt_interval_minutes": 2,
}
MIXER = {"headdim": 32, "d_state": 32}  # BiMamba2 size for the sample encoders (width 128)
STUDENT = {**MIXER, "number_of_epochs": 16, "lr": 0.0005}
RUNS = {
    "teacher": ("wav2vec2_ctc.yaml", {"number_of_epochs": 20, "lr": 0.0001, "snapshot_every_steps": 50}),
    "bimamba2_trajectory": ("bimamba2_trajectory.yaml", {**STUDENT, "teacher_lr": 0.0001}),
    "bimamba2_unguided": ("bimamba2_unguided.yaml", STUDENT),
}


def run_recipe(name: str, hparams: str, overrides: dict, out: Path, source: Path) -> dict:
    """Run one recipe command from the pretrained model ``source`` (or reuse its finished result); returns
    its test metrics."""
    folder = out / name
    metrics = folder / "test_metrics.json"
    if metrics.exists():
        print(f"[{name}] done before, reusing {metrics} (delete {folder} to run it again)")
        return json.loads(metrics.read_text())
    args = {**COMMON_OVERRIDES, **overrides}
    cmd = [
        sys.executable,
        str(RECIPE),
        f"hparams/{hparams}",
        f"--data_folder={SAMPLE}",
        f"--pretrained_source={source}",
        f"--output_folder={folder}",
        "--device=cpu",
        *[f"--{k}={v}" for k, v in args.items()],
    ]
    print(f"[{name}] {' '.join(cmd[1:])}", flush=True)
    start = time.time()
    subprocess.run(cmd, check=True, cwd=ROOT)
    print(f"[{name}] finished in {time.time() - start:.0f} s", flush=True)
    return json.loads(metrics.read_text())


def encoder_profile(source: Path, mixer: str | None, seconds: float, repeats: int = 3) -> tuple[int, float]:
    """(parameter count, median forward seconds) of the encoder of ``source``, transformer or converted."""
    from cald_brain.models import SpeechEncoder

    encoder = SpeechEncoder(str(source), mixer=mixer, mixer_kwargs=MIXER if mixer else None).eval()
    wav = torch.randn(1, int(16000 * seconds))
    lens = torch.ones(1)
    times = []
    with torch.no_grad():
        encoder(wav[:, :16000], lens)  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            encoder(wav, lens)
            times.append(time.perf_counter() - start)
    return sum(p.numel() for p in encoder.parameters()), statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output_folder", type=Path, default=ROOT / "results" / "demo")
    parser.add_argument("--long_input_seconds", type=float, default=120.0)
    parser.add_argument(
        "--pretrained_source",
        type=Path,
        default=PRETRAINED,
        help="pretrained Wav2Vec2 folder of the teacher (finished runs in --output_folder are reused "
        "whatever it was: use another folder for another model)",
    )
    args = parser.parse_args()
    for path in (SAMPLE, args.pretrained_source):
        if not path.exists():
            sys.exit(f"ERROR: {path} is missing: the demo needs the samples committed in tests/samples/.")
    args.output_folder.mkdir(parents=True, exist_ok=True)

    start = time.time()
    results = {
        name: run_recipe(name, hp, ov, args.output_folder, args.pretrained_source)
        for name, (hp, ov) in RUNS.items()
    }
    t_params, t_time = encoder_profile(args.pretrained_source, None, args.long_input_seconds)
    s_params, s_time = encoder_profile(args.pretrained_source, "bimamba2", args.long_input_seconds)

    rows = [
        ("teacher (Wav2Vec2, attention)", "teacher", t_params, t_time),
        ("student BiMamba2, trajectory-guided", "bimamba2_trajectory", s_params, s_time),
        ("student BiMamba2, unguided", "bimamba2_unguided", s_params, s_time),
    ]
    seconds = f"{args.long_input_seconds:.0f} s"
    lines = [
        f"| model | test WER % | test CER % | encoder params | encoder forward, {seconds} input |",
        "|---|---|---|---|---|",
    ]
    for label, key, params, secs in rows:
        wer, cer = results[key]["WER"], results[key]["CER"]
        lines.append(f"| {label} | {wer:.1f} | {cer:.1f} | {params:,} | {secs * 1000:.0f} ms |")
    table = "\n".join(lines)
    summary = args.output_folder / "summary.md"
    summary.write_text(table + "\n")
    print("\n" + table + f"\n\n(total {time.time() - start:.0f} s; table saved to {summary})")


if __name__ == "__main__":
    main()
