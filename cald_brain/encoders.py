"""Speech encoders shared by the speech recipes: a Hugging Face audio encoder (the transformer teacher, or a
converted linear-time student) plus a task head, returning what CALD needs (logits, every hidden state and
the frame padding mask).

The same class builds teacher and student, so their hidden states pair index by index: the student is the
teacher's architecture with `mixer=` set, which runs `cald_brain.convert.convert` on the loaded model.
"""

import json
import logging
import os
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)


def _read_do_normalize(source: str) -> bool:
    """The `do_normalize` flag of a checkpoint's preprocessor_config.json (hub name or local folder)."""
    if os.path.isdir(source):
        path = os.path.join(source, "preprocessor_config.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{path} is missing: the encoder folder must hold the feature extractor's "
                "preprocessor_config.json (or pass normalize_wav=True/False explicitly)."
            )
        with open(path, encoding="utf-8") as f:
            return bool(json.load(f).get("do_normalize", True))
    from transformers import AutoFeatureExtractor

    return bool(getattr(AutoFeatureExtractor.from_pretrained(source), "do_normalize", True))


def load_audio_encoder(source: str) -> nn.Module:
    """Load a Hugging Face audio encoder (Wav2Vec2Model, HubertModel, ...) from a hub name or local folder."""
    from transformers import AutoModel

    if os.path.sep in source and not os.path.isdir(source):
        raise FileNotFoundError(
            f"pretrained_source '{source}' is not a folder. Give a Hugging Face hub name "
            "(e.g. facebook/wav2vec2-base) or a local folder with config.json and model.safetensors."
        )
    return AutoModel.from_pretrained(source)


class SpeechEncoder(nn.Module):
    """A pretrained audio transformer, optionally converted to a linear-time student.

    Arguments
    ---------
    source: hub name or local folder of the pretrained transformer (the conversion source).
    mixer: None for the transformer itself (teacher); "bimamba2", "mamba2" or "linformer" for a student.
    mixer_kwargs: keyword arguments of the mixer (e.g. {"d_state": 128}).
    init: "random" (as in the CALD reference) or "attention" (new mixers start from the attention weights).
    freeze_feature_encoder: keep the convolutional feature encoder frozen, as usual for wav2vec2 fine-tuning.
    normalize_wav: zero-mean / unit-variance per utterance; None reads `do_normalize` from the checkpoint.
    """

    def __init__(
        self,
        source: str,
        mixer: str | None = None,
        mixer_kwargs: dict[str, Any] | None = None,
        init: str = "random",
        freeze_feature_encoder: bool = True,
        normalize_wav: bool | None = None,
    ) -> None:
        super().__init__()
        self.model = load_audio_encoder(source)
        if mixer is not None:
            from cald_brain.convert import convert

            convert(self.model, mixer, init=init, **(mixer_kwargs or {}))
        self.normalize_wav = _read_do_normalize(source) if normalize_wav is None else normalize_wav
        if freeze_feature_encoder:
            self.model.feature_extractor._freeze_parameters()

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    def forward(
        self, wavs: torch.Tensor, wav_lens: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], torch.Tensor]:
        """Encode a padded batch.

        wavs: (batch, samples) waveforms; wav_lens: (batch,) relative lengths in (0, 1] (SpeechBrain style).
        Returns the encoder output, all hidden states (embeddings first, then one per layer) and the
        (batch, frames) bool mask of valid frames.
        """
        n_samples = wavs.shape[1]
        abs_lens = torch.round(wav_lens * n_samples).long().clamp(1, n_samples)
        sample_mask = torch.arange(n_samples, device=wavs.device)[None, :] < abs_lens[:, None]
        if self.normalize_wav:
            wavs = _normalize_padded(wavs, sample_mask)
        out = self.model(wavs, attention_mask=sample_mask.long(), output_hidden_states=True)
        frames = out.last_hidden_state.shape[1]
        frame_mask = self.model._get_feature_vector_attention_mask(frames, sample_mask.long()).bool()
        return out.last_hidden_state, tuple(out.hidden_states), frame_mask


def _normalize_padded(wavs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-utterance zero mean / unit variance over the valid samples only; padding stays zero."""
    maskf = mask.to(wavs.dtype)
    count = maskf.sum(dim=1, keepdim=True)
    mean = (wavs * maskf).sum(dim=1, keepdim=True) / count
    var = (((wavs - mean) * maskf) ** 2).sum(dim=1, keepdim=True) / count
    return (wavs - mean) / torch.sqrt(var + 1e-7) * maskf


class SpeechModel(nn.Module):
    """Encoder + linear task head: frame-level logits (CTC) or pooled per-utterance logits (classification).

    The head is sized from the encoder's hidden size, so a YAML file only names the number of outputs.
    """

    def __init__(self, encoder: SpeechEncoder, num_outputs: int, pooling: str | None = None) -> None:
        super().__init__()
        if pooling not in (None, "mean"):
            raise ValueError(f"pooling must be None (frame-level) or 'mean', got {pooling!r}")
        self.encoder = encoder
        self.pooling = pooling
        self.head = nn.Linear(encoder.hidden_size, num_outputs)

    def forward(
        self, wavs: torch.Tensor, wav_lens: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], torch.Tensor]:
        """Returns (logits, hidden_states, frame_mask); logits are (B, T, V) or (B, C) when pooled."""
        feats, hidden_states, mask = self.encoder(wavs, wav_lens)
        if self.pooling == "mean":
            maskf = mask.unsqueeze(-1).to(feats.dtype)
            feats = (feats * maskf).sum(dim=1) / maskf.sum(dim=1).clamp(min=1.0)
        return self.head(feats), hidden_states, mask
