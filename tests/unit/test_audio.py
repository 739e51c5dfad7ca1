"""cald_brain.data.audio: exact segment reads from long files, and errors that name the file."""

import re

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import TEDLIUM_SAMPLE

from cald_brain.data.audio import AudioFileError, audio_info, audio_pipeline, read_segment

TALK = TEDLIUM_SAMPLE / "data" / "sph" / "SynthAlice_2010X.sph"


def _noise(seconds: float, sample_rate: int = 16000, channels: int = 1) -> np.ndarray:
    rng = np.random.default_rng(0)
    shape = (round(seconds * sample_rate), channels) if channels > 1 else (round(seconds * sample_rate),)
    return (0.1 * rng.standard_normal(shape)).astype(np.float32)


def test_whole_file_matches_soundfile():
    expected, rate = sf.read(TALK, dtype="float32")
    whole = read_segment(TALK)
    assert rate == 16000 and whole.dtype == torch.float32 and whole.ndim == 1
    assert torch.equal(whole, torch.from_numpy(expected))


@pytest.mark.parametrize(("start", "stop"), [(0.75, 3.88), (0.0, 0.5), (11.46, None), (None, 1.01)])
def test_segment_is_the_slice_of_the_whole_file(start, stop):
    whole = read_segment(TALK)
    first = 0 if start is None else round(start * 16000)
    last = len(whole) if stop is None else round(stop * 16000)
    segment = read_segment(TALK, start, stop)
    assert len(segment) == last - first
    assert torch.equal(segment, whole[first:last])


def test_audio_info_reads_the_header():
    info = audio_info(TALK)
    assert (info.sample_rate, info.channels) == (16000, 1)
    assert info.frames == sf.info(TALK).frames
    assert info.duration == pytest.approx(info.frames / 16000)


def test_missing_file_names_it(tmp_path):
    path = tmp_path / "nowhere.sph"
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
        read_segment(path)


def test_garbage_file_names_it(tmp_path):
    path = tmp_path / "garbage.sph"
    path.write_bytes(b"this is not audio at all" * 100)
    with pytest.raises(AudioFileError, match=rf"{re.escape(str(path))}.*re-extract or re-download"):
        read_segment(path, 0.0, 0.1)


def test_undecodable_flac_names_it(tmp_path):
    path = tmp_path / "cut.flac"
    sf.write(path, _noise(1.0), 16000, format="FLAC")
    path.write_bytes(path.read_bytes()[:3000])  # header intact, frames cut off
    with pytest.raises(AudioFileError, match=re.escape(str(path))):
        read_segment(path)


def test_wrong_sample_rate_names_file_and_rate(tmp_path):
    path = tmp_path / "narrowband.wav"
    sf.write(path, _noise(0.5, 8000), 8000)
    with pytest.raises(AudioFileError, match=rf"{re.escape(str(path))} is sampled at 8000 Hz but 16000 Hz"):
        read_segment(path)
    assert len(read_segment(path, sample_rate=8000)) == 4000


def test_stereo_is_refused(tmp_path):
    path = tmp_path / "stereo.wav"
    sf.write(path, _noise(0.5, channels=2), 16000)
    with pytest.raises(AudioFileError, match=rf"{re.escape(str(path))} has 2 channels"):
        read_segment(path)


@pytest.mark.parametrize(("start", "stop"), [(0.2, 0.6), (-0.1, 0.2), (0.3, 0.3), (0.3, 0.1)])
def test_segment_outside_file_names_it(tmp_path, start, stop):
    path = tmp_path / "half.wav"
    sf.write(path, _noise(0.5), 16000)
    with pytest.raises(AudioFileError, match=rf"outside {re.escape(str(path))}, which lasts 0.500 s"):
        read_segment(path, start, stop)


def test_audio_pipeline_in_dynamic_item_dataset(tmp_path):
    from speechbrain.dataio.dataset import DynamicItemDataset

    # CSV-style values: strings, and empty start/stop for "whole file".
    data = {
        "seg": {"wav": str(TALK), "start": "0.75", "stop": "3.88"},
        "all": {"wav": str(TALK), "start": "", "stop": ""},
    }
    dataset = DynamicItemDataset(data, dynamic_items=[audio_pipeline()], output_keys=["id", "sig"])
    whole = read_segment(TALK)
    items = {item["id"]: item["sig"] for item in dataset}
    assert torch.equal(items["seg"], whole[12000:62080])
    assert torch.equal(items["all"], whole)

    files = DynamicItemDataset({"a": {"wav": str(TALK)}}, dynamic_items=[audio_pipeline(segmented=False)])
    files.set_output_keys(["sig"])
    assert torch.equal(files[0]["sig"], whole)
