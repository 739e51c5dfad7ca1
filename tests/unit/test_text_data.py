"""cald_brain.data.text, cald_brain.tasks.text_classification and nlp/GLUE/tasks.py: GLUE TSV reading (no
quote handling, malformed rows), the tokenising collate function, the task table, the metrics, and the linear
warm-up schedule."""

import math

import numpy as np
import pytest
import torch
from conftest import SAMPLES, load_repo_script

from cald_brain.brain import with_total_steps
from cald_brain.data.text import TextCollator, read_tsv
from cald_brain.models.text import load_tokenizer
from cald_brain.optim import WarmupLinearDecay
from cald_brain.recipe import RecipeError
from cald_brain.tasks.text_classification import compute_metrics

_glue = load_repo_script("nlp/GLUE/tasks.py", "glue_tasks")
GLUE_TASKS, glue_task = _glue.GLUE_TASKS, _glue.glue_task

TINY_ROBERTA = SAMPLES / "models" / "tiny-roberta"


def test_tsv_fields_keep_quotes_and_malformed_rows_are_listed(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_bytes(
        b"id\tquestion1\tquestion2\tis_duplicate\r\n"
        b'0\t"Why" is it?\tHow "so\t1\r\n'
        b"1\tWhat is the meaning of\r\n"  # a question with a newline: two short lines
        b'life?"\t0\r\n'
        b"\r\n"
        b"2\ta\tb\t0\textra\r\n"  # too many fields
        b"3\tc\td\t0\r\n"
    )
    table = read_tsv(path)
    assert table.columns == ["id", "question1", "question2", "is_duplicate"]
    assert table.rows[0] == {
        "id": "0",
        "question1": '"Why" is it?',
        "question2": 'How "so',
        "is_duplicate": "1",
    }
    assert [row["id"] for row in table.rows] == ["0", "3"]
    assert table.lines == [2, 7]
    assert table.malformed == [3, 4, 6]


def test_headerless_file_takes_the_given_columns(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text("gj04\t1\t\tOur friends won't buy this analysis.\ngj04\t0\t*\tThey drank the pub.\n")
    table = read_tsv(path, GLUE_TASKS["cola"].columns)
    assert [row["label"] for row in table.rows] == ["1", "0"]
    assert table.rows[0]["sentence"] == "Our friends won't buy this analysis."
    assert table.lines == [1, 2] and not table.malformed


def test_task_table():
    assert {name: task.num_labels for name, task in GLUE_TASKS.items()} == {
        "cola": 2, "sst2": 2, "mrpc": 2, "qqp": 2, "stsb": 1, "mnli": 3, "qnli": 2, "rte": 2, "wnli": 2,
    }  # fmt: skip
    pairs = {name for name, task in GLUE_TASKS.items() if task.pair}
    assert pairs == {"mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"}
    assert GLUE_TASKS["mnli"].dev_splits == ("dev_matched", "dev_mismatched")
    assert {n: t.metrics[0] for n, t in GLUE_TASKS.items() if t.metrics[0] != "accuracy"} == {
        "cola": "matthews", "stsb": "pearson",
    }  # fmt: skip
    assert GLUE_TASKS["qqp"].metrics == GLUE_TASKS["mrpc"].metrics == ("accuracy", "f1")  # as the reference
    with pytest.raises(RecipeError, match="not a GLUE task"):
        glue_task("sst-2")


def test_metrics_against_hand_computed_values():
    predictions = np.array([1, 1, 0, 0, 1, 0])
    labels = np.array([1, 0, 0, 1, 1, 0])
    # tp 2, fp 1, fn 1, tn 2
    metrics = compute_metrics(GLUE_TASKS["mrpc"], predictions, labels)
    assert metrics == pytest.approx({"f1": 2 / 3, "accuracy": 4 / 6})
    assert compute_metrics(GLUE_TASKS["cola"], predictions, labels)["matthews"] == pytest.approx(1 / 3)
    constant = compute_metrics(GLUE_TASKS["cola"], np.zeros(6, dtype=int), labels)
    assert constant["matthews"] == 0.0
    assert compute_metrics(GLUE_TASKS["qqp"], np.zeros(6, dtype=int), labels)["f1"] == 0.0
    scores = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    stsb = compute_metrics(GLUE_TASKS["stsb"], scores**3, scores)
    assert stsb["spearman"] == pytest.approx(1.0)
    assert 0.9 < stsb["pearson"] < 1.0


def test_collator_pairs_pad_and_labels():
    tokenizer = load_tokenizer(str(TINY_ROBERTA))
    items = [
        {"id": "a", "text": "the film is superb", "text_pair": "it is", "label": 1},
        {"id": "b", "text": "dull", "text_pair": "a much longer second sentence than the first", "label": 0},
    ]
    batch = TextCollator(tokenizer, max_length=512)(items)
    single = tokenizer("the film is superb", "it is")["input_ids"]
    assert batch.inputs["input_ids"][0, : len(single)].tolist() == single
    assert batch.inputs["attention_mask"][0].sum() == len(single)
    assert batch.inputs["input_ids"][0, len(single) :].eq(tokenizer.pad_token_id).all()
    assert batch.labels.dtype == torch.long and batch.labels.tolist() == [1, 0]
    regression = TextCollator(tokenizer, max_length=8, regression=True)([{**items[1], "label": 3.2}])
    assert regression.labels.dtype == torch.float32
    assert regression.inputs["input_ids"].shape[1] == 8  # truncated to max_length
    assert batch.to("cpu").id == ["a", "b"]


def test_warmup_linear_decay_reproduces_the_reference_warmups():
    # The reference README's warm-ups are 6 % of 10 epochs at batch 32 (steps per epoch: ceil(N / 32)).
    for train_items, warmup in ((104743, 1964), (363846, 6823), (67349, 1263), (25000, 469)):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        total = 10 * math.ceil(train_items / 32)
        assert WarmupLinearDecay(optimizer, total, warmup_fraction=0.06).warmup_steps == warmup
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    schedule = WarmupLinearDecay(optimizer, total_steps=10, warmup_steps=4)
    rates = []
    for _ in range(11):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 5 / 3, 4 / 3, 1.0, 2 / 3, 1 / 3, 0.0])
    with pytest.raises(ValueError, match="exactly one"):
        WarmupLinearDecay(optimizer, 10, warmup_steps=1, warmup_fraction=0.1)


def test_total_steps_bound_only_when_the_yaml_left_it_out():
    from functools import partial

    bound = with_total_steps(partial(WarmupLinearDecay, warmup_fraction=0.1), 50)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    assert bound(optimizer).total_steps == 50
    given = partial(WarmupLinearDecay, warmup_steps=1, total_steps=7)
    assert with_total_steps(given, 50) is given
    other = partial(torch.optim.lr_scheduler.LinearLR, start_factor=0.1)
    assert with_total_steps(other, 50) is other
    with pytest.raises(RecipeError, match="total_steps"):
        with_total_steps(partial(WarmupLinearDecay, warmup_steps=1), None)
