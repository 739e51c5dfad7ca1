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


class ManifestError(ValueError):
    """A user's manifest CSV cannot be used: the message names the file, the line and the column."""


def _seconds_field(value: str, where: str, column: str) -> float | None:
    """A duration/start/stop cell as seconds (None when empty); a non-number names the cell."""
    if value.strip() == "":
        return None
    try:
        seconds = float(value)
    except ValueError:
        raise ManifestError(f"{where}: column {column!r} is {value!r}, not a number of seconds") from None
    if seconds < 0:
        raise ManifestError(f"{where}: column {column!r} is {value!r}, a negative number of seconds")
    return seconds


def normalize_manifest(
    csv_path: str | Path,
    targets: Sequence[str],
    data_root: str | Path | None = None,
    sample_rate: int = 16000,
) -> list[dict[str, str]]:
    """The rows of a user's manifest CSV as the speech task pipelines read them: ``ID, duration, wav, start,
    stop`` then the ``targets`` columns (e.g. ``wrd``, or a label column).

    Required columns: ``ID``, ``wav`` and ``targets``; ``duration``, ``start`` and ``stop`` are optional.
    ``wav`` becomes an absolute path: ``$data_root`` in it is replaced by ``data_root`` (SpeechBrain's
    convention), then a relative path is taken from the CSV's own folder. Every audio file's header is read
    (a missing or unreadable file is an error here, not mid-epoch; audio must be mono at ``sample_rate``
    Hz); an empty ``duration`` is computed from the header and ``start``/``stop`` (an empty ``start`` /
    ``stop`` means the beginning / end of the file). Every problem names the file, the line and the column.
    """
    from cald_brain.data.audio import listed_audio_info  # soundfile: only for speech manifests

    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise ManifestError(f"manifest {csv_path} does not exist")
    folder = csv_path.resolve().parent
    with open(csv_path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        missing = [c for c in ("ID", "wav", *targets) if c not in header]
        if missing:
            raise ManifestError(
                f"{csv_path}:1: missing column(s) {', '.join(missing)} (the header has {', '.join(header)}); "
                f"required: ID, wav, {', '.join(targets)}; optional: duration, start, stop"
            )
        rows, seen = [], {}
        for line, row in enumerate(reader, start=2):
            where = f"{csv_path}:{line}"
            utt_id = (row["ID"] or "").strip()
            if not utt_id:
                raise ManifestError(f"{where}: column 'ID' is empty")
            if utt_id in seen:
                raise ManifestError(f"{where}: column 'ID': {utt_id!r} is already at line {seen[utt_id]}")
            seen[utt_id] = line
            wav = (row["wav"] or "").strip()
            if "$data_root" in wav:
                if data_root is None:
                    raise ManifestError(f"{where}: column 'wav' uses $data_root: set data_folder (its value)")
                wav = wav.replace("$data_root", str(data_root))
            path = Path(wav) if Path(wav).is_absolute() else folder / wav
            try:
                info = listed_audio_info(path, sample_rate, "the recipe's (sample_rate)", where)
            except (OSError, RuntimeError) as err:
                raise ManifestError(
                    f"{where}: column 'wav' ({row['wav']!r}; relative paths start from {folder}): {err}"
                ) from err
            start = _seconds_field(row.get("start") or "", where, "start")
            stop = _seconds_field(row.get("stop") or "", where, "stop")
            duration = _seconds_field(row.get("duration") or "", where, "duration")
            if (start or 0.0) > (info.duration if stop is None else stop) or (
                stop is not None and stop > info.duration + 0.05
            ):
                raise ManifestError(
                    f"{where}: columns 'start'/'stop' ({start}, {stop}) are not a segment of {path} "
                    f"({info.duration:.3f} s)"
                )
            if duration is None:
                duration = (info.duration if stop is None else stop) - (start or 0.0)
            rows.append(
                {
                    "ID": utt_id,
                    "duration": f"{duration:.3f}",
                    "wav": str(path.resolve()),
                    "start": "" if start is None else f"{start:.3f}",
                    "stop": "" if stop is None else f"{min(stop, info.duration):.3f}",
                    **{column: row[column] or "" for column in targets},
                }
            )
    if not rows:
        raise ManifestError(f"{csv_path}: no rows after the header: every split needs at least one utterance")
    return rows
