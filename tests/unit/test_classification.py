"""cald_brain.tasks.utterance_classification: the per-unit cross-entropy (reference loss parity) and the
accuracy stats."""

import csv

import pytest
import torch

from cald_brain.data.manifests import fix_labels, read_labels
from cald_brain.tasks.utterance_classification import ClassificationStats, cross_entropy_per_unit


def test_cross_entropy_per_unit_is_the_references_sum_over_characters():
    logits = torch.randn(3, 4)
    targets = torch.tensor([0, 3, 1])
    chars = torch.tensor([10, 20, 30])
    ce = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    assert torch.allclose(cross_entropy_per_unit(logits, targets, chars), ce.sum() / 60)
    # one unit per utterance: the usual mean
    ones = torch.ones(3)
    assert torch.allclose(cross_entropy_per_unit(logits, targets, ones), ce.mean())


def test_accuracy_and_predictions_file(tmp_path):
    stats = ClassificationStats()
    assert stats.accuracy() == 0.0
    stats.append(["a", "b"], torch.tensor([[2.0, 0.0], [3.0, 1.0]]), torch.tensor([0, 1]))
    stats.append(["c"], torch.tensor([[0.0, 1.0]]), torch.tensor([1]))
    assert stats.accuracy() == pytest.approx(2 / 3)
    stats.write_predictions(tmp_path / "p.csv", ["no", "yes"])
    with open(tmp_path / "p.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows == [
        {"ID": "a", "target": "no", "prediction": "no", "correct": "1"},
        {"ID": "b", "target": "yes", "prediction": "no", "correct": "0"},
        {"ID": "c", "target": "yes", "prediction": "yes", "correct": "1"},
    ]


def test_label_set_is_fixed_once_written(tmp_path):
    path = tmp_path / "labels.txt"
    fix_labels(path, ["a", "b"], "intent")
    fix_labels(path, ["a", "b"], "intent")  # same set: fine
    with pytest.raises(ValueError, match="new order"):
        fix_labels(path, ["b", "a"], "intent")
    with pytest.raises(ValueError, match=r"added \['c'\], missing \[\]"):
        fix_labels(path, ["a", "b", "c"], "intent")
    assert read_labels(path) == ["a", "b"]


def test_head_size_must_match_the_prepared_labels():
    from cald_brain.recipe import RecipeError
    from cald_brain.tasks.utterance_classification import check_num_classes

    check_num_classes(["a", "b"], 2, "num_outputs", "intents.txt")
    with pytest.raises(RecipeError, match=r"num_outputs is 69 but intents\.txt lists 2 .* --num_outputs=2"):
        check_num_classes(["a", "b"], 69, "num_outputs", "intents.txt")
