"""Prepare the user's own manifest CSVs for recipes/CSV: check them and write the task's manifests.

Input: three CSV files (train, valid, test), one row per utterance::

    ID,wav,wrd                      # CTC (task: ctc), target column `wrd`
    ID,wav,label                    # classification (task: classification), target column `label_column`
    ID,duration,wav,start,stop,wrd  # optional columns: duration (s), start/stop (s into the file)

``wav`` is an absolute path, a path relative to the CSV file's folder, or ``$data_root/...`` (replaced by
``data_folder``). Empty ``duration`` is read from the audio header; empty ``start``/``stop`` mean the whole
file. Output in ``save_folder``: ``train.csv``, ``dev.csv``, ``test.csv`` (``ID, duration, wav, start,
stop`` then ``wrd`` or ``class_name`` (the label), absolute paths) and, fixed at the first preparation (a
later one that would change them is an error), ``labels.txt`` (classification: one label per line, line
i = class i) or ``characters.txt`` (CTC with ``characters`` unset: every character of the three manifests'
transcripts, one per line; a character only dev or test use is then an output the model never learns, not
a crash). A label seen only in valid/test is a warning; every other problem (missing column, missing or
unreadable audio, empty split, non-numeric duration/start/stop, a transcript character outside the
character set) stops here, naming the
file, line and column, before any model is built.

Run alone: ``python prepare.py --train_csv a.csv --valid_csv b.csv --test_csv c.csv --save_folder DIR``.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
from pathlib import Path

from cald_brain.data.manifests import (
    ManifestError,
    fix_labels,
    is_prepared,
    mark_prepared,
    normalize_manifest,
    read_labels,
    write_csv_atomic,
    write_labelled_manifests,
)

logger = logging.getLogger(__name__)

TASKS = ("ctc", "classification")
SPLITS = {"train": "train_csv", "dev": "valid_csv", "test": "test_csv"}  # output split: input option
LABEL_FILE = "labels.txt"
LABEL_KEY = "class_name"  # the prepared manifests' label column (the user's label_column)
CHARACTERS_FILE = "characters.txt"
OPTIONS_FILE = "csv_prepare.json"
PREPARE_VERSION = 1  # bump when the output format or the checks change
COLUMNS = ("ID", "duration", "wav", "start", "stop")


def _fingerprint(paths: list[Path]) -> str:
    """Digest of the input CSVs' paths, sizes and times: an edited manifest prepares again."""
    digest = hashlib.sha1()
    for path in paths:
        stat = path.stat()
        digest.update(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def check_characters(split_rows: dict[str, list[dict[str, str]]], sources: dict[str, Path], characters: str):
    """Every transcript character must be a CTC unit: the first one outside names its file and line."""
    allowed = set(characters)
    for split, rows in split_rows.items():
        for line, row in enumerate(rows, start=2):
            outside = sorted(set(row["wrd"]) - allowed)
            if outside:
                raise ManifestError(
                    f"{sources[split]}:{line}: column 'wrd' has character(s) {outside} outside the character "
                    f"set {characters!r}: add them to `characters` (and num_outputs), or fix the transcript"
                )


def prepare_csv(
    train_csv: str | Path,
    valid_csv: str | Path,
    test_csv: str | Path,
    save_folder: str | Path,
    task: str = "ctc",
    label_column: str = "label",
    characters: str | None = None,
    data_folder: str | Path | None = None,
    sample_rate: int = 16000,
    skip_prep: bool = False,
) -> str | None:
    """Check the three manifests and write the task's manifests into ``save_folder`` (module docstring).

    Returns the CTC character set (``characters``, or the one derived from the transcripts at the first
    preparation); None for classification. Nothing is rewritten when the outputs exist and were made
    from the same files with the same options.
    """
    if task not in TASKS:
        raise ManifestError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    save_folder = Path(save_folder)
    chars_file = save_folder / CHARACTERS_FILE
    if skip_prep:
        return characters if characters or task != "ctc" else "".join(read_labels(chars_file))
    sources = {
        split: Path(path) for split, path in zip(SPLITS, (train_csv, valid_csv, test_csv), strict=True)
    }
    target = "wrd" if task == "ctc" else label_column
    options = {
        "version": PREPARE_VERSION,
        "task": task,
        "target": target,
        "characters": characters,
        "data_folder": None if data_folder is None else str(data_folder),
        "sample_rate": sample_rate,
        "sources": {split: str(path.resolve()) for split, path in sources.items()},
        "files": _fingerprint([p for p in sources.values() if p.is_file()]),
    }
    options_path = save_folder / OPTIONS_FILE
    outputs = [save_folder / f"{split}.csv" for split in SPLITS]
    derived = task == "ctc" and not characters
    if is_prepared(options_path, options, outputs):
        logger.info("Manifests in %s are up to date, skipping preparation", save_folder)
        return "".join(read_labels(chars_file)) if derived else characters
    split_rows = {
        split: normalize_manifest(path, [target], data_folder, sample_rate) for split, path in sources.items()
    }
    if task == "classification":  # the label under LABEL_KEY: the pipeline's `label` is the class index
        split_rows = {
            split: [{**{c: row[c] for c in COLUMNS}, LABEL_KEY: row[target]} for row in rows]
            for split, rows in split_rows.items()
        }
        write_labelled_manifests(
            save_folder,
            (*COLUMNS, LABEL_KEY),
            split_rows,
            LABEL_KEY,
            LABEL_FILE,
            "label",
            options_path,
            options,
        )
        return None
    save_folder.mkdir(parents=True, exist_ok=True)
    options_path.unlink(missing_ok=True)  # written last: its presence marks a complete preparation
    if derived:
        every = {c for rows in split_rows.values() for row in rows for c in row["wrd"]}
        fix_labels(chars_file, sorted(every), "character")
        characters = "".join(read_labels(chars_file))
        logger.info("%d characters from the transcripts in %s", len(characters), chars_file)
    check_characters(split_rows, sources, characters)
    for split, rows in split_rows.items():
        write_csv_atomic(save_folder / f"{split}.csv", (*COLUMNS, target), rows)
        logger.info(
            "%s.csv: %d rows, %.2f h", split, len(rows), sum(float(r["duration"]) for r in rows) / 3600
        )
    mark_prepared(options_path, options)
    return characters


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    for option in SPLITS.values():
        parser.add_argument(f"--{option}", required=True)
    parser.add_argument("--save_folder", required=True, help="where train/dev/test.csv are written")
    parser.add_argument("--task", default="ctc", choices=TASKS)
    parser.add_argument("--label_column", default="label", help="classification: the label column")
    parser.add_argument("--characters", help="CTC: the character set (default: the transcripts')")
    parser.add_argument("--data_folder", help="the value of $data_root in the wav column")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    prepare_csv(
        args.train_csv,
        args.valid_csv,
        args.test_csv,
        args.save_folder,
        args.task,
        args.label_column,
        args.characters,
        args.data_folder,
    )


if __name__ == "__main__":
    main()
