"""The text recipes' student as their YAML builds it (tiny RoBERTa converted to Linformer): an item's
outputs do not depend on how much padding its batch adds, for every projection-sharing mode, since each
Linformer projection sees only the item's valid tokens."""

import pytest
import torch
from conftest import ROOT, SAMPLES
from hyperpyyaml import load_hyperpyyaml

from cald_brain.data.text import TextCollator
from cald_brain.models.text import load_tokenizer

TINY_ROBERTA = SAMPLES / "models" / "tiny-roberta"


def recipe_student(tmp_path, share: str) -> torch.nn.Module:
    overrides = {
        "task": "qnli",
        "data_folder": str(SAMPLES / "glue_data" / "QNLI"),
        "output_folder": str(tmp_path),
        "pretrained_source": str(TINY_ROBERTA),
        "proj_share_mode": share,
    }
    with open(ROOT / "nlp" / "GLUE" / "hparams" / "linformer_trajectory.yaml", encoding="utf-8") as f:
        hparams = load_hyperpyyaml(f, overrides)
    return hparams["student"].eval()


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
