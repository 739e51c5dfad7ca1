#!/usr/bin/env python3
"""Crash a training command repeatedly at its most fragile moments, then let it finish.

Starts COMMAND, watches SAVE_FOLDER and SIGKILLs the process the moment a new checkpoint folder appears there,
--kills times, alternating: odd runs die as a checkpoint starts being written (its temporary folder appears;
with plain SpeechBrain, as `CKPT+*` appears), even runs as soon as a new `CKPT+*` folder is there (with plain
SpeechBrain, again mid-write). Then it runs COMMAND once more to the end. Passes if that last run exits 0
(and, with --reference, if its last checkpoint holds the same tensors as the reference run's):

    python tools/crash_loop.py --kills 5 --save_folder results/k/save -- \\
        python recipes/TEDLIUM/train.py hparams/bimamba2_trajectory.yaml --output_folder=results/k ...
"""

import argparse
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import torch


def new_checkpoint_entry(folder: Path, before: set[str], prefixes: tuple[str, ...]) -> str | None:
    """An entry of `folder` starting with one of `prefixes` that was not in `before`."""
    if not folder.is_dir():
        return None
    for name in os.listdir(folder):
        if name not in before and name.startswith(prefixes):
            return name
    return None


def kill_at_next_checkpoint(
    command: list[str], save: Path, log: Path, prefixes: tuple[str, ...]
) -> tuple[str | None, int]:
    """Run `command` until a new entry starting with one of `prefixes` appears in `save`, then SIGKILL it.
    Returns (the entry that triggered the kill or None if the run ended first, exit status)."""
    before = set(os.listdir(save)) if save.is_dir() else set()
    with open(log, "a") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            entry = new_checkpoint_entry(save, before, prefixes)
            if entry is not None:
                proc.send_signal(signal.SIGKILL)
                return entry, proc.wait()
            time.sleep(0.001)
    return None, proc.returncode


def last_checkpoint_tensors(save: Path) -> dict[str, torch.Tensor]:
    """Every tensor of every torch file of the newest `CKPT+*` folder of `save`."""
    newest = max(save.glob("CKPT+*"), key=lambda p: p.stat().st_mtime)
    tensors = {}
    for file in sorted(newest.glob("*.ckpt")):
        if not zipfile.is_zipfile(file):  # text files: counters, the loader position
            continue
        state = torch.load(file, map_location="cpu", weights_only=True)

        def walk(prefix: str, value) -> None:
            if torch.is_tensor(value):
                tensors[prefix] = value
            elif isinstance(value, dict):
                for key, item in value.items():
                    walk(f"{prefix}.{key}", item)
            elif isinstance(value, (list, tuple)):
                for i, item in enumerate(value):
                    walk(f"{prefix}.{i}", item)

        walk(file.stem, state)
    return tensors


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kills", type=int, default=5, help="how many times to SIGKILL the run")
    parser.add_argument("--save_folder", type=Path, required=True, help="where the run writes CKPT+* folders")
    parser.add_argument("--log", type=Path, default=Path("crash_loop.log"), help="output of every run")
    parser.add_argument("--reference", type=Path, help="save folder of an uninterrupted run to compare with")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the training command")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    for attempt in range(1, args.kills + 1):
        prefixes = (".tmp-CKPT+", "CKPT+") if attempt % 2 else ("CKPT+",)
        entry, status = kill_at_next_checkpoint(command, args.save_folder, args.log, prefixes)
        if entry is None:
            print(f"run {attempt}: finished on its own (status {status}) before another checkpoint")
            break
        print(f"run {attempt}: SIGKILLed as {entry} appeared (status {status})")
    final = subprocess.run(command, stdout=open(args.log, "a"), stderr=subprocess.STDOUT)
    print(f"final run: exit status {final.returncode} (output in {args.log})")
    if final.returncode != 0:
        return 1
    if args.reference is not None:
        ref, got = last_checkpoint_tensors(args.reference), last_checkpoint_tensors(args.save_folder)
        different = sorted(k for k in ref if k not in got or not torch.equal(ref[k], got[k]))
        print(f"last checkpoint vs reference: {len(ref) - len(different)}/{len(ref)} tensors identical")
        if different:
            print("differ:", ", ".join(different[:10]))
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
