"""tools/samples/: offline sentences and espeak-ng synthesis (common.py), and the committed mini TED-LIUM 3
(speech_corpora.py) rebuilt byte for byte."""

import os
import re
import shutil

import numpy as np
import pytest
from conftest import TEDLIUM_SAMPLE as SAMPLE
from conftest import assert_same_tree, load_repo_script

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")


common = load_repo_script("tools/samples/common.py", "tools_samples_common")
speech_corpora = load_repo_script("tools/samples/speech_corpora.py", "speech_corpora")


def test_english_sentences_are_clean_and_deterministic():
    sentences = common.english_sentences(200, seed=3)
    assert sentences == common.english_sentences(200, seed=3)
    assert len(set(sentences)) == 200
    for sentence in sentences:
        assert re.fullmatch(r"[a-z']+( [a-z']+){3,19}", sentence), sentence
    reordered = common.english_sentences(200, seed=4)
    assert reordered != sentences and sorted(reordered) == sorted(sentences)


def test_disjoint_ranges_share_no_sentence():
    first = common.english_sentences(300, seed=0, skip=0)
    second = common.english_sentences(300, seed=7, skip=300)
    assert not set(first) & set(second)
    assert set(common.english_sentences(10, seed=1, skip=5)) <= set(first)
    pool_size = len(common.sentence_pool())
    with pytest.raises(ValueError, match="outside the pool"):
        common.english_sentences(10, seed=0, skip=pool_size - 5)


@needs_espeak
def test_synthesize_returns_float32_mono_at_the_requested_rate():
    audio = common.synthesize("hello there my friend", "en-us", speed=160)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert 0.5 < len(audio) / 16000 < 3.0 and 0.05 < np.abs(audio).max() <= 1.0
    native = common.synthesize("hello there my friend", "en-us", speed=160, sample_rate=22050)
    assert abs(len(native) / 22050 - len(audio) / 16000) < 0.01
    other = common.synthesize("hello there my friend", "en-gb-scotland", speed=160)
    assert len(other) != len(audio) or not np.array_equal(other, audio)


def test_committed_sample_layout():
    talks = sorted(p.stem for p in (SAMPLE / "data" / "sph").glob("*.sph"))
    assert talks == sorted(p.stem for p in (SAMPLE / "data" / "stm").glob("*.stm"))
    assert talks == sorted(t.name for t in speech_corpora.TEDLIUM_TALKS)
    for repartition in ("legacy", "speaker-adaptation"):
        seen = []
        for split in ("train", "dev", "test"):
            for kind in ("sph", "stm"):
                files = sorted((SAMPLE / repartition / split / kind).iterdir())
                assert files, f"{repartition}/{split}/{kind} is empty"
                for link in files:
                    assert link.is_symlink() and not os.path.isabs(os.readlink(link))
                    assert link.resolve() == (SAMPLE / "data" / kind / link.name).resolve()
            seen += [p.stem for p in (SAMPLE / repartition / split / "stm").iterdir()]
        assert sorted(seen) == talks  # every talk in exactly one split of each repartition


@pytest.mark.slow
@needs_espeak
def test_regenerating_gives_the_committed_sample(tmp_path):
    """Fails when the generator, Python's docstrings or espeak-ng changed since the sample was committed."""
    out = tmp_path / "TEDLIUM_release-3"
    speech_corpora.build_tedlium(out)
    assert_same_tree(out, SAMPLE)
