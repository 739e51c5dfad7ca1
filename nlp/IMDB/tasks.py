"""The IMDB task: manifest columns, labels in class-index order, evaluation splits (the held-out dev split
picks the best checkpoint; test is reported too) and the reference's hybrid switch."""

from cald_brain.tasks.text_classification import TextTask

IMDB_TASK = TextTask(
    "imdb",
    "aclImdb",
    "text",
    None,
    "label",
    ("neg", "pos"),
    dev_splits=("dev", "test"),
    hybrid_switch_step=3000,
)
