"""docs/ADAPTING.md's worked examples, run as a new user would: a corpus given only as manifest CSVs in a
folder outside the repository, trained with recipes/CSV/train.py (CTC teacher, trajectory student,
classification teacher), its preparation errors (named file, line and column, before any model is built),
a TED-LIUM-format manifest with `--skip_prep=True`, and a new recipe folder checked by the hparams tests
without editing them.

The corpus is cut from the committed TED-LIUM sample: one WAV file per segment, `ID,wav,wrd` rows with
`wav` relative to the CSV's folder.
"""

import csv
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
    """The files under `folder`, but Python's and git's own."""
    skip = {"__pycache__", ".git", ".pytest_cache", ".ruff_cache"}
    return {p for p in folder.rglob("*") if p.is_file() and not skip.intersection(p.parts)}


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


@pytest.mark.slow
def test_csv_corpus_trains_teacher_and_trajectory_student_writing_only_the_output_folder(corpus, tmp_path):
    """ADAPTING.md (a): `ID,wav,wrd` CSVs outside the repository, teacher then trajectory student, started
    from inside the corpus folder; nothing is written in the corpus folder or the repository."""
    before_corpus, before_repo = files_under(corpus), files_under(ROOT)
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
    assert files_under(ROOT) == before_repo


@pytest.mark.slow
def test_csv_corpus_trains_a_classifier(corpus, tmp_path):
    """ADAPTING.md (a), classification: the same CSVs with their `label` column, labels in labels.txt."""
    out = tmp_path / "cls"
    recipe_run(CSV_RECIPE / "train.py", "hparams/wav2vec2_cls.yaml", out, *csv_args(corpus), cwd=corpus)
    assert (out / "save" / "labels.txt").read_text().splitlines() == ["long", "short"]
    with open(out / "test_predictions.csv", encoding="utf-8") as f:
        assert {row["target"] for row in csv.DictReader(f)} <= {"long", "short"}


@pytest.fixture(scope="module")
def teacher(corpus, tmp_path_factory):
    """The CTC and classification teacher runs (snapshots every step, for the waypoint students), once."""
    done = {}

    def run(task: str) -> Path:
        if task not in done:
            out = tmp_path_factory.mktemp("teachers") / task
            recipe_run(
                CSV_RECIPE / "train.py",
                f"hparams/wav2vec2_{task}.yaml",
                out,
                *csv_args(corpus),
                *task_overrides(corpus, task),
                "--snapshot_every_steps=1",
                cwd=corpus,
            )
            done[task] = out
        return done[task]

    return run


def task_overrides(corpus: Path, task: str) -> tuple[str, ...]:
    """num_outputs of the corpus for `task` (ctc: characters + blank; cls: the two labels, the default)."""
    return (f"--num_outputs={len(transcript_characters(corpus)) + 1}",) if task == "ctc" else ()


@pytest.mark.slow
@pytest.mark.parametrize(
    "task, mode",
    [  # the CTC trajectory student runs in CI (the test above)
        (task, mode)
        for task in ("ctc", "cls")
        for mode in ("unguided", "target", "waypoint", "hybrid", "trajectory")
        if (task, mode) != ("ctc", "trajectory")
    ],
)
def test_every_mode_trains_on_the_csv_corpus(corpus, teacher, tmp_path, task, mode):
    """The five students of both tasks, the guided ones on the teacher run of their task."""
    hparams = f"hparams/bimamba2_{mode}{'_cls' if task == 'cls' else ''}.yaml"
    needs_teacher = mode in ("target", "waypoint", "hybrid")
    extra = (f"--teacher_path={teacher(task)}/save",) if needs_teacher else ()
    extra += ("--distill_until_step=1",) if mode == "hybrid" else ()
    out = tmp_path / "out"
    recipe_run(
        CSV_RECIPE / "train.py",
        hparams,
        out,
        *csv_args(corpus),
        *task_overrides(corpus, task),
        *TINY_BIMAMBA2,
        *extra,
        cwd=corpus,
    )
    assert (out / "test_metrics.json").is_file()


@pytest.fixture
def prepare_csv():
    return load_repo_script("recipes/CSV/prepare.py", "csv_prepare_for_tests").prepare_csv


def broken_copy(corpus: Path, folder: Path, split_file: str, edit) -> dict[str, Path]:
    """The corpus's three manifests in `folder` (wav paths made absolute), `edit(rows)` applied to one."""
    paths = {}
    for name in SPLIT_FILES.values():
        with open(corpus / name, encoding="utf-8") as f:
            rows = [{**row, "wav": str(corpus / row["wav"])} for row in csv.DictReader(f)]
        if name == split_file:
            rows = edit(rows)
        write_rows(folder / name, rows)
        paths[name] = folder / name
    return paths


def prepare_args(paths: dict[str, Path], save: Path) -> dict:
    return dict(
        train_csv=paths["train.csv"],
        valid_csv=paths["valid.csv"],
        test_csv=paths["test.csv"],
        save_folder=save,
    )


@pytest.mark.parametrize(
    "split_file, edit, expected",
    [
        (
            "train.csv",
            lambda rows: [{k: v for k, v in r.items() if k != "wrd"} for r in rows],
            r"train.csv:1: missing column\(s\) wrd",
        ),
        (
            "valid.csv",
            lambda rows: [{**r, "wav": "nowhere/x.wav"} if i == 1 else r for i, r in enumerate(rows)],
            r"valid.csv:3: column 'wav' .*x.wav does not exist",
        ),
        ("test.csv", lambda rows: [], r"test.csv: no rows after the header"),
        (
            "train.csv",
            lambda rows: [{**r, "duration": "2,5"} for r in rows],
            r"train.csv:2: column 'duration' is '2,5', not a number",
        ),
        (
            "test.csv",
            lambda rows: [{**r, "start": "x", "stop": ""} for r in rows],
            r"test.csv:2: column 'start' is 'x'",
        ),
    ],
)
def test_bad_manifests_stop_the_preparation_naming_file_line_and_column(
    corpus, tmp_path, prepare_csv, split_file, edit, expected
):
    paths = broken_copy(corpus, tmp_path, split_file, edit)
    with pytest.raises(ManifestError, match=expected):
        prepare_csv(**prepare_args(paths, tmp_path / "save"))
    assert not (tmp_path / "save" / "train.csv").exists()


def test_durations_and_segments_come_from_the_audio_when_absent(corpus, tmp_path, prepare_csv):
    """No duration: the file's (or the segment's) length; no start/stop: the whole file."""
    paths = broken_copy(
        corpus, tmp_path, "test.csv", lambda rows: [{**rows[0], "start": "0.5", "stop": ""}, *rows[1:]]
    )
    prepare_csv(**prepare_args(paths, tmp_path / "save"))
    with open(tmp_path / "save" / "test.csv", encoding="utf-8") as f:
        first, second = list(csv.DictReader(f))[:2]
    for row, start in ((first, 0.5), (second, 0.0)):
        length = sf.info(row["wav"]).duration
        assert float(row["duration"]) == pytest.approx(length - start, abs=1e-3)
    assert (first["start"], first["stop"], second["start"], second["stop"]) == ("0.500", "", "", "")


def test_a_label_only_in_test_is_a_warning(corpus, tmp_path, prepare_csv, caplog):
    paths = broken_copy(
        corpus, tmp_path, "test.csv", lambda rows: [{**rows[0], "label": "unseen"}, *rows[1:]]
    )
    prepare_csv(**prepare_args(paths, tmp_path / "save"), task="classification")
    assert "unseen (1 in test)" in caplog.text
    assert "unseen" in (tmp_path / "save" / "labels.txt").read_text().splitlines()


def test_a_bad_manifest_stops_train_py_before_any_model_is_built(corpus, tmp_path):
    paths = broken_copy(
        corpus, tmp_path, "valid.csv", lambda rows: [{k: v for k, v in r.items() if k != "ID"} for r in rows]
    )
    cmd = [
        sys.executable,
        str(CSV_RECIPE / "train.py"),
        "hparams/wav2vec2_ctc.yaml",
        f"--output_folder={tmp_path / 'out'}",
        "--pretrained_source=/nonexistent/model",  # building the model would fail differently
        *(
            f"--{o}={paths[n]}"
            for o, n in (("train_csv", "train.csv"), ("valid_csv", "valid.csv"), ("test_csv", "test.csv"))
        ),
    ]
    proc = subprocess.run(cmd, env=offline_hub_env(tmp_path / "hf"), capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert f"ERROR: {paths['valid.csv']}:1: missing column(s) ID" in proc.stderr, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def librispeech(corpus, tmp_path_factory) -> Path:
    """The corpus in LibriSpeech's layout: one speaker per talk, chapter 1, FLAC files, uppercase text."""
    root = tmp_path_factory.mktemp("LibriSpeech")
    speakers: dict[str, int] = {}
    for split, folder in LIBRI_SPLITS.items():
        with open(corpus / SPLIT_FILES[split], encoding="utf-8") as f:
            for n, row in enumerate(csv.DictReader(f)):
                speaker = speakers.setdefault(row["ID"].split("-")[0], 100 + len(speakers))
                chapter = root / folder / str(speaker) / "1"
                chapter.mkdir(parents=True, exist_ok=True)
                utt_id = f"{speaker}-1-{n:04d}"
                audio, rate = sf.read(corpus / row["wav"])
                sf.write(chapter / f"{utt_id}.flac", audio, rate, format="FLAC")
                with open(chapter / f"{speaker}-1.trans.txt", "a", encoding="utf-8") as trans:
                    trans.write(f"{utt_id} {row['wrd'].upper()}\n")
    return root


LIBRI_SPLITS = {"train": "train-clean-100", "dev": "dev-clean", "test": "test-clean"}
LIBRI_PREPARE = "docs/examples/LibriMini/prepare.py"


def test_librispeech_manifests_in_the_tedlium_format(librispeech, tmp_path):
    """ADAPTING.md (b), the preparation: every utterance, whole files under $data_root, lowercase text."""
    prepare = load_repo_script(LIBRI_PREPARE, "libri_prepare")
    prepare.prepare_librispeech(librispeech, tmp_path)
    with open(tmp_path / "train.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["ID", "duration", "wav", "start", "stop", "spk_id", "wrd"]
    assert len(rows) == len(list((librispeech / "train-clean-100").rglob("*.flac")))
    first = rows[0]
    assert first["wav"].startswith("$data_root/train-clean-100/") and first["start"] == first["stop"] == ""
    assert first["wrd"] == first["wrd"].lower() and float(first["duration"]) > 0


@pytest.mark.slow
def test_tedlium_recipe_trains_on_manifests_prepared_elsewhere(librispeech, tmp_path):
    """ADAPTING.md (b): manifests written into <output_folder>/save, then --skip_prep=True."""
    out = tmp_path / "libri_teacher"
    load_repo_script(LIBRI_PREPARE, "libri_prepare").prepare_librispeech(librispeech, out / "save")
    recipe_run(
        ROOT / "recipes" / "TEDLIUM" / "train.py",
        "hparams/wav2vec2_ctc.yaml",
        out,
        f"--data_folder={librispeech}",
        "--skip_prep=True",
        cwd=tmp_path,
    )
    assert (out / "wer_test.txt").is_file()


def new_recipe_folder(recipes: Path) -> Path:
    """ADAPTING.md (c), its commands: recipes/LibriMini from the example's train.py and prepare.py and
    TED-LIUM's hparams (results folder renamed, TED-LIUM's preparation keys removed)."""
    folder = recipes / "LibriMini"
    folder.mkdir()
    for name in ("train.py", "prepare.py"):
        shutil.copy(ROOT / "docs" / "examples" / "LibriMini" / name, folder / name)
    shutil.copytree(ROOT / "recipes" / "TEDLIUM" / "hparams", folder / "hparams")
    for path in (folder / "hparams").glob("*.yaml"):
        text = path.read_text(encoding="utf-8").replace("results/TEDLIUM/", "results/LibriMini/")
        lines = [
            line
            for line in text.splitlines(keepends=True)
            if not line.startswith(("split:", "unknown_characters:"))
        ]
        path.write_text("".join(lines), encoding="utf-8")
    return folder


def test_a_new_recipe_folder_passes_the_hparams_checks_unedited(tmp_path):
    """ADAPTING.md (c): the new folder is found and checked by tests/recipes/test_hparams_agree.py."""
    from test_hparams_agree import folder_problems, naming_problems, recipe_dirs

    shutil.copytree(ROOT / "recipes", tmp_path / "recipes", ignore=shutil.ignore_patterns("__pycache__"))
    folder = new_recipe_folder(tmp_path / "recipes")
    assert folder in recipe_dirs(tmp_path)
    assert folder_problems(folder) == []
    assert naming_problems(recipe_dirs(tmp_path)) == []


@pytest.mark.slow
def test_a_new_recipe_folder_trains(librispeech, tmp_path):
    """ADAPTING.md (c): recipes/LibriMini (outside this repository here) trains its teacher."""
    folder = new_recipe_folder(tmp_path)
    out = tmp_path / "out"
    recipe_run(
        folder / "train.py", "hparams/wav2vec2_ctc.yaml", out, f"--data_folder={librispeech}", cwd=folder
    )
    assert (out / "wer_test.txt").is_file()
