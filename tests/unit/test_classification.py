"""cald_brain.tasks.utterance_classification: the per-unit cross-entropy (reference loss parity, one head and
SLURP's two), the accuracy stats and the start-up checks of the head sizes."""

import csv

import pytest
import torch

from cald_brain.data.manifests import fix_labels, read_labels
from cald_brain.recipe import RecipeError
from cald_brain.tasks.utterance_classification import (
    ClassificationStats,
    LabelHead,
    check_heads,
    cross_entropy_per_unit,
    heads_cross_entropy,
)


def test_cross_entropy_per_unit_is_the_references_sum_over_characters():
    logits = torch.randn(3, 4)
    targets = torch.tensor([0, 3, 1])
    chars = torch.tensor([10, 20, 30])
    ce = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    assert torch.allclose(cross_entropy_per_unit(logits, targets, chars), ce.sum() / 60)
    # one unit per utterance: the usual mean
    ones = torch.ones(3)
    assert torch.allclose(cross_entropy_per_unit(logits, targets, ones), ce.mean())


def test_two_heads_loss_is_the_references_classifier_loss():
    """The reference (speech/models/model.py, classifier loss): per head the summed cross-entropy, added
    over heads, divided by the number of heads; `loss_normalize_type=sample` then divides by characters."""
    torch.manual_seed(0)
    scenario, action = torch.randn(3, 18), torch.randn(3, 46)
    targets = torch.tensor([[0, 45], [17, 3], [5, 5]])
    chars = torch.tensor([10, 20, 30])
    reference = 0.0
    for i, logits in enumerate((scenario, action)):
        reference += torch.nn.functional.cross_entropy(logits, targets[:, i], reduction="none").sum()
    reference = reference / 2 / chars.sum()
    torch.testing.assert_close(heads_cross_entropy([scenario, action], targets, chars), reference)
    # one head: the single-head loss
    one = heads_cross_entropy([scenario], targets[:, :1], chars)
    torch.testing.assert_close(one, cross_entropy_per_unit(scenario, targets[:, 0], chars))


def test_accuracy_and_predictions_file(tmp_path):
    stats = ClassificationStats()
    assert stats.accuracy() == 0.0
    stats.append(["a", "b"], [torch.tensor([[2.0, 0.0], [3.0, 1.0]])], torch.tensor([[0], [1]]))
    stats.append(["c"], [torch.tensor([[0.0, 1.0]])], torch.tensor([[1]]))
    assert stats.accuracy() == pytest.approx(2 / 3) == stats.joint_accuracy()
    head = LabelHead("spk_id", tmp_path / "speakers.txt", ("no", "yes"))
    stats.write_predictions(tmp_path / "p.csv", [head])
    with open(tmp_path / "p.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows == [
        {"ID": "a", "target": "no", "prediction": "no", "correct": "1"},
        {"ID": "b", "target": "yes", "prediction": "no", "correct": "0"},
        {"ID": "c", "target": "yes", "prediction": "yes", "correct": "1"},
    ]


def test_two_heads_accuracy_is_the_mean_and_intent_needs_both(tmp_path):
    stats = ClassificationStats()
    scenario = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])  # predicts 0, 0, 1, 1
    action = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])  # 0, 1, 2, 0
    targets = torch.tensor([[0, 0], [0, 2], [0, 2], [1, 1]])
    stats.append(["a", "b", "c", "d"], [scenario, action], targets)
    assert stats.head_accuracies() == [0.75, 0.5]
    assert stats.accuracy() == pytest.approx(0.625)  # the reference's metric: the mean of the two
    assert stats.joint_accuracy() == 0.25  # intent accuracy: only "a" has both right
    heads = [
        LabelHead("scenario", tmp_path / "scenarios.txt", ("iot", "play")),
        LabelHead("action", tmp_path / "actions.txt", ("query", "music", "set")),
    ]
    stats.write_predictions(tmp_path / "p.csv", heads)
    with open(tmp_path / "p.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows[1] == {
        "ID": "b", "scenario_target": "iot", "scenario_prediction": "iot", "action_target": "set",
        "action_prediction": "music", "correct": "0",
    }  # fmt: skip
    assert [row["correct"] for row in rows] == ["1", "0", "0", "0"]


def test_label_set_is_fixed_once_written(tmp_path):
    path = tmp_path / "labels.txt"
    fix_labels(path, ["a", "b"], "intent")
    fix_labels(path, ["a", "b"], "intent")  # same set: fine
    with pytest.raises(ValueError, match="new order"):
        fix_labels(path, ["b", "a"], "intent")
    with pytest.raises(ValueError, match=r"added \['c'\], missing \[\]"):
        fix_labels(path, ["a", "b", "c"], "intent")
    assert read_labels(path) == ["a", "b"]


def test_head_sizes_must_match_the_prepared_labels(tmp_path):
    intent = [LabelHead("intent", tmp_path / "intents.txt", ("a", "b"))]
    check_heads(intent, {"num_outputs": 2})
    with pytest.raises(RecipeError, match=r"num_outputs is 69 but .*intents\.txt lists 2 .* --num_outputs=2"):
        check_heads(intent, {"num_outputs": 69})
    two = [
        LabelHead("scenario", tmp_path / "scenarios.txt", ("a", "b", "c")),
        LabelHead("action", tmp_path / "actions.txt", ("x", "y")),
    ]
    check_heads(two, {"num_outputs": [3, 2], "alpha_kd": 0.0})
    with pytest.raises(RecipeError, match=r"scenarios\.txt lists 3 scenario .*actions\.txt lists 2 action"):
        check_heads(two, {"num_outputs": [18, 46]})
    with pytest.raises(RecipeError, match=r"--num_outputs=\[3,2\]"):
        check_heads(two, {"num_outputs": 5})  # one head's size for two heads
    with pytest.raises(RecipeError, match=r"alpha_kd is 1.0 .* 2 heads .* --alpha_kd=0"):
        check_heads(two, {"num_outputs": [3, 2], "alpha_kd": 1.0})
