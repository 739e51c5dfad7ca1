"""CTC speech recognition: the brain (CTC loss, greedy decoding, WER/CER, best checkpoint by WER), the
output units (characters, or SentencePiece BPE pieces), the datasets built from the prepared manifests
and `run`, the one entry point a recipe's train.py calls (recipes/TEDLIUM).

Manifests: `<save_folder>/{train,dev,test}.csv` with ``ID, duration, wav, start, stop, wrd`` (segments of
audio files, `wav` relative to ``$data_root``).
"""

import csv
import os

import speechbrain as sb
import torch
from speechbrain.tokenizers.SentencePiece import SentencePiece
from speechbrain.utils.distributed import run_on_main

from cald_brain.brain import CALDBrain
from cald_brain.data.audio import audio_pipeline
from cald_brain.export import CTCUnits, export_best
from cald_brain.models.outputs import ModelOutputs
from cald_brain.recipe import RecipeError


class CTCBrain(CALDBrain):
    """CTC ASR hooks; student and teacher are cald_brain.models.SpeechModel networks. Needs `units` (the
    output units, for decoding). Dev WER picks the best checkpoint; the test stage also writes
    `test_wer_file` (per-utterance alignments)."""

    best_key = "WER"

    def __init__(self, units: "CharUnits | PieceUnits", **kwargs) -> None:
        super().__init__(**kwargs)
        self.units = units

    def forward_model(self, model, batch, stage) -> ModelOutputs:
        return model(*batch.sig)

    def task_loss(self, outputs: ModelOutputs, batch, stage) -> torch.Tensor:
        tokens, token_lens = batch.tokens
        log_probs = outputs.logits.float().log_softmax(dim=-1)
        frame_lens = outputs.mask.sum(dim=1) / outputs.mask.shape[1]
        return sb.nnet.losses.ctc_loss(log_probs, tokens, frame_lens, token_lens, self.hparams.blank_index)

    def update_metrics(self, outputs: ModelOutputs, batch, stage) -> None:
        frame_lens = outputs.mask.sum(dim=1) / outputs.mask.shape[1]
        hyps = sb.decoders.ctc_greedy_decode(outputs.logits, frame_lens, blank_id=self.hparams.blank_index)
        predicted = [self.units.decode(h).split() for h in hyps]
        targets = [wrd.split() for wrd in batch.wrd]
        self.wer_metric.append(batch.id, predicted, targets)
        self.cer_metric.append(batch.id, predicted, targets)

    def on_stage_start(self, stage, epoch=None) -> None:
        if stage != sb.Stage.TRAIN:
            self.wer_metric = self.hparams.error_rate_computer()
            self.cer_metric = self.hparams.cer_computer()

    def stage_metrics(self, stage) -> dict[str, float]:
        return {
            "WER": self.wer_metric.summarize("error_rate"),
            "CER": self.cer_metric.summarize("error_rate"),
        }

    def write_test_files(self) -> None:
        with open(self.hparams.test_wer_file, "w", encoding="utf-8") as w:
            self.wer_metric.write_stats(w)


class CharUnits:
    """Characters as CTC units: a CTCTextEncoder over the YAML's `characters` (fixed, so the head size is
    known before any data is read), saved as <save_folder>/label_encoder.txt."""

    def __init__(self, hparams: dict) -> None:
        self.encoder = sb.dataio.encoder.CTCTextEncoder()
        self.encoder.load_or_create(
            path=os.path.join(hparams["save_folder"], "label_encoder.txt"),
            from_iterables=[list(hparams["characters"])],
            special_labels={"blank_label": hparams["blank_index"]},
            sequence_input=False,
        )
        self.encoder.expect_len(hparams["num_outputs"])  # checked by build_units with a clearer message
        self.size = len(self.encoder)
        self.what = "the character set has"

    def exported(self) -> CTCUnits:
        """The units as an exported student records them."""
        return CTCUnits.from_label_encoder(self.encoder)

    def encode(self, utt_id: str, wrd: str) -> list[int]:
        unknown = sorted(set(wrd) - set(self.encoder.lab2ind))
        if unknown:
            raise ValueError(
                f"utterance {utt_id}: character(s) {unknown} of {wrd!r} are not in `characters` (label "
                "encoder): add them to `characters` (and num_outputs), or prepare again with "
                "unknown_characters: drop or map"
            )
        return self.encoder.encode_sequence(list(wrd))

    def decode(self, ids: list[int]) -> str:
        return "".join(self.encoder.decode_ndim(ids))


class PieceUnits:
    """SentencePiece BPE pieces as CTC units (SpeechBrain's tokenizer) with `num_outputs` pieces, trained
    on the train split's transcripts plus one line holding every character of `characters` (so each character
    has a piece even if only dev/test use it), saved in <save_folder>/tokenizer/ and reused from there on
    resume (delete that folder to train it again). Id 0 is the tokenizer's unknown piece and the CTC blank:
    no target may contain it."""

    def __init__(self, hparams: dict) -> None:
        if hparams["blank_index"] != 0:
            raise RecipeError(
                "units: bpe needs blank_index: 0 (the tokenizer's unknown-piece id), "
                f"got {hparams['blank_index']}"
            )
        folder = os.path.join(hparams["save_folder"], "tokenizer")
        text_file = os.path.join(folder, "train.txt")
        run_on_main(
            write_tokenizer_text,
            args=[os.path.join(hparams["save_folder"], "train.csv"), hparams["characters"], text_file],
        )
        self.tokenizer = SentencePiece(
            model_dir=folder,
            vocab_size=hparams["num_outputs"],
            text_file=text_file,
            model_type="bpe",
            character_coverage=1.0,
        )
        self.size = self.tokenizer.sp.vocab_size()
        self.what = "the BPE tokenizer has"

    def exported(self) -> CTCUnits:
        """The units as an exported student records them (the SentencePiece model file)."""
        return CTCUnits(0, sentencepiece_model=self.tokenizer.prefix_model_file + ".model")

    def encode(self, utt_id: str, wrd: str) -> list[int]:
        sp = self.tokenizer.sp
        ids = sp.encode_as_ids(wrd)
        if sp.unk_id() in ids:
            unknown = sorted({c for c in wrd if not c.isspace() and sp.piece_to_id(c) == sp.unk_id()})
            raise ValueError(
                f"utterance {utt_id}: character(s) {unknown} of {wrd!r} are not in the BPE tokenizer: add "
                "them to `characters` and delete <save_folder>/tokenizer to train it again, or prepare again "
                "with unknown_characters: drop or map"
            )
        return ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.sp.decode_ids([int(i) for i in ids])


def write_tokenizer_text(train_csv: str, characters: str, text_file: str) -> None:
    """The tokenizer's training text (unless it exists): the `wrd` column of `train_csv`, then `characters`
    one by one on a last line."""
    if os.path.isfile(text_file):
        return
    os.makedirs(os.path.dirname(text_file), exist_ok=True)
    with open(train_csv, encoding="utf-8") as f:
        lines = [row["wrd"] for row in csv.DictReader(f)]
    lines.append(" ".join(c for c in characters if not c.isspace()))
    with open(text_file, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


UNITS = {"char": CharUnits, "bpe": PieceUnits}


def build_units(hparams: dict) -> CharUnits | PieceUnits:
    """The CTC output units named by `units`; their number must be the head's `num_outputs`."""
    if hparams["units"] not in UNITS:
        raise RecipeError(f"units must be one of {', '.join(UNITS)}, got {hparams['units']!r}")
    units = UNITS[hparams["units"]](hparams)
    if units.size != hparams["num_outputs"]:
        raise RecipeError(
            f"num_outputs is {hparams['num_outputs']} but {units.what} {units.size} units "
            f"(blank included): set --num_outputs={units.size}"
        )
    return units


def build_datasets(hparams: dict, units: CharUnits | PieceUnits) -> dict:
    """Train/dev/test DynamicItemDatasets from `<save_folder>/{train,dev,test}.csv` (columns ID, duration,
    wav, start, stop, wrd; `wav` relative to `$data_root`), reading audio segments by time and the units of
    `wrd`. The train set keeps every segment unless `avoid_if_longer_than` (seconds) is set; dev/test are
    sorted by duration."""
    datasets = {}
    for split in ("train", "dev", "test"):
        data = sb.dataio.dataset.DynamicItemDataset.from_csv(
            csv_path=os.path.join(hparams["save_folder"], f"{split}.csv"),
            replacements={"data_root": hparams["data_folder"]},
        )
        if split == "train":
            longest = hparams["avoid_if_longer_than"]
            datasets[split] = (
                data if longest is None else data.filtered_sorted(key_max_value={"duration": longest})
            )
        else:
            datasets[split] = data.filtered_sorted(sort_key="duration")

    items = list(datasets.values())
    sb.dataio.dataset.add_dynamic_item(items, audio_pipeline(hparams["sample_rate"]))

    @sb.utils.data_pipeline.takes("id", "wrd")
    @sb.utils.data_pipeline.provides("tokens")
    def text_pipeline(utt_id: str, wrd: str):
        return torch.LongTensor(units.encode(utt_id, wrd))

    sb.dataio.dataset.add_dynamic_item(items, text_pipeline)
    sb.dataio.dataset.set_output_keys(items, ["id", "sig", "wrd", "tokens"])
    return datasets


def run(hparams: dict, run_opts, datasets: dict, units: CharUnits | PieceUnits) -> CTCBrain:
    """Fit on train (dev WER picks the best checkpoint; the batches come from the hparams' `train_sampler`),
    test that checkpoint, then export it to <output_folder>/student (with its units)."""
    brain = CTCBrain(
        units=units,
        modules=hparams["modules"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    brain.fit_datasets(datasets["train"], datasets["dev"])
    brain.test_best(datasets["test"])
    export_best(brain, units=units.exported(), sampling_rate=hparams["sample_rate"])
    brain.log_next_steps()
    return brain
