"""Train the tiny *pretrained* RoBERTa shipped in ``tests/samples/models/tiny-roberta``.

CALD starts from a pretrained transformer, so the text recipes' sample runs (tests, README results) need one
whose weights carry real language knowledge yet that fine-tunes on two CPU cores in a minute. This tool:

1. takes English text available offline: the docstrings of a fixed list of Python standard-library modules
   and pydoc's help topics (the documentation harvest of ``common.py``) — nothing of the GLUE/IMDB
   sample templates of ``text_corpora.py``, so pretraining and sample task data are disjoint;
2. trains a byte-level BPE tokenizer on it with the ``tokenizers`` package (RoBERTa's special tokens
   ``<s> <pad> </s> <unk> <mask>``), saved as a ``RobertaTokenizerFast``;
3. pretrains a tiny ``RobertaForMaskedLM`` (2 layers, width 64, 514 positions like roberta-base) with
   RoBERTa's masked-language-model objective (15 % of tokens; 80 % ``<mask>``, 10 % random, 10 % kept) on
   128-token blocks of that text, for a fixed number of seeded steps (a few CPU minutes);
4. reports masked-token accuracy on held-out blocks before and after pretraining, and saves the model
   (safetensors), the tokenizer and a README (``templates/tiny_roberta_README.md``) recording all of this.

Usage::

    python tools/samples/tiny_roberta.py --out tests/samples/models/tiny-roberta
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import shutil
import tempfile
import time
from pathlib import Path

import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import RobertaConfig, RobertaForMaskedLM, RobertaTokenizerFast

from cald_brain.scripts import load_script

common = load_script(Path(__file__).with_name("common.py"), "tools_samples_common")
SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
MODEL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256)
MAX_POSITIONS = 514  # as roberta-base: 512 tokens + the padding offset
BLOCK = 128


def pretraining_paragraphs() -> list[str]:
    """Paragraphs (whitespace-normalised, at least 6 words) of the standard-library documentation."""
    paragraphs = []
    for text in common.documentation_texts():
        for paragraph in re.split(r"\n\s*\n", text):
            paragraph = " ".join(paragraph.split())
            if len(paragraph.split()) >= 6:
                paragraphs.append(paragraph)
    return paragraphs


def train_tokenizer(paragraphs: list[str], vocab_size: int, out: Path) -> RobertaTokenizerFast:
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        paragraphs, vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL_TOKENS, show_progress=False
    )
    with tempfile.TemporaryDirectory() as tmp:
        bpe.save_model(tmp)
        tokenizer = RobertaTokenizerFast(
            vocab=f"{tmp}/vocab.json", merges=f"{tmp}/merges.txt", model_max_length=MAX_POSITIONS - 2
        )
    tokenizer.save_pretrained(out)
    return tokenizer


def blocks(tokenizer: RobertaTokenizerFast, paragraphs: list[str]) -> torch.Tensor:
    """<s> + 126 tokens + </s> blocks of the concatenated paragraphs (</s> between paragraphs)."""
    ids: list[int] = []
    for encoded in tokenizer(paragraphs, add_special_tokens=False)["input_ids"]:
        ids.extend(encoded + [tokenizer.sep_token_id])
    body = BLOCK - 2
    count = len(ids) // body
    rows = torch.tensor(ids[: count * body]).view(count, body)
    bos = torch.full((count, 1), tokenizer.cls_token_id)
    eos = torch.full((count, 1), tokenizer.sep_token_id)
    return torch.cat([bos, rows, eos], dim=1)


def mask_tokens(
    batch: torch.Tensor, tokenizer: RobertaTokenizerFast, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """RoBERTa's MLM corruption: 15 % of the non-special tokens are predicted; of those 80 % become <mask>,
    10 % a random token, 10 % stay. Returns (inputs, labels with -100 where nothing is predicted)."""
    special = (batch == tokenizer.cls_token_id) | (batch == tokenizer.sep_token_id)
    chosen = (torch.rand(batch.shape, generator=generator) < 0.15) & ~special
    labels = torch.where(chosen, batch, torch.full_like(batch, -100))
    inputs = batch.clone()
    roll = torch.rand(batch.shape, generator=generator)
    inputs[chosen & (roll < 0.8)] = tokenizer.mask_token_id
    random_ids = torch.randint(len(SPECIAL_TOKENS), len(tokenizer), batch.shape, generator=generator)
    swap = chosen & (roll >= 0.8) & (roll < 0.9)
    inputs[swap] = random_ids[swap]
    return inputs, labels


@torch.no_grad()
def masked_accuracy(
    model: RobertaForMaskedLM | None, data: torch.Tensor, tokenizer: RobertaTokenizerFast, constant: int = -1
) -> float:
    """Accuracy on the masked tokens of `data` (fixed masking), of the model, or (model None) of always
    predicting the token `constant`: the unigram baseline a pretrained model must beat."""
    if model is not None:
        model.eval()
    generator = torch.Generator().manual_seed(1234)
    correct = total = 0
    for start in range(0, len(data), 64):
        inputs, labels = mask_tokens(data[start : start + 64], tokenizer, generator)
        if model is None:
            predicted = torch.full_like(labels, constant)
        else:
            predicted = model(input_ids=inputs).logits.argmax(-1)
        chosen = labels != -100
        correct += int((predicted[chosen] == labels[chosen]).sum())
        total += int(chosen.sum())
    if model is not None:
        model.train()
    return correct / total


def pretrain(model: RobertaForMaskedLM, train: torch.Tensor, tokenizer: RobertaTokenizerFast, args) -> None:
    """Seeded MLM steps on random training blocks: AdamW, linear warm-up then cosine decay, clipping at 1."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    warmup = max(1, args.steps // 20)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, 0.5 * (1 + math.cos(math.pi * s / args.steps)))
    )
    generator = torch.Generator().manual_seed(args.seed)
    started = time.time()
    for step in range(args.steps):
        rows = torch.randint(len(train), (args.batch_size,), generator=generator)
        inputs, labels = mask_tokens(train[rows], tokenizer, generator)
        loss = model(input_ids=inputs, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step}: MLM loss {loss.item():.3f} ({time.time() - started:.0f} s)", flush=True)


def write_card(out: Path, stats: dict, accuracy: tuple[float, float, float], vocabulary: int, args) -> None:
    """``pretraining.json`` (``stats``) and the README (``templates/tiny_roberta_README.md``); ``accuracy``:
    held-out masked-token accuracy before and after pretraining, and of the most frequent token."""
    (out / "pretraining.json").write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    readme = common.render(
        "tiny_roberta_README.md",
        layers=MODEL["num_hidden_layers"],
        width=MODEL["hidden_size"],
        heads=MODEL["num_attention_heads"],
        positions=MAX_POSITIONS,
        vocabulary=vocabulary,
        paragraphs=stats["paragraphs"],
        steps=args.steps,
        batch_size=args.batch_size,
        block=BLOCK,
        lr=args.lr,
        seed=args.seed,
        before=accuracy[0],
        after=accuracy[1],
        unigram=accuracy[2],
    )
    (out / "README.md").write_text(readme, encoding="utf-8")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=common.SAMPLES / "models" / "tiny-roberta")
    parser.add_argument("--vocab_size", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the CPU may be shared)")
    return parser.parse_args(argv)


def tiny_config(tokenizer: RobertaTokenizerFast) -> RobertaConfig:
    """RoBERTa's architecture at the size of MODEL, with roberta-base's positions and the tokenizer's ids."""
    return RobertaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=MAX_POSITIONS,
        type_vocab_size=1,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        **MODEL,
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)

    paragraphs = pretraining_paragraphs()
    random.Random(args.seed).shuffle(paragraphs)
    tokenizer = train_tokenizer(paragraphs, args.vocab_size, args.out)
    data = blocks(tokenizer, paragraphs)
    held_out, train = data[:256], data[256:]
    print(
        f"{len(paragraphs)} paragraphs -> {len(train)} training blocks of {BLOCK} tokens, "
        f"{len(held_out)} held out"
    )

    model = RobertaForMaskedLM(tiny_config(tokenizer))
    before = masked_accuracy(model, held_out, tokenizer)
    pretrain(model, train, tokenizer, args)
    after = masked_accuracy(model, held_out, tokenizer)
    special = torch.tensor([tokenizer.cls_token_id, tokenizer.sep_token_id])
    counts = torch.bincount(train[~torch.isin(train, special)], minlength=len(tokenizer))
    unigram = masked_accuracy(None, held_out, tokenizer, constant=int(counts.argmax()))
    print(
        f"held-out masked-token accuracy: {before:.3f} before, {after:.3f} after pretraining "
        f"(always the most frequent token: {unigram:.3f})"
    )

    model.save_pretrained(args.out, safe_serialization=True)
    stats = {
        "paragraphs": len(paragraphs),
        "training_blocks": len(train),
        "steps": args.steps,
        "batch_size": args.batch_size,
        "masked_accuracy_before": round(before, 4),
        "masked_accuracy_after": round(after, 4),
        "masked_accuracy_most_frequent_token": round(unigram, 4),
    }
    write_card(args.out, stats, (before, after, unigram), len(tokenizer), args)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
