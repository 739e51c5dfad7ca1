"""recipes/SLURP/prepare.py on the mini SLURP sample (tests/samples/SLURP, made by
tools/samples/speech_corpora.py)."""

import csv
import json
import logging
import os
import shutil
from pathlib import Path

import pytest
from conftest import SLURP_SAMPLE as SAMPLE
from conftest import assert_same_tree, load_repo_script

prepare = load_repo_script("recipes/SLURP/prepare.py", "slurp_prepare")

ANNOTATIONS = SAMPLE / "slurp" / "dataset" / "slurp"
SOURCES = {
    "train": ("train.jsonl", "train_synthetic.jsonl"),
    "dev": ("devel.jsonl",),
    "test": ("test.jsonl",),
}


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _records(name: str) -> list[dict]:
    return [json.loads(line) for line in (ANNOTATIONS / name).read_text().splitlines()]


def _copy_root(tmp_path: Path, annotations: str = "slurp/dataset/slurp") -> Path:
    """A SLURP root with the sample's audio folders linked and its jsonl files copied (editable) into
    `annotations`."""
    root = tmp_path / "SLURP"
    root.mkdir()
    for folder in ("slurp_real", "slurp_synth"):
        (root / folder).symlink_to(SAMPLE / folder)
    shutil.copytree(ANNOTATIONS, root / annotations)
    return root


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    save = tmp_path_factory.mktemp("slurp-save")
    prepare.prepare_slurp(SAMPLE, save)
    return save


def test_one_row_per_listed_recording_with_scenario_action_labels(prepared):
    for split, sources in SOURCES.items():
        rows = _read_csv(prepared / f"{split}.csv")
        assert list(rows[0]) == list(prepare.CSV_COLUMNS)
        expected = {}  # file -> (jsonl, record), first listing wins
        for name in sources:
            for record in _records(name):
                for recording in record["recordings"]:
                    expected.setdefault(recording["file"], (name, record))
        assert len(rows) == len(expected) == len({row["ID"] for row in rows})
        for row in rows:
            name, record = expected[Path(row["wav"]).name]
            folder = "slurp_synth" if name == "train_synthetic.jsonl" else "slurp_real"
            assert row["wav"] == f"$data_root/{folder}/{Path(row['wav']).name}"
            assert row["intent"] == f"{record['scenario']}_{record['action']}"
            assert row["transcript"] == record["sentence"] and row["slurp_id"] == str(record["slurp_id"])
            assert 0.5 < float(row["duration"]) < 5.0
    headset = [r for r in _read_csv(prepared / "train.csv") if r["ID"].endswith("-headset")]
    assert 0 < len(headset) < len(_read_csv(prepared / "train.csv"))  # headset and far-field rows


def test_intent_is_not_the_jsonl_intent_field(prepared):
    """slurp_id 962 (as in the real test set): field `intent` = hue_lightup, our label iot_hue_lightup."""
    (record,) = [r for r in _records("test.jsonl") if r["slurp_id"] == 962]
    assert record["intent"] == "hue_lightup"
    rows = [row for row in _read_csv(prepared / "test.csv") if row["slurp_id"] == "962"]
    assert rows and {row["intent"] for row in rows} == {"iot_hue_lightup"}


def test_a_recording_listed_twice_is_kept_once(prepared):
    first = _records("train.jsonl")[0]
    files = [r["file"] for r in first["recordings"]]
    twice = {f for f in files if files.count(f) > 1}
    assert twice, "the sample should list a recording twice"
    wavs = [Path(row["wav"]).name for row in _read_csv(prepared / "train.csv")]
    assert all(wavs.count(f) == 1 for f in twice)


def test_label_sets_from_all_splits(prepared):
    """One label file per head `label_heads` can name: intents, and the reference's scenarios and actions."""
    rows = [row for split in SOURCES for row in _read_csv(prepared / f"{split}.csv")]
    sizes = {}
    for key, name in prepare.LABEL_FILES.items():
        labels = (prepared / name).read_text().splitlines()
        assert labels == sorted({row[key] for row in rows}), name
        sizes[key] = len(labels)
    assert sizes == {"scenario": 5, "action": 4, "intent": 5}  # the recipe rows' --num_outputs=[5,4]


def test_annotations_in_dataset_slurp_give_the_same_manifests(tmp_path, prepared):
    root = _copy_root(tmp_path, annotations="dataset/slurp")
    prepare.prepare_slurp(root, tmp_path / "save")
    for split in SOURCES:
        assert _read_csv(tmp_path / "save" / f"{split}.csv") == _read_csv(prepared / f"{split}.csv")


def test_second_preparation_is_skipped_and_an_unchanged_label_set_accepted(tmp_path):
    prepare.prepare_slurp(SAMPLE, tmp_path)
    stamps = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    prepare.prepare_slurp(SAMPLE, tmp_path)
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == stamps
    (tmp_path / prepare.OPTIONS_FILE).unlink()  # forces a new preparation: same labels, accepted
    prepare.prepare_slurp(SAMPLE, tmp_path)
    assert not list(tmp_path.glob("*.tmp"))


def test_a_changed_label_set_is_an_error(tmp_path):
    save = tmp_path / "save"
    prepare.prepare_slurp(SAMPLE, save)
    root = _copy_root(tmp_path)
    test_jsonl = root / "slurp" / "dataset" / "slurp" / "test.jsonl"
    records = _records("test.jsonl")
    records[0]["action"] = "hue_lightdim"  # a new intent appears
    test_jsonl.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(ValueError, match=r"intents\.txt fixes the intent set.*iot_hue_lightdim"):
        prepare.prepare_slurp(root, save)
    assert (save / prepare.LABEL_FILE).read_text().count("\n") == 5
    assert (save / prepare.LABEL_FILES["action"]).read_text().count("\n") == 4  # nothing half-written


def test_a_recording_missing_on_disk_names_the_file_and_the_jsonl_line(tmp_path):
    root = tmp_path / "SLURP"
    (root / "slurp_real").mkdir(parents=True)
    (root / "slurp_synth").symlink_to(SAMPLE / "slurp_synth")
    shutil.copytree(ANNOTATIONS, root / "dataset" / "slurp")
    missing = _records("devel.jsonl")[3]["recordings"][0]["file"]
    for audio in (SAMPLE / "slurp_real").iterdir():
        if audio.name != missing:
            (root / "slurp_real" / audio.name).symlink_to(audio)
    with pytest.raises(FileNotFoundError, match=rf"{missing} listed at .*devel\.jsonl:4 "):
        prepare.prepare_slurp(root, tmp_path / "save")
    assert not (tmp_path / "save").exists()  # nothing written


def test_missing_folders_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        prepare.prepare_slurp(tmp_path / "nowhere", tmp_path / "save")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"dataset/slurp or .*slurp/dataset/slurp"):
        prepare.prepare_slurp(tmp_path / "empty", tmp_path / "save")
    root = _copy_root(tmp_path)
    (root / "slurp_synth").unlink()
    with pytest.raises(FileNotFoundError, match=r"slurp_synth is missing: unpack"):
        prepare.prepare_slurp(root, tmp_path / "save")


def test_a_malformed_jsonl_line_names_file_and_line(tmp_path):
    root = _copy_root(tmp_path)
    devel = root / "slurp" / "dataset" / "slurp" / "devel.jsonl"
    lines = devel.read_text().splitlines()
    lines[1] = lines[1][:-5]
    devel.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"devel\.jsonl:2: not a JSON line"):
        prepare.prepare_slurp(root, tmp_path / "save")


def test_runs_alone_from_the_command_line(tmp_path):
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(prepare.__file__).resolve().parents[2])}
    script = Path(prepare.__file__)
    cmd = [sys.executable, str(script), "--data_folder", str(SAMPLE), "--save_folder", str(tmp_path)]
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    assert len(_read_csv(tmp_path / "dev.csv")) == 10


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_regenerating_gives_the_committed_sample(tmp_path):
    """Fails when tools/samples/speech_corpora.py, the docstrings it reads or espeak-ng changed since the
    sample was made."""
    speech_corpora = load_repo_script("tools/samples/speech_corpora.py", "speech_corpora")
    speech_corpora.build_slurp(tmp_path / "SLURP")
    assert_same_tree(tmp_path / "SLURP", SAMPLE)


def _edit_record(root: Path, name: str, index: int, edit) -> None:
    path = root / "slurp" / "dataset" / "slurp" / name
    records = [json.loads(line) for line in path.read_text().splitlines()]
    edit(records[index])
    path.write_text("".join(json.dumps(record) + "\n" for record in records))


def test_a_recording_entry_without_file_names_the_jsonl_line(tmp_path):
    root = _copy_root(tmp_path)
    _edit_record(root, "test.jsonl", 2, lambda record: record["recordings"][0].pop("file"))
    with pytest.raises(ValueError, match=r"test\.jsonl:3: a recordings entry without a file name"):
        prepare.prepare_slurp(root, tmp_path / "save")


def test_an_intent_only_in_test_is_named_in_a_warning(tmp_path, caplog):
    root = _copy_root(tmp_path)
    _edit_record(root, "test.jsonl", 0, lambda record: record.update(scenario="alarm", action="snooze"))
    listed = len(_records("test.jsonl")[0]["recordings"])
    with caplog.at_level(logging.WARNING):
        prepare.prepare_slurp(root, tmp_path / "save")
    assert "1 intent labels have no training item" in caplog.text
    assert f"never learns them: alarm_snooze ({listed} in test)" in caplog.text
