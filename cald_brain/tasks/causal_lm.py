"""Causal language modelling (lm/Pile): the brain (next-token cross-entropy, perplexity, best checkpoint by
perplexity), the datasets built from a prepared MMIDIDX corpus (cald_brain.data.mmap_tokens) and the
segmented training stream, and `run`, the one entry point a recipe's train.py calls.

Train / valid / test are consecutive ranges of the corpus in index order; training replays the reference's
stream (`number_of_epochs` passes over the training sequences in index order) cut into segments of
`valid_every_n_steps` optimizer steps, each one SpeechBrain epoch (validation, checkpoint, resumption).
"""

import math

import torch
import torch.distributed as dist

from cald_brain.brain import CALDBrain
from cald_brain.data.mmap_tokens import (
    MMapFormatError,
    MMapTokens,
    SegmentedBatches,
    TokenSequences,
    check_token_ids,
)
from cald_brain.export import export_best
from cald_brain.models.causal_lm import next_token_loss
from cald_brain.models.outputs import ModelOutputs
from cald_brain.recipe import RecipeError

LM_MODES = ("unguided", "target", "hybrid")


class CausalLMBrain(CALDBrain):
    """Next-token prediction; student and teacher are cald_brain.models.CausalLM networks. As the reference,
    each 2,049-token sequence gives 2,048 inputs and the 2,048 next tokens as targets. The train loader's
    batch sampler is a SegmentedBatches: SpeechBrain's epochs are its segments."""

    best_key = "perplexity"

    def total_optimizer_steps(self) -> int:
        """Optimizer steps of the whole stream (sizes the hybrid switch), or optimizer_step_limit."""
        if self.optimizer_step_limit is not None:
            return int(self.optimizer_step_limit)
        return self.train_sampler.optimizer_steps(self.grad_accumulation_factor)

    def forward_model(self, model, batch, stage) -> ModelOutputs:
        return model(batch["input_ids"][:, :-1])

    def task_loss(self, outputs: ModelOutputs, batch, stage) -> torch.Tensor:
        return next_token_loss(outputs.logits, batch["input_ids"], outputs.mask)

    def update_metrics(self, outputs: ModelOutputs, batch, stage) -> None:
        nll = next_token_loss(outputs.logits, batch["input_ids"], outputs.mask, reduction="sum")
        self.nll_sum += nll.item()
        self.token_count += batch["input_ids"][:, 1:].numel()

    def on_stage_start(self, stage, epoch=None) -> None:
        self.nll_sum, self.token_count = 0.0, 0

    def stage_metrics(self, stage) -> dict[str, float]:
        return {"perplexity": math.exp(self.nll_sum / self.token_count)}

    def test_results(self, stats: dict[str, float]) -> dict[str, float]:
        return {"perplexity": stats["perplexity"], "loss": stats["loss"]}


def check_guidance_mode(hparams: dict) -> None:
    """Only unguided, target and hybrid guidance apply to causal language modelling."""
    mode = hparams.get("guidance_mode", "unguided")
    if mode not in LM_MODES:
        raise RecipeError(
            f"guidance_mode={mode} does not apply to causal language modelling. Trajectory and waypoint "
            "guidance follow a teacher being fine-tuned on the task; here the teacher is the already "
            f"pretrained model, so use one of {', '.join(LM_MODES)} (target: the pretrained model is the "
            "target)"
        )


def build_datasets(hparams: dict) -> dict[str, TokenSequences]:
    """Train / valid / test as consecutive ranges of the corpus in index order (the reference trains on the
    first max_train_samples sequences; validation and test take the sequences right after them). The
    guidance mode is checked first, before the corpus is read (`check_guidance_mode`); the token ids of every
    range are checked against the student's vocabulary before the first step."""
    check_guidance_mode(hparams)
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


def run(hparams: dict, run_opts, datasets: dict[str, TokenSequences]) -> CausalLMBrain:
    """Fit on the segmented stream over train (valid perplexity picks the best checkpoint), test that
    checkpoint, then export it to <output_folder>/student (with the tokenizer)."""
    brain = CausalLMBrain(
        modules=hparams["modules"], hparams=hparams, run_opts=run_opts, checkpointer=hparams["checkpointer"]
    )
    stream = segmented_stream(hparams, datasets["train"], brain.grad_accumulation_factor)
    brain.fit_datasets(datasets["train"], datasets["valid"], batch_sampler=stream)
    brain.test_best(datasets["test"])
    export_best(brain, tokenizer=hparams["tokenizer"])
    return brain
