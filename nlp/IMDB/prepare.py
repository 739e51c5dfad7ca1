"""Prepare the IMDB movie-review corpus (the extracted ``aclImdb`` folder) for the IMDB recipe.

Reads ``{train,test}/{pos,neg}/<id>_<rating>.txt`` (one review per file, on one line); ``train/unsup/`` (the
unlabelled reviews) and the top-level extras (``imdb.vocab``, ``labeledBow.feat``, ...) are ignored. The
text is kept as the files hold it, ``<br />`` tags included (the reference trains on the raw text);
``strip_line_breaks=True`` replaces them by spaces and collapses runs of whitespace. A dev split is held out
from train deterministically: for each class, the files sorted by id are shuffled with `seed` and the first
`dev_fraction` of them go to dev (the reference evaluates on test only; the held-out dev set selects the best
checkpoint here, test is reported).

Writes ``train.json``, ``dev.json`` and ``test.json`` into ``save_folder``::

    {"train-pos-0_9": {"text": "...", "label": 1, "rating": 9}, ...}   (label 0 = neg, 1 = pos)

Run alone with ``python prepare.py --data_folder /path/aclImdb --save_folder DIR``.
"""

from __future__ import annotations

import argparse
import logging
import random
import re
from pathlib import Path
from typing import Any

from cald_brain.data.text import prepared_with, write_manifests
from cald_brain.scripts import load_recipe_module

IMDB_TASK = load_recipe_module(Path(__file__).parent, "tasks").IMDB_TASK

logger = logging.getLogger(__name__)

PREPARE_VERSION = 2  # bump when the manifest format changes, so old manifests are prepared again
_REVIEW_FILE = re.compile(r"^(\d+)_(\d+)\.txt$")
_LINE_BREAK = re.compile(r"<br\s*/?>", flags=re.IGNORECASE)


def clean_review(text: str) -> str:
    """One review's text with `<br />` breaks turned into spaces and runs of whitespace collapsed."""
    return " ".join(_LINE_BREAK.sub(" ", text).split())


def read_class(
    folder: Path, split: str, label: str, strip_line_breaks: bool = False
) -> list[tuple[str, dict[str, Any]]]:
    """(id, item) of every review file in `folder`, sorted by review id (text raw, or `clean_review`'s with
    `strip_line_breaks`); a folder without any is an error (a split with one class only would train a
    classifier that never predicts the other)."""
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{folder} not found: --data_folder must be the extracted aclImdb folder (holding "
            "train/pos, train/neg, test/pos, test/neg)"
        )
    reviews = []
    for path in folder.iterdir():
        match = _REVIEW_FILE.match(path.name)
        if match is None:
            raise ValueError(f"{path}: not an IMDB review file name (<id>_<rating>.txt)")
        text = path.read_text(encoding="utf-8")
        if strip_line_breaks:
            text = clean_review(text)
        if not text.strip():
            raise ValueError(f"{path} is empty; is the corpus fully extracted?")
        item = {"text": text, "label": IMDB_TASK.labels.index(label), "rating": int(match.group(2))}
        reviews.append((int(match.group(1)), (f"{split}-{label}-{path.stem}", item)))
    if not reviews:
        raise ValueError(
            f"{folder} holds no review file (<id>_<rating>.txt): the {split} split would have no {label!r} "
            "review. Extract the aclImdb archive completely (each of train/pos, train/neg, test/pos, "
            "test/neg holds 12,500 reviews)"
        )
    return [entry for _, entry in sorted(reviews)]


def prepare_imdb(
    data_folder: str | Path,
    save_folder: str | Path,
    dev_fraction: float = 0.1,
    seed: int = 0,
    skip_prep: bool = False,
    strip_line_breaks: bool = False,
) -> None:
    """Write the train/dev/test manifests (see the module docstring) into `save_folder`.

    Nothing is done when they exist and were made from the same folder with the same dev split.
    """
    if skip_prep:
        return
    if not 0.0 < dev_fraction < 1.0:
        raise ValueError(f"dev_fraction must be in (0, 1), got {dev_fraction}")
    data_folder = Path(data_folder).resolve()
    options = {
        "version": PREPARE_VERSION,
        "data_folder": str(data_folder),
        "dev_fraction": dev_fraction,
        "seed": seed,
        "strip_line_breaks": strip_line_breaks,
    }
    if prepared_with(save_folder, options, ("train", "dev", "test")):
        logger.info("IMDB manifests in %s are up to date, skipping preparation", save_folder)
        return
    manifests: dict[str, dict[str, dict[str, Any]]] = {"train": {}, "dev": {}, "test": {}}
    for label in IMDB_TASK.labels:
        train = read_class(data_folder / "train" / label, "train", label, strip_line_breaks)
        random.Random(f"{seed}-{label}").shuffle(train)
        held_out = round(dev_fraction * len(train))
        manifests["dev"].update(train[:held_out])
        manifests["train"].update(train[held_out:])
        manifests["test"].update(read_class(data_folder / "test" / label, "test", label, strip_line_breaks))
    for name, items in manifests.items():
        logger.info("IMDB %s: %d reviews", name, len(items))
    write_manifests(save_folder, options, manifests)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data_folder", required=True)
    parser.add_argument("--save_folder", required=True)
    parser.add_argument("--dev_fraction", type=float, default=0.1)
    parser.add_argument("--strip_line_breaks", action="store_true", help="replace <br /> tags by spaces")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    prepare_imdb(
        args.data_folder, args.save_folder, args.dev_fraction, strip_line_breaks=args.strip_line_breaks
    )


if __name__ == "__main__":
    main()
