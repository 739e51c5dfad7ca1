"""The text recipes' student as their YAML builds it (tiny RoBERTa converted to Linformer): an item's
outputs do not depend on how much padding its batch adds, for every projection-sharing mode, since each
Linformer projection sees only the item's valid tokens; and with identity projections the student computes
exactly what the unconverted teacher computes, so the conversion loses nothing but the attention pattern."""

import math

import pytest
import torch
from conftest import ROOT, SAMPLES
from hyperpyyaml import load_hyperpyyaml

from cald_brain.data.text import TextCollator
from cald_brain.models.text import load_tokenizer

TINY_ROBERTA = SAMPLES / "models" / "tiny-roberta"


def recipe_hparams(tmp_path, share: str = "none", **extra) -> dict:
    overrides = {
        "task": "qnli",
        "data_folder": str(SAMPLES / "glue_data" / "QNLI"),
        "output_folder": str(tmp_path),
        "pretrained_source": str(TINY_ROBERTA),
        "proj_share_mode": share,
        **extra,
    }
    with open(ROOT / "nlp" / "GLUE" / "hparams" / "linformer_trajectory.yaml", encoding="utf-8") as f:
        return load_hyperpyyaml(f, overrides)


def recipe_student(tmp_path, share: str) -> torch.nn.Module:
    return recipe_hparams(tmp_path, share)["student"].eval()


@pytest.mark.parametrize("share", ["none", "kv", "layer"])
def test_linformer_student_ignores_padding(tmp_path, share):
    torch.manual_seed(0)
    student = recipe_student(tmp_path, share)
    collate = TextCollator(load_tokenizer(str(TINY_ROBERTA)), max_length=512)
    short = {"id": "s", "text": "Where was Ada born?", "text_pair": "Ada was born in Oslo.", "label": 0}
    long = {
        "id": "l",
        "text": "Which city did Boris move to after the long winter of that year?",
        "text_pair": "In 1950, after many years abroad and a long journey by sea, Boris moved to Lisbon.",
        "label": 1,
    }
    alone, batch = collate([short]), collate([short, long])
    valid = int(alone.inputs["attention_mask"].sum())
    assert batch.inputs["input_ids"].shape[1] > valid + 10  # the short item gets real padding
    with torch.no_grad():
        out_alone, out_batch = student(**alone.inputs), student(**batch.inputs)
    torch.testing.assert_close(out_batch.logits[0], out_alone.logits[0], atol=1e-5, rtol=1e-4)
    assert len(out_batch.hidden_states) == 3  # embeddings + 2 layers
    for h_batch, h_alone in zip(out_batch.hidden_states, out_alone.hidden_states, strict=True):
        torch.testing.assert_close(h_batch[0, :valid], h_alone[0, :valid], atol=1e-5, rtol=1e-4)
    assert out_batch.mask[0].sum() == valid and out_batch.mask[1].all()


def test_identity_projections_reproduce_the_teacher(tmp_path):
    """k = length and projections sqrt(length) * I (undoing the 1 / sqrt(length) scaling) make Linformer
    attention plain softmax attention: the recipe's student (Q/K/V copied, output dense, FFN and norms kept)
    then equals its joint teacher, the unconverted source, layer by layer. A weight lost or misplaced by the
    conversion, or a mask not reaching a layer, breaks this; a random-projection student does not match."""
    collate = TextCollator(load_tokenizer(str(TINY_ROBERTA)), max_length=512)
    batch = collate([{"id": "s", "text": "the plot is quite boring , but the cast is superb", "label": 0}])
    length = batch.inputs["input_ids"].shape[1]
    hparams = recipe_hparams(tmp_path, linformer_k=length)
    student, teacher = hparams["student"].eval(), hparams["teacher_net"].eval()
    student.model.classifier.load_state_dict(teacher.model.classifier.state_dict())
    with torch.no_grad():
        out_random = student(**batch.inputs)
        projections = [m for n, m in student.named_modules() if n.endswith("_projection")]
        assert len(projections) == 4  # key and value projection of both layers
        for projection in projections:
            projection.weight.zero_()
            projection.weight[:length].copy_(torch.eye(length) * math.sqrt(length))
        out_student, out_teacher = student(**batch.inputs), teacher(**batch.inputs)
    assert len(out_student.hidden_states) == 3
    for h_student, h_teacher in zip(out_student.hidden_states, out_teacher.hidden_states, strict=True):
        torch.testing.assert_close(h_student, h_teacher, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_student.logits, out_teacher.logits, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out_random.hidden_states[-1], out_teacher.hidden_states[-1], atol=1e-3)
