"""Generation with constant memory per token for converted causal LMs (GPT-NeoX -> Mamba / Mamba2), and with
the KV cache for the transformer itself, through one function: `generate`.

A converted student has no KV cache (cald_brain.convert sets use_cache=False). Its recurrent cache is one
(conv_state, ssm_state) pair per layer, of a size fixed by the mixer, not by the context. `recurrent_decoding`
swaps each layer's mixer for a `StatefulMixer` that runs the mixer's `prefill` on the prompt and its `step`
on every later token, so the unchanged Hugging Face model is called on one new token at a time. The rotary
position the model computes for that token is ignored by the mixers, which carry position in their state.
Prompts of a batch must have the same length (no padding).
"""

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from transformers import PreTrainedModel

from cald_brain.convert.modules import MixerAttention


class StatefulMixer(nn.Module):
    """A mixer bound to its layer's recurrent states: the first call (the prompt) runs `prefill`, every later
    call one `step` per token."""

    def __init__(self, mixer: nn.Module, batch_size: int) -> None:
        super().__init__()
        if not hasattr(mixer, "step"):
            raise TypeError(
                f"{type(mixer).__name__} has no recurrent step: only Mamba and Mamba2 students can decode "
                "with a recurrent cache"
            )
        self.mixer = mixer
        self.conv_state, self.ssm_state = mixer.allocate_inference_cache(batch_size)
        self.started = False

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if not self.started:
            self.started = True
            return self.mixer.prefill(hidden_states, self.conv_state, self.ssm_state)
        steps = [
            self.mixer.step(hidden_states[:, t : t + 1], self.conv_state, self.ssm_state)
            for t in range(hidden_states.shape[1])
        ]
        return torch.cat(steps, dim=1)

    def state_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.conv_state, self.ssm_state))


def mixer_hosts(model: nn.Module) -> list[MixerAttention]:
    """The modules standing where the attentions stood, in layer order."""
    return [m for m in model.modules() if isinstance(m, MixerAttention)]


@contextmanager
def recurrent_decoding(model: PreTrainedModel, batch_size: int) -> Iterator[list[StatefulMixer]]:
    """Within the block, every mixer of the converted `model` keeps a recurrent state for `batch_size`
    sequences (fresh zeros on entry); the original mixers are put back on exit. Yields the stateful mixers."""
    hosts = mixer_hosts(model)
    if not hosts:
        raise ValueError(
            f"{type(model).__name__} is not a converted model (no mixer found); a transformer decodes with "
            "its KV cache (generate() does that)"
        )
    originals = [host.mixer for host in hosts]
    stateful = [StatefulMixer(mixer, batch_size) for mixer in originals]
    try:
        for host, mixer in zip(hosts, stateful, strict=True):
            host.mixer = mixer
        yield stateful
    finally:
        for host, mixer in zip(hosts, originals, strict=True):
            host.mixer = mixer


def is_converted(model: nn.Module) -> bool:
    return bool(mixer_hosts(model))


@torch.no_grad()
def decode_logits(model: PreTrainedModel, input_ids: torch.Tensor, prompt_length: int) -> torch.Tensor:
    """(batch, length, vocab) logits of `input_ids` computed incrementally: the first `prompt_length` tokens
    in one call, then one token per call (recurrent states for a converted model, the KV cache otherwise).
    Equal to one forward over the whole sequence up to float rounding; used to check the caches."""
    if is_converted(model):
        with recurrent_decoding(model, input_ids.shape[0]):
            logits = [model(input_ids=input_ids[:, :prompt_length], use_cache=False).logits]
            for t in range(prompt_length, input_ids.shape[1]):
                logits.append(model(input_ids=input_ids[:, t : t + 1], use_cache=False).logits)
        return torch.cat(logits, dim=1)
    out = model(input_ids=input_ids[:, :prompt_length], use_cache=True)
    logits, past = [out.logits], out.past_key_values
    for t in range(prompt_length, input_ids.shape[1]):
        out = model(input_ids=input_ids[:, t : t + 1], past_key_values=past, use_cache=True)
        logits.append(out.logits)
        past = out.past_key_values
    return torch.cat(logits, dim=1)


def _pick(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """Greedy (temperature 0) or sampled next tokens (batch,) from the last logits (batch, vocab)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 0.0,
    eos_token_id: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Prompt (batch, length) + up to `max_new_tokens` new tokens, greedy (temperature 0) or sampled.

    A converted model decodes with its recurrent cache (memory per token constant in the context length), a
    transformer with its KV cache. Stops early once every sequence has produced `eos_token_id` (later
    positions of finished sequences repeat it).
    """
    model.eval()
    tokens = input_ids
    done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    if is_converted(model):
        with recurrent_decoding(model, input_ids.shape[0]):
            logits = model(input_ids=input_ids, use_cache=False).logits[:, -1]
            for i in range(max_new_tokens):
                tokens, done = _append(tokens, _pick(logits, temperature, generator), done, eos_token_id)
                if bool(done.all()) or i == max_new_tokens - 1:
                    break
                logits = model(input_ids=tokens[:, -1:], use_cache=False).logits[:, -1]
        return tokens
    out = model(input_ids=input_ids, use_cache=True)
    for i in range(max_new_tokens):
        tokens, done = _append(tokens, _pick(out.logits[:, -1], temperature, generator), done, eos_token_id)
        if bool(done.all()) or i == max_new_tokens - 1:
            break
        out = model(input_ids=tokens[:, -1:], past_key_values=out.past_key_values, use_cache=True)
    return tokens


def _append(
    tokens: torch.Tensor, new: torch.Tensor, done: torch.Tensor, eos_token_id: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    if eos_token_id is not None:
        new = new.masked_fill(done, eos_token_id)
        done = done | (new == eos_token_id)
    return torch.cat([tokens, new[:, None]], dim=1), done
