"""docs/ADAPTING.md's worked examples, run as a new user would: a corpus given only as manifest CSVs in a
folder outside the repository, trained with recipes/CSV/train.py (CTC teacher, trajectory student,
classification teacher), its preparation errors (named file, line and column, before any model is built),
a TED-LIUM-format manifest with `--skip_prep=True`, and a new recipe folder checked by the hparams tests
without editing them.

The corpus is cut from the committed TED-LIUM sample: one WAV file per segment, `ID,wav,wrd` rows with
`wav` relative to the CSV's folder.
"""

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
from conftest import ROOT, SAMPLES, TEDLIUM_SAMPLE_OVERRIDES, load_repo_script, offline_hub_env

from cald_brain.data.audio import read_segment
from cald_brain.data.manifests import ManifestError

CSV_RECIPE = ROOT / "recipes" / "CSV"
TINY_MODEL = SAMPLES / "models" / "tiny-wav2vec2"
DEBUG = ("--device=cpu", "--debug", "--debug_persistently", "--debug_epochs=1", "--noprogressbar")
TINY_BIMAMBA2 = ("--headdim=32", "--d_state=16")
SPLIT_FILES = {"train": "train.csv", "dev": "valid.csv", "test": "test.csv"}


def label_of(words: str) -> str:
    """The classification example's label: transcripts of more than five words are `long`."""
    return "long" if len(words.split()) > 5 else "short"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """`<tmp>/corpus/{train,valid,test}.csv` (ID,wav,wrd,label) and `audio/<ID>.wav`, from the TED-LIUM
    sample's prepared segments."""
    tedlium = load_repo_script("recipes/TEDLIUM/prepare.py", "tedlium_prepare_for_adapting")
    manifests = tmp_path_factory.mktemp("tedlium")
    tedlium.prepare_tedlium(SAMPLES / "TEDLIUM_release-3", manifests)
    root = tmp_path_factory.mktemp("corpus")
    (root / "audio").mkdir()
    for split, name in SPLIT_FILES.items():
        with open(manifests / f"{split}.csv", encoding="utf-8") as f:
            segments = list(csv.DictReader(f))
        rows = []
        for seg in segments:
            wav = read_segment(
                seg["wav"].replace("$data_root", str(SAMPLES / "TEDLIUM_release-3")),
                float(seg["start"]),
                float(seg["stop"]),
            )
            sf.write(root / "audio" / f"{seg['ID']}.wav", wav.numpy(), 16000)
            rows.append(
                {
                    "ID": seg["ID"],
                    "wav": f"audio/{seg['ID']}.wav",
                    "wrd": seg["wrd"],
                    "label": label_of(seg["wrd"]),
                }
            )
        write_rows(root / name, rows)
    return root


def write_rows(path: Path, rows: list[dict[str, str]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["ID", "wav", "wrd"])
        writer.writeheader()
        writer.writerows(rows)


def transcript_characters(corpus: Path) -> set[str]:
    """Every character of the corpus's transcripts."""
    chars = set()
    for name in SPLIT_FILES.values():
        with open(corpus / name, encoding="utf-8") as f:
            chars.update(c for row in csv.DictReader(f) for c in row["wrd"])
    return chars


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def recipe_run(script: Path, hparams: str, out: Path, *overrides: str, cwd: Path) -> None:
    """One debug run (2 training steps) of `script` offline, with the tiny pretrained model."""
    env = offline_hub_env(out.parent / "hf")
    cmd = [
        sys.executable,
        str(script),
        hparams,
        f"--output_folder={out}",
        f"--pretrained_source={TINY_MODEL}",
        *TEDLIUM_SAMPLE_OVERRIDES,
        "--num_workers=0",
        *DEBUG,
        *overrides,
    ]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


def csv_args(corpus: Path) -> tuple[str, ...]:
    return tuple(
        f"--{option}={corpus / name}"
        for option, name in (("train_csv", "train.csv"), ("valid_csv", "valid.csv"), ("test_csv", "test.csv"))
    )


def test_csv_corpus_trains_teacher_and_trajectory_student_writing_only_the_output_folder(corpus, tmp_path):
    """ADAPTING.md (a): `ID,wav,wrd` CSVs outside the repository, teacher then trajectory student, started
    from inside the corpus folder; nothing is written in the corpus folder or the repository."""
    before_corpus, before_repo = files_under(corpus), files_under(ROOT / "recipes")
    num_outputs = f"--num_outputs={len(transcript_characters(corpus)) + 1}"  # characters + blank
    teacher = tmp_path / "teacher"
    recipe_run(
        CSV_RECIPE / "train.py",
        "hparams/wav2vec2_ctc.yaml",
        teacher,
        *csv_args(corpus),
        num_outputs,
        cwd=corpus,
    )
    chars = (teacher / "save" / "characters.txt").read_text(encoding="utf-8").splitlines()
    assert chars == sorted(transcript_characters(corpus))
    assert (teacher / "wer_test.txt").is_file() and (teacher / "test_metrics.json").is_file()
    student = tmp_path / "student"
    recipe_run(
        CSV_RECIPE / "train.py",
        "hparams/bimamba2_trajectory.yaml",
        student,
        *csv_args(corpus),
        num_outputs,
        *TINY_BIMAMBA2,
        cwd=corpus,
    )
    assert (student / "test_metrics.json").is_file()
    assert files_under(corpus) == before_corpus
    assert files_under(ROOT / "recipes") == before_repo
