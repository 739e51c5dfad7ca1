#!/usr/bin/env python3
"""TED-LIUM 3 ASR with CALD: a CTC character recogniser on a Wav2Vec2 encoder, either the transformer itself
(the teacher run, hparams/wav2vec2_ctc.yaml) or its BiMamba2 conversion guided by a teacher
(hparams/bimamba2_*.yaml).

    python recipes/TEDLIUM/train.py hparams/bimamba2_trajectory.yaml --data_folder=/path/TEDLIUM_release-3

Everything CALD-specific (teacher, guidance, distillation, checkpointing) lives in cald_brain.CALDBrain; this
file only holds the task: audio segments, characters, CTC, greedy decoding, WER/CER.
"""

import json
import os

import speechbrain as sb
import torch
from speechbrain.utils.distributed import if_main_process, run_on_main

from cald_brain.brain import CALDBrain, ModelOutputs
from cald_brain.data.audio import audio_pipeline
from cald_brain.recipe import RecipeError, start_recipe
from cald_brain.scripts import load_recipe_module

RECIPE_DIR = os.path.dirname(os.path.abspath(__file__))
prepare_tedlium = load_recipe_module(RECIPE_DIR, "prepare").prepare_tedlium


class ASR(CALDBrain):
    """CTC ASR hooks; student and teacher are cald_brain.models.SpeechModel networks."""

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
        predicted = ["".join(self.label_encoder.decode_ndim(h)).split() for h in hyps]
        targets = [wrd.split() for wrd in batch.wrd]
        self.wer_metric.append(batch.id, predicted, targets)
        self.cer_metric.append(batch.id, predicted, targets)

    def on_stage_start(self, stage, epoch=None) -> None:
        if stage != sb.Stage.TRAIN:
            self.wer_metric = self.hparams.error_rate_computer()
            self.cer_metric = self.hparams.cer_computer()

    def on_stage_end(self, stage, stage_loss, epoch=None) -> None:
        stage_stats = self.stage_stats(stage, stage_loss)
        if stage == sb.Stage.TRAIN:
            self.train_stats = stage_stats
            return
        stage_stats["WER"] = self.wer_metric.summarize("error_rate")
        stage_stats["CER"] = self.cer_metric.summarize("error_rate")
        if stage == sb.Stage.VALID:
            self.hparams.train_logger.log_stats(
                stats_meta={"epoch": epoch, "steps": self.optimizer_step},
                train_stats=self.train_stats,
                valid_stats=stage_stats,
            )
            self.checkpointer.save_and_keep_only(
                meta={"WER": stage_stats["WER"], "CER": stage_stats["CER"]},
                min_keys=["WER"],
                num_to_keep=self.hparams.checkpoints_to_keep,
            )
        else:
            self.hparams.train_logger.log_stats(
                stats_meta={"Epoch loaded": self.hparams.epoch_counter.current}, test_stats=stage_stats
            )
            if if_main_process():
                with open(self.hparams.test_wer_file, "w", encoding="utf-8") as w:
                    self.wer_metric.write_stats(w)
                with open(self.hparams.test_metrics_file, "w", encoding="utf-8") as w:
                    json.dump({"WER": stage_stats["WER"], "CER": stage_stats["CER"]}, w)


def dataio_prepare(hparams: dict, label_encoder: sb.dataio.encoder.CTCTextEncoder) -> dict:
    """Train/dev/test DynamicItemDatasets reading audio segments by time and characters of `wrd`."""
    if hparams["sorting"] not in ("ascending", "descending", "random"):
        raise RecipeError(f"sorting must be ascending, descending or random, got {hparams['sorting']!r}")
    if hparams["sorting"] != "random":
        hparams["train_dataloader_opts"]["shuffle"] = False
    datasets = {}
    for split in ("train", "dev", "test"):
        data = sb.dataio.dataset.DynamicItemDataset.from_csv(
            csv_path=os.path.join(hparams["save_folder"], f"{split}.csv"),
            replacements={"data_root": hparams["data_folder"]},
        )
        if split == "train":
            datasets[split] = data.filtered_sorted(
                sort_key=None if hparams["sorting"] == "random" else "duration",
                reverse=hparams["sorting"] == "descending",
                key_max_value={"duration": hparams["avoid_if_longer_than"]},
            )
        else:
            datasets[split] = data.filtered_sorted(sort_key="duration")

    items = list(datasets.values())
    sb.dataio.dataset.add_dynamic_item(items, audio_pipeline(hparams["sample_rate"]))

    @sb.utils.data_pipeline.takes("wrd")
    @sb.utils.data_pipeline.provides("tokens")
    def text_pipeline(wrd: str):
        return label_encoder.encode_sequence_torch(list(wrd))

    sb.dataio.dataset.add_dynamic_item(items, text_pipeline)
    sb.dataio.dataset.set_output_keys(items, ["id", "sig", "wrd", "tokens"])
    return datasets


def build_label_encoder(hparams: dict) -> sb.dataio.encoder.CTCTextEncoder:
    """Characters from the YAML's `characters` (fixed, so the head size is known before any data is read)."""
    label_encoder = sb.dataio.encoder.CTCTextEncoder()
    label_encoder.load_or_create(
        path=os.path.join(hparams["save_folder"], "label_encoder.txt"),
        from_iterables=[list(hparams["characters"])],
        special_labels={"blank_label": hparams["blank_index"]},
        sequence_input=False,
    )
    if len(label_encoder) != hparams["output_neurons"]:
        raise RecipeError(
            f"output_neurons is {hparams['output_neurons']} but the character set has "
            f"{len(label_encoder)} labels (blank included): set --output_neurons={len(label_encoder)}"
        )
    return label_encoder


def main() -> None:
    hparams, run_opts, _ = start_recipe(RECIPE_DIR)
    run_on_main(
        prepare_tedlium,
        kwargs={
            "data_folder": hparams["data_folder"],
            "save_folder": hparams["save_folder"],
            "split": hparams["split"],
            "skip_prep": hparams["skip_prep"],
            "characters": hparams["characters"],
            "unknown_characters": hparams["unknown_characters"],
        },
    )
    label_encoder = build_label_encoder(hparams)
    datasets = dataio_prepare(hparams, label_encoder)

    asr = ASR(
        modules=hparams["modules"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    asr.label_encoder = label_encoder
    asr.fit(
        asr.hparams.epoch_counter,
        datasets["train"],
        datasets["dev"],
        train_loader_kwargs=hparams["train_dataloader_opts"],
        valid_loader_kwargs=hparams["valid_dataloader_opts"],
    )
    asr.evaluate(datasets["test"], min_key="WER", test_loader_kwargs=hparams["test_dataloader_opts"])


if __name__ == "__main__":
    main()
