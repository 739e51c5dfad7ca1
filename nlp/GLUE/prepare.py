"""Prepare one GLUE task folder (as distributed: ``train.tsv``, ``dev.tsv``, ``test.tsv``; MNLI
``dev_matched.tsv`` / ``dev_mismatched.tsv``) for the GLUE recipe.

Files are read the way the GLUE loaders read them: tab-separated, header row first (CoLA has none), no quote
handling, so a ``"`` inside a question stays a character. A row without exactly the header's number of
fields, or with a label outside the task's label set (an unparsable score for STS-B), is malformed: it is
skipped and counted in the log with its line numbers, never guessed at. The unlabelled ``test.tsv`` is not
used (GLUE test labels are not public; results are reported on dev, as the reference does).

Writes ``train.json`` and one manifest per labelled dev file into ``save_folder``::

    {"train-2": {"text": "hide new secretions from the parental units ", "label": 0}, ...}

Run alone with ``python prepare.py --task sst2 --data_folder /path/glue_data/SST-2 --save_folder DIR``.
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter
from pathlib import Path
from typing import Any

from cald_brain.data.text import prepared_with, read_tsv, write_manifests
from cald_brain.scripts import load_recipe_module
from cald_brain.tasks.text_classification import TextTask

glue_task = load_recipe_module(Path(__file__).parent, "tasks").glue_task

logger = logging.getLogger(__name__)

PREPARE_VERSION = 1  # bump when the manifest format changes, so old manifests are prepared again


def read_split(task: TextTask, path: Path) -> tuple[dict[str, dict[str, Any]], list[int]]:
    """Manifest items of one labelled GLUE file and the line numbers of its malformed rows."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: --data_folder must be the {task.folder} task folder as distributed "
            f"(holding {', '.join(f'{s}.tsv' for s in ('train', *task.dev_splits))})"
        )
    table = read_tsv(path, task.columns)
    needed = [c for c in (task.text, task.text_pair, task.label) if c is not None]
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise ValueError(
            f"{path}: header {table.columns} lacks {missing}; is this the {task.folder} folder for "
            f"--task={task.name}?"
        )
    items: dict[str, dict[str, Any]] = {}
    malformed = list(table.malformed)
    bad_labels: Counter[str] = Counter()
    for line, row in zip(table.lines, table.rows, strict=True):
        label = parse_label(task, row[task.label])
        if label is None:
            malformed.append(line)
            bad_labels[row[task.label]] += 1
            continue
        item = {"text": row[task.text], "label": label}
        if task.text_pair is not None:
            item["text_pair"] = row[task.text_pair]
        items[f"{path.stem}-{line}"] = item
    if not items:
        raise ValueError(
            f"{path}: no usable row: {why_unusable(task, table.columns, len(table.malformed), bad_labels)}"
        )
    if bad_labels:
        logger.warning("%s: labels outside the task's: %s", path, describe_labels(task, bad_labels))
    return items, sorted(malformed)


def describe_labels(task: TextTask, found: Counter[str]) -> str:
    """The values found in the label column (most common first) against those --task expects."""
    shown = ", ".join(f"{value!r} ({count} rows)" for value, count in found.most_common(5))
    expected = "a number (a similarity score)" if task.labels is None else " / ".join(map(repr, task.labels))
    return f"column {task.label!r} holds {shown}; --task={task.name} expects {expected}"


def why_unusable(task: TextTask, columns: list[str], malformed: int, bad_labels: Counter[str]) -> str:
    """Why a GLUE file gave no row: rows without the header's number of fields, or labels of another kind
    (e.g. words where the task's files hold class numbers)."""
    if not bad_labels:
        return (
            f"no line has the header's {len(columns)} tab-separated fields ({malformed} malformed lines); is "
            f"the file tab-separated, as distributed for --task={task.name}?"
        )
    return (
        f"{describe_labels(task, bad_labels)}. Map the labels to these values (as the GLUE distribution "
        "writes them), or check --task"
    )


def parse_label(task: TextTask, value: str) -> int | float | None:
    """Class index of a label string, the float score of a regression task, or None if invalid."""
    if task.labels is None:
        try:
            return float(value)
        except ValueError:
            return None
    return task.labels.index(value) if value in task.labels else None


def prepare_glue(
    data_folder: str | Path, save_folder: str | Path, task: str, skip_prep: bool = False
) -> None:
    """Write the manifests of GLUE task `task` (see the module docstring) into `save_folder`.

    Nothing is done when they exist and were made from the same folder and task.
    """
    if skip_prep:
        return
    spec = glue_task(task)
    data_folder = Path(data_folder).resolve()
    splits = ("train", *spec.dev_splits)
    options = {"version": PREPARE_VERSION, "data_folder": str(data_folder), "task": spec.name}
    if prepared_with(save_folder, options, splits):
        logger.info("GLUE %s manifests in %s are up to date, skipping preparation", spec.name, save_folder)
        return
    manifests = {}
    for split in splits:
        path = data_folder / f"{split}.tsv"
        items, malformed = read_split(spec, path)
        manifests[split] = items
        if malformed:
            shown = ", ".join(map(str, malformed[:20])) + (" ..." if len(malformed) > 20 else "")
            logger.warning("%s: %d malformed rows skipped (lines %s)", path, len(malformed), shown)
        logger.info("%s: %d rows", path, len(items))
    warn_untrained_labels(spec, manifests)
    write_manifests(save_folder, options, manifests)


def warn_untrained_labels(task: TextTask, manifests: dict[str, dict[str, dict[str, Any]]]) -> None:
    """A warning naming the classes that have no training row (the head never learns them)."""
    if task.labels is None:
        return
    trained = {item["label"] for item in manifests["train"].values()}
    counts = {
        name: Counter(task.labels[item["label"]] for item in items.values() if item["label"] not in trained)
        for name, items in manifests.items()
    }
    missing = sorted(label for i, label in enumerate(task.labels) if i not in trained)
    if missing:
        held_out = "; ".join(f"{name}: {dict(found)}" for name, found in counts.items() if found)
        logger.warning(
            "GLUE %s: no training row for the labels %s (rows in %s): the classifier never learns them; "
            "check that train.tsv is complete",
            task.name,
            missing,
            held_out or "no split",
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--task", required=True)
    parser.add_argument("--data_folder", required=True)
    parser.add_argument("--save_folder", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    prepare_glue(args.data_folder, args.save_folder, args.task)


if __name__ == "__main__":
    main()
