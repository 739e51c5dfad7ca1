"""Prepare TED-LIUM (release 3, or release 2) for SpeechBrain recipes.

Writes ``train.csv``, ``dev.csv`` and ``test.csv`` with one row per transcribed STM segment::

    ID,duration,wav,start,stop,spk_id,wrd
    AlGore_2009-0001730-0002105,3.75,$data_root/legacy/train/sph/AlGore_2009.sph,17.3,21.05,AlGore_2009,...

``wav`` is relative to ``$data_root`` (load with ``DynamicItemDataset.from_csv(path, replacements=
{"data_root": data_folder})``) and ``start``/``stop`` are seconds into the talk's SPH file: no audio is cut
or copied, recipes read the segment by time (``cald_brain.data.audio_pipeline``). Since only STM files and
SPH headers are read, preparing the full corpus takes seconds and needs no ``parallel_map``.

Run alone with ``python prepare.py --data_folder /path/to/TEDLIUM_release-3 --save_folder DIR``.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

from cald_brain.data.audio import audio_info

logger = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")
REPARTITIONS = ("legacy", "speaker-adaptation")
CSV_COLUMNS = ("ID", "duration", "wav", "start", "stop", "spk_id", "wrd")
OPTIONS_FILE = "tedlium_prepare.json"
PREPARE_VERSION = 1  # bump when the output format changes, so old manifests are re-prepared
SAMPLE_RATE = 16000
# STM times have two decimals: a segment may end this far past the audio, it is then cut at the end of file.
END_TOLERANCE = 0.05
# A talk that is sung rather than spoken; SpeechBrain's TED-LIUM 2 recipe leaves it out too.
EXCLUDED_TALKS = frozenset({"JillSobuleMANHATTANINJANUARY_2006"})
IGNORED_TEXT = "ignore_time_segment_in_scoring"

# Tokens that are not words: {NOISE}, {BREATH}, <unk>, <sil>, [noise], and bare "(2)" variant marks.
_NON_WORD = re.compile(r"^(\{[^}]*\}|<[^>]*>|\[[^\]]*\]|\(\d+\))$")
_VARIANT_MARK = re.compile(r"\(\d+\)$")  # "the(2)": second pronunciation of "the"
# Suffixes TED-LIUM splits off: "it 's", "don 't", "we 're", "they 've", "i 'll", "i 'd", "i 'm", "do n't",
# and the plural possessive "students '".
_CLITICS = frozenset({"'s", "'t", "'re", "'ve", "'ll", "'d", "'m", "n't", "'"})


class STMFormatError(ValueError):
    """A line of an STM file does not follow ``talk channel speaker start end <label> words...``."""


@dataclass(frozen=True)
class Segment:
    """One STM line."""

    talk: str
    speaker: str
    start: float
    stop: float
    text: str
    line: int


def normalize_transcript(text: str) -> str:
    """Turn a TED-LIUM transcript into plain lowercase words.

    Drops non-word tokens (``{NOISE}``, ``<unk>``, ``<sil>``, ``(2)``), strips pronunciation-variant marks
    (``the(2)`` -> ``the``), rejoins split contractions (``it 's`` -> ``it's``, ``do n't`` -> ``don't``) and
    collapses whitespace.
    """
    words: list[str] = []
    for token in text.lower().split():
        if _NON_WORD.match(token):
            continue
        token = _VARIANT_MARK.sub("", token)
        if token in _CLITICS and words:
            words[-1] += token
        else:
            words.append(token)
    return " ".join(words)


def parse_stm(path: Path) -> Iterator[Segment]:
    """Yield the segments of an STM file; a malformed line raises an error naming the file and line."""
    with open(path, encoding="utf-8") as stm:
        for number, line in enumerate(stm, start=1):
            if not line.strip() or line.startswith(";;"):  # blank lines and STM comments
                continue
            fields = line.split()
            problem = None
            if len(fields) < 6:
                problem = f"expected at least 6 fields, got {len(fields)}"
            elif not (fields[5].startswith("<") and fields[5].endswith(">")):
                problem = f"field 6 should be a label like <o,f0,male>, got {fields[5]!r}"
            else:
                try:
                    start, stop = float(fields[3]), float(fields[4])
                except ValueError:
                    problem = f"start/end times {fields[3]!r} {fields[4]!r} are not numbers"
                else:
                    if not 0 <= start <= stop:
                        problem = f"segment times {start} {stop} are negative or reversed"
            if problem:
                raise STMFormatError(
                    f"{path}:{number}: malformed STM line ({problem}); expected "
                    f"'talk channel speaker start end <label> words...', got {line.strip()!r}"
                )
            yield Segment(fields[0], fields[2], start, stop, " ".join(fields[6:]), number)


def find_split_folders(data_folder: Path, split: str) -> dict[str, Path]:
    """Folders holding ``sph/`` and ``stm/`` for train, dev and test, for either release layout."""
    if split not in REPARTITIONS:
        raise ValueError(f"split must be one of {REPARTITIONS}, got {split!r}")
    release3 = {name: data_folder / split / name for name in SPLITS}
    release2 = {name: data_folder / name for name in SPLITS}
    for folders in (release3, release2):
        if any((folder / "stm").is_dir() for folder in folders.values()):
            break
    else:
        raise FileNotFoundError(
            f"{data_folder} is not a TED-LIUM release: expected {data_folder}/{split}/{{train,dev,test}}/"
            f"{{sph,stm}} (TEDLIUM_release-3) or {data_folder}/{{train,dev,test}}/{{sph,stm}} "
            "(TEDLIUM_release2). Point data_folder at the extracted TEDLIUM_release-3 folder."
        )
    if folders is release2 and split != "legacy":
        raise ValueError(
            f"{data_folder} is a TED-LIUM 2 release: it only has the 'legacy' split, not {split!r}"
        )
    for folder in folders.values():
        for sub in ("sph", "stm"):
            if not (folder / sub).is_dir():
                raise FileNotFoundError(f"{folder / sub} is missing; is the TED-LIUM corpus fully extracted?")
    return folders


def _split_rows(
    data_folder: Path, folder: Path, min_duration: float, min_words: int, progress: tqdm
) -> list[dict[str, str]]:
    """CSV rows of one split, checking every kept segment against its audio file."""
    rows: list[dict[str, str]] = []
    seen: dict[str, str] = {}
    for stm in sorted((folder / "stm").glob("*.stm")):
        progress.update()
        if stm.stem in EXCLUDED_TALKS:
            continue
        sph = folder / "sph" / f"{stm.stem}.sph"
        info = audio_info(sph)
        if info.sample_rate != SAMPLE_RATE:
            raise ValueError(f"{sph} is sampled at {info.sample_rate} Hz; TED-LIUM audio is {SAMPLE_RATE} Hz")
        for segment in parse_stm(stm):
            if segment.speaker == "inter_segment_gap" or segment.text == IGNORED_TEXT:
                continue
            if segment.stop > info.duration + END_TOLERANCE:
                raise ValueError(
                    f"{stm}:{segment.line}: segment {segment.start}-{segment.stop} s ends after the end of "
                    f"{sph} ({info.duration:.2f} s); the STM and SPH files do not match (mixed releases?)"
                )
            stop = min(segment.stop, info.duration)
            words = normalize_transcript(segment.text)
            if stop - segment.start < min_duration or len(words.split()) < min_words:
                continue
            utt_id = f"{stm.stem}-{round(segment.start * 100):07d}-{round(segment.stop * 100):07d}"
            if utt_id in seen:
                raise ValueError(
                    f"{stm}:{segment.line}: duplicate segment {utt_id} (first at {seen[utt_id]})"
                )
            seen[utt_id] = f"{stm}:{segment.line}"
            rows.append(
                {
                    "ID": utt_id,
                    "duration": f"{stop - segment.start:.3f}",
                    "wav": f"$data_root/{sph.relative_to(data_folder).as_posix()}",
                    "start": f"{segment.start:.3f}",
                    "stop": f"{stop:.3f}",
                    "spk_id": segment.speaker,
                    "wrd": words,
                }
            )
    return rows


def _write_atomic(path: Path, write: Callable[[TextIO], None]) -> None:
    """Write through ``path.tmp`` then rename, so an interrupted run never leaves a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        write(handle)
    os.replace(tmp, path)


def prepare_tedlium(
    data_folder: str | Path,
    save_folder: str | Path,
    split: str = "legacy",
    skip_prep: bool = False,
    min_duration: float = 1.0,
    min_words: int = 2,
) -> None:
    """Write ``train.csv``, ``dev.csv`` and ``test.csv`` for a TED-LIUM release into ``save_folder``.

    Arguments
    ---------
    data_folder : the extracted ``TEDLIUM_release-3`` (or ``TEDLIUM_release2``) folder.
    save_folder : where the CSV files (and the options they were made with) are written.
    split : ``"legacy"`` (dev/test of TED-LIUM 2, the usual benchmark) or ``"speaker-adaptation"``.
    skip_prep : do nothing, e.g. when the CSV files were made elsewhere.
    min_duration, min_words : segments shorter than this (seconds, words after normalisation) are dropped,
        as are ``ignore_time_segment_in_scoring`` segments.

    Nothing is done when the outputs exist and were made with the same options (kept in
    ``tedlium_prepare.json``); changing any option, e.g. the split, prepares again.
    """
    if skip_prep:
        return
    data_folder, save_folder = Path(data_folder).resolve(), Path(save_folder)
    options = {
        "version": PREPARE_VERSION,
        "data_folder": str(data_folder),
        "split": split,
        "min_duration": min_duration,
        "min_words": min_words,
    }
    options_path = save_folder / OPTIONS_FILE
    outputs = [save_folder / f"{name}.csv" for name in SPLITS]
    if all(p.is_file() for p in outputs) and options_path.is_file():
        if json.loads(options_path.read_text()) == options:
            logger.info("TED-LIUM manifests in %s are up to date, skipping preparation", save_folder)
            return
    folders = find_split_folders(data_folder, split)
    save_folder.mkdir(parents=True, exist_ok=True)
    options_path.unlink(missing_ok=True)  # written last: its presence marks a complete preparation
    n_talks = sum(len(list((folder / "stm").glob("*.stm"))) for folder in folders.values())
    with tqdm(total=n_talks, desc=f"TED-LIUM {split}", unit="talk") as progress:
        for name, output in zip(SPLITS, outputs, strict=True):
            rows = _split_rows(data_folder, folders[name], min_duration, min_words, progress)
            if not rows:
                raise ValueError(f"No usable segment in {folders[name]}/stm; is the corpus fully extracted?")

            def write(handle: TextIO, rows: list[dict[str, str]] = rows) -> None:
                writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
                writer.writeheader()
                writer.writerows(rows)

            _write_atomic(output, write)
            hours = sum(float(row["duration"]) for row in rows) / 3600
            logger.info("%s: %d segments, %.2f h", output, len(rows), hours)
    _write_atomic(options_path, lambda handle: json.dump(options, handle, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data_folder", required=True, help="extracted TEDLIUM_release-3 folder")
    parser.add_argument("--save_folder", required=True, help="where train/dev/test.csv are written")
    parser.add_argument("--split", default="legacy", choices=REPARTITIONS)
    parser.add_argument("--min_duration", type=float, default=1.0, help="drop shorter segments (seconds)")
    parser.add_argument("--min_words", type=int, default=2, help="drop segments with fewer words")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    prepare_tedlium(args.data_folder, args.save_folder, args.split, False, args.min_duration, args.min_words)


if __name__ == "__main__":
    main()
