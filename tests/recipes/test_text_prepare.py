"""nlp/GLUE/prepare.py and nlp/IMDB/prepare.py on the committed samples and on hand-written task files:
malformed rows skipped and logged, pairs vs single sentences, label maps, STS-B regression, MNLI's two dev
files, CoLA without header, IMDB's tree (unsup ignored, raw text or <br /> removed) and its deterministic
dev split."""

import json
import logging
import shutil

import pytest
from conftest import ROOT, SAMPLES, load_repo_script
from hyperpyyaml import resolve_references
from ruamel.yaml import YAML

from cald_brain.recipe import with_derived

GLUE_TASKS = load_repo_script("nlp/GLUE/tasks.py", "glue_tasks").GLUE_TASKS

glue = load_repo_script("nlp/GLUE/prepare.py", "glue_prepare_test")
imdb = load_repo_script("nlp/IMDB/prepare.py", "imdb_prepare_test")
GLUE_SAMPLES = SAMPLES / "glue_data"
GLUE_HPARAMS = ROOT / "nlp" / "GLUE" / "hparams"


def manifest(folder, name):
    return json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))


def write_task(folder, files: dict[str, list[str]]):
    folder.mkdir(parents=True)
    for name, lines in files.items():
        (folder / f"{name}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def test_qqp_sample_skips_and_logs_the_malformed_rows(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        glue.prepare_glue(GLUE_SAMPLES / "QQP", tmp_path, "qqp")
    train = manifest(tmp_path, "train")
    assert len(train) == 399 and len(manifest(tmp_path, "dev")) == 100
    assert "2 malformed rows skipped (lines 7, 8)" in caplog.text
    assert "train-7" not in train and "train-8" not in train
    quoted = train["train-5"]
    assert quoted == {
        "text": 'How do I learn chess quickly "really"?',
        "text_pair": "What is the fastest way to learn chess?",
        "label": 1,
    }
    assert not list(tmp_path.glob("test.json"))  # unlabelled GLUE test files are not used


def test_single_sentence_and_label_maps(tmp_path):
    glue.prepare_glue(GLUE_SAMPLES / "SST-2", tmp_path / "sst2", "sst2")
    item = manifest(tmp_path / "sst2", "train")["train-2"]
    assert set(item) == {"text", "label"} and item["text"].endswith(" ")  # text kept exactly
    glue.prepare_glue(GLUE_SAMPLES / "QNLI", tmp_path / "qnli", "qnli")
    lines = (GLUE_SAMPLES / "QNLI" / "dev.tsv").read_text().splitlines()
    dev = manifest(tmp_path / "qnli", "dev")
    for number, line in enumerate(lines[1:], start=2):
        _, question, sentence, label = line.split("\t")
        expected = {"entailment": 0, "not_entailment": 1}[label]
        assert dev[f"dev-{number}"] == {"text": question, "text_pair": sentence, "label": expected}


def test_stsb_regression_and_unparsable_scores(tmp_path, caplog):
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
    row = "0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA plane takes off.\tA jet takes off.\t{}"
    folder = write_task(
        tmp_path / "STS-B",
        {"train": [header, row.format("5.000"), row.format("n/a")], "dev": [header, row.format("3.8")]},
    )
    with caplog.at_level(logging.WARNING):
        glue.prepare_glue(folder, tmp_path / "out", "stsb")
    assert [item["label"] for item in manifest(tmp_path / "out", "train").values()] == [5.0]
    assert manifest(tmp_path / "out", "dev")["dev-2"]["label"] == pytest.approx(3.8)
    assert "1 malformed rows skipped (lines 3)" in caplog.text


def test_mnli_two_dev_files_and_unknown_labels(tmp_path):
    header = "index\tpromptID\tpairID\tgenre\tsentence1\tsentence2\tgold_label"
    folder = write_task(
        tmp_path / "MNLI",
        {
            "train": [header, "0\t1\t1n\tgov\tA man.\tA person.\tentailment", "1\t2\t2n\tgov\tA\tB\t-"],
            "dev_matched": [header, "0\t1\t1n\tgov\tIt rains.\tIt is dry.\tcontradiction"],
            "dev_mismatched": [header, "0\t1\t1n\tgov\tA cat.\tA dog.\tneutral"],
        },
    )
    glue.prepare_glue(folder, tmp_path / "out", "mnli")
    assert [i["label"] for i in manifest(tmp_path / "out", "train").values()] == [1]
    assert manifest(tmp_path / "out", "dev_matched")["dev_matched-2"]["label"] == 0
    assert manifest(tmp_path / "out", "dev_mismatched")["dev_mismatched-2"]["label"] == 2


def test_cola_without_header(tmp_path):
    folder = write_task(
        tmp_path / "CoLA",
        {
            "train": ["gj04\t1\t\tThe sailors rode the breeze.", "gj04\t0\t*\tThey drank pub."],
            "dev": ["x\t1\t\tOk."],
        },
    )
    glue.prepare_glue(folder, tmp_path / "out", "cola")
    train = manifest(tmp_path / "out", "train")
    assert train == {
        "train-1": {"text": "The sailors rode the breeze.", "label": 1},
        "train-2": {"text": "They drank pub.", "label": 0},
    }


def test_wrong_folder_and_missing_files_name_the_fix(tmp_path):
    with pytest.raises(ValueError, match=r"lacks \['question1', 'question2', 'is_duplicate'\].*QQP"):
        glue.prepare_glue(GLUE_SAMPLES / "SST-2", tmp_path / "a", "qqp")
    with pytest.raises(FileNotFoundError, match="MNLI task folder"):
        glue.prepare_glue(tmp_path / "MNLI", tmp_path / "b", "mnli")


def test_preparation_is_skipped_only_when_up_to_date(tmp_path):
    glue.prepare_glue(GLUE_SAMPLES / "SST-2", tmp_path, "sst2")
    (tmp_path / "train.json").write_text("{}")
    glue.prepare_glue(GLUE_SAMPLES / "SST-2", tmp_path, "sst2")
    assert manifest(tmp_path, "train") == {}  # same folder and task: kept
    glue.prepare_glue(GLUE_SAMPLES / "QNLI", tmp_path, "qnli")
    assert len(manifest(tmp_path, "train")) == 400  # another task: prepared again


def test_imdb_tree_dev_split_and_raw_text(tmp_path):
    imdb.prepare_imdb(SAMPLES / "aclImdb", tmp_path)
    train, dev, test = (manifest(tmp_path, n) for n in ("train", "dev", "test"))
    assert (len(train), len(dev), len(test)) == (216, 24, 100)
    assert sum(i["label"] for i in dev.values()) == 12  # 10 % of each class
    assert not set(train) & set(dev)
    assert not any("unsup" in key for key in train)
    raw = (SAMPLES / "aclImdb" / "train" / "pos" / "0_9.txt").read_text()
    item = (train | dev)["train-pos-0_9"]
    assert "<br />" in raw and item["text"] == raw  # the raw text, as the reference trains on
    assert item["label"] == 1 and item["rating"] == 9
    assert all(i["rating"] <= 4 for i in test.values() if i["label"] == 0)
    again = tmp_path / "again"
    imdb.prepare_imdb(SAMPLES / "aclImdb", again)
    assert manifest(again, "dev") == dev  # deterministic
    imdb.prepare_imdb(SAMPLES / "aclImdb", tmp_path / "other", seed=1)
    assert set(manifest(tmp_path / "other", "dev")) != set(dev)


def test_imdb_strip_line_breaks_option(tmp_path):
    imdb.prepare_imdb(SAMPLES / "aclImdb", tmp_path)
    imdb.prepare_imdb(SAMPLES / "aclImdb", tmp_path, strip_line_breaks=True)  # another option: prepared again
    item = (manifest(tmp_path, "train") | manifest(tmp_path, "dev"))["train-pos-0_9"]
    raw = (SAMPLES / "aclImdb" / "train" / "pos" / "0_9.txt").read_text()
    assert item["text"] == " ".join(raw.replace("<br />", " ").split()) and "<br" not in item["text"]


def test_imdb_wrong_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="extracted aclImdb folder"):
        imdb.prepare_imdb(SAMPLES / "glue_data", tmp_path)


def test_glue_command_line_sets_num_labels_from_the_task():
    train = load_repo_script("nlp/GLUE/train.py", "glue_train_test")
    assert train.derived_from_task({"task": "mnli"})["num_labels"] == 3
    assert train.derived_from_task({"task": "stsb"})["num_labels"] == 1
    assert train.derived_from_task({}) == {}  # the YAML's PLACEHOLDER then names --task
    hparams_file = str(GLUE_HPARAMS / "roberta_finetune.yaml")
    given = {"task": "mnli", "num_labels": 3}
    assert with_derived(hparams_file, given, train.derived_from_task) == given
    assert with_derived(hparams_file, "task: mnli", train.derived_from_task) == {
        "task": "mnli",
        "num_labels": 3,
    }
    with pytest.raises(SystemExit, match="derives num_labels from the command line"):
        with_derived(hparams_file, {"task": "mnli", "num_labels": 2}, train.derived_from_task)


def test_glue_hybrid_switch_defaults_to_the_reference_step_of_the_task():
    train = load_repo_script("nlp/GLUE/train.py", "glue_train_test")
    hparams_file = GLUE_HPARAMS / "linformer_hybrid.yaml"

    def distill_until_step(overrides: dict):
        overrides = with_derived(
            str(hparams_file), {**overrides, "data_folder": "d"}, train.derived_from_task
        )
        with open(hparams_file, encoding="utf-8") as fin:
            return YAML(typ="rt").load(resolve_references(fin, overrides))["distill_until_step"]

    for name, step in (("qnli", 10000), ("qqp", 40000), ("sst2", 5000)):
        assert distill_until_step({"task": name}) == step
        assert GLUE_TASKS[name].hybrid_switch_step == step
    assert distill_until_step({"task": "qnli", "distill_until_step": 7}) == 7
    assert distill_until_step({"task": "rte"}) is None
    with pytest.raises(SystemExit, match="--distill_until_step"):
        train.check_hybrid_switch({"guidance_mode": "hybrid", "distill_until_step": None}, "rte")
    train.check_hybrid_switch({"guidance_mode": "hybrid", "distill_until_step": 7}, "rte")


def copy_glue(tmp_path, name):
    folder = tmp_path / name
    shutil.copytree(GLUE_SAMPLES / name, folder)
    return folder


def test_glue_non_utf8_input_names_the_file_line_and_byte(tmp_path):
    folder = copy_glue(tmp_path, "SST-2")
    lines = (folder / "train.tsv").read_bytes().split(b"\n")
    lines[6] = lines[6].replace(b" ", " caf\xe9 ".encode("latin-1"), 1)  # a latin-1 file
    (folder / "train.tsv").write_bytes(b"\n".join(lines))
    with pytest.raises(ValueError, match=r"train\.tsv:7: not UTF-8 text \(byte 0xe9 at column \d+\).*iconv"):
        glue.prepare_glue(folder, tmp_path / "out", "sst2")


def test_glue_labels_of_another_kind_say_what_was_found_and_expected(tmp_path):
    folder = copy_glue(tmp_path, "SST-2")
    text = (folder / "train.tsv").read_text()
    (folder / "train.tsv").write_text(text.replace("\t1\n", "\tpositive\n").replace("\t0\n", "\tnegative\n"))
    with pytest.raises(
        ValueError,
        match=r"train\.tsv: no usable row: column 'label' holds '(positive|negative)' \(\d+ rows\), "
        r"'(positive|negative)' \(\d+ rows\); --task=sst2 expects '0' / '1'",
    ):
        glue.prepare_glue(folder, tmp_path / "out", "sst2")


def test_glue_label_without_training_rows_is_named_in_a_warning(tmp_path, caplog):
    folder = copy_glue(tmp_path, "SST-2")
    lines = (folder / "train.tsv").read_text().splitlines()
    (folder / "train.tsv").write_text("\n".join(line for line in lines if not line.endswith("\t1")) + "\n")
    with caplog.at_level(logging.WARNING):
        glue.prepare_glue(folder, tmp_path / "out", "sst2")
    positives = sum(line.endswith("\t1") for line in (folder / "dev.tsv").read_text().splitlines())
    assert (
        f"GLUE sst2: no training row for the labels ['1'] (rows in dev: {{'1': {positives}}})" in caplog.text
    )


def test_imdb_class_folder_without_reviews_is_an_error(tmp_path):
    root = tmp_path / "aclImdb"
    shutil.copytree(SAMPLES / "aclImdb", root)
    for review in (root / "train" / "pos").iterdir():
        review.unlink()
    with pytest.raises(ValueError, match=r"train/pos holds no review file.*no 'pos' review"):
        imdb.prepare_imdb(root, tmp_path / "out")
    assert not (tmp_path / "out").exists()
