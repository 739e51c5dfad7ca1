"""Data helpers shared by the recipes."""

from cald_brain.data.audio import AudioFileError, AudioInfo, audio_info, audio_pipeline, read_segment
from cald_brain.data.sampling import DurationBatchSampler

__all__ = [
    "AudioFileError",
    "AudioInfo",
    "DurationBatchSampler",
    "audio_info",
    "audio_pipeline",
    "read_segment",
]
