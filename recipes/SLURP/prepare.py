"""Prepare SLURP for intent classification.

``data_folder`` is a SLURP root as users have it: the two audio archives unpacked into ``slurp_real/`` and
``slurp_synth/``, and the annotations ``train.jsonl``, ``train_synthetic.jsonl``, ``devel.jsonl``,
``test.jsonl`` in ``dataset/slurp/`` or in ``slurp/dataset/slurp/`` (the SLURP repository cloned inside).

Writes into ``save_folder``:

- ``train.csv`` (real + synthetic training recordings), ``dev.csv``, ``test.csv``: one row per recording
  listed in a record's ``recordings`` (headset and far-field files are separate rows)::

      ID,duration,wav,slurp_id,scenario,action,intent,transcript
      real-audio-1490356953-headset,2.430,$data_root/slurp_real/audio-1490356953-headset.flac,962,iot,...

  ``intent`` is ``scenario + "_" + action`` (as the CALD reference and ESPnet build it), not the jsonl's
  ``intent`` field, which differs for some records (slurp_id 962: scenario ``iot``, action ``hue_lightup``,
  field ``hue_lightup``; our label ``iot_hue_lightup``). A recording listed twice is kept once (its first
  listing, in the order train, train_synthetic, devel, test, as the reference does).
- ``scenarios.txt``, ``actions.txt`` (the two heads the reference trains) and ``intents.txt`` (the single-head
  option): the label sets, built from all splits (as the reference does), one per line. Each is written by
  the first preparation and then fixed: a later preparation that would change it is an error.

Run alone with ``python prepare.py --data_folder /path/to/SLURP --save_folder DIR``.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from cald_brain.data.audio import listed_audio_info
from cald_brain.data.manifests import is_prepared, write_labelled_manifests

logger = logging.getLogger(__name__)

CSV_COLUMNS = ("ID", "duration", "wav", "slurp_id", "scenario", "action", "intent", "transcript")
ANNOTATION_FOLDERS = ("dataset/slurp", "slurp/dataset/slurp")
LABEL_FILE = "intents.txt"
# Label column -> its label file: the heads `label_heads` can name.
LABEL_FILES = {"scenario": "scenarios.txt", "action": "actions.txt", "intent": LABEL_FILE}
OPTIONS_FILE = "slurp_prepare.json"
PREPARE_VERSION = 2  # bump when the output format changes, so old manifests are re-prepared
SAMPLE_RATE = 16000
REQUIRED_FIELDS = ("slurp_id", "sentence", "scenario", "action", "recordings")


@dataclass(frozen=True)
class Source:
    """One annotation file and the audio folder its recordings are in."""

    jsonl: str
    audio: str


# Output split -> its sources, in the order recordings are claimed (the first listing of a file wins).
SPLITS: dict[str, tuple[Source, ...]] = {
    "train": (Source("train.jsonl", "slurp_real"), Source("train_synthetic.jsonl", "slurp_synth")),
    "dev": (Source("devel.jsonl", "slurp_real"),),
    "test": (Source("test.jsonl", "slurp_real"),),
}


def find_annotations(data_folder: Path) -> Path:
    """The folder holding the four jsonl files: ``dataset/slurp`` or ``slurp/dataset/slurp``."""
    needed = [source.jsonl for sources in SPLITS.values() for source in sources]
    for relative in ANNOTATION_FOLDERS:
        folder = data_folder / relative
        if all((folder / name).is_file() for name in needed):
            return folder
    raise FileNotFoundError(
        f"{data_folder} holds no SLURP annotations: expected {', '.join(needed)} in "
        f"{' or '.join(str(data_folder / r) for r in ANNOTATION_FOLDERS)}. Clone "
        "https://github.com/pswietojanski/slurp into the SLURP root (or copy its dataset/slurp folder there)."
    )


def read_records(path: Path) -> list[tuple[int, dict]]:
    """(line number, record) of a jsonl file; a malformed line is an error naming the file and line."""
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not a JSON line ({err})") from err
            missing = [field for field in REQUIRED_FIELDS if field not in record]
            if missing:
                raise ValueError(f"{path}:{number}: SLURP record without {', '.join(missing)}")
            if not isinstance(record["recordings"], list):
                raise ValueError(f"{path}:{number}: 'recordings' must be a list of {{\"file\": ...}} entries")
            records.append((number, record))
    return records


def intent_label(record: dict) -> str:
    """``scenario_action``: the label the reference and ESPnet use (the ``intent`` field may differ)."""
    return f"{record['scenario']}_{record['action']}"


def _source_rows(
    data_folder: Path, annotations: Path, source: Source, seen: dict[str, str], progress: tqdm
) -> tuple[list[dict[str, str]], int]:
    """Rows of one jsonl file and how many of its listings were recordings already listed."""
    audio_folder = data_folder / source.audio
    if not audio_folder.is_dir():
        raise FileNotFoundError(
            f"{audio_folder} is missing: unpack the SLURP audio archive "
            f"({'slurp_synth.tar.gz' if source.audio == 'slurp_synth' else 'slurp_real.tar.gz'}) into "
            f"{data_folder}"
        )
    jsonl = annotations / source.jsonl
    rows, duplicates = [], 0
    for number, record in read_records(jsonl):
        for recording in record["recordings"]:
            name = recording.get("file") if isinstance(recording, dict) else None
            if not isinstance(name, str) or not name:
                raise ValueError(
                    f"{jsonl}:{number}: a recordings entry without a file name ({recording!r}); each entry "
                    'must be {"file": "audio-....flac", ...}: fix the line or remove the entry'
                )
            key = f"{source.audio}/{name}"
            if key in seen:
                duplicates += 1
                logger.debug("%s:%d: %s already listed at %s; kept once", jsonl, number, name, seen[key])
                continue
            seen[key] = f"{jsonl.name}:{number}"
            path = audio_folder / name
            if not path.is_file():
                raise FileNotFoundError(
                    f"Recording {name} listed at {jsonl}:{number} is not in {audio_folder}: is the audio "
                    "archive fully unpacked?"
                )
            info = listed_audio_info(path, SAMPLE_RATE, "SLURP", f"{jsonl}:{number}")
            progress.update()
            rows.append(
                {
                    "ID": f"{source.audio.removeprefix('slurp_')}-{Path(name).stem}",
                    "duration": f"{info.duration:.3f}",
                    "wav": f"$data_root/{source.audio}/{name}",
                    "slurp_id": str(record["slurp_id"]),
                    "scenario": record["scenario"],
                    "action": record["action"],
                    "intent": intent_label(record),
                    "transcript": " ".join(record["sentence"].split()),
                }
            )
    return rows, duplicates


def prepare_slurp(data_folder: str | Path, save_folder: str | Path, skip_prep: bool = False) -> None:
    """Write ``train.csv``, ``dev.csv``, ``test.csv`` and the label files for SLURP into ``save_folder``.

    Nothing is done when the outputs exist and were made from the same ``data_folder`` (recorded in
    ``slurp_prepare.json``, written last).
    """
    if skip_prep:
        return
    data_folder, save_folder = Path(data_folder).resolve(), Path(save_folder)
    if not data_folder.is_dir():
        raise FileNotFoundError(f"SLURP data_folder {data_folder} does not exist")
    options = {"version": PREPARE_VERSION, "data_folder": str(data_folder)}
    options_path = save_folder / OPTIONS_FILE
    outputs = [save_folder / f"{split}.csv" for split in SPLITS]
    outputs += [save_folder / name for name in LABEL_FILES.values()]
    if is_prepared(options_path, options, outputs):
        logger.info("SLURP manifests in %s are up to date, skipping preparation", save_folder)
        return
    annotations = find_annotations(data_folder)
    seen: dict[str, str] = {}
    split_rows: dict[str, list[dict[str, str]]] = {}
    with tqdm(desc="SLURP recordings", unit="file") as progress:
        for split, sources in SPLITS.items():
            split_rows[split] = []
            for source in sources:
                rows, duplicates = _source_rows(data_folder, annotations, source, seen, progress)
                split_rows[split] += rows
                if duplicates:
                    logger.info(
                        "%s: %d recordings listed more than once, kept once", source.jsonl, duplicates
                    )
            if not split_rows[split]:
                raise ValueError(f"No recording for the {split} split in {annotations}")
    write_labelled_manifests(
        save_folder,
        CSV_COLUMNS,
        split_rows,
        "intent",
        LABEL_FILE,
        "intent",
        options_path,
        options,
        more_labels={key: (name, key) for key, name in LABEL_FILES.items() if key != "intent"},
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data_folder", required=True, help="SLURP root (slurp_real/, slurp_synth/, ...)")
    parser.add_argument("--save_folder", required=True, help="output folder (manifests, label files)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    prepare_slurp(args.data_folder, args.save_folder)


if __name__ == "__main__":
    main()
