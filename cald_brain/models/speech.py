"""Speech models for CALD recipes: a Hugging Face audio encoder (the transformer teacher, or its linear-time
conversion as student) plus a task head: frame-level logits for CTC, or pooled per-utterance logits for
classification (intent, speaker, ...).

The same classes build teacher and student, so their hidden states pair index by index: the student is the
teacher's architecture with `mixer=` set. Both load through `cald_brain.convert` (one rule for hub names and
folders, config overrides applied before the weights load).

    student: !new:cald_brain.models.SpeechModel
        encoder: !new:cald_brain.models.SpeechEncoder
            source: facebook/wav2vec2-base
            mixer: bimamba2
            config_overrides: {hidden_dropout: 0.2, mask_time_prob: 0.1}
        num_outputs: 29
"""

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from transformers import AutoFeatureExtractor, AutoModel, PreTrainedModel

from cald_brain.convert import resolve_source
from cald_brain.mixers.masking import lengths_to_mask

from .layerdrop import install_layerdrop
from .loading import given_or_loaded
from .long_audio import SAMPLE_RATE, conv_output_lengths, encode_long, frame_geometry
from .outputs import ModelOutputs

POOLINGS = (None, "mean", "statistics", "attentive")


def read_do_normalize(source: str) -> bool:
    """The `do_normalize` flag of a checkpoint's feature extractor (preprocessor_config.json)."""
    source = resolve_source(source)
    try:
        extractor = AutoFeatureExtractor.from_pretrained(source)
    except OSError as err:
        raise FileNotFoundError(
            f"{os.path.join(source, 'preprocessor_config.json')} could not be read: the encoder checkpoint "
            f"must hold the feature extractor's preprocessor_config.json (or pass normalize_wav=True/False "
            f"explicitly). {err}"
        ) from err
    return bool(getattr(extractor, "do_normalize", True))


def normalize_padded(wavs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-utterance zero mean / unit variance over the valid samples only; padding stays zero."""
    maskf = mask.to(wavs.dtype)
    count = maskf.sum(dim=1, keepdim=True)
    mean = (wavs * maskf).sum(dim=1, keepdim=True) / count
    var = (((wavs - mean) * maskf) ** 2).sum(dim=1, keepdim=True) / count
    return (wavs - mean) / torch.sqrt(var + 1e-7) * maskf


class SpeechEncoder(nn.Module):
    """A pretrained audio transformer (wav2vec2, HuBERT, WavLM, data2vec-audio), optionally converted to a
    linear-time student.

    Arguments
    ---------
    source: hub name or local folder of the pretrained transformer (the conversion source), or a model
        already built (e.g. a student rebuilt by `cald_brain.export`), used as it is: then give
        `normalize_wav` and no mixer or config settings.
    mixer: None for the transformer itself (teacher); "bimamba2", "mamba2" or "linformer" for a student.
    mixer_kwargs: keyword arguments of the mixer (e.g. {"d_state": 128}).
    init: "random" (as in the CALD reference) or "attention" (new mixers start from the attention weights).
    freeze_feature_encoder: keep the convolutional feature encoder frozen, as usual for wav2vec2 fine-tuning.
    normalize_wav: zero-mean / unit-variance per utterance; None reads `do_normalize` from the checkpoint.
    config_overrides: config attributes set before loading (dropouts, layerdrop, SpecAugment masking).

    Hidden states, teacher and student alike: N + 1 of them for N layers, index 0 the input of the first
    layer, index i the output of layer i. LayerDrop (the checkpoint's `layerdrop`, e.g. 0.1 for
    wav2vec2-base and -large-lv60, or an override) stays active in training, and a skipped layer's slot
    holds its input (`cald_brain.models.layerdrop`). For stable-layer-norm encoders
    (`do_stable_layer_norm`, the large-lv60 layout) the last state is the output of the encoder's final
    LayerNorm, as in the CALD reference.
    """

    def __init__(
        self,
        source: str | PreTrainedModel,
        mixer: str | None = None,
        mixer_kwargs: dict[str, Any] | None = None,
        init: str = "random",
        freeze_feature_encoder: bool = True,
        normalize_wav: bool | None = None,
        config_overrides: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.model = given_or_loaded(source, AutoModel, mixer, mixer_kwargs, init, config_overrides)
        if isinstance(source, PreTrainedModel) and normalize_wav is None:
            raise ValueError("a SpeechEncoder around a built model needs normalize_wav=True/False")
        self.layerdrop = install_layerdrop(self.model.config, self.model.encoder.layers)
        self.normalize_wav = read_do_normalize(source) if normalize_wav is None else normalize_wav
        if freeze_feature_encoder:
            self.model.freeze_feature_encoder()

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
        sample_mask = lengths_to_mask(abs_lens, n_samples)
        if self.normalize_wav:
            wavs = normalize_padded(wavs, sample_mask)
        out = self.model(wavs, attention_mask=sample_mask.long(), output_hidden_states=True)
        frames = out.last_hidden_state.shape[1]
        frame_mask = lengths_to_mask(conv_output_lengths(self.model.config, abs_lens), frames)
        hidden_states = tuple(out.hidden_states)
        if getattr(self.model.config, "do_stable_layer_norm", False):
            hidden_states = (*hidden_states[:-1], out.last_hidden_state)  # after the final LayerNorm
        return out.last_hidden_state, hidden_states, frame_mask

    def forward_long(self, wav: torch.Tensor, piece_seconds: float = 20.0) -> torch.Tensor:
        """Last hidden state (1, frames, hidden) of ONE whole recording, (1, samples) or (samples,), of any
        length, exactly as `forward` computes it, in memory linear in the length and small: the feature
        encoder runs in `piece_seconds` pieces (see `cald_brain.models.long_audio`). Inference only."""
        if self.training:
            raise RuntimeError("forward_long is for inference: call .eval() on the model first")
        if wav.dim() == 1:
            wav = wav.unsqueeze(0)
        if wav.dim() != 2 or wav.shape[0] != 1:
            raise ValueError(
                f"forward_long takes one recording, (samples,) or (1, samples); got {tuple(wav.shape)}"
            )
        _, stride = frame_geometry(self.model.config)
        piece_frames = max(1, round(piece_seconds * SAMPLE_RATE / stride))
        param = next(self.model.parameters())
        with torch.no_grad():
            wav = wav.to(device=param.device, dtype=param.dtype)
            return encode_long(self.model, wav, self.normalize_wav, piece_frames)


def masked_mean_std(feats: torch.Tensor, mask: torch.Tensor, eps: float = 1e-5) -> tuple[torch.Tensor, ...]:
    """Mean and standard deviation over the valid frames of (batch, frames, dim) features."""
    maskf = mask.unsqueeze(-1).to(feats.dtype)
    count = maskf.sum(dim=1).clamp(min=1.0)
    mean = (feats * maskf).sum(dim=1) / count
    var = (((feats - mean.unsqueeze(1)) * maskf) ** 2).sum(dim=1) / count
    return mean, var.clamp(min=eps).sqrt()


class Pooling(nn.Module):
    """Per-utterance pooling of (batch, frames, dim) features over the valid frames.

    kind: "mean"; "statistics" (mean and standard deviation concatenated, x-vector style); "attentive"
    (attentive statistics pooling, ECAPA-TDNN: frame weights from a small attention network, then the
    weighted mean and standard deviation; SpeechBrain's AttentiveStatisticsPooling).
    """

    def __init__(self, kind: str, dim: int, attention_channels: int = 128) -> None:
        super().__init__()
        if kind not in POOLINGS[1:]:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {kind!r}")
        self.kind = kind
        self.out_dim = dim if kind == "mean" else 2 * dim
        self.attention = None
        if kind == "attentive":
            # imported here: any `speechbrain.*` import loads SpeechBrain's trainer, which the model layer
            # does not need otherwise
            from speechbrain.lobes.models.ECAPA_TDNN import AttentiveStatisticsPooling

            self.attention = AttentiveStatisticsPooling(dim, attention_channels)

    def forward(self, feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(batch, frames, dim) and its (batch, frames) mask -> (batch, out_dim)."""
        if self.attention is not None:
            rel_lens = mask.sum(dim=1).to(feats.dtype) / mask.shape[1]
            return self.attention(feats.transpose(1, 2), rel_lens).squeeze(-1)
        mean, std = masked_mean_std(feats, mask)
        return mean if self.kind == "mean" else torch.cat([mean, std], dim=-1)


class SpeechModel(nn.Module):
    """Encoder + linear task head: frame-level logits (CTC) or pooled per-utterance logits (classification).

    The head is sized from the encoder's hidden size, so a YAML file only names the number of outputs.
    num_outputs: an int (one head), or one size per head for a pooled classifier with several heads (SLURP's
    scenario and action, as the CALD reference's `Classifier`): one linear layer whose outputs are the heads'
    logits side by side (`split_logits`), the same computation as one linear per head.
    pooling: None (frame level), "mean", "statistics" or "attentive" (see `Pooling`).
    """

    def __init__(
        self,
        encoder: SpeechEncoder,
        num_outputs: int | Sequence[int],
        pooling: str | None = None,
        attention_channels: int = 128,
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        several = not isinstance(num_outputs, int)
        self.head_sizes = tuple(int(n) for n in num_outputs) if several else (num_outputs,)
        if not self.head_sizes or min(self.head_sizes) < 1 or (several and pooling is None):
            raise ValueError(
                "num_outputs must be a positive int, or a list of head sizes with a pooling "
                f"(got {num_outputs!r})"
            )
        self.num_outputs = list(self.head_sizes) if several else num_outputs
        self.encoder = encoder
        self.pooling = None if pooling is None else Pooling(pooling, encoder.hidden_size, attention_channels)
        self.head = nn.Linear(
            encoder.hidden_size if self.pooling is None else self.pooling.out_dim, sum(self.head_sizes)
        )

    def split_logits(self, logits: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The logits of each head, (..., head size) each, in `head_sizes` order."""
        return logits.split(self.head_sizes, dim=-1)

    def frozen_front_end(self) -> nn.Module:
        """The convolutional feature encoder: what a student and its teacher can compute once for both
        (`cald_brain.models.front_end`; shared only while frozen and identical)."""
        return self.encoder.model.feature_extractor

    def forward(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> ModelOutputs:
        """logits (B, T, V), or (B, C) when pooled (every head's, side by side); every hidden state; the
        (B, T) frame mask."""
        feats, hidden_states, mask = self.encoder(wavs, wav_lens)
        if self.pooling is not None:
            feats = self.pooling(feats, mask)
        return ModelOutputs(logits=self.head(feats), hidden_states=hidden_states, mask=mask)

    def forward_long(self, wav: torch.Tensor, piece_seconds: float = 20.0) -> ModelOutputs:
        """`forward` for ONE whole recording of any length ((samples,) or (1, samples), no padding), exact
        and memory-lean (`SpeechEncoder.forward_long`); inference only. Logits as `forward` gives them
        (pooled over all frames for a classifier); hidden_states holds only the encoder output; the mask is
        all True."""
        with torch.no_grad():
            feats = self.encoder.forward_long(wav, piece_seconds)
            mask = torch.ones(feats.shape[:2], dtype=torch.bool, device=feats.device)
            pooled = feats if self.pooling is None else self.pooling(feats, mask)
            return ModelOutputs(logits=self.head(pooled), hidden_states=(feats,), mask=mask)
