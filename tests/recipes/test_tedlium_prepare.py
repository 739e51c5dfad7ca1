"""recipes/TEDLIUM/prepare.py on the mini TED-LIUM 3 sample (tests/samples/TEDLIUM_release-3)."""

import csv
import json
import logging
import re
import shutil
from pathlib import Path

import pytest
import soundfile as sf
import torch
from conftest import TEDLIUM_SAMPLE as SAMPLE
from conftest import load_repo_script

from cald_brain.data.audio import AudioFileError, audio_pipeline, read_segment

SPLITS = ("train", "dev", "test")


prepare = load_repo_script("recipes/TEDLIUM/prepare.py", "tedlium_prepare")


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _expected_segments(
    stm_folder: Path, min_duration: float = 1.0, min_words: int = 2
) -> set[tuple[str, str, str]]:
    """(talk, start, end) of the STM lines that should be kept, worked out here without prepare.py."""
    kept = set()
    for stm in stm_folder.glob("*.stm"):
        for line in stm.read_text().splitlines():
            talk, _, speaker, start, end, _, *tokens = line.split()
            words = [t for t in tokens if t[0] not in "{<(" and not t.startswith("'")]
            long_enough = float(end) - float(start) >= min_duration and len(words) >= min_words
            if speaker != "inter_segment_gap" and long_enough:
                kept.add((talk, f"{float(start):.2f}", f"{float(end):.2f}"))
    return kept


@pytest.fixture(scope="module")
def legacy(tmp_path_factory) -> Path:
    save = tmp_path_factory.mktemp("legacy")
    prepare.prepare_tedlium(SAMPLE, save)
    return save


def _copy_sample(tmp_path: Path) -> Path:
    """A private copy of the sample (its split folders keep their relative symlinks into data/)."""
    return Path(shutil.copytree(SAMPLE, tmp_path / "TEDLIUM_release-3", symlinks=True))


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("it 's a test", "it's a test"),
        ("we don 't know they 're here", "we don't know they're here"),
        ("i do n't think i 'll go", "i don't think i'll go"),
        ("{NOISE} hello <unk> world <sil>", "hello world"),
        ("the(2) cat sat on a(2) mat", "the cat sat on a mat"),
        ("a (2) b", "a b"),
        ("{BREATH} {SMACK} <sil>", ""),
        ("  lots   of\tspace  ", "lots of space"),
        ("the students ' work", "the students' work"),
        ("'cause the '80s were fun", "'cause the '80s were fun"),
        ("Hello World", "hello world"),
    ],
)
def test_normalize_transcript(raw, clean):
    assert prepare.normalize_transcript(raw) == clean


@pytest.mark.parametrize("split", SPLITS)
def test_legacy_segments_match_stm(legacy, split):
    rows = _read_csv(legacy / f"{split}.csv")
    assert list(rows[0]) == ["ID", "duration", "wav", "start", "stop", "spk_id", "wrd"]
    got = {(r["spk_id"], f"{float(r['start']):.2f}", f"{float(r['stop']):.2f}") for r in rows}
    expected = _expected_segments(SAMPLE / "legacy" / split / "stm")
    assert len(rows) == len(expected) > 0
    assert got == expected
    for row in rows:
        talk, start, stop = row["spk_id"], float(row["start"]), float(row["stop"])
        assert row["ID"] == f"{talk}-{round(start * 100):07d}-{round(stop * 100):07d}"
        assert row["wav"] == f"$data_root/legacy/{split}/sph/{talk}.sph"
        assert float(row["duration"]) == pytest.approx(stop - start)
        assert row["wrd"] and not re.search(r"[{}<>()]| '", row["wrd"])


def test_segment_times_inside_audio(legacy):
    for split in SPLITS:
        for row in _read_csv(legacy / f"{split}.csv"):
            wav = Path(row["wav"].replace("$data_root", str(SAMPLE)))
            assert 0.0 <= float(row["start"]) < float(row["stop"]) <= sf.info(wav).duration


def test_manifest_loads_in_speechbrain(legacy):
    from speechbrain.dataio.dataset import DynamicItemDataset

    dataset = DynamicItemDataset.from_csv(legacy / "dev.csv", replacements={"data_root": str(SAMPLE)})
    dataset.add_dynamic_item(audio_pipeline())
    dataset.set_output_keys(["id", "sig", "duration", "wav", "start", "stop"])
    for item in dataset:
        assert len(item["sig"]) == round(float(item["stop"]) * 16000) - round(float(item["start"]) * 16000)
        assert len(item["sig"]) == pytest.approx(item["duration"] * 16000, abs=1)
        whole = read_segment(item["wav"])
        assert torch.equal(item["sig"], whole[round(float(item["start"]) * 16000) :][: len(item["sig"])])


def test_rerun_is_a_no_op(legacy):
    files = sorted(legacy.iterdir())
    assert [f.name for f in files] == ["dev.csv", "tedlium_prepare.json", "test.csv", "train.csv"]  # no .tmp
    before = {f: f.stat().st_mtime_ns for f in files}
    prepare.prepare_tedlium(SAMPLE, legacy)
    assert {f: f.stat().st_mtime_ns for f in files} == before


def test_other_split_prepares_again(tmp_path):
    prepare.prepare_tedlium(SAMPLE, tmp_path)
    legacy_train = (tmp_path / "train.csv").read_text()
    prepare.prepare_tedlium(SAMPLE, tmp_path, split="speaker-adaptation")
    assert json.loads((tmp_path / "tedlium_prepare.json").read_text())["split"] == "speaker-adaptation"
    assert (tmp_path / "train.csv").read_text() != legacy_train
    for split in SPLITS:
        rows = _read_csv(tmp_path / f"{split}.csv")
        got = {(r["spk_id"], f"{float(r['start']):.2f}", f"{float(r['stop']):.2f}") for r in rows}
        assert got == _expected_segments(SAMPLE / "speaker-adaptation" / split / "stm")
        assert all(r["wav"].startswith(f"$data_root/speaker-adaptation/{split}/sph/") for r in rows)


def test_other_thresholds_prepare_again(tmp_path):
    prepare.prepare_tedlium(SAMPLE, tmp_path)
    n_default = len(_read_csv(tmp_path / "train.csv"))
    prepare.prepare_tedlium(SAMPLE, tmp_path, min_duration=0.0, min_words=1)
    rows = _read_csv(tmp_path / "train.csv")
    # The sample's train talks hold too-short segments (one word, or two words under a second) ...
    assert len(rows) > n_default
    # ... while ignore_time_segment_in_scoring lines stay out whatever the thresholds.
    got = {(r["spk_id"], f"{float(r['start']):.2f}", f"{float(r['stop']):.2f}") for r in rows}
    assert got == _expected_segments(SAMPLE / "legacy" / "train" / "stm", 0.0, 1)
    assert not any("ignore" in r["wrd"] or r["spk_id"] == "inter_segment_gap" for r in rows)


def test_skip_prep_writes_nothing(tmp_path):
    prepare.prepare_tedlium(SAMPLE, tmp_path / "out", skip_prep=True)
    assert not (tmp_path / "out").exists()


def test_release2_layout(tmp_path, legacy):
    release2 = tmp_path / "TEDLIUM_release2"
    for split in SPLITS:
        shutil.copytree(SAMPLE / "legacy" / split, release2 / split)  # follows the symlinks: real files
    prepare.prepare_tedlium(release2, tmp_path / "out")
    for split in SPLITS:
        rows = _read_csv(tmp_path / "out" / f"{split}.csv")
        legacy_rows = _read_csv(legacy / f"{split}.csv")
        assert [r["wav"] for r in rows] == [r["wav"].replace("/legacy/", "/") for r in legacy_rows]
        assert [r["wrd"] for r in rows] == [r["wrd"] for r in legacy_rows]
    with pytest.raises(ValueError, match="only has the 'legacy' split"):
        prepare.prepare_tedlium(release2, tmp_path / "sa", split="speaker-adaptation")


def test_not_a_tedlium_folder(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(
        FileNotFoundError, match=rf"{re.escape(str(tmp_path))} is not a TED-LIUM release: expected"
    ):
        prepare.prepare_tedlium(tmp_path, tmp_path / "out")
    assert not (tmp_path / "out" / "train.csv").exists()


def test_unknown_split(tmp_path):
    with pytest.raises(ValueError, match="split must be one of"):
        prepare.prepare_tedlium(SAMPLE, tmp_path, split="legacyy")


@pytest.mark.parametrize(
    ("corrupt", "problem"),
    [
        (lambda f: " ".join(f[:5]), "expected at least 6 fields"),
        (lambda f: " ".join(f[:3] + ["1.x", *f[4:]]), "are not numbers"),
        (lambda f: " ".join(f[:5] + ["o,f0,female", *f[6:]]), "should be a label"),
        (lambda f: " ".join(f[:3] + [f[4], f[3], *f[5:]]), "negative or reversed"),
    ],
)
def test_malformed_stm_line_names_file_and_line(tmp_path, corrupt, problem):
    data = _copy_sample(tmp_path)
    stm = data / "legacy" / "dev" / "stm" / "SynthGrace_2010.stm"  # a symlink: edits data/stm/ in the copy
    lines = stm.read_text().splitlines()
    lines[2] = corrupt(lines[2].split())
    stm.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        prepare.STMFormatError, match=rf"{re.escape(str(stm))}:3: malformed STM line \(.*{problem}"
    ):
        prepare.prepare_tedlium(data, tmp_path / "out")
    assert not (tmp_path / "out" / "tedlium_prepare.json").exists()


def _set_last_segment_end(data: Path, end: float) -> Path:
    """Move the end of the last speech segment of a test talk; return the STM path."""
    stm = data / "legacy" / "test" / "stm" / "SynthIris_2012.stm"
    lines = stm.read_text().splitlines()
    fields = lines[-2].split()
    fields[4] = f"{end:.2f}"
    lines[-2] = " ".join(fields)
    stm.write_text("\n".join(lines) + "\n")
    return stm


def test_segment_past_end_of_audio(tmp_path):
    data = _copy_sample(tmp_path)
    stm = _set_last_segment_end(data, 99.0)
    line = len(stm.read_text().splitlines()) - 1
    with pytest.raises(ValueError, match=rf"{re.escape(str(stm))}:{line}: .*ends after the end of") as err:
        prepare.prepare_tedlium(data, tmp_path / "out")
    assert "mixed releases" not in str(err.value) and "does not belong to this audio" in str(err.value)


def test_segment_end_rounded_past_audio_is_cut(tmp_path):
    data = _copy_sample(tmp_path)
    duration = sf.info(data / "data" / "sph" / "SynthIris_2012.sph").duration
    _set_last_segment_end(data, duration + 0.03)
    prepare.prepare_tedlium(data, tmp_path / "out")
    last = _read_csv(tmp_path / "out" / "test.csv")[-1]
    assert last["spk_id"] == "SynthIris_2012"
    assert float(last["stop"]) == pytest.approx(duration, abs=1e-3)
    assert len(read_segment(last["wav"].replace("$data_root", str(data)), float(last["start"]), duration)) > 0


def test_missing_audio_names_file(tmp_path):
    data = _copy_sample(tmp_path)
    sph = data / "legacy" / "train" / "sph" / "SynthBruno_2011.sph"
    sph.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(sph))):
        prepare.prepare_tedlium(data, tmp_path / "out")


ALPHABET = "abcdefghijklmnopqrstuvwxyz' "


def _edit_first_kept_segment(data: Path, words: str) -> tuple[Path, int]:
    """Replace the words of the first speech line of a train talk; return (STM path, line number)."""
    stm = data / "legacy" / "train" / "stm" / "SynthAlice_2010X.stm"
    lines = stm.read_text().splitlines()
    number = next(
        i for i, line in enumerate(lines) if "inter_segment_gap" not in line and "ignore" not in line
    )
    fields = lines[number].split()
    lines[number] = " ".join(fields[:6] + words.split())
    stm.write_text("\n".join(lines) + "\n")
    return stm, number + 1


def test_characters_outside_the_alphabet_stop_preparation_naming_them(tmp_path):
    data = _copy_sample(tmp_path)
    stm, line = _edit_first_kept_segment(data, "in 2010 the café opened its doors")
    with pytest.raises(ValueError, match=r"outside the output alphabet") as err:
        prepare.prepare_tedlium(data, tmp_path / "out", characters=ALPHABET)
    for char in "'0' x1", "'1' x1", "'2' x1", "'é' x1":
        assert f"{char} (e.g. {stm}:{line})" in str(err.value)
    assert not (tmp_path / "out" / "tedlium_prepare.json").exists()


def test_unknown_characters_drop_and_map(tmp_path, caplog):
    data = _copy_sample(tmp_path)
    stm, line = _edit_first_kept_segment(data, "the café and the naïve cat")
    caplog.set_level(logging.INFO)
    prepare.prepare_tedlium(data, tmp_path / "drop", characters=ALPHABET, unknown_characters="drop")
    assert not any("caf" in row["wrd"] for row in _read_csv(tmp_path / "drop" / "train.csv"))
    assert f"1 segments left out for characters outside the output alphabet: 'é' x1 (e.g. {stm}:{line})" in (
        caplog.text
    )
    prepare.prepare_tedlium(data, tmp_path / "map", characters=ALPHABET, unknown_characters="map")
    assert "the cafe and the naive cat" in [row["wrd"] for row in _read_csv(tmp_path / "map" / "train.csv")]
    assert f"'é'->'e' x1 (e.g. {stm}:{line})" in caplog.text and "'ï'->'i' x1" in caplog.text


def _truncate(path: Path, keep_bytes: int) -> None:
    data = path.read_bytes()[:keep_bytes]
    path.unlink()  # a symlink in the copy: replace it by the cut file
    path.write_bytes(data)


def test_truncated_audio_is_named_at_preparation_and_after_it(tmp_path):
    data = _copy_sample(tmp_path)
    prepare.prepare_tedlium(data, tmp_path / "out")
    sph = data / "legacy" / "test" / "sph" / "SynthIris_2012.sph"
    _truncate(sph, 1024 + 2 * 16000)  # header + 1 s
    last = _read_csv(tmp_path / "out" / "test.csv")[-1]
    with pytest.raises(AudioFileError, match=rf"{re.escape(str(sph))} is truncated: its header announces"):
        read_segment(sph, float(last["start"]), float(last["stop"]))  # what training hits
    # ... and preparing again does not skip as "up to date": it checks the file and names it
    with pytest.raises(
        AudioFileError, match=rf"{re.escape(str(sph))} is truncated: .* only 16000 \(1.00 s\)"
    ):
        prepare.prepare_tedlium(data, tmp_path / "out")
