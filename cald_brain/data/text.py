"""Text data shared by the text-classification recipes (GLUE, IMDB): GLUE-style TSV reading, the JSON
manifests that `prepare.py` writes, and the collate function that tokenises a batch with dynamic padding.

Manifests are JSON objects `{id: {"text": ..., ["text_pair": ...,] "label": ...}}` (JSON keeps any text
exactly; SpeechBrain's CSV reader strips leading spaces and rewrites `$words`). The label is a class index,
or a float for regression (STS-B).
"""

import csv
import io
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from speechbrain.dataio.dataset import DynamicItemDataset
from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)


@dataclass
class TsvTable:
    """Rows of a tab-separated file that have exactly the header's number of fields, as dicts by column name,
    with their 1-based line numbers; `malformed` holds the line numbers of the rows that do not (skipped,
    never guessed at)."""

    columns: list[str]
    rows: list[dict[str, str]]
    lines: list[int]
    malformed: list[int]


def read_tsv(path: str | Path, columns: Sequence[str] | None = None) -> TsvTable:
    """Read a GLUE file the way the GLUE loaders do: tab-separated, no quote handling (a `"` is an ordinary
    character), a header row first unless `columns` names the fields of a header-less file (CoLA). Text that
    is not UTF-8 is a ValueError naming the file, the line and the byte."""
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        column = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
        raise ValueError(
            f"{path}:{line}: not UTF-8 text (byte 0x{raw[err.start]:02x} at column {column}); GLUE files are "
            "UTF-8: convert the file (e.g. `iconv -f latin1 -t utf-8`) or fix the line"
        ) from err
    lines = list(csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE))
    first_data_line = 1
    if columns is None:
        if not lines:
            raise ValueError(f"{path} is empty: a GLUE file starts with a header row")
        columns, lines = lines[0], lines[1:]
        first_data_line = 2
    columns = list(columns)
    table = TsvTable(columns, [], [], [])
    for number, fields in enumerate(lines, start=first_data_line):
        if len(fields) == len(columns):
            table.rows.append(dict(zip(columns, fields, strict=True)))
            table.lines.append(number)
        elif fields:  # a blank line is no row
            table.malformed.append(number)
    return table


def write_manifest(path: str | Path, items: dict[str, dict[str, Any]]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(items, f, ensure_ascii=False, indent=0)


def read_manifest(path: str | Path) -> dict[str, dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def manifest_dataset(path: str | Path, pair: bool) -> DynamicItemDataset:
    """A DynamicItemDataset over a manifest, giving id, text, [text_pair,] label."""
    data = DynamicItemDataset(read_manifest(path))
    data.set_output_keys(["id", "text", "label"] + (["text_pair"] if pair else []))
    return data


def tokenize(
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    pairs: list[str] | None = None,
    max_length: int = 512,
) -> dict[str, torch.Tensor]:
    """A padded batch of single texts, or of (text, pair) items joined the tokenizer's way (separator and
    token types): input_ids, attention_mask and, when the model uses them, token_type_ids."""
    return dict(
        tokenizer(
            texts,
            pairs,
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
    )


@dataclass
class TextBatch:
    """A tokenised batch: ids, model inputs (input_ids, attention_mask[, token_type_ids]) and labels."""

    id: list[str]
    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor

    def to(self, device: str | torch.device) -> "TextBatch":
        return TextBatch(self.id, {k: v.to(device) for k, v in self.inputs.items()}, self.labels.to(device))


class TextCollator:
    """collate_fn for a DataLoader over `manifest_dataset` items: tokenises the batch (pairs the
    tokenizer's way), pads to the batch's longest item (at most `max_length` tokens) and stacks the labels
    (long class indices, or float for regression)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int, regression: bool = False):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.regression = regression

    def __call__(self, items: list[dict[str, Any]]) -> TextBatch:
        texts = [item["text"] for item in items]
        pairs = [item["text_pair"] for item in items] if "text_pair" in items[0] else None
        inputs = tokenize(self.tokenizer, texts, pairs, self.max_length)
        dtype = torch.float32 if self.regression else torch.long
        labels = torch.tensor([item["label"] for item in items], dtype=dtype)
        return TextBatch([item["id"] for item in items], inputs, labels)


PREPARE_OPTIONS = "prepare_options.json"


def prepared_with(save_folder: str | Path, options: dict[str, Any], names: Sequence[str]) -> bool:
    """True when every manifest `<name>.json` exists and was made with these options (so nothing needs
    preparing again); the options file is written last, so a half-finished preparation is redone."""
    save_folder = Path(save_folder)
    options_path = save_folder / PREPARE_OPTIONS
    if not options_path.is_file() or not all((save_folder / f"{n}.json").is_file() for n in names):
        return False
    return json.loads(options_path.read_text(encoding="utf-8")) == options


def write_manifests(
    save_folder: str | Path, options: dict[str, Any], manifests: dict[str, dict[str, dict[str, Any]]]
) -> None:
    """Write `<name>.json` for each manifest, then the options they were made with."""
    save_folder = Path(save_folder)
    (save_folder / PREPARE_OPTIONS).unlink(missing_ok=True)
    for name, items in manifests.items():
        write_manifest(save_folder / f"{name}.json", items)
    (save_folder / PREPARE_OPTIONS).write_text(json.dumps(options, indent=2), encoding="utf-8")
