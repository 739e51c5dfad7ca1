"""Audio reading shared by the speech recipes.

Manifests point into long recordings by time (``wav, start, stop`` in seconds, e.g. one TED talk per SPH
file), so recipes read exact segments straight from the original files instead of cutting copies. Every
failure names the file and says what to fix: a bad file deep inside an epoch is otherwise hard to find.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch


class AudioFileError(RuntimeError):
    """An audio file is missing, unreadable, or does not match what the recipe expects."""


@dataclass(frozen=True)
class AudioInfo:
    """What the header of an audio file says."""

    sample_rate: int
    channels: int
    frames: int

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate


def audio_info(path: str | Path) -> AudioInfo:
    """Read an audio file's header; a missing or unreadable file raises an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Audio file {path} does not exist. Check data_folder (the manifest's $data_root) and that the "
            "corpus is fully extracted."
        )
    try:
        info = sf.info(str(path))
    except (sf.SoundFileError, RuntimeError) as err:
        raise AudioFileError(
            f"Cannot read audio file {path} ({err}). It is corrupt, truncated or not a format soundfile "
            "reads (wav/flac/sph/...): re-extract or re-download it."
        ) from err
    return AudioInfo(info.samplerate, info.channels, info.frames)


def listed_audio_info(path: str | Path, sample_rate: int, corpus: str, listed_at: str) -> AudioInfo:
    """The header of an audio file a data preparation lists (at `listed_at`, e.g. "split.txt:12"), checked
    as training will read it: `sample_rate` Hz, mono, and at least one sample. A file that fails would
    otherwise pass the preparation and stop training mid-epoch at the batch holding it."""
    info = audio_info(path)
    if info.sample_rate != sample_rate:
        raise AudioFileError(
            f"{path} (listed at {listed_at}) is sampled at {info.sample_rate} Hz; {corpus} audio is "
            f"{sample_rate} Hz: resample it (e.g. `sox in out rate {sample_rate}`) or re-extract the corpus"
        )
    if info.channels != 1:
        raise AudioFileError(
            f"{path} (listed at {listed_at}) has {info.channels} channels; {corpus} audio is mono: downmix "
            "it or re-extract the corpus"
        )
    if info.frames == 0:
        raise AudioFileError(
            f"{path} (listed at {listed_at}) holds no audio: its header is valid but it has 0 samples (an "
            "interrupted copy or download): re-extract or re-download it, or remove its line from "
            f"{listed_at.rsplit(':', 1)[0]}"
        )
    return info


_SAMPLE_BYTES = {"PCM_U8": 1, "PCM_16": 2, "PCM_24": 3, "PCM_32": 4, "FLOAT": 4, "DOUBLE": 8}


def header_frames(path: str | Path) -> int | None:
    """The frame count an audio file's header announces (NIST SPHERE ``sample_count``, or the size of a WAV
    ``data`` chunk); None for other formats or an unreadable header. soundfile reports the frames actually
    present, so comparing the two detects a truncated file."""
    with open(path, "rb") as handle:
        head = handle.read(4096)
    if head.startswith(b"NIST_1A"):
        fields = dict(re.findall(rb"^(\w+) -\w+ (\S+)$", head.split(b"end_head")[0], flags=re.M))
        try:
            return int(fields[b"sample_count"])
        except (KeyError, ValueError):
            return None
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        info = sf.info(str(path))
        width = _SAMPLE_BYTES.get(info.subtype)
        offset = 12
        while width and offset + 8 <= len(head):
            chunk, size = head[offset : offset + 4], int.from_bytes(head[offset + 4 : offset + 8], "little")
            if chunk == b"data":
                return size // (width * info.channels)
            offset += 8 + size + size % 2
    return None


def check_not_truncated(path: str | Path, info: AudioInfo) -> None:
    """Raise AudioFileError if the file holds fewer frames than its header announces."""
    announced = header_frames(path)
    if announced is not None and info.frames < announced:
        raise AudioFileError(
            f"{path} is truncated: its header announces {announced} frames "
            f"({announced / info.sample_rate:.2f} s) but only {info.frames} "
            f"({info.duration:.2f} s) are in the file. The file is damaged (an interrupted copy or "
            "download): re-extract or re-download it."
        )


def read_segment(
    path: str | Path, start: float | None = None, stop: float | None = None, sample_rate: int = 16000
) -> torch.Tensor:
    """Read ``[start, stop)`` seconds of a mono file (the whole file by default) as a float32 1-D tensor.

    Only the requested frames are decoded. The file must already be at ``sample_rate`` Hz: resampling on the
    fly would hide a corpus that was prepared with the wrong rate.
    """
    path = Path(path)
    info = audio_info(path)
    if info.sample_rate != sample_rate:
        raise AudioFileError(
            f"{path} is sampled at {info.sample_rate} Hz but {sample_rate} Hz is expected: resample the "
            f"corpus (e.g. `sox in out rate {sample_rate}`) or set the recipe's sample_rate."
        )
    if info.channels != 1:
        raise AudioFileError(
            f"{path} has {info.channels} channels; recipes expect mono audio, downmix it first."
        )
    first = 0 if start is None else round(start * sample_rate)
    last = info.frames if stop is None else round(stop * sample_rate)
    if not 0 <= first < last <= info.frames:
        check_not_truncated(path, info)
        raise AudioFileError(
            f"Segment [{start}, {stop}] s is outside {path}, which lasts {info.duration:.3f} s: the manifest "
            "does not match this file (was the file replaced after the data preparation?); prepare the data "
            "again into a fresh save folder."
        )
    try:
        audio = sf.read(str(path), start=first, stop=last, dtype="float32", always_2d=False)[0]
    except (sf.SoundFileError, RuntimeError) as err:
        raise AudioFileError(f"Cannot decode {path} ({err}): the file is corrupt; re-extract it.") from err
    if len(audio) != last - first:
        raise AudioFileError(
            f"{path} is truncated: its header announces {info.frames} frames but frames {first}..{last} "
            f"gave only {len(audio)}; re-extract or re-download it."
        )
    return torch.from_numpy(np.ascontiguousarray(audio))


def _seconds(value: str | float | None) -> float | None:
    """A CSV time field: empty means "not set"."""
    if value is None or value == "":
        return None
    return float(value)


def audio_pipeline(sample_rate: int = 16000, segmented: bool = True) -> Callable:
    """A SpeechBrain dynamic item providing ``"sig"``, for ``DynamicItemDataset.add_dynamic_item``.

    With ``segmented=True`` it takes the manifest's ``"wav", "start", "stop"`` columns (seconds, as written
    by the prepare scripts); otherwise it takes ``"wav"`` alone and reads whole files.
    """
    from speechbrain.utils.data_pipeline import provides, takes

    if segmented:

        @takes("wav", "start", "stop")
        @provides("sig")
        def read_sig(wav: str, start: str | float | None, stop: str | float | None) -> torch.Tensor:
            return read_segment(wav, _seconds(start), _seconds(stop), sample_rate)

    else:

        @takes("wav")
        @provides("sig")
        def read_sig(wav: str) -> torch.Tensor:
            return read_segment(wav, sample_rate=sample_rate)

    return read_sig


def read_audio(path: str | Path, sample_rate: int) -> torch.Tensor:
    """A whole audio file in any format soundfile reads, mixed down to mono (channel mean) and resampled to
    ``sample_rate`` (torchaudio's band-limited resampling), as a float32 1-D tensor; for inference on files
    as users have them. A missing or unreadable file raises an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file {path} does not exist")
    info = audio_info(path)
    try:
        audio = sf.read(str(path), dtype="float32", always_2d=True)[0]
    except (sf.SoundFileError, RuntimeError) as err:
        raise AudioFileError(f"Cannot decode {path} ({err}): the file is corrupt.") from err
    if len(audio) == 0:
        raise AudioFileError(f"{path} holds no audio (0 frames).")
    wav = torch.from_numpy(np.ascontiguousarray(audio)).mean(dim=1)
    if info.sample_rate != sample_rate:
        import torchaudio.functional

        wav = torchaudio.functional.resample(wav, info.sample_rate, sample_rate)
    return wav
