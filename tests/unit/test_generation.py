"""Recurrent decoding of converted causal LMs: the mixers' prefill/step against their full forward, cached vs
uncached logits of a converted tiny Pythia (Mamba and Mamba2), greedy generation against the naive re-reading
loop, constant state size, and the KV-cache path of the transformer teacher."""

import pytest
import torch
from conftest import SAMPLES
from transformers import AutoModelForCausalLM

from cald_brain.convert import load_and_convert, load_student
from cald_brain.mixers.mamba import Mamba
from cald_brain.mixers.mamba2 import Mamba2
from cald_brain.models.generation import Decoder, decode_logits, generate, mixer_hosts, recurrent_decoding

TINY_PYTHIA = SAMPLES / "models" / "tiny-pythia"
MIXERS = {"mamba": dict(d_inner=96, dt_rank=4), "mamba2": dict(headdim=32, d_state=16)}


def randomise(module: torch.nn.Module) -> None:
    """Move every parameter off its initial value (D = 1, zero biases would hide mistakes)."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn_like(p))


@pytest.mark.parametrize(
    "mixer",
    [
        lambda: Mamba(16, d_state=8, d_inner=40, dt_rank=3),
        lambda: Mamba2(16, d_state=8, headdim=8, ngroups=2),
        lambda: Mamba2(16, d_state=8, headdim=8, rmsnorm=False, D_has_hdim=True),
    ],
    ids=["mamba", "mamba2", "mamba2-gate-dhdim"],
)
@pytest.mark.parametrize("prompt", [1, 2, 6])  # shorter and longer than the conv width 4
def test_mixer_prefill_and_step_match_forward(mixer, prompt):
    torch.manual_seed(0)
    mixer = mixer()
    randomise(mixer)
    x = torch.randn(2, 11, 16)
    full = mixer(x)
    conv_state, ssm_state = mixer.allocate_inference_cache(2)
    outs = [mixer.prefill(x[:, :prompt], conv_state, ssm_state)]
    outs += [mixer.step(x[:, t : t + 1], conv_state, ssm_state) for t in range(prompt, 11)]
    torch.testing.assert_close(torch.cat(outs, dim=1), full, atol=1e-5, rtol=1e-4)


def converted(mixer: str):
    torch.manual_seed(0)
    model = load_and_convert(str(TINY_PYTHIA), mixer, model_class=AutoModelForCausalLM, **MIXERS[mixer])
    randomise(model)
    return model.eval()


@pytest.mark.parametrize("mixer", list(MIXERS))
def test_cached_logits_match_uncached(mixer):
    model = converted(mixer)
    ids = torch.randint(0, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(input_ids=ids).logits
    for prompt in (1, 5):
        torch.testing.assert_close(decode_logits(model, ids, prompt), full, atol=1e-4, rtol=1e-4)
    assert all(not hasattr(h.mixer, "conv_state") for h in mixer_hosts(model))  # original mixers restored


def test_greedy_generation_matches_rereading_and_state_is_constant(tmp_path):
    model = converted("mamba")
    prompt = torch.randint(0, model.config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(2))
    out = generate(model, prompt, max_new_tokens=12)
    naive = prompt
    with torch.no_grad():
        for _ in range(12):  # the uncached loop: the whole sequence re-read for every token
            naive = torch.cat([naive, model(input_ids=naive).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, naive)

    with recurrent_decoding(model, 1) as stateful:
        sizes = []
        for length in (1, 40):
            model(input_ids=torch.zeros(1, length, dtype=torch.long))
            sizes.append(sum(m.state_bytes() for m in stateful))
    assert (
        sizes[0] == sizes[1] == 2 * (96 * 4 * 4 + 96 * 16 * 4)
    )  # per layer: conv (d_inner x 4) + ssm (x 16)

    model.save_pretrained(tmp_path)  # the export format of lm/Pile: load_student decodes the same
    assert torch.equal(generate(load_student(str(tmp_path)), prompt, max_new_tokens=12), out)


def test_teacher_uses_its_kv_cache_and_eos_stops():
    teacher = AutoModelForCausalLM.from_pretrained(TINY_PYTHIA).eval()
    ids = torch.randint(0, teacher.config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = teacher(input_ids=ids).logits
    torch.testing.assert_close(decode_logits(teacher, ids, 4), full, atol=1e-4, rtol=1e-4)
    out = generate(teacher, ids[:, :4], max_new_tokens=5)
    first = int(out[0, 4])
    assert generate(teacher, ids[:, :4], max_new_tokens=5, eos_token_id=first).shape[1] == 5  # stops at eos


def left_padded(prompts: list[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts of unequal length as one left-padded batch and its attention mask."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :], mask[row, width - len(prompt) :] = prompt, 1
    return ids, mask


@pytest.mark.parametrize("source", ["mamba", "mamba2", "teacher"])
def test_padded_batch_of_unequal_prompts_decodes_each_as_alone(source):
    model = (
        AutoModelForCausalLM.from_pretrained(TINY_PYTHIA).eval() if source == "teacher" else converted(source)
    )
    vocab = model.config.vocab_size
    lengths = (2, 9, 5, 9)  # two rows of one length share a prefill; 2 is shorter than the conv width
    prompts = [
        torch.randint(1, vocab, (n,), generator=torch.Generator().manual_seed(n + row))
        for row, n in enumerate(lengths)
    ]
    ids, mask = left_padded(prompts, pad_id=0)
    out = generate(model, ids, max_new_tokens=6, attention_mask=mask)
    for row, prompt in enumerate(prompts):
        alone = generate(model, prompt[None], max_new_tokens=6)
        assert torch.equal(out[row, ids.shape[1] - len(prompt) :], alone[0]), row
        assert torch.equal(out[row, : ids.shape[1] - len(prompt)], ids[row, : ids.shape[1] - len(prompt)])
    # the logits, too: the padded prefill and each later step equal the row's own uncached forward
    with Decoder(model, len(prompts)) as decoder:
        prefill = decoder.prefill(ids, mask)
        step = decoder.step(out[:, ids.shape[1] : ids.shape[1] + 1])
    with torch.no_grad():
        for row, prompt in enumerate(prompts):
            full = model(input_ids=out[row, ids.shape[1] - len(prompt) : ids.shape[1] + 1][None]).logits[0]
            torch.testing.assert_close(
                prefill[row, ids.shape[1] - len(prompt) :], full[:-1], atol=1e-4, rtol=1e-4
            )
            torch.testing.assert_close(step[row], full[-1:], atol=1e-4, rtol=1e-4)


def test_padding_other_than_left_is_refused():
    model = converted("mamba")
    ids = torch.ones(2, 4, dtype=torch.long)
    for mask in ([[1, 1, 0, 0], [1, 1, 1, 1]], [[0, 1, 0, 1], [1, 1, 1, 1]], [[0, 0, 0, 0], [1, 1, 1, 1]]):
        with pytest.raises(ValueError, match="left-padded"):
            generate(model, ids, max_new_tokens=1, attention_mask=torch.tensor(mask))


def test_stop_callback_ends_generation():
    model = converted("mamba")
    prompt = torch.randint(0, model.config.vocab_size, (1, 3), generator=torch.Generator().manual_seed(4))
    seen = []
    out = generate(
        model, prompt, max_new_tokens=10, stop=lambda tokens: seen.append(tokens.shape[1]) or len(seen) == 2
    )
    assert out.shape[1] == 5 and seen == [4, 5]
