"""Generation with constant memory per token for converted causal LMs (GPT-NeoX -> Mamba / Mamba2), and with
the KV cache for the transformer itself, through one function: `generate`.

A converted student has no KV cache (cald_brain.convert sets use_cache=False). Its recurrent cache is one
(conv_state, ssm_state) pair per layer, of a size fixed by the mixer, not by the context. `recurrent_decoding`
swaps each layer's mixer for a `StatefulMixer` that runs the mixer's `prefill` on the prompt and its `step`
on every later token, so the unchanged Hugging Face model is called on one new token at a time. The rotary
position the model computes for that token is ignored by the mixers, which carry position in their state.

Prompts of unequal length come left-padded with their `attention_mask` (1 on real tokens), the Hugging Face
convention. A converted model prefills the rows of each prompt length together on their real tokens only (the
pads never enter a recurrent state), then steps every row at once; a transformer runs the padded batch with
the mask and positions counted from each row's first real token. Either way a row decodes as it would alone.
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from transformers import PreTrainedModel

from cald_brain.convert.modules import MixerAttention


class StatefulMixer(nn.Module):
    """A mixer bound to its layer's recurrent states: the first call (the prompt) runs `prefill`, every later
    call one `step` per token. While `rows` is set, a call prefills only those rows of the batch (the rows
    of one prompt length, see `Decoder.prefill`) and the next call is still a prefill."""

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
        self.rows: torch.Tensor | None = None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.rows is not None:
            conv_state, ssm_state = self.mixer.allocate_inference_cache(len(self.rows))
            out = self.mixer.prefill(hidden_states, conv_state, ssm_state)
            self.conv_state[self.rows], self.ssm_state[self.rows] = conv_state, ssm_state
            return out
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


def prompt_lengths(attention_mask: torch.Tensor | None, length: int) -> torch.Tensor | None:
    """Real tokens per row of a left-padded batch (None: no padding). Refuses any other mask layout."""
    if attention_mask is None:
        return None
    mask = attention_mask.bool()
    lengths = mask.sum(dim=1)
    left_padded = torch.arange(length, device=mask.device) >= (length - lengths)[:, None]
    if mask.shape[1] != length or not torch.equal(mask, left_padded) or bool((lengths == 0).any()):
        raise ValueError(
            "attention_mask must mark a left-padded batch of the prompts' shape: per row 0 on the pads, then "
            "1 on at least one real token (tokenizer padding_side='left')"
        )
    return None if bool((lengths == length).all()) else lengths


class Decoder:
    """Incremental decoding of one batch: `prefill` (the prompt, left-padded with its mask when the prompts
    differ in length) then `step` (one token per call), each returning the logits of the tokens given (zeros
    at pads); `cache_bytes` is the memory the cache holds now. A converted model keeps recurrent states
    (within `with Decoder(...)`), a transformer its KV cache."""

    def __init__(self, model: PreTrainedModel, batch_size: int) -> None:
        self.model, self.batch_size = model, batch_size
        self.converted = is_converted(model)
        self.past = None
        self.mask: torch.Tensor | None = None  # transformer: the padding mask of the tokens so far
        self._context = None
        self._stateful: list[StatefulMixer] = []

    def __enter__(self) -> "Decoder":
        if self.converted:
            self._context = recurrent_decoding(self.model, self.batch_size)
            self._stateful = self._context.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._context is not None:
            self._context.__exit__(*exc)
        self.past = self.mask = None

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        lengths = prompt_lengths(attention_mask, input_ids.shape[1])
        if lengths is None:
            return self._run(input_ids)
        if not self.converted:
            self.mask = attention_mask.bool().long()
            return self._run(input_ids).masked_fill(~self.mask.bool()[..., None], 0)
        return self._prefill_by_length(input_ids, lengths)

    def _prefill_by_length(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Recurrent prefill of a left-padded batch: the rows of each prompt length together, on their real
        tokens only, each group's states written into its rows."""
        total = input_ids.shape[1]
        logits = None
        for length in lengths.unique().tolist():
            rows = (lengths == length).nonzero().squeeze(1)
            for mixer in self._stateful:
                mixer.rows = rows
            group = self.model(input_ids=input_ids[rows, total - length :], use_cache=False).logits
            if logits is None:
                logits = group.new_zeros(input_ids.shape[0], total, group.shape[-1])
            logits[rows, total - length :] = group
        for mixer in self._stateful:
            mixer.rows, mixer.started = None, True
        return logits

    def step(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.mask is not None:
            self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], 1)], dim=1)
        return self._run(input_ids)

    def _run(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.converted:
            return self.model(input_ids=input_ids, use_cache=False).logits
        extra = {}
        if self.mask is not None:  # positions count from each row's first real token
            positions = (self.mask.cumsum(dim=1) - 1).clamp(min=0)
            extra = dict(attention_mask=self.mask, position_ids=positions[:, -input_ids.shape[1] :])
        out = self.model(input_ids=input_ids, past_key_values=self.past, use_cache=True, **extra)
        self.past = out.past_key_values
        return out.logits

    def cache_bytes(self) -> int:
        if self.converted:
            return sum(m.state_bytes() for m in self._stateful)
        if self.past is None:
            return 0
        tensors = [t for layer in self.past.layers for t in (layer.keys, layer.values) if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors)


@torch.no_grad()
def decode_logits(model: PreTrainedModel, input_ids: torch.Tensor, prompt_length: int) -> torch.Tensor:
    """(batch, length, vocab) logits of `input_ids` computed incrementally: the first `prompt_length` tokens
    in one call, then one token per call (recurrent states for a converted model, the KV cache otherwise).
    Equal to one forward over the whole sequence up to float rounding; used to check the caches."""
    with Decoder(model, input_ids.shape[0]) as decoder:
        logits = [decoder.prefill(input_ids[:, :prompt_length])]
        logits += [decoder.step(input_ids[:, t : t + 1]) for t in range(prompt_length, input_ids.shape[1])]
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
    attention_mask: torch.Tensor | None = None,
    stop: Callable[[torch.Tensor], bool] | None = None,
) -> torch.Tensor:
    """Prompt (batch, length) + up to `max_new_tokens` new tokens, greedy (temperature 0) or sampled.

    A converted model decodes with its recurrent cache (memory per token constant in the context length), a
    transformer with its KV cache. Prompts of unequal length: left-padded, with their `attention_mask` (the
    output keeps the padding; each row's tokens are those it gets alone). Stops early once every sequence
    has produced `eos_token_id` (later positions of finished sequences repeat it) or once `stop` (called
    with the tokens so far after each new token) returns True.
    """
    model.eval()
    tokens = input_ids
    done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    with Decoder(model, input_ids.shape[0]) as decoder:
        logits = decoder.prefill(input_ids, attention_mask)[:, -1]
        for i in range(max_new_tokens):
            tokens, done = _append(tokens, _pick(logits, temperature, generator), done, eos_token_id)
            if bool(done.all()) or i == max_new_tokens - 1 or (stop is not None and stop(tokens)):
                break
            logits = decoder.step(tokens[:, -1:])[:, -1]
    return tokens


def _append(
    tokens: torch.Tensor, new: torch.Tensor, done: torch.Tensor, eos_token_id: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    if eos_token_id is not None:
        new = new.masked_fill(done, eos_token_id)
        done = done | (new == eos_token_id)
    return torch.cat([tokens, new[:, None]], dim=1), done
