"""Build the tiny synthetic speech corpora committed under ``tests/samples/``: TED-LIUM 3, SLURP, VoxCeleb1.

Real corpora cannot ship with the repository, so tests and ``--debug`` recipe runs use miniature copies that
keep the real on-disk layout and file-format quirks, filled with speech synthesised offline by espeak-ng from
English sentences harvested from Python's own documentation (``common.py``). Everything is seeded: running the
same command twice gives byte-identical files (for the same Python and espeak-ng versions, which fix the text
and audio). Each corpus's README is ``templates/<corpus>_README.txt``, filled in.

Usage::

    python tools/samples/speech_corpora.py tedlium --out tests/samples/TEDLIUM_release-3
    python tools/samples/speech_corpora.py slurp --out tests/samples/SLURP
    python tools/samples/speech_corpora.py voxceleb1 --out tests/samples/VoxCeleb1
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from cald_brain.scripts import load_script

common = load_script(Path(__file__).with_name("common.py"), "tools_samples_common")
SAMPLE_RATE = common.SAMPLE_RATE
Voice = common.Voice
SPEAKER_VOICES = common.SPEAKER_VOICES

# Subcommand name -> builder(out_dir); each corpus section below registers its own.
BUILDERS: dict[str, Callable[[Path], None]] = {}


# ----------------------------------------------------------------------------------------------------------
# TED-LIUM release 3
# ----------------------------------------------------------------------------------------------------------

FRAME = SAMPLE_RATE // 100  # STM times have two decimals, so every boundary sits on this 10 ms grid
TEDLIUM_SEED = 51  # openslr id of TED-LIUM 3
TEDLIUM_SENTENCE_RANGE = (0, 300)  # english_sentences positions reserved for this sample
TEDLIUM_MAX_WORDS = 10  # short sentences keep the tiny sample learnable
README_MARKER = "Synthetic miniature of TED-LIUM release 3"


@dataclass(frozen=True)
class TalkSpec:
    """One synthetic talk: its speaker, its split in each repartition and how many sentences it holds."""

    name: str
    voice: Voice
    legacy: str
    adaptation: str
    sentences: int


def _talk(voice_index: int, year: str, legacy: str, adaptation: str, sentences: int) -> TalkSpec:
    voice = SPEAKER_VOICES[voice_index]
    return TalkSpec(f"Synth{voice.name}_{year}", voice, legacy, adaptation, sentences)


# Both repartitions draw on the same talks (as in the real release, where every talk is also in data/), but
# assign them differently: the speaker-adaptation dev/test speakers are unseen in its train split.
TEDLIUM_TALKS: tuple[TalkSpec, ...] = (
    _talk(0, "2010X", "train", "train", 4),
    _talk(1, "2011", "train", "train", 4),
    _talk(2, "2012X", "train", "train", 4),
    _talk(3, "2013", "train", "dev", 4),
    _talk(4, "2014X", "train", "test", 4),
    _talk(5, "2009", "dev", "train", 2),
    _talk(6, "2010", "dev", "dev", 2),
    _talk(7, "2011X", "test", "train", 2),
    _talk(8, "2012", "test", "test", 2),
)


@dataclass
class _Segment:
    """A transcribed stretch of a talk: what is spoken and how the STM writes it."""

    spoken: str
    transcript: str
    noise_before: bool = False
    silence_after: bool = False
    speed: int | None = None


def _split_contractions(words: list[str]) -> list[str]:
    """TED-LIUM tokenisation: "it's" -> "it 's", "don't" -> "don 't"."""
    out = []
    for word in words:
        cut = word.find("'")
        out.extend([word[:cut], word[cut:]] if cut > 0 else [word])
    return out


def _tedlium_segments(talk_index: int, sentences: list[str], fragment: str) -> list[_Segment]:
    """Turn a talk's sentences into segments carrying the real transcripts' quirks, by a fixed plan.

    Every quirk of the real STM files appears somewhere in the sample: split contractions, ``{NOISE}`` (with
    a noise burst in the audio), ``(2)`` pronunciation variants, ``<sil>`` (with a pause), ``<unk>`` (the
    word is spoken but not transcribed) and segments too short to train on (one word, or two words < 1 s).
    """
    segments = []
    for u, sentence in enumerate(sentences):
        words = sentence.split()
        k = talk_index + u
        if k % 3 == 0:
            for i, word in enumerate(words):
                if word in ("the", "a", "to", "of"):
                    words[i] = f"{word}(2)"
                    break
        if u == 1 and talk_index % 4 == 0:
            longest = max(range(len(words)), key=lambda i: len(words[i]))
            words[longest] = "<unk>"
        words = _split_contractions(words)
        segment = _Segment(sentence, "", noise_before=k % 4 == 1, silence_after=k % 5 == 2)
        words = (["{NOISE}"] if segment.noise_before else []) + words
        segment.transcript = " ".join(words + (["<sil>"] if segment.silence_after else []))
        segments.append(segment)
    if talk_index % 2 == 0:
        word = fragment.split()[0]
        segments.insert(1, _Segment(word, word))
    elif talk_index % 4 == 1:
        words = " ".join(fragment.split()[:2])
        segments.insert(1, _Segment(words, words, speed=260))
    return segments


def _render_talk(spec: TalkSpec, segments: list[_Segment], seed: int) -> tuple[np.ndarray, list[str]]:
    """Synthesize a talk and its STM lines. Times are counted in 10 ms frames so the STM is exact."""
    rng = np.random.default_rng(seed)
    gain = rng.uniform(0.35, 0.55)
    pieces: list[np.ndarray] = []
    lines: list[str] = []
    label = f"<o,f0,{spec.voice.gender}>"

    def gap_line(start: int, end: int) -> str:
        times = f"{start / 100:.2f} {end / 100:.2f}"
        return f"{spec.name} 1 inter_segment_gap {times} <o,,unknown> ignore_time_segment_in_scoring"

    def add(audio: np.ndarray) -> int:
        """Append audio padded to whole frames; return its length in frames."""
        frames = -(-len(audio) // FRAME)
        pieces.append(np.pad(audio, (0, frames * FRAME - len(audio))))
        return frames

    def noise(frames: int, level: float) -> np.ndarray:
        envelope = np.hanning(frames * FRAME)
        return (level * envelope * rng.standard_normal(frames * FRAME)).astype(np.float32)

    cursor = add(noise(int(rng.integers(50, 70)), 0.05))  # applause before the talk starts
    lines.append(gap_line(0, cursor))
    for segment in segments:
        cursor += add(np.zeros(int(rng.integers(25, 45)) * FRAME, np.float32))
        start = cursor
        if segment.noise_before:
            cursor += add(noise(20, 0.08)) + add(np.zeros(5 * FRAME, np.float32))
        speech = common.trim(
            common.synthesize(
                segment.spoken,
                spec.voice.voice,
                segment.speed or spec.voice.speed,
                spec.voice.pitch,
                SAMPLE_RATE,
            )
        )
        cursor += add(gain * speech / np.abs(speech).max())
        cursor += add(np.zeros((35 if segment.silence_after else 5) * FRAME, np.float32))
        lines.append(
            f"{spec.name} 1 {spec.name} {start / 100:.2f} {cursor / 100:.2f} {label} {segment.transcript}"
        )
    end = cursor + add(noise(40, 0.03))
    lines.append(gap_line(cursor, end))
    audio = np.concatenate(pieces)
    audio += 0.002 * rng.standard_normal(len(audio)).astype(np.float32)  # room noise floor
    return np.clip(audio, -1.0, 1.0), lines


def _tedlium_sentences() -> list[list[str]]:
    """Sentences of each talk, dealt round-robin so the rarer contraction sentences spread over talks."""
    first, stop = TEDLIUM_SENTENCE_RANGE
    pool = [
        s
        for s in common.english_sentences(stop - first, seed=TEDLIUM_SEED, skip=first)
        if len(s.split()) <= TEDLIUM_MAX_WORDS
    ]
    pool.sort(key=lambda s: "'" not in s)  # stable: contractions first, otherwise seeded order
    per_talk: list[list[str]] = [[] for _ in TEDLIUM_TALKS]
    while any(len(got) < spec.sentences for got, spec in zip(per_talk, TEDLIUM_TALKS, strict=True)):
        for got, spec in zip(per_talk, TEDLIUM_TALKS, strict=True):
            if len(got) < spec.sentences:
                got.append(pool.pop(0))
    return per_talk + [pool[: len(TEDLIUM_TALKS)]]  # last list: fragments for too-short segments


def _tedlium_readme(stats: dict[str, str]) -> str:
    talks = "\n".join(
        f"  {t.name:22s} voice {t.voice.voice:20s} legacy/{t.legacy:5s} speaker-adaptation/{t.adaptation}"
        for t in TEDLIUM_TALKS
    )
    summary = "\n".join(f"  {key}: {value}" for key, value in stats.items())
    first, stop = TEDLIUM_SENTENCE_RANGE
    return common.render(
        "tedlium_README.txt",
        marker=README_MARKER,
        first=first,
        last=stop - 1,
        max_words=TEDLIUM_MAX_WORDS,
        talks=talks,
        summary=summary,
    )


def _symlink(target: Path, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(Path("..", "..", "..", *target.parts[-3:]))


def _prepare_out_dir(out: Path, marker: str = README_MARKER) -> None:
    """Empty ``out`` for a rebuild, refusing to delete anything that is not a sample made here (its README
    starts with ``marker``)."""
    if out.exists() and any(out.iterdir()):
        readme = out / "README"
        if not readme.is_file() or not readme.read_text().startswith(marker):
            raise FileExistsError(
                f"{out} exists and is not a sample made by this tool; remove it or pick --out"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def build_tedlium(out: Path) -> None:
    """Write the mini TED-LIUM 3 release into ``out`` (typically tests/samples/TEDLIUM_release-3)."""
    _prepare_out_dir(out)
    *talk_sentences, fragments = _tedlium_sentences()
    totals: dict[str, list[float]] = {}  # "<repartition>/<split>" -> [talks, seconds, speech segments]
    for index, spec in enumerate(TEDLIUM_TALKS):
        segments = _tedlium_segments(index, talk_sentences[index], fragments[index])
        audio, lines = _render_talk(spec, segments, seed=TEDLIUM_SEED * 1000 + index)
        sph, stm = out / "data" / "sph" / f"{spec.name}.sph", out / "data" / "stm" / f"{spec.name}.stm"
        sph.parent.mkdir(parents=True, exist_ok=True)
        stm.parent.mkdir(parents=True, exist_ok=True)
        sf.write(sph, audio, SAMPLE_RATE, format="NIST", subtype="PCM_16")
        stm.write_text("\n".join(lines) + "\n")
        for key in ("data", f"legacy/{spec.legacy}", f"speaker-adaptation/{spec.adaptation}"):
            if key != "data":
                for path in (sph, stm):
                    _symlink(path, out / key / path.parent.name / path.name)
            total = totals.setdefault(key, [0, 0.0, 0])
            total[0] += 1
            total[1] += len(audio) / SAMPLE_RATE
            total[2] += len(segments)
    stats = {
        key: f"{talks} talks, {seconds:.1f} s of audio, {segments} speech segments"
        for key, (talks, seconds, segments) in sorted(totals.items())
    }
    (out / "README").write_text(_tedlium_readme(stats))
    print((out / "README").read_text())


BUILDERS["tedlium"] = build_tedlium


# ----------------------------------------------------------------------------------------------------------
# SLURP (spoken language understanding: intent classification)
# ----------------------------------------------------------------------------------------------------------

SLURP_SEED = 2020  # year of the SLURP release
SLURP_README_MARKER = "Synthetic miniature of SLURP"
SLURP_TIMESTAMP0 = 1490000000  # real file names are audio-<unix time>[-headset].flac
SLURP_SPEEDUP = 25  # words per minute over each voice's speed: commands are short, the sample stays small


@dataclass(frozen=True)
class IntentSpec:
    """One intent of the mini SLURP: its scenario and action, the jsonl's own `intent` field (which is not
    always scenario_action in the real corpus) and command templates whose {slot} names the entity type."""

    scenario: str
    action: str
    intent_field: str
    templates: tuple[str, ...]


# A handful of intents with distinct wording, so that a tiny model can learn them from a few recordings.
SLURP_INTENTS: tuple[IntentSpec, ...] = (
    IntentSpec(
        "iot",
        "hue_lightup",
        "hue_lightup",  # as slurp_id 962 of the real test set: the field lacks the scenario
        ("turn the lights up in the {house_place}", "make the {house_place} brighter"),
    ),
    IntentSpec("alarm", "set", "alarm_set", ("set an alarm for {time}", "wake me up at {time}")),
    IntentSpec("weather", "query", "weather_query", ("what is the weather {date}", "will it rain {date}")),
    IntentSpec(
        "play", "music", "play_music", ("play some {music_genre} music", "put on {music_genre} songs")
    ),
    IntentSpec(
        "calendar",
        "set",
        "calendar_set",
        ("remind me about the {event_name} {date}", "add the {event_name} to my calendar"),
    ),
)
SLURP_SLOTS: dict[str, tuple[str, ...]] = {
    "house_place": ("kitchen", "bedroom", "living room", "hallway"),
    "time": ("seven am", "six thirty", "noon", "nine pm"),
    "date": ("today", "tomorrow", "on friday", "this weekend"),
    "music_genre": ("jazz", "rock", "classical", "country"),
    "event_name": ("dentist", "team meeting", "birthday party", "yoga class"),
}
# (jsonl file, records per intent, recordings per record: 2 = headset + far-field, 1 = alternating)
SLURP_SPLITS: tuple[tuple[str, int, int], ...] = (
    ("train.jsonl", 3, 2),
    ("train_synthetic.jsonl", 1, 1),
    ("devel.jsonl", 2, 1),
    ("test.jsonl", 2, 1),
)


def _slurp_command(spec: IntentSpec, rng: random.Random) -> tuple[str, str, list[str], list[dict]]:
    """A command of intent `spec`: sentence, annotated sentence, tokens and entity spans."""
    template = rng.choice(spec.templates)
    words: list[str] = []
    annotated: list[str] = []
    entities: list[dict] = []
    for piece in template.split():
        match = re.fullmatch(r"\{(\w+)\}", piece)
        if match is None:
            words.append(piece)
            annotated.append(piece)
            continue
        slot = match.group(1)
        value = rng.choice(SLURP_SLOTS[slot]).split()
        entities.append({"span": list(range(len(words), len(words) + len(value))), "type": slot})
        words.extend(value)
        annotated.append(f"[{slot} : {' '.join(value)}]")
    return " ".join(words), " ".join(annotated), words, entities


def _slurp_audio(text: str, voice: Voice, far_field: bool, rng: np.random.Generator) -> np.ndarray:
    """A headset recording (close, quiet floor) or a far-field one (fainter, an echo, more noise)."""
    speech = common.trim(
        common.synthesize(text, voice.voice, voice.speed + SLURP_SPEEDUP, voice.pitch, SAMPLE_RATE)
    )
    speech = speech / np.abs(speech).max()
    pad = np.zeros(SAMPLE_RATE // 10, np.float32)
    if far_field:
        delay = SAMPLE_RATE // 25
        echo = np.concatenate([np.zeros(delay, np.float32), speech[:-delay]])
        audio, floor = 0.2 * (speech + 0.4 * echo), 0.01
    else:
        audio, floor = 0.5 * speech, 0.002
    audio = np.concatenate([pad, audio, pad])
    audio += floor * rng.standard_normal(len(audio)).astype(np.float32)
    return np.clip(audio, -1.0, 1.0)


def _slurp_readme(stats: list[str]) -> str:
    intents = "\n".join(
        f"  {s.scenario + '_' + s.action:16s} (jsonl field {s.intent_field}): {' | '.join(s.templates)}"
        for s in SLURP_INTENTS
    )
    summary = "\n".join(f"  {line}" for line in stats)
    return common.render(
        "slurp_README.txt", marker=SLURP_README_MARKER, seed=SLURP_SEED, intents=intents, summary=summary
    )


@dataclass
class _SlurpCursor:
    """What runs on through the whole mini SLURP: the random draws, file time stamps, ids, next speaker."""

    rng: random.Random
    noise_rng: np.random.Generator
    timestamp: int = SLURP_TIMESTAMP0
    slurp_id: int = 1000
    voice_index: int = 0


def _slurp_recordings(
    cursor: _SlurpCursor, sentence: str, audio_dir: Path, k: int, count: int, synthetic: bool
) -> list[dict]:
    """Write ``count`` recordings of ``sentence`` (record ``k`` of its intent) and return their jsonl entries.

    Two recordings a record: headset then far field; one: alternating by record. Synthetic ones are clean.
    """
    recordings = []
    for r in range(count):
        cursor.timestamp += 37 + cursor.rng.randrange(500)
        far_field = synthetic or (r == 1 if count == 2 else k % 2 == 1)
        name = f"audio-{cursor.timestamp}{'' if far_field else '-headset'}.flac"
        voice = SPEAKER_VOICES[cursor.voice_index % len(SPEAKER_VOICES)]
        cursor.voice_index += 1
        audio = _slurp_audio(sentence, voice, far_field and not synthetic, cursor.noise_rng)
        sf.write(audio_dir / name, audio, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
        wer = 0.0 if r == 0 else round(cursor.rng.uniform(0.0, 0.3), 2)
        recordings.append({"file": name, "wer": wer, "ent_wer": None, "status": "correct"})
    return recordings


def _slurp_record(
    cursor: _SlurpCursor, spec: IntentSpec, jsonl: str, k: int, count: int, audio_dir: Path
) -> dict:
    """Record ``k`` of intent ``spec`` in split ``jsonl``; its ``count`` recordings go to ``audio_dir``."""
    sentence, annotated, words, entities = _slurp_command(spec, cursor.rng)
    cursor.slurp_id += 1 + cursor.rng.randrange(5)
    slurp_id = cursor.slurp_id
    if jsonl == "test.jsonl" and spec.scenario == "iot" and k == 0:
        slurp_id, sentence = 962, "increase the brightness of the lights"
        annotated, words, entities = sentence, sentence.split(), []
    synthetic = jsonl == "train_synthetic.jsonl"
    return {
        "slurp_id": slurp_id,
        "sentence": sentence,
        "sentence_annotation": annotated,
        "intent": spec.intent_field,
        "action": spec.action,
        "tokens": [{"surface": w, "id": i, "lemma": w, "pos": "NN"} for i, w in enumerate(words)],
        "scenario": spec.scenario,
        "recordings": _slurp_recordings(cursor, sentence, audio_dir, k, count, synthetic),
        "entities": entities,
    }


def build_slurp(out: Path) -> None:
    """Write the mini SLURP into ``out`` (typically tests/samples/SLURP)."""
    _prepare_out_dir(out, SLURP_README_MARKER)
    cursor = _SlurpCursor(random.Random(SLURP_SEED), np.random.default_rng(SLURP_SEED))
    meta_dir = out / "slurp" / "dataset" / "slurp"
    meta_dir.mkdir(parents=True)
    stats = []
    for jsonl, per_intent, count in SLURP_SPLITS:
        audio_dir = out / ("slurp_synth" if jsonl == "train_synthetic.jsonl" else "slurp_real")
        audio_dir.mkdir(exist_ok=True)
        records = [
            _slurp_record(cursor, spec, jsonl, k, count, audio_dir)
            for k in range(per_intent)
            for spec in SLURP_INTENTS
        ]
        files = [audio_dir / r["file"] for record in records for r in record["recordings"]]
        seconds = sum(sf.info(f).frames for f in files) / SAMPLE_RATE
        if jsonl == "train.jsonl":
            records[0]["recordings"].append(
                dict(records[0]["recordings"][0])
            )  # listed twice, as in the corpus
        (meta_dir / jsonl).write_text("\n".join(json.dumps(record) for record in records) + "\n")
        stats.append(f"{jsonl}: {len(records)} records, {len(files)} recordings, {seconds:.1f} s")
    (out / "README").write_text(_slurp_readme(stats))
    print((out / "README").read_text())


BUILDERS["slurp"] = build_slurp


# ----------------------------------------------------------------------------------------------------------
# VoxCeleb1 (speaker identification)
# ----------------------------------------------------------------------------------------------------------

VOXCELEB_SEED = 1251  # speakers of VoxCeleb1
VOXCELEB_README_MARKER = "Synthetic miniature of VoxCeleb1"
VOXCELEB_SENTENCE_RANGE = (300, 600)  # english_sentences positions reserved for this sample
VOXCELEB_MAX_WORDS = 5
# Speakers far apart in voice and pitch, so that a tiny model tells them apart from four utterances each.
VOXCELEB_SPEAKERS: tuple[tuple[str, Voice], ...] = (
    ("id10001", Voice("Anton", "en-us+m3", "male", pitch=25, speed=150)),
    ("id10002", Voice("Bella", "en+f2", "female", pitch=80, speed=150)),
    ("id10003", Voice("Callum", "en-gb-scotland", "male", pitch=50, speed=140)),
    ("id10004", Voice("Dalia", "en-029+f5", "female", pitch=60, speed=165)),
    ("id10005", Voice("Emil", "en-gb-x-rp+m1", "male", pitch=40, speed=175)),
)
VOXCELEB_VIDEOS, VOXCELEB_UTTS_PER_VIDEO = 2, 4
# Split of each speaker's utterances by (video, utterance) position: 1 train, 2 dev, 3 test (iden_split.txt).
VOXCELEB_SPLIT = {(0, 1): 1, (0, 2): 1, (0, 3): 2, (0, 4): 3, (1, 1): 1, (1, 2): 1, (1, 3): 2, (1, 4): 3}
VOXCELEB_UNLISTED = ("id10005", 1)  # (speaker, video): one more file on disk than iden_split.txt lists


def _video_id(rng: random.Random) -> str:
    """An 11-character YouTube-style id."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
    while True:
        video = "".join(rng.choice(alphabet) for _ in range(11))
        if video[0] != "-":  # keep paths safe for command lines
            return video


def _voxceleb1_readme(split_lines: list[str], seconds: float) -> str:
    counts = {s: sum(line.startswith(f"{s} ") for line in split_lines) for s in (1, 2, 3)}
    speakers = "\n".join(
        f"  {spk}: {v.voice} pitch {v.pitch} speed {v.speed}" for spk, v in VOXCELEB_SPEAKERS
    )
    first, stop = VOXCELEB_SENTENCE_RANGE
    return common.render(
        "voxceleb1_README.txt",
        marker=VOXCELEB_README_MARKER,
        unlisted=VOXCELEB_UNLISTED[0],
        first=first,
        last=stop - 1,
        max_words=VOXCELEB_MAX_WORDS,
        videos=VOXCELEB_VIDEOS,
        speakers=speakers,
        train=counts[1],
        dev=counts[2],
        test=counts[3],
        seconds=seconds,
    )


def build_voxceleb1(out: Path) -> None:
    """Write the mini VoxCeleb1 (wav/ tree of the dev and test archives merged, iden_split.txt) into
    ``out`` (typically tests/samples/VoxCeleb1)."""
    _prepare_out_dir(out, VOXCELEB_README_MARKER)
    rng = random.Random(VOXCELEB_SEED)
    noise_rng = np.random.default_rng(VOXCELEB_SEED)
    first, stop = VOXCELEB_SENTENCE_RANGE
    pool = [
        s
        for s in common.english_sentences(stop - first, seed=VOXCELEB_SEED, skip=first)
        if len(s.split()) <= VOXCELEB_MAX_WORDS
    ]
    split_lines, seconds = [], 0.0
    for spk_id, voice in VOXCELEB_SPEAKERS:
        for v in range(VOXCELEB_VIDEOS):
            video = _video_id(rng)
            gain, floor = rng.uniform(0.3, 0.6), rng.uniform(0.002, 0.01)  # one channel per video
            last = VOXCELEB_UTTS_PER_VIDEO + ((spk_id, v) == VOXCELEB_UNLISTED)
            for u in range(1, last + 1):
                speech = common.trim(
                    common.synthesize(pool.pop(0), voice.voice, voice.speed, voice.pitch, SAMPLE_RATE)
                )
                pad = np.zeros(SAMPLE_RATE // 10, np.float32)
                audio = np.concatenate([pad, gain * speech / np.abs(speech).max(), pad])
                audio += floor * noise_rng.standard_normal(len(audio)).astype(np.float32)
                relative = f"{spk_id}/{video}/{u:05d}.wav"
                path = out / "wav" / relative
                path.parent.mkdir(parents=True, exist_ok=True)
                sf.write(path, np.clip(audio, -1.0, 1.0), SAMPLE_RATE, subtype="PCM_16")
                seconds += len(audio) / SAMPLE_RATE
                if (v, u) in VOXCELEB_SPLIT:
                    split_lines.append(f"{VOXCELEB_SPLIT[(v, u)]} {relative}")
    (out / "iden_split.txt").write_text("\n".join(sorted(split_lines, key=lambda x: x.split()[1])) + "\n")
    (out / "README").write_text(_voxceleb1_readme(split_lines, seconds))
    print((out / "README").read_text())


BUILDERS["voxceleb1"] = build_voxceleb1


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("corpus", choices=sorted(BUILDERS))
    parser.add_argument("--out", type=Path, required=True, help="output folder (replaced if it is a sample)")
    args = parser.parse_args()
    BUILDERS[args.corpus](args.out)


if __name__ == "__main__":
    main()
