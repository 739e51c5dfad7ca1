"""The GLUE task table: each task's manifest columns, labels (Hugging Face's GLUE processors' order),
metrics (the first picks the best checkpoint), evaluation splits and the reference's hybrid switch. Used by
prepare.py (which columns to read) and train.py (head size, metrics, hybrid switch)."""

from cald_brain.recipe import RecipeError
from cald_brain.tasks.text_classification import TextTask

BINARY = ("0", "1")
NLI2 = ("entailment", "not_entailment")
# Label orders as Hugging Face's GLUE processors; column names from the distributed files' headers.
GLUE_TASKS: dict[str, TextTask] = {
    task.name: task
    for task in (
        TextTask(
            "cola", "CoLA", "sentence", None, "label", BINARY, ("matthews", "accuracy"),
            columns=("source", "label", "label_notes", "sentence"),
        ),
        TextTask("sst2", "SST-2", "sentence", None, "label", BINARY, hybrid_switch_step=5000),
        TextTask("mrpc", "MRPC", "#1 String", "#2 String", "Quality", BINARY, ("accuracy", "f1")),
        TextTask(
            "qqp", "QQP", "question1", "question2", "is_duplicate", BINARY, ("accuracy", "f1"),
            hybrid_switch_step=40000,
        ),
        TextTask("stsb", "STS-B", "sentence1", "sentence2", "score", None, ("pearson", "spearman")),
        TextTask(
            "mnli", "MNLI", "sentence1", "sentence2", "gold_label",
            ("contradiction", "entailment", "neutral"), dev_splits=("dev_matched", "dev_mismatched"),
        ),
        TextTask("qnli", "QNLI", "question", "sentence", "label", NLI2, hybrid_switch_step=10000),
        TextTask("rte", "RTE", "sentence1", "sentence2", "label", NLI2),
        TextTask("wnli", "WNLI", "sentence1", "sentence2", "label", BINARY),
    )
}  # fmt: skip


def glue_task(name: str) -> TextTask:
    if name not in GLUE_TASKS:
        raise RecipeError(f"--task={name!r} is not a GLUE task; use one of {', '.join(GLUE_TASKS)}")
    return GLUE_TASKS[name]
