"""Prepare VoxCeleb1 for speaker identification (the SUPERB SID task: 1,251 speakers).

``data_folder`` holds ``wav/idXXXXX/<video>/<nnnnn>.wav``: the dev and test archives unpacked into one
``wav/`` tree. The split file (default ``data_folder/iden_split.txt``, lines ``<1|2|3> idXXXXX/<video>/
<nnnnn>.wav``; 1 train, 2 dev, 3 test) decides the split of every file; files it does not list are ignored
(and counted in the log).

Writes into ``save_folder``:

- ``train.csv``, ``dev.csv``, ``test.csv``::

      ID,duration,wav,spk_id
      id10001--1zcIwhmdeo4--00001,8.120,$data_root/wav/id10001/1zcIwhmdeo4/00001.wav,id10001

  (SpeechBrain's ``id10001--<video>--00001`` ids; ``wav`` relative to ``$data_root``).
- ``speakers.txt``: the speaker set of the split file, sorted, one per line (class i = line i). Written by
  the first preparation and then fixed: a later preparation that would change it is an error.

Run alone with ``python prepare.py --data_folder /path/to/VoxCeleb1 --save_folder DIR [--split_file F]``.
"""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path

from tqdm import tqdm

from cald_brain.data.audio import listed_audio_info
from cald_brain.data.manifests import is_prepared, write_labelled_manifests

logger = logging.getLogger(__name__)

CSV_COLUMNS = ("ID", "duration", "wav", "spk_id")
SPLITS = {"1": "train", "2": "dev", "3": "test"}
LABEL_FILE = "speakers.txt"
OPTIONS_FILE = "voxceleb1_prepare.json"
PREPARE_VERSION = 1  # bump when the output format changes, so old manifests are re-prepared
SAMPLE_RATE = 16000
_RELATIVE = re.compile(r"(id\d+)/([^/\s]+)/(\d+)\.wav")


def read_split_file(path: Path) -> list[tuple[int, str, str]]:
    """(line number, split name, relative path) of every line; a malformed or repeated line is an error
    naming the file and line."""
    entries, seen = [], {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            fields = line.split()
            if len(fields) != 2 or fields[0] not in SPLITS or not _RELATIVE.fullmatch(fields[1]):
                raise ValueError(
                    f"{path}:{number}: expected '<1|2|3> idXXXXX/<video>/<nnnnn>.wav', got {line.strip()!r}"
                )
            if fields[1] in seen:
                raise ValueError(f"{path}:{number}: {fields[1]} is already listed at line {seen[fields[1]]}")
            seen[fields[1]] = number
            entries.append((number, SPLITS[fields[0]], fields[1]))
    if not entries:
        raise ValueError(f"{path} lists no file")
    return entries


def prepare_voxceleb1(
    data_folder: str | Path,
    save_folder: str | Path,
    split_file: str | Path | None = None,
    skip_prep: bool = False,
) -> None:
    """Write ``train.csv``, ``dev.csv``, ``test.csv`` and ``speakers.txt`` into ``save_folder``.

    Nothing is done when the outputs exist and were made from the same data folder and split file
    (recorded in ``voxceleb1_prepare.json``, written last).
    """
    if skip_prep:
        return
    data_folder, save_folder = Path(data_folder).resolve(), Path(save_folder)
    wav_root = data_folder / "wav"
    if not wav_root.is_dir():
        raise FileNotFoundError(
            f"{wav_root} does not exist: unpack the VoxCeleb1 dev and test archives into one wav/ folder "
            f"inside data_folder ({data_folder})"
        )
    split_path = Path(split_file).resolve() if split_file else data_folder / "iden_split.txt"
    if not split_path.is_file():
        raise FileNotFoundError(
            f"Split file {split_path} does not exist: download iden_split.txt (VoxCeleb1 identification "
            "split) into data_folder or pass --split_file"
        )
    options = {"version": PREPARE_VERSION, "data_folder": str(data_folder), "split_file": str(split_path)}
    options_path = save_folder / OPTIONS_FILE
    outputs = [save_folder / f"{split}.csv" for split in SPLITS.values()] + [save_folder / LABEL_FILE]
    if is_prepared(options_path, options, outputs):
        logger.info("VoxCeleb1 manifests in %s are up to date, skipping preparation", save_folder)
        return
    entries = read_split_file(split_path)
    rows: dict[str, list[dict[str, str]]] = {split: [] for split in SPLITS.values()}
    for number, split, relative in tqdm(entries, desc="VoxCeleb1", unit="file"):
        path = wav_root / relative
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}, listed at {split_path}:{number}, does not exist: are both the dev and the test "
                "archives unpacked into wav/?"
            )
        info = listed_audio_info(path, SAMPLE_RATE, "VoxCeleb1", f"{split_path}:{number}")
        rows[split].append(
            {
                "ID": relative.removesuffix(".wav").replace("/", "--"),
                "duration": f"{info.duration:.3f}",
                "wav": f"$data_root/wav/{relative}",
                "spk_id": relative.split("/")[0],
            }
        )
    on_disk = sum(1 for _ in wav_root.glob("*/*/*.wav"))
    if on_disk > len(entries):
        logger.info(
            "%d wav files under %s are not in %s: ignored", on_disk - len(entries), wav_root, split_path
        )
    for split, split_rows in rows.items():
        if not split_rows:
            raise ValueError(f"{split_path} lists no file for the {split} split")
    # every listed file is a row, so the speaker set is the split file's
    write_labelled_manifests(
        save_folder, CSV_COLUMNS, rows, "spk_id", LABEL_FILE, "speaker", options_path, options
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data_folder", required=True, help="VoxCeleb1 root holding wav/")
    parser.add_argument("--save_folder", required=True, help="where train/dev/test.csv and speakers.txt go")
    parser.add_argument("--split_file", default=None, help="default: <data_folder>/iden_split.txt")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    prepare_voxceleb1(args.data_folder, args.save_folder, args.split_file)


if __name__ == "__main__":
    main()
