"""Writing a recipe's prepared manifests: atomic files, "already prepared" markers and label sets fixed at the
first preparation. Shared by the prepare scripts of the classification recipes (SLURP intents, VoxCeleb1
speakers), whose classifier heads are sized by a label set that must never silently change.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

logger = logging.getLogger(__name__)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` through ``path.tmp`` then rename, so an interrupted run never leaves a half-written
    file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_csv_atomic(path: Path, columns: Sequence[str], rows: Iterable[dict[str, str]]) -> None:
    """A CSV manifest (header ``columns``, one row per dict), written atomically."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def is_prepared(options_path: Path, options: dict, outputs: Iterable[Path]) -> bool:
    """True when every output exists and ``options_path`` (written last by a complete preparation) records
    the same options: the preparation can be skipped."""
    if not options_path.is_file() or not all(Path(p).is_file() for p in outputs):
        return False
    return json.loads(options_path.read_text(encoding="utf-8")) == options


def mark_prepared(options_path: Path, options: dict) -> None:
    """Record a complete preparation made with ``options`` (call after every output is written)."""
    write_atomic(options_path, json.dumps(options, indent=2))


def read_labels(path: Path) -> list[str]:
    """A label file written by `fix_labels`: one label per line, line i = class index i."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run the recipe's data preparation first")
    return path.read_text(encoding="utf-8").splitlines()


def fix_labels(path: Path, labels: Sequence[str], what: str) -> None:
    """Write the label set (one label per line, index = line) the first time; afterwards it is fixed.

    A classifier head trained on one label order would read another order's classes wrongly, so a later
    preparation whose labels differ from the file is an error instead of a silently reordered head.
    """
    labels = list(labels)
    if path.is_file():
        old = read_labels(path)
        if old == labels:
            return
        added, missing = sorted(set(labels) - set(old)), sorted(set(old) - set(labels))
        change = f"added {added[:5]}, missing {missing[:5]}" if added or missing else "same labels, new order"
        raise ValueError(
            f"{path} fixes the {what} set of an earlier preparation ({len(old)} labels); this data would "
            f"change it ({len(labels)} labels: {change}). Models trained on the old set would misread the "
            f"classes. Use a new save_folder, or delete {path} (and retrain from scratch) if the change is "
            "intended."
        )
    write_atomic(path, "".join(f"{label}\n" for label in labels))


def warn_untrained_labels(split_rows: dict[str, list[dict[str, str]]], label_key: str, what: str) -> None:
    """A warning naming the labels that have rows in other splits but none in ``train`` (with their counts):
    the classifier never learns them, so each of their items is an error it cannot avoid."""
    trained = {row[label_key] for row in split_rows.get("train", [])}
    counts: dict[str, Counter[str]] = {}
    for split, rows in split_rows.items():
        for row in rows:
            if row[label_key] not in trained:
                counts.setdefault(row[label_key], Counter())[split] += 1
    if counts:
        shown = "; ".join(
            f"{label} ({', '.join(f'{n} in {split}' for split, n in found.items())})"
            for label, found in sorted(counts.items())[:20]
        )
        logger.warning(
            "%d %s labels have no training item, so the classifier never learns them: %s%s",
            len(counts),
            what,
            shown,
            " ..." if len(counts) > 20 else "",
        )


def write_labelled_manifests(
    save_folder: Path,
    columns: Sequence[str],
    split_rows: dict[str, list[dict[str, str]]],
    label_key: str,
    label_file: str,
    what: str,
    options_path: Path,
    options: dict,
    more_labels: Mapping[str, tuple[str, str]] | None = None,
) -> None:
    """The outputs of a classification preparation: the label set of every split's rows (column
    ``label_key``, sorted) fixed in ``save_folder/label_file`` (`fix_labels`: an error before anything is
    written if it would change), likewise for each column of ``more_labels`` (column -> (label file, what)),
    one ``<split>.csv`` per split, then the "prepared" marker."""
    save_folder.mkdir(parents=True, exist_ok=True)
    options_path.unlink(missing_ok=True)  # written last: its presence marks a complete preparation
    label_sets = {label_key: (label_file, what), **(more_labels or {})}
    counts = {}
    for key, (file_name, kind) in label_sets.items():
        labels = sorted({row[key] for rows in split_rows.values() for row in rows})
        warn_untrained_labels(split_rows, key, kind)
        fix_labels(save_folder / file_name, labels, kind)
        counts[key] = len(labels)
    for split, rows in split_rows.items():
        write_csv_atomic(save_folder / f"{split}.csv", columns, rows)
        hours = sum(float(row["duration"]) for row in rows) / 3600
        logger.info("%s.csv: %d rows, %.2f h", split, len(rows), hours)
    for key, (file_name, kind) in label_sets.items():
        logger.info("%d %s labels in %s", counts[key], kind, save_folder / file_name)
    mark_prepared(options_path, options)
