"""Train the small *pretrained* Wav2Vec2 models shipped in ``tests/samples/models/``: ``tiny-wav2vec2``
(tests) and ``small-wav2vec2`` (the README demo and the mini-CALD tables).

CALD starts from a pretrained transformer, so the sample runs (tests, README demo) need one whose weights
carry real speech knowledge, yet small enough to fine-tune on two CPU cores in a minute. This tool builds it:

1. a synthetic English corpus (espeak-ng, many voices, speeds and pitches) from sentences of the shared
   pool in ``common.py``, taken from a range disjoint from the one the committed samples use (and, for a
   corpus larger than that range, from ``common.extra_sentences()``); it is synthesised into a cache
   folder, never committed;
2. supervised character CTC pretraining of a ``Wav2Vec2ForCTC`` of size ``--size`` (the real wav2vec2
   architecture: 7-layer conv feature encoder of stride 320, positional conv embedding, pre-LN transformer
   layers), with an auxiliary log-mel regression on the conv features that gets CTC off its all-blank
   plateau early;
3. greedy CTC character error rate (CER) on held-out sentences and on the mini TED-LIUM sample;
4. the ``Wav2Vec2Model`` part is saved (safetensors) with a ``preprocessor_config.json``, the CTC head on
   its own (``ctc_head.safetensors``, for tests) and a README recording how it was made
   (``templates/tiny_wav2vec2_README.md``); the folder is
   checked to load with ``AutoModel`` and with SpeechBrain offline.

The architecture follows ``facebook/wav2vec2-large-lv60`` (the CALD paper's source model):
``feat_extract_norm="layer"`` with ``do_stable_layer_norm=True``. That variant honours the attention mask
(padding is ignored, which the package's padding tests rely on) and its pre-LN layers train stably from
scratch. Everything is seeded; training checkpoints into the cache folder and resumes from there.

The sentence pool is read from the running Python's documentation, so it differs between Python versions.
To train on another machine (``--device cuda``) with the corpus this machine would make, write the corpus
plan (sentences, voices, speeds, pitches, held-out split) here with ``--write-plan`` and pass it there with
``--plan``; the plan is checked against the samples' transcripts again where it is used.

Usage::

    python tools/samples/tiny_wav2vec2.py --out tests/samples/models/tiny-wav2vec2
    python tools/samples/tiny_wav2vec2.py --size small --num-train-sentences 4100 --num-heldout 200 \\
        --voices-per-sentence 6 --write-plan plan.json          # Python 3.11, no training
    python tools/samples/tiny_wav2vec2.py --size small --plan plan.json --device cuda --loader-workers 3 \\
        --batch-samples 2048000 --warmup 300 --eval-every 500 --steps 4500 \\
        --out tests/samples/models/small-wav2vec2   # (its README has the exact command and its timings)
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import math
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jiwer
import numpy as np
import torch
import torchaudio
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm
from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC

from cald_brain.data.audio import read_segment
from cald_brain.mixers.masking import lengths_to_mask
from cald_brain.models.speech import conv_output_lengths
from cald_brain.scripts import load_recipe_module, load_script

# Speech synthesis and the sentence pool are shared with the sample corpora; STM parsing with the recipe.
common = load_script(Path(__file__).with_name("common.py"), "tools_samples_common")
tedlium_prepare = load_recipe_module(common.REPO / "recipes" / "TEDLIUM", "prepare")
TEDLIUM_SAMPLE = common.SAMPLES / "TEDLIUM_release-3"
CTC_HEAD = "ctc_head.safetensors"
SAMPLE_RATE = common.SAMPLE_RATE
# CTC vocabulary: index 0 is the blank (also the pad token), then the characters of english_sentences().
CHARS = " '" + "abcdefghijklmnopqrstuvwxyz"
BLANK = 0
NUM_MELS = 40  # bands of the auxiliary log-mel target
# Sentences [0, FIRST_PRETRAIN_SENTENCE) of the shared pool are reserved for the committed samples
# (TED-LIUM, SLURP, ...); pretraining and its held-out set use the rest of the pool.
FIRST_PRETRAIN_SENTENCE = 1000
# espeak-ng languages x variants spoken in the corpus, on top of the samples' own SPEAKER_VOICES.
_LANGUAGES = ("en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan", "en-gb-x-gbcwmd")
_VARIANTS = (
    "",
    "+m1",
    "+m2",
    "+m3",
    "+m4",
    "+m5",
    "+m6",
    "+m7",
    "+f1",
    "+f2",
    "+f3",
    "+f4",
    "+f5",
    "+klatt",
    "+klatt2",
    "+klatt3",
    "+klatt4",
    "+steph",
    "+andy",
    "+annie",
    "+belinda",
    "+max",
)


# Transformer sizes of `model_config`; the conv feature encoder, most of the CPU cost, is the same for all.
SIZES = {
    "tiny": {"hidden_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4, "intermediate_size": 384},
    "small": {"hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 512},
}


def model_config(size: str = "tiny") -> Wav2Vec2Config:
    """A small wav2vec2 architecture (large-lv60 style: layer-norm conv encoder, pre-LN transformer)."""
    return Wav2Vec2Config(
        vocab_size=len(CHARS) + 1,
        pad_token_id=BLANK,
        **SIZES[size],
        hidden_act="gelu",
        conv_dim=(64,) * 7,
        conv_stride=(5, 2, 2, 2, 2, 2, 2),
        conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        conv_bias=True,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=16,
        hidden_dropout=0.05,
        attention_dropout=0.05,
        activation_dropout=0.0,
        feat_proj_dropout=0.05,
        final_dropout=0.0,
        layerdrop=0.0,
        mask_time_prob=0.05,
        mask_time_length=5,
        ctc_loss_reduction="mean",
        ctc_zero_infinity=True,
    )


@dataclasses.dataclass(frozen=True)
class Utterance:
    """One corpus item: a sentence and how espeak-ng speaks it."""

    text: str
    voice: str
    speed: int
    pitch: int


def voice_pool() -> list[str]:
    """espeak-ng voices of the corpus: the samples' speakers plus every language x variant pair."""
    voices = {v.voice for v in common.SPEAKER_VOICES}
    voices.update(lang + variant for lang in _LANGUAGES for variant in _VARIANTS)
    return sorted(voices)


def tedlium_sample_segments(root: Path = TEDLIUM_SAMPLE) -> list[tuple[Path, float, float, str]]:
    """(sph file, start, stop, normalised words) of every speech segment of the mini TED-LIUM sample."""
    segments = []
    for stm in sorted((root / "data" / "stm").glob("*.stm")):
        for seg in tedlium_prepare.parse_stm(stm):
            text = tedlium_prepare.normalize_transcript(seg.text)
            if seg.speaker != "inter_segment_gap" and text:
                segments.append((root / "data" / "sph" / f"{seg.talk}.sph", seg.start, seg.stop, text))
    return segments


def pretraining_sentences(n: int, seed: int) -> tuple[list[str], dict]:
    """``n`` sentences that no committed sample speaks, shuffled by ``seed``, and where they come from.

    Pool positions ``[FIRST_PRETRAIN_SENTENCE, ...)`` of ``english_sentences()`` first; past the end of the
    pool, ``common.extra_sentences()`` (documentation outside the pool).
    """
    pool_size = len(common.sentence_pool())
    from_pool = min(n, pool_size - FIRST_PRETRAIN_SENTENCE)
    source = {"python": platform.python_version(), "pool_range": [FIRST_PRETRAIN_SENTENCE, pool_size]}
    source |= {"from_pool": from_pool, "from_extra": n - from_pool}
    if n == from_pool:
        return common.english_sentences(n, seed=seed, skip=FIRST_PRETRAIN_SENTENCE), source
    sentences = [*common.sentence_pool()[FIRST_PRETRAIN_SENTENCE:], *common.extra_sentences()]
    if n > len(sentences):
        raise ValueError(
            f"{n} pretraining sentences asked for (--num-train-sentences + --num-heldout), but pool "
            f"positions [{FIRST_PRETRAIN_SENTENCE}, {pool_size}) and extra_sentences() hold {len(sentences)}"
        )
    sentences = sentences[:n]
    random.Random(seed).shuffle(sentences)
    return sentences, source


def check_text(train_text: list[str], heldout_text: list[str]) -> None:
    """No sentence of the corpus is a segment of the mini TED-LIUM sample, held-out and training sentences
    are disjoint, and every character is in the CTC vocabulary."""
    sentences = [*heldout_text, *train_text]
    padded = [f" {s} " for s in sentences]
    for *_, text in tedlium_sample_segments():  # transcripts may miss <unk> words: look for sub-sentences
        if len(text.split()) >= 4 and any(f" {text} " in sentence for sentence in padded):
            raise RuntimeError(
                f"the pretraining corpus speaks {text!r}, a segment of the mini TED-LIUM sample; the samples "
                f"must use sentences [0, {FIRST_PRETRAIN_SENTENCE}) of english_sentences()"
            )
    if set(heldout_text) & set(train_text):
        raise RuntimeError("held-out sentences leak into training")
    for sentence in sentences:
        if set(sentence) - set(CHARS):
            raise ValueError(f"sentence {sentence!r} has characters outside the CTC vocabulary {CHARS!r}")


def corpus_plan(
    num_train: int, num_heldout: int, voices_per_sentence: int, seed: int
) -> tuple[list[Utterance], list[Utterance], dict]:
    """Training and held-out utterances on disjoint sentences, none of which a committed sample speaks, and
    where the sentences come from (`pretraining_sentences`)."""
    sentences, source = pretraining_sentences(num_train + num_heldout, seed)
    heldout_text, train_text = sentences[:num_heldout], sentences[num_heldout:]
    check_text(train_text, heldout_text)
    voices = voice_pool()
    rng = random.Random(seed)

    def speak(text: str) -> Utterance:
        return Utterance(text, rng.choice(voices), speed=rng.randint(120, 200), pitch=rng.randint(20, 80))

    train = [speak(text) for text in train_text for _ in range(voices_per_sentence)]
    heldout = [speak(text) for text in heldout_text]
    return train, heldout, source


def write_plan(path: Path, train: list[Utterance], heldout: list[Utterance], source: dict) -> None:
    """The corpus plan as JSON (atomic write), for `read_plan` on another machine."""
    plan = {
        "source": source,
        **{k: [dataclasses.astuple(u) for u in v] for k, v in (("train", train), ("heldout", heldout))},
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(plan), encoding="utf-8")
    os.replace(tmp, path)


def read_plan(path: Path) -> tuple[list[Utterance], list[Utterance], dict]:
    """A corpus plan written by `write_plan`, checked again (`check_text`) against this checkout's samples."""
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
        train, heldout = ([Utterance(*u) for u in plan[k]] for k in ("train", "heldout"))
        source = plan["source"] | {"plan_sha1": hashlib.sha1(path.read_bytes()).hexdigest()}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SystemExit(f"ERROR: {path} is not a corpus plan written by --write-plan ({error!r})") from error
    check_text(sorted({u.text for u in train}), sorted({u.text for u in heldout}))
    return train, heldout, source


class Corpus:
    """Synthesised utterances, cached on disk and held in memory as int16 PCM."""

    def __init__(self, utterances: list[Utterance], cache_dir: Path, name: str, workers: int = 2) -> None:
        self.utterances = utterances
        key = hashlib.sha1(json.dumps([dataclasses.astuple(u) for u in utterances]).encode()).hexdigest()[:12]
        path = cache_dir / f"{name}-{key}.npz"
        if not path.exists():
            started = time.time()
            audio, offsets = self._synthesize(utterances, workers, desc=f"synthesising {name}")
            cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, audio=audio, offsets=offsets, seconds=time.time() - started, workers=workers)
            os.replace(tmp, path)
        with np.load(path) as data:
            self.audio, self.offsets = data["audio"], data["offsets"]
            # how long synthesis took, with how many espeak-ng processes at a time (for the model card)
            self.synthesis = (float(data["seconds"]), int(data["workers"])) if "seconds" in data else None
        self.lengths = np.diff(self.offsets)

    @staticmethod
    def _synthesize(utterances: list[Utterance], workers: int, desc: str) -> tuple[np.ndarray, np.ndarray]:
        def speak(u: Utterance) -> np.ndarray:
            wav = common.synthesize(u.text, u.voice, u.speed, u.pitch, sample_rate=SAMPLE_RATE)
            return (np.clip(wav, -1.0, 1.0) * 32767).astype(np.int16)

        with ThreadPoolExecutor(max_workers=workers) as pool:
            waves = list(tqdm(pool.map(speak, utterances), total=len(utterances), desc=desc))
        offsets = np.cumsum([0] + [len(w) for w in waves])
        return np.concatenate(waves), offsets

    def __len__(self) -> int:
        return len(self.utterances)

    def wave(self, index: int) -> torch.Tensor:
        """Float waveform of one utterance."""
        pcm = self.audio[self.offsets[index] : self.offsets[index + 1]]
        return torch.from_numpy(pcm.astype(np.float32) / 32767)

    def hours(self) -> float:
        """Total duration of the corpus in hours."""
        return float(self.lengths.sum()) / SAMPLE_RATE / 3600


def encode_text(text: str) -> list[int]:
    """CTC label ids of a sentence (0 is the blank)."""
    return [CHARS.index(c) + 1 for c in text]


def greedy_decode(ids: list[int]) -> str:
    """Collapse repeats, then drop blanks."""
    out, previous = [], BLANK
    for i in ids:
        if i != previous and i != BLANK:
            out.append(CHARS[i - 1])
        previous = i
    return "".join(out)


def save_ctc_head(model: Wav2Vec2ForCTC, out: Path) -> None:
    """The pretraining CTC head (not part of Wav2Vec2Model), with its vocabulary in the file metadata."""
    tensors = {name: p.detach().contiguous() for name, p in model.lm_head.state_dict().items()}
    save_file(tensors, out / CTC_HEAD, metadata={"vocabulary": json.dumps(["<blank>", *CHARS])})


def load_ctc_head(folder: Path) -> tuple[torch.nn.Linear, list[str]]:
    """The CTC head saved by `save_ctc_head` and its vocabulary (index 0 is the blank)."""
    with safe_open(folder / CTC_HEAD, framework="pt") as f:
        vocabulary = json.loads(f.metadata()["vocabulary"])
        weight, bias = f.get_tensor("weight"), f.get_tensor("bias")
    head = torch.nn.Linear(weight.shape[1], weight.shape[0])
    head.load_state_dict({"weight": weight, "bias": bias})
    return head, vocabulary


@torch.no_grad()
def transcribe(encoder: torch.nn.Module, head: torch.nn.Linear, waves: list[torch.Tensor]) -> list[str]:
    """Greedy CTC transcripts of ``waves`` by a Wav2Vec2Model and a CTC head (one utterance at a time)."""
    encoder.eval()
    hypotheses = []
    for wave in waves:
        wav, _ = collate([wave])
        ids = head(encoder(wav).last_hidden_state)[0].argmax(-1).tolist()
        hypotheses.append(greedy_decode(ids))
    return hypotheses


def tedlium_sample_cer(encoder: torch.nn.Module, head: torch.nn.Linear) -> float:
    """Greedy CTC CER on the speech segments of the mini TED-LIUM sample (never used for training)."""
    segments = tedlium_sample_segments()
    waves = [read_segment(path, start, stop) for path, start, stop, _ in segments]
    return float(jiwer.cer([text for *_, text in segments], transcribe(encoder, head, waves)))


def add_noise(waves: list[torch.Tensor], rng: torch.Generator) -> list[torch.Tensor]:
    """White noise at 10-40 dB SNR on half of the utterances (augmentation)."""
    noisy = []
    for wave in waves:
        if torch.rand((), generator=rng) < 0.5:
            snr_db = 10 + 30 * torch.rand((), generator=rng)
            wave = wave + torch.randn(wave.shape, generator=rng) * wave.std() * 10 ** (-snr_db / 20)
        noisy.append(wave)
    return noisy


def collate(waves: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded batch of per-utterance normalised waveforms (zero mean, unit variance) and its mask."""
    lengths = torch.tensor([len(w) for w in waves])
    batch = torch.zeros(len(waves), int(lengths.max()))
    for row, wave in enumerate(waves):
        batch[row, : len(wave)] = (wave - wave.mean()) / torch.sqrt(wave.var() + 1e-7)
    mask = torch.arange(batch.shape[1])[None, :] < lengths[:, None]
    return batch, mask


@functools.cache
def mel_spectrogram(num_mels: int) -> torchaudio.transforms.MelSpectrogram:
    """25 ms windows every 20 ms, no centring: exactly the conv encoder's receptive field and stride."""
    return torchaudio.transforms.MelSpectrogram(
        SAMPLE_RATE, n_fft=400, hop_length=320, n_mels=num_mels, center=False
    )


def log_mel(waves: list[torch.Tensor], frames: int, num_mels: int = NUM_MELS) -> torch.Tensor:
    """Per-utterance standardised log-mel frames, right-padded to ``frames``."""
    out = torch.zeros(len(waves), frames, num_mels)
    for row, wave in enumerate(waves):
        feats = torch.log(mel_spectrogram(num_mels)(wave) + 1e-6).T
        out[row, : len(feats)] = (feats - feats.mean()) / (feats.std() + 1e-5)
    return out


class TrainingBatches(torch.utils.data.Dataset):
    """Item ``step`` is the prepared batch of that training step: the CPU work (noise, normalisation,
    padding, log-mel and CTC targets), which DataLoader workers can do ahead of the model. Deterministic:
    the noise of a step is drawn from a generator seeded with ``seed + step``."""

    def __init__(self, corpus: Corpus, schedule: list[tuple], config: Wav2Vec2Config, seed: int) -> None:
        self.corpus, self.schedule, self.config, self.seed = corpus, schedule, config, seed
        self.labels = [encode_text(u.text) for u in corpus.utterances]

    def __len__(self) -> int:
        return len(self.schedule)

    def __getitem__(self, step: int) -> dict[str, torch.Tensor]:
        _, indices = self.schedule[step]
        noise_rng = torch.Generator().manual_seed(self.seed + step)
        waves = add_noise([self.corpus.wave(i) for i in indices], noise_rng)
        wav, mask = collate(waves)
        labels = [self.labels[i] for i in indices]
        return {
            "wav": wav,
            "mask": mask,
            "frame_lengths": conv_output_lengths(self.config, mask.sum(1)),
            "log_mel": log_mel(waves, int(conv_output_lengths(self.config, torch.tensor(wav.shape[1])))),
            "targets": torch.tensor([c for label in labels for c in label]),
            "target_lengths": torch.tensor([len(label) for label in labels]),
        }


class Pretrainer(torch.nn.Module):
    """Wav2Vec2ForCTC plus an auxiliary linear head that regresses log-mel frames from the conv features.

    CTC alone sits for hundreds of steps on the all-blank plateau when the conv feature encoder starts from
    scratch; the dense log-mel target (`log_mel`) gives the feature encoder spectral features from the
    first steps.
    """

    def __init__(self, config: Wav2Vec2Config, num_mels: int = NUM_MELS) -> None:
        super().__init__()
        self.ctc = Wav2Vec2ForCTC(config)
        self.mel_head = torch.nn.Linear(config.conv_dim[-1], num_mels)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """CTC loss (mean over characters) and masked log-mel MSE of one `TrainingBatches` item."""
        out = self.ctc.wav2vec2(batch["wav"], attention_mask=batch["mask"].long())
        frame_mask = lengths_to_mask(batch["frame_lengths"], out.extract_features.shape[1])
        log_probs = self.ctc.lm_head(out.last_hidden_state).log_softmax(-1).transpose(0, 1)
        ctc = torch.nn.functional.ctc_loss(
            log_probs,
            batch["targets"],
            batch["frame_lengths"],
            batch["target_lengths"],
            blank=BLANK,
            reduction="mean",
            zero_infinity=True,
        )
        error = (self.mel_head(out.extract_features) - batch["log_mel"]) ** 2
        mel = error.mean(-1)[frame_mask].mean()
        return ctc, mel


def epoch_batches(lengths: np.ndarray, max_batch_samples: int, seed: int, epoch: int) -> list[list[int]]:
    """Batches of at most ``max_batch_samples`` padded samples.

    Epoch 0 goes from the shortest utterances to the longest (a curriculum that helps CTC find its
    alignments); later epochs shuffle length-bucketed batches.
    """
    rng = random.Random(seed * 10007 + epoch)
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    chunk = len(order) if epoch == 0 else 256
    if epoch > 0:
        rng.shuffle(order)
    batches = []
    for start in range(0, len(order), chunk):  # sort within chunks: little padding, still random
        batch: list[int] = []
        for i in sorted(order[start : start + chunk], key=lambda i: lengths[i]):
            if batch and (len(batch) + 1) * lengths[i] > max_batch_samples:
                batches.append(batch)
                batch = []
            batch.append(i)
        batches.append(batch)
    if epoch > 0:
        rng.shuffle(batches)
    return batches


@torch.no_grad()
def evaluate_cer(model: Wav2Vec2ForCTC, corpus: Corpus, max_batch_samples: int) -> float:
    """Greedy CTC character error rate of ``model`` on ``corpus`` (on the model's device)."""
    model.eval()
    hypotheses, references = [], []
    order = sorted(range(len(corpus)), key=lambda i: corpus.lengths[i])
    batch_size = max(1, max_batch_samples // int(corpus.lengths.max()))
    for start in range(0, len(order), batch_size):
        indices = order[start : start + batch_size]
        wav, mask = (t.to(model.device) for t in collate([corpus.wave(i) for i in indices]))
        logits = model(wav, attention_mask=mask.long()).logits
        frames = model._get_feat_extract_output_lengths(mask.sum(1))
        for row, i in enumerate(indices):
            hypotheses.append(greedy_decode(logits[row, : frames[row]].argmax(-1).tolist()))
            references.append(corpus.utterances[i].text)
    model.train()
    return float(jiwer.cer(references, hypotheses))


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 5% of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))


def step_schedule(lengths: np.ndarray, steps: int, max_batch_samples: int, seed: int) -> list[tuple]:
    """(epoch, batch indices) of every training step, deterministic: whole epochs of `epoch_batches`."""
    schedule: list[tuple[int, list[int]]] = []
    while len(schedule) < steps:
        epoch = schedule[-1][0] + 1 if schedule else 0
        schedule += [(epoch, batch) for batch in epoch_batches(lengths, max_batch_samples, seed, epoch)]
    return schedule


def save_checkpoint(path: Path, parts: dict[str, object], progress: dict) -> None:
    """The state dicts of ``parts`` (model, optimizer, scheduler) and ``progress`` (step, total steps, log);
    atomic write."""
    state = {name: part.state_dict() for name, part in parts.items()} | progress
    torch.save(state, path.with_suffix(".tmp"))
    os.replace(path.with_suffix(".tmp"), path)


def resume(path: Path, parts: dict[str, object], progress: dict) -> None:
    """Load ``parts`` and ``progress`` from the checkpoint at ``path`` if there is one."""
    if not path.exists():
        return
    state = torch.load(path, weights_only=False, map_location="cpu")
    for name, part in parts.items():
        part.load_state_dict(state[name])
    progress.update({key: state[key] for key in progress})
    print(f"resuming from {path} at step {progress['step']}")


def fit_steps(args: argparse.Namespace, step: int, seconds_per_step: float, elapsed: float) -> int:
    """Total steps that end training within ``--train-minutes`` at ``seconds_per_step`` (10% kept for the
    evaluations), a multiple of ``--eval-every``, at most ``--steps``.

    Called at the end of the warm-up, where the learning rate does not yet depend on the total, so the run
    is the one that ``--steps <returned total>`` makes.
    """
    fitting = step + int(0.9 * (60 * args.train_minutes - elapsed) / seconds_per_step)
    return max(step, min(args.steps, fitting // args.eval_every * args.eval_every))


def _one_thread(_: int) -> None:
    """DataLoader worker start: one intra-op thread each (the workers run side by side)."""
    torch.set_num_threads(1)


def train(
    args: argparse.Namespace, train_set: Corpus, heldout: Corpus
) -> tuple[Wav2Vec2ForCTC, list[dict], int]:
    """CTC (+ log-mel) pretraining with checkpoint/resume in the cache folder; returns the model (on the CPU),
    the log and the planned total steps. With ``--train-minutes``, the total is fitted to the time at the end
    of the warm-up (`fit_steps`), and training stops at the limit whatever the fit said."""
    torch.manual_seed(args.seed)
    config = model_config(args.size)
    model = Pretrainer(config).to(args.device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    progress = {"step": 0, "total_steps": args.steps, "log": []}
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, progress["total_steps"], args.warmup)
    )
    parts = {"model": model, "optimizer": optimizer, "scheduler": scheduler}
    run = [args.size, args.seed, args.steps, args.lr, args.warmup, args.batch_samples, args.mel_weight]
    run_key = hashlib.sha1(json.dumps([*run, len(train_set), train_set.hours()]).encode()).hexdigest()[:8]
    checkpoint = args.cache / f"checkpoint-{args.size}-seed{args.seed}-steps{args.steps}-{run_key}.pt"
    resume(checkpoint, parts, progress)
    step, log = progress["step"], progress["log"]
    schedule = step_schedule(train_set.lengths, args.steps, args.batch_samples, args.seed)
    loader = torch.utils.data.DataLoader(
        TrainingBatches(train_set, schedule, config, args.seed),
        batch_size=None,
        sampler=range(step, args.steps),
        num_workers=args.loader_workers,
        pin_memory=args.device.startswith("cuda"),
        worker_init_fn=_one_thread,
        prefetch_factor=4 if args.loader_workers else None,
    )
    running = None  # EMA of (CTC, log-mel) losses, kept on the device: no host sync a step
    started = time.time() - 60 * (log[-1]["minutes"] if log else 0.0)  # minutes count across resumes
    timed_from = None  # when step warmup // 2 ended: the first steps (start-up, kernel tuning) are not timed
    bar = tqdm(total=progress["total_steps"], initial=step, desc="pretraining")
    for batch in loader:
        if step >= progress["total_steps"]:
            break
        batch = {k: v.to(args.device, non_blocking=True) for k, v in batch.items()}
        torch.manual_seed(args.seed + step)  # dropout
        np.random.seed(args.seed + step)  # transformers draws the SpecAugment masks with numpy
        ctc, mel = model(batch)
        optimizer.zero_grad()
        (ctc + args.mel_weight * mel).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        scheduler.step()
        step += 1
        losses = torch.stack([ctc.detach(), mel.detach()])
        running = losses if running is None else 0.98 * running + 0.02 * losses
        bar.update()
        if step == args.warmup // 2:
            timed_from = time.time()
        if args.train_minutes and step == args.warmup and timed_from is not None:
            seconds_per_step = (time.time() - timed_from) / (step - args.warmup // 2)
            progress["total_steps"] = fit_steps(args, step, seconds_per_step, time.time() - started)
            bar.total = progress["total_steps"]
            bar.write(f"{seconds_per_step * 1000:.0f} ms a step: {progress['total_steps']} steps fit")
        out_of_time = args.train_minutes and time.time() - started > 60 * args.train_minutes
        if out_of_time:
            bar.write(f"--train-minutes {args.train_minutes} reached at step {step}: training stops")
        if step % args.eval_every == 0 or step == progress["total_steps"] or out_of_time:
            ctc_ema, mel_ema = running.tolist()
            bar.set_postfix(epoch=schedule[step - 1][0], ctc=f"{ctc_ema:.3f}", mel=f"{mel_ema:.3f}")
            cer = evaluate_cer(model.ctc, heldout, args.batch_samples)
            log.append(
                {
                    "step": step,
                    "epoch": schedule[step - 1][0],
                    "ctc_loss": round(ctc_ema, 4),
                    "mel_loss": round(mel_ema, 4),
                    "heldout_cer": round(cer, 4),
                    "minutes": round((time.time() - started) / 60, 2),
                }
            )
            bar.write(json.dumps(log[-1]))
            save_checkpoint(checkpoint, parts, progress | {"step": step, "log": log})
        if out_of_time:
            break
    bar.close()
    return model.ctc.cpu(), log, progress["total_steps"]


def feature_extractor() -> Wav2Vec2FeatureExtractor:
    """The preprocessor saved with the model: 16 kHz, per-utterance normalisation, attention mask."""
    return Wav2Vec2FeatureExtractor(
        feature_size=1,
        sampling_rate=SAMPLE_RATE,
        padding_value=0.0,
        do_normalize=True,
        return_attention_mask=True,
    )


def forward_seconds(model: torch.nn.Module, seconds: float = 10.0, repeats: int = 5) -> float:
    """Best-of-``repeats`` wall time of one encoder forward on ``seconds`` of audio (CPU, no grad)."""
    model.eval()
    wav = torch.randn(1, int(seconds * SAMPLE_RATE))
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            model(wav)
            times.append(time.perf_counter() - start)
    return min(times)


def verify(out: Path) -> None:
    """The saved folder loads with AutoModel (no missing/unexpected keys) and with SpeechBrain offline."""
    from transformers import AutoModel

    model, info = AutoModel.from_pretrained(out, output_loading_info=True)
    problems = {k: v for k, v in info.items() if v}
    if problems:
        raise RuntimeError(f"{out} does not load cleanly with AutoModel: {problems}")
    os.environ["HF_HUB_OFFLINE"] = "1"
    from speechbrain.integrations.huggingface.wav2vec2 import Wav2Vec2

    with tempfile.TemporaryDirectory() as tmp:
        lobe = Wav2Vec2(source=str(out), save_path=tmp, output_all_hiddens=True)
        hidden = lobe(torch.randn(2, SAMPLE_RATE), torch.tensor([1.0, 0.5]))
    expected = (model.config.num_hidden_layers + 1, 2, 49, model.config.hidden_size)
    if tuple(hidden.shape) != expected:
        raise RuntimeError(f"SpeechBrain Wav2Vec2 on {out}: hidden states {tuple(hidden.shape)}, {expected=}")


def write_readme(out: Path, f: dict) -> None:
    """Model card recording exactly how the weights were made (``templates/tiny_wav2vec2_README.md``)."""
    last = f["log"][-1]
    rows = [
        f"| {r['step']} | {r['epoch']} | {r['ctc_loss']:.3f} | {r['mel_loss']:.3f} | "
        f"{100 * r['heldout_cer']:.1f} % | {r['minutes']:.1f} |"
        for r in f["log"]
    ]
    source = f["source"]
    first, pool_size = source["pool_range"]
    text_source = (
        f"{source['from_pool'] + source['from_extra']} sentences of the Python {source['python']} "
        f"documentation: positions [{first}, {first + source['from_pool']}) of `english_sentences()` in "
        f"`tools/samples/common.py`, disjoint from positions [0, {first}) of the committed sample corpora"
    )
    if source["from_extra"]:
        text_source += (
            f" (the pool ends at {pool_size}), and the first {source['from_extra']} of "
            "`extra_sentences()` (documentation outside the pool)"
        )
    notes = [f"The sentence pool depends on the Python version: this corpus is Python {source['python']}'s."]
    if "plan_sha1" in source:
        notes.append(
            "The corpus plan (sentences, voices, speeds, pitches, held-out split) was written on such a "
            "machine by the same command with `--write-plan plan.json` instead of `--plan`, `--device` and "
            f"`--out` (plan SHA-1 {source['plan_sha1'][:12]}), and checked again where the model was trained."
        )
    if f["train_minutes"]:
        planned = f["planned_steps"]
        notes.append(
            f"`--train-minutes {f['train_minutes']}` fitted the run to {f['steps']} steps at the end of the "
            f"warm-up: the same run as `--steps {f['steps']}` without it."
            if f["steps"] == planned
            else f"`--train-minutes {f['train_minutes']}` stopped training at step {f['steps']} of {planned}."
        )
    if f["device"] != "cpu":
        notes.append("Runs on a GPU are seeded but not bit-for-bit reproducible.")
    text = common.render(
        "tiny_wav2vec2_README.md",
        **{k: v for k, v in f.items() if k not in ("log", "source")},
        name=out.name,
        run_note=" ".join(notes),
        text_source=text_source,
        params_m=f["params"] / 1e6,
        disk_mb=f["disk_bytes"] / 1e6,
        forward_ms=1000 * f["forward_10s"],
        batch_seconds=f["batch_samples"] / SAMPLE_RATE,
        minutes=last["minutes"],
        log_rows="\n".join(rows),
        ctc_loss=last["ctc_loss"],
        heldout_cer=100 * last["heldout_cer"],
        tedlium_cer=100 * f["tedlium_sample_cer"],
    )
    (out / "README.md").write_text(common.rewrap_markdown(text), encoding="utf-8")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, help="model folder to (re)write (not with --write-plan)")
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        / "cald_brain"
        / "tiny-wav2vec2",
        help="synthetic corpus and training checkpoints (not committed)",
    )
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny", help="transformer size (SIZES)")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument(
        "--train-minutes",
        type=float,
        help="fit the total steps (at most --steps) to this training time, timed at the end of the warm-up",
    )
    parser.add_argument("--warmup", type=int, default=150)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--batch-samples", type=int, default=16 * SAMPLE_RATE, help="padded samples a batch")
    parser.add_argument("--num-train-sentences", type=int, default=1400)
    parser.add_argument("--num-heldout", type=int, default=100)
    parser.add_argument("--voices-per-sentence", type=int, default=2)
    parser.add_argument("--write-plan", type=Path, help="write the corpus plan to this JSON file and stop")
    parser.add_argument(
        "--plan", type=Path, help="corpus plan of --write-plan (replaces the three options above)"
    )
    parser.add_argument("--synthesis-workers", type=int, default=2, help="espeak-ng processes at a time")
    parser.add_argument("--synthesize-only", action="store_true", help="stop once the corpus is cached")
    parser.add_argument("--mel-weight", type=float, default=1.0, help="weight of the log-mel auxiliary loss")
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="where to train: cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--loader-workers", type=int, default=0, help="processes that prepare batches ahead (0: in the loop)"
    )
    args = parser.parse_args()
    if args.out is None and not (args.write_plan or args.synthesize_only):
        parser.error("--out is required (unless --write-plan or --synthesize-only)")
    if args.train_minutes and args.warmup < 2:
        parser.error("--train-minutes times the second half of the warm-up: give --warmup 2 or more")
    return args


def save_model(model: Wav2Vec2ForCTC, out: Path) -> torch.nn.Module:
    """Save the encoder, its preprocessor and the CTC head into a fresh ``out``, checked to load."""
    if out.exists():
        shutil.rmtree(out)
    encoder = model.wav2vec2
    encoder.config.architectures = ["Wav2Vec2Model"]
    encoder.save_pretrained(out)
    feature_extractor().save_pretrained(out)
    save_ctc_head(model, out)
    verify(out)
    return encoder


def where(args: argparse.Namespace) -> str:
    """Where training ran, for the model card."""
    if args.device == "cpu":
        return f"on CPU with `--threads={args.threads}`"
    return (
        f"on one {torch.cuda.get_device_name(args.device)} (`--device {args.device}`), batches prepared by "
        f"{args.loader_workers} data-loader processes on {os.cpu_count()} CPU cores"
    )


def cpu_name() -> str:
    """The CPU model, as /proc/cpuinfo names it (or the platform's processor string)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return " ".join(line.split(":", 1)[1].split())
    return platform.processor() or "an unknown CPU"


def model_facts(
    args: argparse.Namespace,
    encoder: torch.nn.Module,
    corpus: tuple[Corpus, Corpus, dict],
    log: list[dict],
    planned_steps: int,
) -> dict:
    """What the model card reports: the command, the architecture, the corpus, the run and its scores."""
    train_set, heldout, source = corpus
    num_train_sentences = len({u.text for u in train_set.utterances})
    synthesis = ""
    if train_set.synthesis is not None:
        seconds, workers = train_set.synthesis
        synthesis = f", synthesised in {seconds / 60:.1f} min by {workers} espeak-ng processes at a time"
    return {
        "command": "python tools/samples/tiny_wav2vec2.py " + " ".join(sys.argv[1:]),
        "size": args.size,
        "config": encoder.config.to_dict(),
        "params": sum(p.numel() for p in encoder.parameters()),
        "disk_bytes": (args.out / "model.safetensors").stat().st_size,
        "forward_10s": forward_seconds(encoder),
        "cpu": cpu_name(),
        "source": source,
        "num_train_sentences": num_train_sentences,
        "num_heldout": len(heldout),
        "voices_per_sentence": len(train_set) // num_train_sentences,
        "num_voices": len(voice_pool()),
        "train_utterances": len(train_set),
        "train_hours": train_set.hours(),
        "synthesis": synthesis,
        "lr": args.lr,
        "warmup": args.warmup,
        "steps": log[-1]["step"],
        "planned_steps": planned_steps,
        "train_minutes": args.train_minutes,
        "batch_samples": args.batch_samples,
        "mel_weight": args.mel_weight,
        "seed": args.seed,
        "device": args.device,
        "where": where(args),
        "log": log,
        "tedlium_sample_cer": tedlium_sample_cer(encoder, load_ctc_head(args.out)[0]),
        "tedlium_segments": len(tedlium_sample_segments()),
    }


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    if args.plan:
        train_plan, heldout_plan, source = read_plan(args.plan)
    else:
        train_plan, heldout_plan, source = corpus_plan(
            args.num_train_sentences, args.num_heldout, args.voices_per_sentence, args.seed
        )
    if args.write_plan:
        write_plan(args.write_plan, train_plan, heldout_plan, source)
        print(f"corpus plan of {len(train_plan)} + {len(heldout_plan)} utterances: {args.write_plan}")
        return
    train_set = Corpus(train_plan, args.cache, "train", args.synthesis_workers)
    heldout = Corpus(heldout_plan, args.cache, "heldout", args.synthesis_workers)
    print(f"corpus: {len(train_set)} training utterances, {train_set.hours():.2f} h; {len(heldout)} held out")
    if args.synthesize_only:
        return
    model, log, planned_steps = train(args, train_set, heldout)
    facts = model_facts(args, save_model(model, args.out), (train_set, heldout, source), log, planned_steps)
    write_readme(args.out, facts)
    print(json.dumps({k: v for k, v in facts.items() if k not in ("config", "log")}, indent=1))
    print(f"final held-out CER {100 * log[-1]['heldout_cer']:.1f} %, written to {args.out}")


if __name__ == "__main__":
    main()
