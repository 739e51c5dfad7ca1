#!/usr/bin/env python3
"""The README's main job: the whole CALD pipeline on the embedded mini TED-LIUM 3 sample.

1. fine-tune a small pretrained Wav2Vec2 (the transformer teacher; by default
   tests/samples/models/small-wav2vec2, made by tools/samples/tiny_wav2vec2.py) with CTC;
2. convert it to BiMamba2 and fine-tune the student with trajectory guidance, and unguided for contrast;
3. decode the test set with each, then print WER/CER, encoder parameter counts and the encoder forward time
   of teacher and student on a long input.

The runs are seed 1 of `tools/mini_cald.py --family tedlium` (same commands and settings: that tool adds the
other guidance modes and seeds): each is the recipe's own command (`python recipes/TEDLIUM/train.py
hparams/X.yaml ...`) in a subprocess with its log under `<output_folder>/tedlium/logs/`; a finished run is not
run again (delete its folder to redo it), an interrupted one resumes from its last checkpoint. The two
students run side by side, one thread each.

    python tools/demo.py [--output_folder results/mini_cald] [--long_input_seconds 120]
                         [--pretrained_source DIR]
"""

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch

from cald_brain.run_logs import summarize_run
from cald_brain.scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
mini_cald = load_script(Path(__file__).with_name("mini_cald.py"), "mini_cald")
FAMILY = mini_cald.FAMILIES["tedlium"]
ROWS = (  # (mode, label)
    ("teacher", "teacher (Wav2Vec2, attention)"),
    ("trajectory", "student BiMamba2, trajectory-guided"),
    ("unguided", "student BiMamba2, unguided"),
)


def encoder_profile(source: Path, mixer: str | None, seconds: float, repeats: int = 3) -> tuple[int, float]:
    """(parameter count, median forward seconds) of the encoder of ``source``, transformer or converted."""
    from cald_brain.models import SpeechEncoder

    mixer_kwargs = mini_cald.TEDLIUM_MIXER if mixer else None
    encoder = SpeechEncoder(str(source), mixer=mixer, mixer_kwargs=mixer_kwargs).eval()
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
    parser.add_argument(
        "--output_folder",
        type=Path,
        default=ROOT / "results" / "mini_cald",
        help="runs go to <output_folder>/tedlium/<mode>/seed1 (mini_cald.py's default folder: each tool "
        "reuses the other's finished runs); the table to <output_folder>/demo.md",
    )
    parser.add_argument("--long_input_seconds", type=float, default=120.0)
    parser.add_argument(
        "--pretrained_source",
        type=Path,
        default=FAMILY.pretrained_source,
        help="pretrained Wav2Vec2 folder of the teacher (a run finished with another model is refused: use "
        "another --output_folder)",
    )
    args = parser.parse_args()
    source = args.pretrained_source.resolve()
    for path in (ROOT / "tests" / "samples" / "TEDLIUM_release-3", source):
        if not path.exists():
            sys.exit(f"ERROR: {path} is missing: the demo needs the samples committed in tests/samples/.")

    start = time.time()
    family = dataclasses.replace(FAMILY, pretrained_source=source)
    modes = [mode for mode, _ in ROWS]
    runs = mini_cald.plan(family, "tedlium", [1], modes, args.output_folder.resolve(), quick=False)
    mini_cald.execute(runs, jobs=2, threads=1)
    results = {run.mode: summarize_run(run.folder).test for run in runs}
    t_params, t_time = encoder_profile(source, None, args.long_input_seconds)
    s_params, s_time = encoder_profile(source, "bimamba2", args.long_input_seconds)

    seconds = f"{args.long_input_seconds:.0f} s"
    lines = [
        f"| model | test WER % | test CER % | encoder params | encoder forward, {seconds} input |",
        "|---|---|---|---|---|",
    ]
    for mode, label in ROWS:
        params, secs = (t_params, t_time) if mode == "teacher" else (s_params, s_time)
        wer, cer = results[mode]["WER"], results[mode]["CER"]
        lines.append(f"| {label} | {wer:.1f} | {cer:.1f} | {params:,} | {secs * 1000:.0f} ms |")
    table = "\n".join(lines)
    summary = args.output_folder / "demo.md"
    summary.write_text(table + "\n")
    print("\n" + table + f"\n\n(total {time.time() - start:.0f} s; table saved to {summary})")


if __name__ == "__main__":
    main()
