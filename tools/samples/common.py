"""What the sample-corpus and tiny-model makers of ``tools/samples/`` share: repository paths, espeak-ng
speakers and synthesis, offline English text harvested from Python's own documentation, and the prose
templates of ``templates/`` that the makers fill in.

The makers load this file with ``cald_brain.scripts.load_script`` (as the tests load the makers), so no
``sys.path`` entry is needed. Everything here is deterministic for a given Python and espeak-ng version.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import importlib.util
import inspect
import io
import pkgutil
import random
import re
import shutil
import subprocess
import textwrap
import types
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "tests" / "samples"
TEMPLATES = Path(__file__).resolve().parent / "templates"
SAMPLE_RATE = 16000
ESPEAK = "espeak-ng"

# Pure-Python standard-library modules whose docstrings feed the sentence pool (plus pydoc's help topics).
# Kept fixed and import-safe (no GUI, no side effects) so the pool only depends on the Python version.
_DOC_MODULES = (
    "abc argparse ast asyncio base64 bisect calendar cmd codecs collections configparser contextlib copy csv "
    "dataclasses datetime decimal difflib doctest email enum filecmp fnmatch fractions ftplib functools "
    "getopt gettext glob graphlib gzip heapq hmac html http imaplib inspect io ipaddress itertools json "
    "logging mailbox math mimetypes multiprocessing numbers operator optparse os pathlib pdb pickle "
    "pkgutil poplib pprint queue random re sched secrets selectors shelve shlex shutil smtplib socket "
    "socketserver statistics string struct subprocess tarfile tempfile textwrap threading timeit "
    "tokenize traceback typing unittest urllib uuid warnings weakref wave xml zipfile zoneinfo"
).split()
# More import-safe standard-library modules for `extra_sentences()` (none has side effects when imported;
# deprecated and removed ones, GUIs, the browser and the easter eggs are left out).
_EXTRA_DOC_MODULES = (
    "array atexit bdb binascii builtins bz2 cProfile cmath code codeop colorsys compileall concurrent "
    "contextvars copyreg ctypes curses dbm dis encodings errno faulthandler fcntl fileinput gc genericpath "
    "getpass grp hashlib importlib keyword linecache locale lzma marshal mmap modulefinder netrc ntpath "
    "opcode pickletools platform plistlib posix posixpath profile pstats pty pwd py_compile pyclbr pydoc "
    "pyexpat quopri reprlib resource runpy select signal site sqlite3 ssl stat stringprep symtable sys "
    "sysconfig syslog tabnanny termios time token tomllib trace tracemalloc tty types unicodedata wsgiref "
    "xmlrpc zipapp zipimport zlib"
).split()
_SENTENCE_CHARS = re.compile(r"^[A-Za-z][A-Za-z ,;'\-]*[A-Za-z]$")
_MIN_WORDS, _MAX_WORDS, _MAX_WORD_LEN = 4, 20, 12


@dataclass(frozen=True)
class Voice:
    """An espeak-ng voice used as one synthetic speaker."""

    name: str  # speaker first name, used to build talk/speaker ids
    voice: str  # espeak-ng voice (language + optional "+variant")
    gender: str  # "male" or "female", as written in STM labels
    pitch: int = 50  # espeak-ng -p, 0..99
    speed: int = 150  # espeak-ng -s, words per minute


# Distinct speakers. Checked with espeak-ng 1.51: every entry yields different audio. Note that "en-gb+fN"
# and "en-us-nyc+fN" silently ignore the variant (same audio as "en-gb" / "en-us+fN"), so use "en+fN" instead.
SPEAKER_VOICES: tuple[Voice, ...] = (
    Voice("Alice", "en-us+f3", "female", pitch=55, speed=145),
    Voice("Bruno", "en-us+m3", "male", pitch=45, speed=150),
    Voice("Chloe", "en+f2", "female", pitch=60, speed=145),
    Voice("Duncan", "en-gb-scotland", "male", pitch=40, speed=150),
    Voice("Eilidh", "en-gb-scotland+f1", "female", pitch=55, speed=140),
    Voice("Felix", "en-gb-x-rp+m1", "male", pitch=50, speed=155),
    Voice("Grace", "en-gb-x-rp+f4", "female", pitch=65, speed=145),
    Voice("Hector", "en-029", "male", pitch=45, speed=145),
    Voice("Iris", "en-029+f5", "female", pitch=60, speed=150),
    Voice("Jack", "en-gb-x-gbclan+m2", "male", pitch=35, speed=150),
    Voice("Kate", "en-gb-x-gbcwmd+f3", "female", pitch=55, speed=145),
    Voice("Liam", "en-us-nyc", "male", pitch=50, speed=155),
    Voice("Maya", "en-us+f4", "female", pitch=70, speed=150),
    Voice("Noah", "en+m4", "male", pitch=40, speed=145),
    Voice("Olga", "en-us+f5", "female", pitch=50, speed=140),
    Voice("Peter", "en-gb-x-gbcwmd+m6", "male", pitch=45, speed=150),
)


def synthesize(
    text: str, voice: str, speed: int = 160, pitch: int = 50, sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
    """Speak ``text`` with espeak-ng and return float32 mono audio at ``sample_rate``.

    The text goes through stdin so that words starting with "-" are never taken for options.
    """
    if not text.strip():
        raise ValueError("synthesize() needs non-empty text")
    if shutil.which(ESPEAK) is None:
        raise RuntimeError(f"{ESPEAK} not found on PATH; install it (e.g. `apt-get install espeak-ng`)")
    cmd = [ESPEAK, "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout"]
    proc = subprocess.run(cmd, input=text.encode(), capture_output=True, check=False)
    if proc.returncode != 0 or not proc.stdout:
        raise RuntimeError(f"{' '.join(cmd)} failed (rc={proc.returncode}): {proc.stderr.decode().strip()}")
    audio, rate = sf.read(io.BytesIO(proc.stdout), dtype="float32")
    if audio.ndim != 1:
        audio = audio.mean(axis=1)
    if rate != sample_rate:
        audio = torchaudio.functional.resample(torch.from_numpy(audio), rate, sample_rate).numpy()
    return np.ascontiguousarray(audio, dtype=np.float32)


def trim(audio: np.ndarray, threshold: float = 0.02) -> np.ndarray:
    """Cut espeak's leading and trailing silence."""
    loud = np.flatnonzero(np.abs(audio) > threshold * np.abs(audio).max())
    return audio[loud[0] : loud[-1] + 1]


def documentation_texts() -> list[str]:
    """Docstrings of the fixed module list and their public members, plus pydoc's help topics."""
    import pydoc_data.topics

    texts = list(pydoc_data.topics.topics.values())
    for module_name in _DOC_MODULES:
        texts.extend(_module_texts(importlib.import_module(module_name)))
    return texts


def _module_texts(module: types.ModuleType) -> list[str]:
    """Docstrings of ``module`` and of its own public members (classes with their methods)."""
    texts = [module.__doc__ or ""]
    for _, obj in sorted(vars(module).items()):
        if getattr(obj, "__module__", None) != module.__name__:
            continue
        texts.append(inspect.getdoc(obj) or "")
        if inspect.isclass(obj):
            methods = [m for _, m in sorted(vars(obj).items()) if inspect.isfunction(m)]
            texts.extend(inspect.getdoc(m) or "" for m in methods)
    return texts


def _clean_sentence(sentence: str) -> str | None:
    """Lowercase words of a plain-prose sentence, or None when it looks like code or is too short/long."""
    sentence = sentence.rstrip(".!?")
    if not _SENTENCE_CHARS.match(sentence):
        return None
    words = re.sub(r"[,;\-]", " ", sentence).split()
    for word in words:
        # camelCase identifiers and quoted words are code, not prose.
        if re.search(r"[a-z][A-Z]", word) or word.startswith("'") or word.endswith("'"):
            return None
    if not _MIN_WORDS <= len(words) <= _MAX_WORDS or max(map(len, words)) > _MAX_WORD_LEN:
        return None
    return " ".join(words).lower()


@functools.cache
def sentence_pool() -> tuple[str, ...]:
    """Every usable sentence once, in a fixed pseudo-random order (sorted by SHA-1 of the text)."""
    return _sha1_order(_sentences(documentation_texts()))


def _sentences(texts: list[str]) -> set[str]:
    """The usable sentences (`_clean_sentence`) of ``texts``."""
    sentences = set()
    for text in texts:
        for paragraph in re.split(r"\n\s*\n", text):
            for sentence in re.split(r"(?<=[.!?])\s+", " ".join(paragraph.split())):
                cleaned = _clean_sentence(sentence)
                if cleaned is not None:
                    sentences.add(cleaned)
    return sentences


def _sha1_order(sentences: set[str]) -> tuple[str, ...]:
    """``sentences`` in a fixed pseudo-random order (sorted by SHA-1 of the text)."""
    return tuple(sorted(sentences, key=lambda s: hashlib.sha1(s.encode()).hexdigest()))


def extra_sentences() -> tuple[str, ...]:
    """Usable sentences of more standard-library documentation, none of them in `sentence_pool()`.

    For pretraining corpora that need more text than the pool holds (the pool's positions keep their
    meaning: this is a separate list). Sources: the modules of `_EXTRA_DOC_MODULES` and every public
    submodule of those and of the pool's packages; one that fails to import is skipped. Deterministic for a
    given Python version; slower than the pool (it imports a few hundred modules).
    """
    names = [name for name in _EXTRA_DOC_MODULES if importlib.util.find_spec(name) is not None]
    texts = []
    for name in [*names, *_submodules([*_DOC_MODULES, *names])]:
        try:
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = importlib.import_module(name)
        except Exception:  # platform-specific submodules (Windows, macOS) and optional C libraries
            continue
        texts.extend(_module_texts(module))
    return _sha1_order(_sentences(texts) - set(sentence_pool()))


def _submodules(packages: list[str]) -> list[str]:
    """Public submodules (no ``_x``, tests or ``__main__``) of those of ``packages`` that are packages."""
    names = []
    for package in packages:
        path = getattr(importlib.import_module(package), "__path__", None)
        if path is None:
            continue
        for info in pkgutil.walk_packages(path, package + ".", onerror=lambda _: None):
            parts = info.name.split(".")[1:]
            if not any(p.startswith("_") or p in ("test", "tests", "idle_test") for p in parts):
                names.append(info.name)
    return sorted(names)


def english_sentences(n: int, seed: int, skip: int = 0) -> list[str]:
    """Return ``n`` English sentences (lowercase letters, apostrophes and spaces; 4-20 words), offline.

    The sentences are positions ``[skip, skip + n)`` of a fixed, deduplicated pool harvested from the Python
    standard library documentation; ``seed`` only shuffles their order. Hence consumers that take disjoint
    ``[skip, skip + n)`` ranges never share a sentence, whatever seeds they use.
    """
    pool = sentence_pool()
    if n < 0 or skip < 0 or skip + n > len(pool):
        raise ValueError(f"english_sentences: range [{skip}, {skip + n}) is outside the pool of {len(pool)}")
    sentences = list(pool[skip : skip + n])
    random.Random(seed).shuffle(sentences)
    return sentences


def render(template: str, **fields: object) -> str:
    """``templates/<template>`` with its ``str.format`` placeholders filled from ``fields``."""
    return (TEMPLATES / template).read_text(encoding="utf-8").format(**fields)


def rewrap_markdown(text: str, width: int = 108) -> str:
    """Markdown whose paragraphs and bullets are refilled to ``width`` columns; headings, tables and
    indented code blocks stay as written. Blocks are separated by blank lines."""
    blocks = []
    for block in text.strip("\n").split("\n\n"):
        if block.startswith(("#", "|", "    ")):
            blocks.append(block)
        elif block.startswith("- "):
            bullets = re.split(r"\n(?=- )", block)
            blocks.append("\n".join(_fill(b[2:], width, "- ", "  ") for b in bullets))
        else:
            blocks.append(_fill(block, width, "", ""))
    return "\n\n".join(blocks) + "\n"


def _fill(text: str, width: int, first: str, rest: str) -> str:
    return textwrap.fill(
        " ".join(text.split()),
        width=width,
        initial_indent=first,
        subsequent_indent=rest,
        break_on_hyphens=False,
    )
