"""recipes/VoxCeleb1/prepare.py on the mini VoxCeleb1 sample (tests/samples/VoxCeleb1, made by
tools/samples/speech_corpora.py)."""

import csv
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import VOXCELEB1_SAMPLE as SAMPLE
from conftest import assert_same_tree, load_repo_script

from cald_brain.data.audio import AudioFileError

prepare = load_repo_script("recipes/VoxCeleb1/prepare.py", "voxceleb1_prepare")

SPLIT_LINES = (SAMPLE / "iden_split.txt").read_text().splitlines()


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    save = tmp_path_factory.mktemp("voxceleb1-save")
    prepare.prepare_voxceleb1(SAMPLE, save)
    return save


def _root_with_split(tmp_path: Path, lines: list[str]) -> Path:
    """A VoxCeleb1 root sharing the sample's wav/ tree, with its own iden_split.txt."""
    root = tmp_path / "VoxCeleb1"
    root.mkdir()
    (root / "wav").symlink_to(SAMPLE / "wav")
    (root / "iden_split.txt").write_text("\n".join(lines) + "\n")
    return root


def test_the_split_file_decides_the_split(prepared):
    expected = {"1": "train", "2": "dev", "3": "test"}
    listed = {line.split()[1]: expected[line.split()[0]] for line in SPLIT_LINES}
    seen = {}
    for split in ("train", "dev", "test"):
        rows = _read_csv(prepared / f"{split}.csv")
        assert list(rows[0]) == list(prepare.CSV_COLUMNS)
        for row in rows:
            relative = row["wav"].removeprefix("$data_root/wav/")
            seen[relative] = split
            assert re.fullmatch(r"id\d{5}--[^-/][^/]{10}--\d{5}", row["ID"])
            assert row["ID"] == relative.removesuffix(".wav").replace("/", "--")
            assert row["spk_id"] == relative.split("/")[0]
            assert 0.5 < float(row["duration"]) < 6.0
    assert seen == listed
    assert [sum(s == name for s in seen.values()) for name in ("train", "dev", "test")] == [20, 10, 10]


def test_unlisted_files_are_ignored_and_counted(tmp_path, caplog):
    on_disk = {p.relative_to(SAMPLE / "wav").as_posix() for p in (SAMPLE / "wav").glob("*/*/*.wav")}
    listed = {line.split()[1] for line in SPLIT_LINES}
    assert len(on_disk - listed) == 1  # the sample holds one unlisted file
    with caplog.at_level(logging.INFO):
        prepare.prepare_voxceleb1(SAMPLE, tmp_path)
    assert "1 wav files under" in caplog.text and "not in" in caplog.text
    rows = [r for split in ("train", "dev", "test") for r in _read_csv(tmp_path / f"{split}.csv")]
    assert not {r["wav"].removeprefix("$data_root/wav/") for r in rows} & (on_disk - listed)


def test_speaker_set_from_the_split_file(prepared):
    speakers = (prepared / prepare.LABEL_FILE).read_text().splitlines()
    assert speakers == [f"id1000{i}" for i in range(1, 6)]


def test_split_file_option_and_a_changed_speaker_set_is_an_error(tmp_path):
    save = tmp_path / "save"
    prepare.prepare_voxceleb1(SAMPLE, save)
    fewer = [line for line in SPLIT_LINES if "id10005/" not in line]
    custom = tmp_path / "my_split.txt"
    custom.write_text("\n".join(fewer) + "\n")
    prepare.prepare_voxceleb1(SAMPLE, tmp_path / "other", split_file=custom)
    assert len(_read_csv(tmp_path / "other" / "train.csv")) == 16
    with pytest.raises(ValueError, match=r"speakers\.txt fixes the speaker set.*missing \['id10005'\]"):
        prepare.prepare_voxceleb1(SAMPLE, save, split_file=custom)


def test_a_listed_file_missing_on_disk_names_it_and_the_split_line(tmp_path):
    lines = [*SPLIT_LINES[:7], "3 id10001/abcdefghijk/00009.wav", *SPLIT_LINES[7:]]
    root = _root_with_split(tmp_path, lines)
    with pytest.raises(
        FileNotFoundError, match=r"id10001/abcdefghijk/00009\.wav, listed at .*iden_split\.txt:8,"
    ):
        prepare.prepare_voxceleb1(root, tmp_path / "save")


@pytest.mark.parametrize(
    "bad",
    ["4 id10001/abcdefghijk/00001.wav", "1 id10001/00001.wav", "1", "train id10001/abcdefghijk/00001.wav"],
)
def test_a_malformed_split_line_names_file_and_line(tmp_path, bad):
    root = _root_with_split(tmp_path, [SPLIT_LINES[0], bad])
    with pytest.raises(ValueError, match=r"iden_split\.txt:2: expected '<1\|2\|3> idXXXXX"):
        prepare.prepare_voxceleb1(root, tmp_path / "save")


def test_a_repeated_split_line_is_an_error(tmp_path):
    root = _root_with_split(tmp_path, [*SPLIT_LINES, SPLIT_LINES[3]])
    with pytest.raises(ValueError, match=r"already listed at line 4"):
        prepare.prepare_voxceleb1(root, tmp_path / "save")


def test_missing_wav_folder_or_split_file_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"wav does not exist: unpack"):
        prepare.prepare_voxceleb1(tmp_path, tmp_path / "save")
    (tmp_path / "wav").mkdir()
    with pytest.raises(FileNotFoundError, match=r"iden_split\.txt does not exist"):
        prepare.prepare_voxceleb1(tmp_path, tmp_path / "save")


def test_second_preparation_is_skipped(tmp_path):
    prepare.prepare_voxceleb1(SAMPLE, tmp_path)
    stamps = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    prepare.prepare_voxceleb1(SAMPLE, tmp_path)
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == stamps


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_regenerating_gives_the_committed_sample(tmp_path):
    """Fails when tools/samples/speech_corpora.py, the docstrings it reads or espeak-ng changed since the
    sample was made."""
    speech_corpora = load_repo_script("tools/samples/speech_corpora.py", "speech_corpora")
    speech_corpora.build_voxceleb1(tmp_path / "VoxCeleb1")
    assert_same_tree(tmp_path / "VoxCeleb1", SAMPLE)


def _root_with_copied_wav(tmp_path: Path) -> Path:
    """A VoxCeleb1 root with its own copy of the sample's wav/ tree (editable) and its split file."""
    root = tmp_path / "VoxCeleb1"
    shutil.copytree(SAMPLE / "wav", root / "wav")
    shutil.copy(SAMPLE / "iden_split.txt", root / "iden_split.txt")
    return root


@pytest.mark.parametrize(
    "audio, message",
    [
        (np.zeros(0, dtype="float32"), "holds no audio: its header is valid but it has 0 samples"),
        (np.zeros((800, 2), dtype="float32"), "has 2 channels; VoxCeleb1 audio is mono"),
    ],
    ids=["zero-samples", "stereo"],
)
def test_a_listed_file_training_could_not_read_stops_the_preparation(tmp_path, audio, message):
    """A valid header with 0 samples (or 2 channels) used to pass and stop training mid-epoch."""
    root = _root_with_copied_wav(tmp_path)
    relative = SPLIT_LINES[5].split()[1]
    sf.write(root / "wav" / relative, audio, 16000, subtype="PCM_16")
    with pytest.raises(AudioFileError, match=rf"{relative} \(listed at .*iden_split\.txt:6\) {message}"):
        prepare.prepare_voxceleb1(root, tmp_path / "save")
    assert not (tmp_path / "save").exists()  # nothing written


def test_a_speaker_without_training_files_is_named_in_a_warning(tmp_path, caplog):
    lines = [line.replace("1 ", "2 ", 1) if " id10005/" in line else line for line in SPLIT_LINES]
    root = _root_with_split(tmp_path, lines)
    with caplog.at_level(logging.WARNING):
        prepare.prepare_voxceleb1(root, tmp_path / "save")
    assert "1 speaker labels have no training item" in caplog.text
    assert "id10005 (6 in dev, 2 in test)" in caplog.text
