"""tools/samples/text_corpora.py rebuilds the committed GLUE / aclImdb samples byte for byte, and the
committed tiny RoBERTa loads as a Hugging Face checkpoint with its tokenizer and records its pretraining."""

import json

import pytest
from conftest import SAMPLES, assert_same_tree, load_repo_script
from transformers import AutoModelForSequenceClassification, AutoTokenizer

text_corpora = load_repo_script("tools/samples/text_corpora.py", "text_corpora")


def test_samples_are_rebuilt_identically(tmp_path):
    text_corpora.main(["--out", str(tmp_path)])
    assert_same_tree(tmp_path / "glue_data", SAMPLES / "glue_data")
    assert_same_tree(tmp_path / "aclImdb", SAMPLES / "aclImdb")


@pytest.mark.slow
def test_sample_task_text_is_disjoint_from_the_pretraining_text():
    tiny_roberta = load_repo_script("tools/samples/tiny_roberta.py", "tiny_roberta")
    pretraining = "\n".join(tiny_roberta.pretraining_paragraphs()).lower()
    sentences = [
        line.split("\t")[0].strip() for line in (SAMPLES / "glue_data" / "SST-2" / "train.tsv").open()
    ]
    assert len(sentences) > 300
    assert not [s for s in sentences[1:] if s.replace(" ,", ",") in pretraining]


def test_tiny_roberta_loads_and_was_pretrained():
    folder = SAMPLES / "models" / "tiny-roberta"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)
    assert model.config.model_type == "roberta" and tokenizer.pad_token_id == model.config.pad_token_id
    encoded = tokenizer("Where was Ada born?", "In Oslo.")["input_ids"]
    assert encoded[0] == tokenizer.cls_token_id and encoded.count(tokenizer.sep_token_id) == 3
    stats = json.loads((folder / "pretraining.json").read_text())
    assert stats["masked_accuracy_after"] > 2 * stats["masked_accuracy_most_frequent_token"]
    assert stats["masked_accuracy_before"] < stats["masked_accuracy_most_frequent_token"]
    assert sum(f.stat().st_size for f in folder.iterdir()) < 3_000_000
