"""The committed tiny pretrained GPT-NeoX (tests/samples/models/tiny-pythia, made by
tools/samples/tiny_pythia.py): it loads cleanly with its tokenizer, has the documented Pythia-style
architecture and size, and its weights really are pretrained: on the held-out mini Pile corpus its perplexity
is far below a random initialisation's."""

import math

import torch
import torch.nn.functional as F
from conftest import SAMPLES
from transformers import AutoModelForCausalLM, AutoTokenizer, GPTNeoXForCausalLM

from cald_brain.data.mmap_tokens import MMapTokens

MODEL = SAMPLES / "models" / "tiny-pythia"


def held_out_perplexity(model) -> float:
    corpus = MMapTokens(SAMPLES / "pile_mini" / "document")
    ids = torch.stack([torch.from_numpy(corpus[i].astype("int64")) for i in range(16)])
    with torch.no_grad():
        logits = model.eval()(input_ids=ids[:, :-1]).logits
    return math.exp(F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten()).item())


def test_loads_with_documented_config_tokenizer_and_size():
    model, info = AutoModelForCausalLM.from_pretrained(MODEL, output_loading_info=True)
    assert {k: v for k, v in info.items() if v} == {}, f"unclean load: {info}"
    assert isinstance(model, GPTNeoXForCausalLM)
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.vocab_size) == (
        2,
        64,
        4,
        1024,
    )
    assert cfg.use_parallel_residual and cfg.bos_token_id == cfg.eos_token_id == 0
    assert sum(p.numel() for p in model.parameters()) < 300_000
    assert sum(f.stat().st_size for f in MODEL.iterdir()) < 1_200_000
    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    text = "Return the number of items in the list."
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    assert tokenizer.convert_ids_to_tokens(0) == "<|endoftext|>"


def test_weights_are_pretrained():
    pretrained = held_out_perplexity(AutoModelForCausalLM.from_pretrained(MODEL))
    torch.manual_seed(0)
    random = held_out_perplexity(GPTNeoXForCausalLM(AutoModelForCausalLM.from_pretrained(MODEL).config))
    assert pretrained < 100 and random > 500, (pretrained, random)
