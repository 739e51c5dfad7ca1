"""Using an exported student (`cald_brain.export`, `<output_folder>/student`), in the spirit of
`speechbrain.inference`: `load(folder)` returns the interface that fits the folder's task.

    from cald_brain.inference import load
    asr = load("results/TEDLIUM/bimamba2_target/1986/student")
    print(asr.transcribe_file("talk.wav"))

- `SpeechRecognizer` (CTC): `transcribe_file(path)`, `transcribe_batch(wavs, wav_lens)` (greedy decoding);
- `UtteranceClassifier` (pooled speech classifier): `classify_file(path)` -> (label, score),
  `classify_batch`, `embed_file(path)` (the pooled embedding the classifier reads) and `verify_files(a, b)`
  (cosine score of two embeddings, for speaker models);
- `TextClassifier`: `classify(texts, pairs=None)` -> [(label, score)];
- `LanguageModel`: `generate(prompt, max_new_tokens=...)` with the student's recurrent cache.

Only the exported student is loaded (no teacher, no training YAML); paths are the caller's, so any working
directory works. Audio files are read in any format soundfile reads, mixed to mono and resampled to the
model's rate. The command line `python -m cald_brain.inference FOLDER INPUT...` prints one result per input.
"""

import os
from typing import Any

import torch
import torch.nn.functional as F

from cald_brain.models.hub import CaldPreTrainedModel, load_exported


class Interface:
    """An exported student ready to run: `model` (its Hugging Face task class, eval mode) on `device`."""

    def __init__(self, model: CaldPreTrainedModel, folder: str) -> None:
        self.model = model
        self.folder = folder
        self.config = model.config

    @property
    def net(self) -> torch.nn.Module:
        """The cald_brain network (SpeechModel, TextClassifier or CausalLM)."""
        return self.model.net

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


class SpeechInterface(Interface):
    """Audio in: files read and resampled to `sample_rate`, or padded batches with relative lengths."""

    @property
    def sample_rate(self) -> int:
        return int(self.config.sampling_rate)

    def load_audio(self, path: str | os.PathLike) -> torch.Tensor:
        """A file as the model hears it: mono, at `sample_rate`, float32 (1-D)."""
        from cald_brain.data.audio import read_audio

        return read_audio(path, self.sample_rate)

    @torch.no_grad()
    def _encode_recording(self, wav: torch.Tensor) -> Any:
        """The network's outputs for one whole recording (1, samples) of any length, in one exact pass
        (`SpeechModel.forward_long`: the feature encoder in pieces, memory linear in the length); the hidden
        states hold only the encoder output."""
        return self.net.forward_long(wav.to(self.device))

    @torch.no_grad()
    def _forward_batch(self, wavs: torch.Tensor, wav_lens: torch.Tensor | None) -> Any:
        if wav_lens is None:
            wav_lens = torch.ones(wavs.shape[0])
        return self.net(wavs.to(self.device), wav_lens.to(self.device))


class SpeechRecognizer(SpeechInterface):
    """CTC speech recognition with greedy decoding over the folder's units (characters or SentencePiece)."""

    def __init__(self, model: CaldPreTrainedModel, folder: str) -> None:
        super().__init__(model, folder)
        self.blank_index = int(self.config.blank_index)
        if self.config.ctc_units == "sentencepiece":
            import sentencepiece

            from cald_brain.export import SENTENCEPIECE_FILE

            self.sentencepiece = sentencepiece.SentencePieceProcessor(
                model_file=os.path.join(folder, SENTENCEPIECE_FILE)
            )
        else:
            from transformers import Wav2Vec2CTCTokenizer

            from cald_brain.export import WORD_DELIMITER

            vocab = Wav2Vec2CTCTokenizer.from_pretrained(folder).get_vocab()
            self.characters = {i: " " if t == WORD_DELIMITER else t for t, i in vocab.items()}

    def decode_ids(self, ids: list[int]) -> str:
        """Text of a sequence of unit ids (blanks and repeats already removed)."""
        if self.config.ctc_units == "sentencepiece":
            return self.sentencepiece.decode_ids([int(i) for i in ids])
        return "".join(self.characters[int(i)] for i in ids)

    def decode_logits(
        self, logits: torch.Tensor, frame_lens: torch.Tensor
    ) -> tuple[list[str], list[list[int]]]:
        """Greedy CTC decoding of (batch, frames, units) logits with relative frame lengths."""
        from speechbrain.decoders import ctc_greedy_decode

        tokens = ctc_greedy_decode(logits, frame_lens, blank_id=self.blank_index)
        return [self.decode_ids(t) for t in tokens], tokens

    def transcribe_batch(
        self, wavs: torch.Tensor, wav_lens: torch.Tensor | None = None
    ) -> tuple[list[str], list[list[int]]]:
        """Transcripts and unit ids of a padded batch (batch, samples) at `sample_rate`; `wav_lens` are
        relative lengths in (0, 1] (None: no padding)."""
        out = self._forward_batch(wavs, wav_lens)
        return self.decode_logits(out.logits, out.mask.sum(dim=1) / out.mask.shape[1])

    def transcribe_file(self, path: str | os.PathLike) -> str:
        """The transcript of a whole audio file, in one call."""
        out = self._encode_recording(self.load_audio(path)[None])
        return self.decode_logits(out.logits, torch.ones(1))[0][0]


class UtteranceClassifier(SpeechInterface):
    """One label per utterance (intents, speakers); the pooled embedding serves speaker verification."""

    def label(self, index: int) -> str:
        return self.config.id2label.get(index, str(index))

    def classify_batch(
        self, wavs: torch.Tensor, wav_lens: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
        """As SpeechBrain's EncoderClassifier: (class probabilities, best score, best index, best label)."""
        probs = self._forward_batch(wavs, wav_lens).logits.float().softmax(dim=-1)
        score, index = probs.max(dim=-1)
        return probs, score, index, [self.label(int(i)) for i in index]

    def classify_file(self, path: str | os.PathLike) -> tuple[str, float]:
        """(label, probability) of the most likely class of a whole file."""
        probs = self._encode_recording(self.load_audio(path)[None]).logits.float().softmax(dim=-1)[0]
        score, index = probs.max(dim=-1)
        return self.label(int(index)), float(score)

    def embed_file(self, path: str | os.PathLike) -> torch.Tensor:
        """The pooled utterance embedding (the classifier head's input) of a whole file, (dim,)."""
        out = self._encode_recording(self.load_audio(path)[None])
        with torch.no_grad():
            return self.net.pooling(out.hidden_states[-1], out.mask)[0]

    def verify_files(self, path_a: str | os.PathLike, path_b: str | os.PathLike, threshold: float = 0.25):
        """(cosine similarity of the two files' embeddings, whether it exceeds `threshold`), as SpeechBrain's
        SpeakerRecognition.verify_files."""
        score = float(F.cosine_similarity(self.embed_file(path_a), self.embed_file(path_b), dim=0))
        return score, score > threshold


class TextClassifier(Interface):
    """Sequence classification of single texts or pairs with the folder's tokenizer."""

    def __init__(self, model: CaldPreTrainedModel, folder: str) -> None:
        super().__init__(model, folder)
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(folder, config=self.config.backbone_config())
        conversion = self.config.cald_backbone.get("cald_conversion", {})
        self.max_length = int(conversion.get("mixer_kwargs", {}).get("max_len") or 512)

    @torch.no_grad()
    def logits(self, texts: list[str], pairs: list[str] | None = None) -> torch.Tensor:
        from cald_brain.data.text import tokenize

        batch = tokenize(self.tokenizer, list(texts), None if pairs is None else list(pairs), self.max_length)
        return self.net(**{k: v.to(self.device) for k, v in batch.items()}).logits.float()

    def classify(self, texts: list[str], pairs: list[str] | None = None) -> list[tuple[str, float]]:
        """(label, probability) per text (or text pair); a regression model (one output) gives
        ("value", prediction)."""
        logits = self.logits(texts, pairs)
        if logits.shape[-1] == 1:
            return [("value", float(v)) for v in logits[:, 0]]
        score, index = logits.softmax(dim=-1).max(dim=-1)
        return [
            (self.config.id2label.get(int(i), str(int(i))), float(s))
            for s, i in zip(score, index, strict=True)
        ]


class LanguageModel(Interface):
    """Text generation with the student's recurrent cache (memory per token independent of the context)."""

    def __init__(self, model: CaldPreTrainedModel, folder: str) -> None:
        super().__init__(model, folder)
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(folder, config=self.config.backbone_config())

    def generate(
        self,
        prompt: str,
        max_new_tokens: int = 50,
        temperature: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> str:
        """The continuation of `prompt` (greedy at temperature 0, else sampled), without the prompt."""
        from cald_brain.models.generation import generate

        ids = self.tokenizer(prompt, return_tensors="pt").input_ids.to(self.device)
        if ids.shape[1] == 0:
            raise ValueError("the prompt is empty: give at least one token of text")
        tokens = generate(
            self.net.model,
            ids,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            eos_token_id=self.tokenizer.eos_token_id,
            generator=generator,
        )
        return self.tokenizer.decode(tokens[0, ids.shape[1] :], skip_special_tokens=True)


INTERFACES: dict[str, type[Interface]] = {
    "ctc": SpeechRecognizer,
    "audio-classification": UtteranceClassifier,
    "text-classification": TextClassifier,
    "causal-lm": LanguageModel,
}


def load(folder: str | os.PathLike, device: str | torch.device = "cpu") -> Interface:
    """The interface for the exported student in `folder` (see the module docstring), on `device`."""
    folder = os.fspath(folder)
    model = load_exported(folder, device)
    return INTERFACES[model.config.cald_task](model, folder)


__all__ = [
    "Interface",
    "LanguageModel",
    "SpeechRecognizer",
    "TextClassifier",
    "UtteranceClassifier",
    "load",
]
