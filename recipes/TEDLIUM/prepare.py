"""Prepare TED-LIUM (release 3, or release 2) for SpeechBrain recipes.

Writes ``train.csv``, ``dev.csv`` and ``test.csv`` with one row per transcribed STM segment::

    ID,duration,wav,start,stop,spk_id,wrd
    AlGore_2009-0001730-0002105,3.75,$data_root/legacy/train/sph/AlGore_2009.sph,17.3,21.05,AlGore_2009,...

``wav`` is relative to ``$data_root`` (load with ``DynamicItemDataset.from_csv(path, replacements=
{"data_root": data_folder})``) and ``start``/``stop`` are seconds into the talk's SPH file: no audio is cut
or copied, recipes read the segment by time (``cald_brain.data.audio_pipeline``). Since only STM files and
SPH headers are read, preparing the full corpus takes seconds and needs no ``parallel_map``.

Preparation checks what training will need, so that a bad file stops it here and not hours into training:
every SPH file must hold all the frames its header announces (a truncated file is named), and with
``characters`` given every transcript character must be in that output alphabet. ``unknown_characters`` says
what to do with the others: ``error`` (default) stops and lists them, each with a count and an example
``file:line``; ``drop`` leaves out the segments holding any; ``map`` first replaces accented letters by their
base letter (``é`` -> ``e``, Unicode decomposition), then drops the segments still holding unknown
characters. Mapped and dropped characters are counted in the log with an example ``file:line``.

Run alone with ``python prepare.py --data_folder /path/to/TEDLIUM_release-3 --save_folder DIR``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

from cald_brain.data.audio import audio_info, check_not_truncated

logger = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")
REPARTITIONS = ("legacy", "speaker-adaptation")
CSV_COLUMNS = ("ID", "duration", "wav", "start", "stop", "spk_id", "wrd")
OPTIONS_FILE = "tedlium_prepare.json"
PREPARE_VERSION = 2  # bump when the output format or the checks change, so old manifests are re-prepared
SAMPLE_RATE = 16000
# STM times have two decimals: a segment may end this far past the audio, it is then cut at the end of file.
END_TOLERANCE = 0.05
# A talk that is sung rather than spoken; SpeechBrain's TED-LIUM 2 recipe leaves it out too.
EXCLUDED_TALKS = frozenset({"JillSobuleMANHATTANINJANUARY_2006"})
IGNORED_TEXT = "ignore_time_segment_in_scoring"
UNKNOWN_CHARACTER_RULES = ("error", "drop", "map")

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


def strip_accents(text: str) -> str:
    """Accented letters to their base letter (Unicode decomposition without the combining marks)."""
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


@dataclass
class AlphabetCheck:
    """Checks transcripts against the output alphabet with an `unknown_characters` rule, and counts what it
    mapped and dropped (each with a first example `file:line`)."""

    characters: str | None
    rule: str = "error"
    unknown: Counter = field(default_factory=Counter)
    mapped: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    dropped: int = 0

    def __post_init__(self):
        if self.rule not in UNKNOWN_CHARACTER_RULES:
            raise ValueError(
                f"unknown_characters must be one of {', '.join(UNKNOWN_CHARACTER_RULES)}, got {self.rule!r}"
            )

    def apply(self, words: str, where: str) -> str | None:
        """`words` as the manifest should hold them, or None to leave the segment out."""
        if self.characters is None:
            return words
        if self.rule == "map":
            out = []
            for char in words:
                new = char if char in self.characters else strip_accents(char)
                if new != char:
                    key = f"{char!r}->{new!r}"
                    self.mapped[key] += 1
                    self.examples.setdefault(key, where)
                out.append(new)
            words = "".join(out)
        outside = sorted({c for c in words if c not in self.characters})
        for char in outside:
            self.unknown[char] += 1
            self.examples.setdefault(char, where)
        if outside and self.rule != "error":
            self.dropped += 1
            return None
        return words

    def summary(self, counts: Counter) -> str:
        """`'3' x5 (e.g. talk.stm:12), ...`, most frequent first."""
        shown = (
            f"{key if '->' in key else repr(key)} x{n} (e.g. {self.examples[key]})"
            for key, n in counts.most_common()
        )
        return ", ".join(shown)

    def report(self, alphabet_name: str = "characters") -> None:
        """Log what was mapped and dropped; with the `error` rule, raise listing the unknown characters."""
        if self.mapped:
            logger.info("Transcript characters mapped to the alphabet: %s", self.summary(self.mapped))
        if not self.unknown:
            return
        if self.rule == "error":
            raise ValueError(
                f"Transcript characters outside the output alphabet {alphabet_name}={self.characters!r}: "
                f"{self.summary(self.unknown)} (segments holding them). Training would fail on them: add "
                "them to the alphabet, or set unknown_characters: drop (leave those segments out) or map "
                "(accented letters to their base letter, then drop)."
            )
        logger.warning(
            "%d segments left out for characters outside the output alphabet: %s",
            self.dropped,
            self.summary(self.unknown),
        )


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
    data_folder: Path,
    folder: Path,
    min_duration: float,
    min_words: int,
    alphabet: AlphabetCheck,
    progress: tqdm,
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
        check_not_truncated(sph, info)
        for segment in parse_stm(stm):
            if segment.speaker == "inter_segment_gap" or segment.text == IGNORED_TEXT:
                continue
            if segment.stop > info.duration + END_TOLERANCE:
                raise ValueError(
                    f"{stm}:{segment.line}: segment {segment.start}-{segment.stop} s ends after the end of "
                    f"{sph} ({info.duration:.2f} s), which is complete: this STM file does not belong to "
                    "this audio (edited, or taken from another release); restore both from the same release"
                )
            stop = min(segment.stop, info.duration)
            words = normalize_transcript(segment.text)
            if stop - segment.start < min_duration or len(words.split()) < min_words:
                continue
            words = alphabet.apply(words, f"{stm}:{segment.line}")
            if words is None:
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


def _files_fingerprint(folders: dict[str, Path]) -> str:
    """A digest of the names, sizes and modification times of every STM and SPH file: a file replaced or cut
    after preparation makes the next start prepare (and check) again instead of skipping."""
    digest = hashlib.sha1()
    for folder in folders.values():
        for path in sorted([*(folder / "stm").glob("*.stm"), *(folder / "sph").glob("*.sph")]):
            stat = path.stat()
            digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


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
    characters: str | None = None,
    unknown_characters: str = "error",
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
    characters : the output alphabet (the recipe's ``characters``); None checks no transcript character.
    unknown_characters : ``error``, ``drop`` or ``map``: what to do with transcript characters outside
        ``characters`` (module docstring).

    Nothing is done when the outputs exist and were made with the same options and from the same files
    (options and a digest of file sizes and times are kept in ``tedlium_prepare.json``); changing any option,
    e.g. the split, or any STM/SPH file prepares again.
    """
    if skip_prep:
        return
    alphabet = AlphabetCheck(characters, unknown_characters)
    data_folder, save_folder = Path(data_folder).resolve(), Path(save_folder)
    folders = find_split_folders(data_folder, split)
    options = {
        "version": PREPARE_VERSION,
        "data_folder": str(data_folder),
        "split": split,
        "min_duration": min_duration,
        "min_words": min_words,
        "characters": characters,
        "unknown_characters": unknown_characters,
        "files": _files_fingerprint(folders),
    }
    options_path = save_folder / OPTIONS_FILE
    outputs = [save_folder / f"{name}.csv" for name in SPLITS]
    if all(p.is_file() for p in outputs) and options_path.is_file():
        if json.loads(options_path.read_text()) == options:
            logger.info("TED-LIUM manifests in %s are up to date, skipping preparation", save_folder)
            return
    save_folder.mkdir(parents=True, exist_ok=True)
    options_path.unlink(missing_ok=True)  # written last: its presence marks a complete preparation
    n_talks = sum(len(list((folder / "stm").glob("*.stm"))) for folder in folders.values())
    split_rows = {}
    with tqdm(total=n_talks, desc=f"TED-LIUM {split}", unit="talk") as progress:
        for name in SPLITS:
            split_rows[name] = _split_rows(
                data_folder, folders[name], min_duration, min_words, alphabet, progress
            )
    alphabet.report()
    for (name, rows), output in zip(split_rows.items(), outputs, strict=True):
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
    parser.add_argument(
        "--characters", help="output alphabet to check transcripts against (default: no check)"
    )
    parser.add_argument("--unknown_characters", default="error", choices=UNKNOWN_CHARACTER_RULES)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    prepare_tedlium(
        args.data_folder,
        args.save_folder,
        args.split,
        False,
        args.min_duration,
        args.min_words,
        args.characters,
        args.unknown_characters,
    )


if __name__ == "__main__":
    main()
