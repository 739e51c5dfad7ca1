"""Data helpers shared by the recipes."""

from cald_brain.data.audio import AudioFileError, AudioInfo, audio_info, audio_pipeline, read_segment

__all__ = ["AudioFileError", "AudioInfo", "audio_info", "audio_pipeline", "read_segment"]
