#!/usr/bin/env python3
"""Pythia -> Mamba on the Pile with CALD: every attention of a pretrained GPT-NeoX replaced by a Mamba mixer,
trained on next-token prediction, guided (target) by the frozen pretrained model itself or not (unguided),
or guided for the first 40 % of the steps (hybrid).

    python lm/Pile/train.py hparams/mamba_target.yaml --data_prefix=/path/pile_pythia/document \\
        --pretrained_source=EleutherAI/pythia-1b

Data: the Pythia pre-shuffled Pile in Megatron's MMIDIDX format, read in index order (cald_brain.data.
mmap_tokens): the first `max_train_samples` sequences train, the next `valid_samples` validate (perplexity,
best checkpoint), the next `test_samples` test. Training replays the reference's stream (`number_of_epochs`
passes over the training sequences in index order) cut into segments of `valid_every_n_steps` optimizer
steps; each segment is one SpeechBrain epoch: validation, checkpoint (the best by perplexity is kept) and
resumption work per segment. At the end the best student is exported in Hugging Face format to
<output_folder>/student (loadable with cald_brain.load_student).
"""

import json
import math
import os

import speechbrain as sb
import torch
import torch.distributed as dist
import torch.nn.functional as F
from speechbrain.utils.distributed import if_main_process

from cald_brain.brain import CALDBrain, ModelOutputs
from cald_brain.data.mmap_tokens import (
    MMapFormatError,
    MMapTokens,
    SegmentedBatches,
    TokenSequences,
    check_token_ids,
)
from cald_brain.recipe import RecipeError, start_recipe

RECIPE_DIR = os.path.dirname(os.path.abspath(__file__))
LM_MODES = ("unguided", "target", "hybrid")


class LM(CALDBrain):
    """Next-token prediction; student and teacher are cald_brain.models.CausalLM networks. As the reference,
    each 2,049-token sequence gives 2,048 inputs and the 2,048 next tokens as targets. The train loader's
    batch sampler is a SegmentedBatches: SpeechBrain's epochs are its segments."""

    def _train_loader_specifics(self, dataset, loader_kwargs):
        """The segmented stream is the sampler, also under DDP (it shards itself by rank): SpeechBrain
        would otherwise wrap it, or shuffle under DDP."""
        self.train_sampler = loader_kwargs["batch_sampler"]
        return loader_kwargs

    def total_optimizer_steps(self) -> int:
        """Optimizer steps of the whole stream (sizes the hybrid switch), or optimizer_step_limit."""
        if self.optimizer_step_limit is not None:
            return int(self.optimizer_step_limit)
        return self.train_sampler.optimizer_steps(self.grad_accumulation_factor)

    def forward_model(self, model, batch, stage) -> ModelOutputs:
        return model(batch["input_ids"][:, :-1])

    def task_loss(self, outputs: ModelOutputs, batch, stage) -> torch.Tensor:
        targets = batch["input_ids"][:, 1:]
        return F.cross_entropy(outputs.logits.flatten(0, 1).float(), targets.flatten())

    def update_metrics(self, outputs: ModelOutputs, batch, stage) -> None:
        targets = batch["input_ids"][:, 1:]
        nll = F.cross_entropy(outputs.logits.flatten(0, 1).float(), targets.flatten(), reduction="sum")
        self.nll_sum += nll.item()
        self.token_count += targets.numel()

    def on_stage_start(self, stage, epoch=None) -> None:
        self.nll_sum, self.token_count = 0.0, 0

    def on_stage_end(self, stage, stage_loss, epoch=None) -> None:
        stage_stats = self.stage_stats(stage, stage_loss)
        if stage == sb.Stage.TRAIN:
            self.train_stats = stage_stats
            return
        stage_stats["perplexity"] = math.exp(self.nll_sum / self.token_count)
        if stage == sb.Stage.VALID:
            self.log_validation(
                epoch,
                stage_stats,
                meta={"perplexity": stage_stats["perplexity"]},
                extra_meta={"lr": self.optimizer.param_groups[0]["lr"]},
                min_keys=["perplexity"],
            )
        else:
            self.log_test(stage_stats)
            if if_main_process():
                with open(self.hparams.test_metrics_file, "w", encoding="utf-8") as w:
                    json.dump({"perplexity": stage_stats["perplexity"], "loss": stage_loss}, w)


def datasets(hparams: dict) -> dict[str, TokenSequences]:
    """Train / valid / test as consecutive ranges of the corpus in index order (the reference trains on the
    first max_train_samples sequences; validation and test take the sequences right after them), their token
    ids checked against the student's vocabulary (before the first step)."""
    corpus = MMapTokens(hparams["data_prefix"])
    sizes = {
        "train": hparams["max_train_samples"],
        "valid": hparams["valid_samples"],
        "test": hparams["test_samples"],
    }
    if any(n is None or n <= 0 for n in sizes.values()):
        raise RecipeError(f"max_train_samples, valid_samples and test_samples must be > 0, got {sizes}")
    problem = corpus.describe_range(0, sum(sizes.values()))
    if problem is not None:
        raise RecipeError(
            f"{problem}(max_train_samples + valid_samples + test_samples = {sum(sizes.values())}) were asked "
            f"for: lower them to at most {corpus.available} in all"
        )
    vocab_size = hparams["student"].model.get_input_embeddings().num_embeddings
    start, found = 0, {}
    for split, count in sizes.items():
        found[split] = TokenSequences(corpus, start, count, hparams["seq_length"])
        try:
            check_token_ids(found[split], vocab_size)
        except MMapFormatError as err:
            raise RecipeError(f"data_prefix={hparams['data_prefix']} ({split} range): {err}") from err
        start += count
    return found


def segmented_stream(hparams: dict, train: TokenSequences, grad_accumulation: int) -> SegmentedBatches:
    """The reference's training stream (`number_of_epochs` passes, index order, `batch_size` per process) in
    segments of `valid_every_n_steps` optimizer steps of `grad_accumulation` micro-batches (the run's
    grad_accumulation_factor: a run option, which the command line may override)."""
    steps = hparams["valid_every_n_steps"]
    if not isinstance(steps, int) or steps <= 0:
        raise RecipeError(f"valid_every_n_steps must be a positive number of optimizer steps, got {steps!r}")
    distributed = dist.is_available() and dist.is_initialized()
    return SegmentedBatches(
        len(train),
        hparams["batch_size"],
        hparams["number_of_epochs"],
        steps * grad_accumulation,
        rank=dist.get_rank() if distributed else 0,
        world_size=dist.get_world_size() if distributed else 1,
    )


def main() -> None:
    hparams, run_opts, hparams_file = start_recipe(RECIPE_DIR)
    mode = hparams.get("guidance_mode", "unguided")
    if mode not in LM_MODES:
        raise RecipeError(
            f"{hparams_file}: guidance_mode={mode} does not apply to the LM recipe. Trajectory and waypoint "
            "guidance follow a teacher being fine-tuned on the task; here the teacher is the already "
            f"pretrained Pythia, so use one of {', '.join(LM_MODES)} (target: the pretrained model is the "
            "target)"
        )
    data = datasets(hparams)

    lm = LM(
        modules=hparams["modules"], hparams=hparams, run_opts=run_opts, checkpointer=hparams["checkpointer"]
    )
    stream = segmented_stream(hparams, data["train"], lm.grad_accumulation_factor)
    hparams["epoch_counter"].limit = stream.segments  # SpeechBrain's epochs are the stream's segments
    lm.fit(
        lm.hparams.epoch_counter,
        data["train"],
        data["valid"],
        train_loader_kwargs={**hparams["train_dataloader_opts"], "batch_sampler": stream},
        valid_loader_kwargs=hparams["valid_dataloader_opts"],
    )
    lm.evaluate(data["test"], min_key="perplexity", test_loader_kwargs=hparams["test_dataloader_opts"])
    if if_main_process():
        export = hparams["export_folder"]
        lm.student.model.save_pretrained(export)
        hparams["tokenizer"].save_pretrained(export)


if __name__ == "__main__":
    main()
