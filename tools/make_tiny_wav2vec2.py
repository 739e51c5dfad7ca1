"""Train the tiny *pretrained* Wav2Vec2 shipped in ``tests/samples/models/tiny-wav2vec2``.

CALD starts from a pretrained transformer, so the sample runs (tests, README demo) need one whose weights
carry real speech knowledge, yet small enough to fine-tune on two CPU cores in a minute. This tool builds it:

1. a synthetic English corpus (espeak-ng, many voices, speeds and pitches) from sentences of the shared
   pool in ``tools/make_samples.py``, taken from a range disjoint from the one the committed samples use;
   it is synthesised into a cache folder, never committed;
2. supervised character CTC pretraining of a tiny ``Wav2Vec2ForCTC`` (the real wav2vec2 architecture:
   7-layer conv feature encoder of stride 320, positional conv embedding, pre-LN transformer layers);
3. greedy CTC character error rate (CER) on held-out sentences;
4. only the ``Wav2Vec2Model`` part is saved (safetensors) with a ``preprocessor_config.json`` and a README
   recording how it was made; the folder is checked to load with ``AutoModel`` and SpeechBrain offline.

The architecture follows ``facebook/wav2vec2-large-lv60`` (the CALD paper's source model):
``feat_extract_norm="layer"`` with ``do_stable_layer_norm=True``. That variant honours the attention mask
(padding is ignored, which the package's padding tests rely on) and its pre-LN layers train stably from
scratch. Everything is seeded; training checkpoints into the cache folder and resumes from there.

Usage::

    python tools/make_tiny_wav2vec2.py --out tests/samples/models/tiny-wav2vec2
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.util
import json
import math
import os
import random
import re
import shutil
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jiwer
import numpy as np
import torch
from tqdm import tqdm
from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "tests" / "samples"
SAMPLE_RATE = 16000
# CTC vocabulary: index 0 is the blank (also the pad token), then the characters of english_sentences().
CHARS = " '" + "abcdefghijklmnopqrstuvwxyz"
BLANK = 0
# Sentences [0, FIRST_PRETRAIN_SENTENCE) of the shared pool are reserved for the committed samples
# (TED-LIUM, SLURP, ...); pretraining and its held-out set use the rest of the pool.
FIRST_PRETRAIN_SENTENCE = 1000
# espeak-ng languages x variants spoken in the corpus, on top of the samples' own SPEAKER_VOICES.
_LANGUAGES = ("en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan", "en-gb-x-gbcwmd")
_VARIANTS = ("", "+m1", "+m2", "+m3", "+m4", "+m5", "+m6", "+m7", "+f1", "+f2", "+f3", "+f4", "+f5",
             "+klatt", "+klatt2", "+klatt3", "+klatt4", "+steph", "+andy", "+annie", "+belinda", "+max")


def _load_make_samples():
    """The sibling tools/make_samples.py as a module (synthesize, english_sentences, SPEAKER_VOICES)."""
    path = Path(__file__).with_name("make_samples.py")
    spec = importlib.util.spec_from_file_location("make_samples", path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"{path} is missing: it provides the speech synthesis used for pretraining")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


make_samples = _load_make_samples()


def tiny_config() -> Wav2Vec2Config:
    """The tiny wav2vec2 architecture (large-lv60 style: layer-norm conv encoder, pre-LN transformer)."""
    return Wav2Vec2Config(
        vocab_size=len(CHARS) + 1,
        pad_token_id=BLANK,
        hidden_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=384,
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
    voices = {v.voice for v in make_samples.SPEAKER_VOICES}
    voices.update(lang + variant for lang in _LANGUAGES for variant in _VARIANTS)
    return sorted(voices)


def sample_sentences(root: Path = SAMPLES) -> set[str]:
    """Transcripts of the committed sample corpora (TED-LIUM STM files), contractions rejoined."""
    sentences = set()
    for stm in root.rglob("*.stm"):
        for line in stm.read_text(encoding="utf-8").splitlines():
            fields = line.split(maxsplit=6)
            if len(fields) == 7 and fields[2] != "inter_segment_gap":
                sentences.add(re.sub(r" '", "'", fields[6]).strip())
    return sentences


def corpus_plan(
    num_train: int, num_heldout: int, voices_per_sentence: int, seed: int
) -> tuple[list[Utterance], list[Utterance]]:
    """Training and held-out utterances on disjoint sentences, none of which a committed sample speaks."""
    sentences = make_samples.english_sentences(
        num_train + num_heldout, seed=seed, skip=FIRST_PRETRAIN_SENTENCE
    )
    heldout_text, train_text = sentences[:num_heldout], sentences[num_heldout:]
    overlap = set(sentences) & sample_sentences()
    if overlap:
        raise RuntimeError(
            f"{len(overlap)} pretraining sentences are spoken in tests/samples "
            f"(e.g. {sorted(overlap)[0]!r}); "
            f"the samples must use sentences [0, {FIRST_PRETRAIN_SENTENCE}) of english_sentences()"
        )
    assert not set(heldout_text) & set(train_text), "held-out sentences leak into training"
    for sentence in sentences:
        if set(sentence) - set(CHARS):
            raise ValueError(f"sentence {sentence!r} has characters outside the CTC vocabulary {CHARS!r}")
    voices = voice_pool()
    rng = random.Random(seed)

    def speak(text: str) -> Utterance:
        return Utterance(text, rng.choice(voices), speed=rng.randint(120, 200), pitch=rng.randint(20, 80))

    train = [speak(text) for text in train_text for _ in range(voices_per_sentence)]
    heldout = [speak(text) for text in heldout_text]
    return train, heldout


class Corpus:
    """Synthesised utterances held in memory as int16 PCM, with their character labels."""

    def __init__(self, utterances: list[Utterance], cache_dir: Path, name: str) -> None:
        self.utterances = utterances
        key = hashlib.sha1(json.dumps([dataclasses.astuple(u) for u in utterances]).encode()).hexdigest()[:12]
        path = cache_dir / f"{name}-{key}.npz"
        if not path.exists():
            audio, offsets = self._synthesize(utterances, desc=f"synthesising {name}")
            cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, audio=audio, offsets=offsets)
            os.replace(tmp, path)
        with np.load(path) as data:
            self.audio, self.offsets = data["audio"], data["offsets"]
        self.lengths = np.diff(self.offsets)

    @staticmethod
    def _synthesize(utterances: list[Utterance], desc: str) -> tuple[np.ndarray, np.ndarray]:
        def speak(u: Utterance) -> np.ndarray:
            wav = make_samples.synthesize(u.text, u.voice, u.speed, u.pitch, sample_rate=SAMPLE_RATE)
            return (np.clip(wav, -1.0, 1.0) * 32767).astype(np.int16)

        with ThreadPoolExecutor(max_workers=2) as pool:
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
        return float(self.lengths.sum()) / SAMPLE_RATE / 3600


def encode_text(text: str) -> list[int]:
    return [CHARS.index(c) + 1 for c in text]


def greedy_decode(ids: list[int]) -> str:
    """Collapse repeats, then drop blanks."""
    out, previous = [], BLANK
    for i in ids:
        if i != previous and i != BLANK:
            out.append(CHARS[i - 1])
        previous = i
    return "".join(out)


def collate(
    waves: list[torch.Tensor], noise_rng: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded batch of per-utterance normalised waveforms (zero mean, unit variance) and its mask.

    With ``noise_rng``, half of the utterances get white noise at 10-40 dB SNR before normalisation.
    """
    lengths = torch.tensor([len(w) for w in waves])
    batch = torch.zeros(len(waves), int(lengths.max()))
    for row, wave in enumerate(waves):
        if noise_rng is not None and torch.rand((), generator=noise_rng) < 0.5:
            snr_db = 10 + 30 * torch.rand((), generator=noise_rng)
            noise = torch.randn(wave.shape, generator=noise_rng)
            wave = wave + noise * wave.std() * 10 ** (-snr_db / 20)
        batch[row, : len(wave)] = (wave - wave.mean()) / torch.sqrt(wave.var() + 1e-7)
    mask = torch.arange(batch.shape[1])[None, :] < lengths[:, None]
    return batch, mask


def epoch_batches(lengths: np.ndarray, max_batch_samples: int, seed: int, epoch: int) -> list[list[int]]:
    """Length-bucketed batches of at most ``max_batch_samples`` padded samples, shuffled per epoch."""
    rng = random.Random(seed * 10007 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches = []
    for start in range(0, len(order), 256):  # sort within chunks: little padding, still random
        chunk = sorted(order[start : start + 256], key=lambda i: lengths[i])
        batch: list[int] = []
        for i in chunk:
            if batch and (len(batch) + 1) * lengths[i] > max_batch_samples:
                batches.append(batch)
                batch = []
            batch.append(i)
        batches.append(batch)
    rng.shuffle(batches)
    return batches


@torch.no_grad()
def evaluate_cer(model: Wav2Vec2ForCTC, corpus: Corpus, max_batch_samples: int) -> float:
    """Greedy CTC character error rate of ``model`` on ``corpus``."""
    model.eval()
    hypotheses, references = [], []
    order = sorted(range(len(corpus)), key=lambda i: corpus.lengths[i])
    batch_size = max(1, max_batch_samples // int(corpus.lengths.max()))
    for start in range(0, len(order), batch_size):
        indices = order[start : start + batch_size]
        wav, mask = collate([corpus.wave(i) for i in indices])
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


def train(args: argparse.Namespace, train_set: Corpus, heldout: Corpus) -> tuple[Wav2Vec2ForCTC, list[dict]]:
    """CTC pretraining with checkpoint/resume in the cache folder; returns the model and its log."""
    torch.manual_seed(args.seed)
    model = Wav2Vec2ForCTC(tiny_config())
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, args.steps, args.warmup))
    checkpoint = args.cache / f"checkpoint-seed{args.seed}-steps{args.steps}.pt"
    step, log = 0, []
    if checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, log = state["step"], state["log"]
        print(f"resuming from {checkpoint} at step {step}")
    label_lists = [encode_text(u.text) for u in train_set.utterances]
    epoch, position = 0, 0
    batches = epoch_batches(train_set.lengths, args.batch_samples, args.seed, epoch)
    for _ in range(step):  # replay the deterministic batch order up to the resumed step
        position += 1
        if position == len(batches):
            epoch, position = epoch + 1, 0
            batches = epoch_batches(train_set.lengths, args.batch_samples, args.seed, epoch)
    running, started = None, time.time()
    progress = tqdm(total=args.steps, initial=step, desc="pretraining (CTC)")
    while step < args.steps:
        indices = batches[position]
        noise_rng = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        wav, mask = collate([train_set.wave(i) for i in indices], noise_rng)
        labels = torch.nn.utils.rnn.pad_sequence(
            [torch.tensor(label_lists[i]) for i in indices], batch_first=True, padding_value=-100
        )
        torch.manual_seed(args.seed + step)  # SpecAugment masks and dropout
        loss = model(wav, attention_mask=mask.long(), labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        scheduler.step()
        step += 1
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        progress.update()
        progress.set_postfix(loss=f"{running:.3f}", epoch=epoch)
        position += 1
        if position == len(batches):
            epoch, position = epoch + 1, 0
            batches = epoch_batches(train_set.lengths, args.batch_samples, args.seed, epoch)
        if step % args.eval_every == 0 or step == args.steps:
            cer = evaluate_cer(model, heldout, args.batch_samples)
            log.append({"step": step, "train_loss": round(running, 4), "heldout_cer": round(cer, 4),
                        "epoch": epoch, "minutes": round((time.time() - started) / 60, 2)})
            progress.write(json.dumps(log[-1]))
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "step": step, "log": log}
            torch.save(state, checkpoint.with_suffix(".tmp"))
            os.replace(checkpoint.with_suffix(".tmp"), checkpoint)
    progress.close()
    return model, log


def feature_extractor() -> Wav2Vec2FeatureExtractor:
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
    """Model card recording exactly how the weights were made."""
    cfg, last = f["config"], f["log"][-1]
    rows = [f"| {r['step']} | {r['epoch']} | {r['train_loss']:.3f} | {100 * r['heldout_cer']:.1f} % |"
            for r in f["log"]]
    architecture = [
        ("conv feature encoder", f"7 layers, {cfg['conv_dim'][0]} channels, kernels {cfg['conv_kernel']}, "
                                 f"strides {cfg['conv_stride']} (320 samples = 20 ms per frame)"),
        ("positional conv embedding",
         f"kernel {cfg['num_conv_pos_embeddings']}, {cfg['num_conv_pos_embedding_groups']} groups"),
        ("transformer", f"{cfg['num_hidden_layers']} pre-LN layers, hidden {cfg['hidden_size']}, "
                        f"{cfg['num_attention_heads']} heads, FFN {cfg['intermediate_size']}"),
        ("dropout", f"hidden {cfg['hidden_dropout']}, attention {cfg['attention_dropout']}, "
                    f"feat_proj {cfg['feat_proj_dropout']}, layerdrop {cfg['layerdrop']}"),
        ("SpecAugment", f"mask_time_prob {cfg['mask_time_prob']}, length {cfg['mask_time_length']} frames"),
        ("parameters", f"{f['params']:,} (`model.safetensors` {f['disk_bytes'] / 1e6:.2f} MB)"),
        ("CPU forward on 10 s of audio", f"{1000 * f['forward_10s']:.0f} ms ({f['threads']} threads)"),
    ]
    def paragraph(*parts: str, indent: str = "") -> str:
        return textwrap.fill(" ".join(parts), width=108, initial_indent=indent, subsequent_indent="  ")

    text = "\n\n".join([
        "# tiny-wav2vec2 (pretrained, for tests and the README demo)",
        paragraph(
            f"A {f['params'] / 1e6:.2f} M-parameter `Wav2Vec2Model` with the real wav2vec2 architecture,",
            "pretrained by supervised character CTC on synthetic",
            "English speech, so that sample runs start from",
            "pretrained weights (as CALD assumes) yet fine-tune",
            "in about a minute on two CPU cores. It only knows",
            "espeak-ng speech. Made by (deterministic; the",
            "synthetic corpus is built in the cache folder, not",
            "committed):",
        ),
        f"    {f['command']}",
        "## Architecture",
        paragraph(
            "`facebook/wav2vec2-large-lv60` style, shrunk: `feat_extract_norm=\"layer\"`,",
            "`do_stable_layer_norm=True`. This variant uses the",
            "attention mask, so a padded batch gives the same",
            "frames as its unpadded items; `preprocessor_config.json` has `do_normalize: true` and",
            "`return_attention_mask: true`.",
        ),
        "\n".join(["| part | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in architecture]]),
        "## Pretraining",
        "\n".join([
            paragraph(
                "Data: `english_sentences()` of `tools/make_samples.py`",
                "(sentences of the Python documentation),",
                f"pool positions [{f['skip']}, {f['skip'] + f['num_sentences']}), disjoint from positions",
                f"[0, {f['skip']}) reserved for the committed",
                "sample corpora and checked against every `*.stm`",
                f"under `tests/samples`. {f['num_heldout']} sentences are held out. Each of the other",
                f"{f['num_train_sentences']} is spoken",
                f"{f['voices_per_sentence']} times, each time by a random one",
                f"of {f['num_voices']} espeak-ng voices at a random speed (120-200 wpm) and pitch (20-80):",
                f"{f['train_utterances']} utterances,",
                f"{f['train_hours']:.2f} h at 16 kHz. Half of the training",
                "utterances get white noise at 10-40 dB SNR.",
                indent="- ",
            ),
            paragraph(
                "Inputs: per-utterance zero-mean / unit-variance",
                "waveforms (as `do_normalize`), right-padded,",
                "with the attention mask.",
                indent="- ",
            ),
            paragraph(
                "Objective: CTC over 28 characters (a-z, apostrophe,",
                "space) + blank through a linear head on the",
                "last hidden state; the head is not part of the saved model.",
                indent="- ",
            ),
            paragraph(
                "Optimiser: AdamW (betas 0.9/0.98, weight decay",
                f"0.01), peak LR {f['lr']}, {f['warmup']} warm-up",
                f"steps, cosine decay to 5 %, gradient clipping at 5; {f['steps']} steps of at most",
                f"{f['batch_samples'] / SAMPLE_RATE:.0f} s of padded audio, seed {f['seed']}. Wall time",
                f"{f['train_minutes']:.1f} min on {f['threads']} CPU threads shared with other jobs.",
                indent="- ",
            ),
        ]),
        "\n".join(["| step | epoch | train loss (EMA) | held-out CER (greedy)|", "|---|---|---|---|", *rows]),
        paragraph(
            f"Final: training CTC loss {last['train_loss']:.3f};",
            f"greedy CER {100 * last['heldout_cer']:.1f} %",
            f"on the {f['num_heldout']} held-out synthetic utterances (unseen sentences).",
        ),
    ]) + "\n"
    (out / "README.md").write_text(text, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="model folder to (re)write")
    parser.add_argument("--cache", type=Path,
                        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cald_brain"
                        / "tiny-wav2vec2", help="synthetic corpus and training checkpoints (not committed)")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--warmup", type=int, default=150)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--batch-samples", type=int, default=16 * SAMPLE_RATE, help="padded samples a batch")
    parser.add_argument("--num-train-sentences", type=int, default=1400)
    parser.add_argument("--num-heldout", type=int, default=100)
    parser.add_argument("--voices-per-sentence", type=int, default=2)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    train_plan, heldout_plan = corpus_plan(
        args.num_train_sentences, args.num_heldout, args.voices_per_sentence, args.seed
    )
    train_set = Corpus(train_plan, args.cache, "train")
    heldout = Corpus(heldout_plan, args.cache, "heldout")
    print(f"corpus: {len(train_set)} training utterances, {train_set.hours():.2f} h; {len(heldout)} held out")

    started = time.time()
    model, log = train(args, train_set, heldout)
    train_minutes = (time.time() - started) / 60

    if args.out.exists():
        shutil.rmtree(args.out)
    encoder = model.wav2vec2
    encoder.config.architectures = ["Wav2Vec2Model"]
    encoder.save_pretrained(args.out)
    feature_extractor().save_pretrained(args.out)
    verify(args.out)
    facts = {
        "command": "python tools/make_tiny_wav2vec2.py " + " ".join(sys.argv[1:]),
        "config": encoder.config.to_dict(),
        "params": sum(p.numel() for p in encoder.parameters()),
        "disk_bytes": (args.out / "model.safetensors").stat().st_size,
        "forward_10s": forward_seconds(encoder),
        "threads": args.threads,
        "skip": FIRST_PRETRAIN_SENTENCE,
        "num_sentences": args.num_train_sentences + args.num_heldout,
        "num_train_sentences": args.num_train_sentences,
        "num_heldout": args.num_heldout,
        "voices_per_sentence": args.voices_per_sentence,
        "num_voices": len(voice_pool()),
        "train_utterances": len(train_set),
        "train_hours": train_set.hours(),
        "lr": args.lr, "warmup": args.warmup, "steps": args.steps, "batch_samples": args.batch_samples,
        "seed": args.seed, "train_minutes": train_minutes, "log": log,
    }
    write_readme(args.out, facts)
    print(json.dumps({k: v for k, v in facts.items() if k not in ("config", "log")}, indent=1))
    print(f"final held-out CER {100 * log[-1]['heldout_cer']:.1f} %, written to {args.out}")


if __name__ == "__main__":
    main()
