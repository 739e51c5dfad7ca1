"""Train the tiny *pretrained* GPT-NeoX (Pythia architecture) in ``tests/samples/models/tiny-pythia`` and
write the mini Pile-format corpus ``tests/samples/pile_mini/document.{idx,bin}``.

The LM recipe converts an already pretrained decoder, so its sample runs need one that really models English,
yet small enough to distil on two CPU cores in seconds. Offline English text: the documentation strings of
Python's standard library (``inspect.getdoc`` of modules, classes and functions), split by module into a
pretraining set and a disjoint held-out set.

1. a byte-level BPE tokenizer (the ``tokenizers`` package, as GPT-NeoX-20B's: ``<|endoftext|>`` = id 0 is
   BOS, EOS and the document separator) trained on the pretraining text;
2. causal-LM pretraining of a small ``GPTNeoXForCausalLM`` (rotary embeddings on a quarter of each head,
   parallel residual, as Pythia) on packed 128-token windows, for ``--steps`` AdamW steps;
3. the mini corpus: held-out documents tokenized, joined with EOD and cut into ``--corpus_seq_length``-token
   sequences (as the Pythia pre-shuffled Pile is, with 2,049), written with ``cald_brain.data.mmap_tokens``;
4. perplexity of the model on the held-out corpus before and after training, recorded in the model's README
   (``templates/tiny_pythia_README.md``; the corpus's: ``templates/pile_mini_README.md``).

Everything is seeded. Usage::

    python tools/samples/tiny_pythia.py --out tests/samples/models/tiny-pythia \\
        --corpus tests/samples/pile_mini
"""

import argparse
import importlib
import inspect
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast

from cald_brain.data.mmap_tokens import write_mmap_tokens
from cald_brain.scripts import load_script

common = load_script(Path(__file__).with_name("common.py"), "tools_samples_common")

EOD = "<|endoftext|>"
TRAIN_MODULES = (
    "argparse", "collections", "json", "os", "pathlib", "re", "string", "textwrap", "itertools", "functools",
    "logging", "unittest", "email", "http.client", "urllib.request", "csv", "datetime", "decimal",
    "fractions", "statistics", "random", "math", "shutil", "subprocess", "threading", "socket", "tarfile",
    "zipfile", "xml.dom.minidom", "typing", "dataclasses", "enum", "heapq", "bisect", "pickle", "copy",
    "inspect", "ast", "dis", "tokenize", "configparser", "difflib", "sqlite3", "hashlib", "hmac", "secrets",
    "uuid", "calendar", "locale", "gettext", "io", "tempfile", "glob", "fnmatch", "queue", "sched",
    "contextlib", "abc", "numbers", "operator", "struct", "codecs", "base64", "binascii", "zlib", "gzip",
)  # fmt: skip
HELD_OUT_MODULES = (
    "asyncio", "multiprocessing", "pydoc", "turtle", "smtplib", "ftplib", "imaplib", "mailbox", "optparse",
    "getopt", "plistlib", "wave", "pprint", "reprlib", "weakref",
)  # fmt: skip


def docstrings(module_names: tuple[str, ...]) -> list[str]:
    """The documentation strings of each module and of its public classes, functions and methods, in a
    fixed order (one string per documented object, duplicates dropped)."""
    seen, docs = set(), []
    for name in module_names:
        module = importlib.import_module(name)
        objects = [module]
        for _, member in sorted(vars(module).items()):
            if inspect.isclass(member) or inspect.isfunction(member):
                objects.append(member)
                if inspect.isclass(member):
                    objects += [m for _, m in sorted(vars(member).items()) if inspect.isfunction(m)]
        for obj in objects:
            doc = inspect.getdoc(obj)
            if doc and len(doc) > 40 and doc not in seen:
                seen.add(doc)
                docs.append(doc)
    return docs


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE with <|endoftext|> as id 0 (GPT-NeoX-20B's layout), wrapped for transformers."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOD], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOD, eos_token=EOD, unk_token=EOD)


def pack(tokenizer: PreTrainedTokenizerFast, texts: list[str]) -> np.ndarray:
    """All documents tokenized and joined, each followed by EOD (as the Pile's token stream)."""
    ids: list[int] = []
    for text in texts:
        ids += tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]
    return np.array(ids, dtype=np.int64)


@torch.no_grad()
def perplexity(model: GPTNeoXForCausalLM, sequences: torch.Tensor) -> float:
    """exp(mean next-token cross-entropy) over (n, L) sequences."""
    model.eval()
    logits = model(input_ids=sequences).logits
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), sequences[:, 1:].flatten())
    return math.exp(loss.item())


def pretrain(model: GPTNeoXForCausalLM, stream: np.ndarray, steps: int, window: int, batch: int) -> None:
    """AdamW with linear warm-up and cosine decay on random windows of the token stream."""
    generator = torch.Generator().manual_seed(0)
    data = torch.from_numpy(stream)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    model.train()
    start = time.time()
    for step in range(steps):
        offsets = torch.randint(0, len(data) - window - 1, (batch,), generator=generator)
        x = torch.stack([data[o : o + window + 1] for o in offsets.tolist()])
        loss = F.cross_entropy(model(input_ids=x[:, :-1]).logits.flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            print(f"step {step:4d}  loss {loss.item():.3f}  ({time.time() - start:.0f} s)", flush=True)


def tiny_config(tokenizer: PreTrainedTokenizerFast) -> GPTNeoXConfig:
    """The tiny Pythia architecture: 2 layers of width 64, rotary on a quarter of each head, parallel
    residual."""
    return GPTNeoXConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        max_position_embeddings=2048,
        rotary_pct=0.25,
        use_parallel_residual=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
        attention_dropout=0.0,
        hidden_dropout=0.0,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("tests/samples/models/tiny-pythia"))
    parser.add_argument("--corpus", type=Path, default=Path("tests/samples/pile_mini"))
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--vocab_size", type=int, default=1024)
    parser.add_argument("--corpus_seq_length", type=int, default=129, help="tokens per corpus sequence")
    parser.add_argument("--corpus_sequences", type=int, default=64)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)  # deterministic and fast for a model this small

    train_texts, held_out = docstrings(TRAIN_MODULES), docstrings(HELD_OUT_MODULES)
    tokenizer = train_tokenizer(train_texts, args.vocab_size)
    stream = pack(tokenizer, train_texts)
    held = pack(tokenizer, held_out)
    n, length = args.corpus_sequences, args.corpus_seq_length
    if len(held) < n * length:
        raise SystemExit(f"held-out text has {len(held)} tokens, fewer than {n} x {length}")
    sequences = held[: n * length].reshape(n, length)
    print(f"{len(train_texts)} training docs ({len(stream)} tokens); corpus {n} x {length} held-out tokens")

    model = GPTNeoXForCausalLM(tiny_config(tokenizer))
    probe = torch.from_numpy(sequences[: n // 4])
    before = perplexity(model, probe)
    pretrain(model, stream, args.steps, window=128, batch=16)
    after = perplexity(model, probe)
    print(f"held-out perplexity: {before:.1f} (random init) -> {after:.1f} (pretrained)")

    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    write_mmap_tokens(args.corpus / "document", list(sequences), dtype=np.uint16)
    model_card = common.render(
        "tiny_pythia_README.md",
        layers=model.config.num_hidden_layers,
        width=model.config.hidden_size,
        heads=model.config.num_attention_heads,
        vocabulary=len(tokenizer),
        steps=args.steps,
        probe=n // 4,
        before=before,
        after=after,
    )
    (args.out / "README.md").write_text(model_card, encoding="utf-8")
    corpus_card = common.render("pile_mini_README.md", sequences=n, length=length)
    (args.corpus / "README.md").write_text(corpus_card, encoding="utf-8")


if __name__ == "__main__":
    main()
