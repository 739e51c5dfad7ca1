"""Generation speed and cache memory against the context length: a Mamba student (recurrent cache) against its
GPT-NeoX / Pythia teacher (KV cache).

For each context length L a random prompt of L tokens is prefilled, then `--new_tokens` tokens are decoded
greedily one at a time (cald_brain.models.generation.Decoder). Reported per model and L: prefill time, decode
speed (new tokens per second), the cache held after decoding (the student's conv + SSM states, the teacher's
keys and values), and on CUDA the peak memory allocated while decoding. The student's cache does not depend
on L; the teacher's grows linearly with it.

    python tools/bench_generation.py                                  # tiny sample model, CPU
    python tools/bench_generation.py --pythia 160m --contexts 128,512,2048 --new_tokens 16
    python tools/bench_generation.py --teacher EleutherAI/pythia-1b --student results/.../student \
        --device cuda

`--pythia SIZE` builds a randomly initialised GPT-NeoX with that Pythia size's published dimensions (no
download; speed and memory do not depend on the weights) and converts it with the reference's Mamba sizes.
"""

import argparse
import time

import torch
from transformers import AutoModelForCausalLM, GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedModel

from cald_brain.convert import convert, load_student
from cald_brain.convert.gpt_neox import REFERENCE_MAMBA_SIZES
from cald_brain.models.generation import Decoder
from cald_brain.models.hub import is_exported, load_exported

PYTHIA_SIZES = {  # hidden, layers, heads, from the Pythia model cards (intermediate = 4 x hidden)
    "70m": (512, 6, 8),
    "160m": (768, 12, 12),
    "410m": (1024, 24, 16),
    "1b": (2048, 16, 8),
}


def random_pythia(size: str) -> GPTNeoXForCausalLM:
    hidden, layers, heads = PYTHIA_SIZES[size]
    config = GPTNeoXConfig(
        vocab_size=50304,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        rotary_pct=0.25,
        max_position_embeddings=2048,
        use_parallel_residual=True,
    )
    return GPTNeoXForCausalLM(config)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def measure(model: PreTrainedModel, context: int, new_tokens: int, batch: int, device: torch.device) -> dict:
    """Prefill seconds, decode tokens/s, cache MiB after decoding and (CUDA) peak MiB while decoding."""
    generator = torch.Generator().manual_seed(context)
    prompt = torch.randint(0, model.config.vocab_size, (batch, context), generator=generator).to(device)
    with Decoder(model, batch) as decoder:
        sync(device)
        start = time.perf_counter()
        logits = decoder.prefill(prompt)[:, -1]
        sync(device)
        prefilled = time.perf_counter()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(new_tokens):
            logits = decoder.step(logits.argmax(-1, keepdim=True))[:, -1]
        sync(device)
        done = time.perf_counter()
        cache = decoder.cache_bytes()
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    return {
        "prefill_s": prefilled - start,
        "tokens_per_s": batch * new_tokens / (done - prefilled),
        "cache_mib": cache / 2**20,
        "peak_mib": peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--teacher", default="tests/samples/models/tiny-pythia", help="transformer source")
    parser.add_argument(
        "--student", default=None, help="exported student folder (default: convert the teacher)"
    )
    parser.add_argument(
        "--pythia", choices=sorted(PYTHIA_SIZES), default=None, help="random-init Pythia size"
    )
    parser.add_argument("--d_inner", type=int, default=None, help="student width when converting")
    parser.add_argument("--dt_rank", type=int, default=None)
    parser.add_argument("--contexts", default="64,256,1024")
    parser.add_argument("--new_tokens", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)

    teacher = (
        random_pythia(args.pythia) if args.pythia else AutoModelForCausalLM.from_pretrained(args.teacher)
    )
    if args.student:
        # a run's <output_folder>/student, or a converted student saved with save_pretrained
        if is_exported(args.student):
            student = load_exported(args.student).net.model
        else:
            student = load_student(args.student)
    else:
        sizes = dict(REFERENCE_MAMBA_SIZES)
        sizes.update(
            {k: v for k, v in (("d_inner", args.d_inner), ("dt_rank", args.dt_rank)) if v is not None}
        )
        student = type(teacher)(teacher.config.__class__.from_dict(teacher.config.to_dict()))
        student.load_state_dict(teacher.state_dict())
        student = convert(student, "mamba", **sizes)
    rows = []
    for name, model in (("teacher (KV cache)", teacher), ("student (recurrent)", student)):
        model.to(device=device, dtype=dtype).eval()
        params = sum(p.numel() for p in model.parameters()) / 1e6
        measure(model, 8, 2, args.batch, device)  # warm-up
        for context in (int(c) for c in args.contexts.split(",")):
            rows.append(
                (
                    f"{name}, {params:.1f} M",
                    context,
                    measure(model, context, args.new_tokens, args.batch, device),
                )
            )
        model.to("cpu")
    print(f"device {device}, {args.dtype}, batch {args.batch}, {args.new_tokens} new tokens")
    print("| model | context | prefill (s) | decode (tokens/s) | cache (MiB) | peak while decoding (MiB) |")
    print("|---|---|---|---|---|---|")
    for name, context, m in rows:
        peak = "n/a" if m["peak_mib"] != m["peak_mib"] else f"{m['peak_mib']:.0f}"
        cells = (
            name,
            context,
            f"{m['prefill_s']:.3f}",
            f"{m['tokens_per_s']:.1f}",
            f"{m['cache_mib']:.2f}",
            peak,
        )
        print("| " + " | ".join(map(str, cells)) + " |")


if __name__ == "__main__":
    main()
