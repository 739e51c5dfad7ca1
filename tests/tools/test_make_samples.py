"""tools/make_samples.py: offline sentences, espeak-ng synthesis and the committed mini TED-LIUM 3."""

import filecmp
import os
import re
import shutil

import numpy as np
import pytest
from conftest import TEDLIUM_SAMPLE as SAMPLE
from conftest import load_repo_script

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")


make_samples = load_repo_script("tools/make_samples.py", "make_samples")


def test_english_sentences_are_clean_and_deterministic():
    sentences = make_samples.english_sentences(200, seed=3)
    assert sentences == make_samples.english_sentences(200, seed=3)
    assert len(set(sentences)) == 200
    for sentence in sentences:
        assert re.fullmatch(r"[a-z']+( [a-z']+){3,19}", sentence), sentence
    reordered = make_samples.english_sentences(200, seed=4)
    assert reordered != sentences and sorted(reordered) == sorted(sentences)


def test_disjoint_ranges_share_no_sentence():
    first = make_samples.english_sentences(300, seed=0, skip=0)
    second = make_samples.english_sentences(300, seed=7, skip=300)
    assert not set(first) & set(second)
    assert set(make_samples.english_sentences(10, seed=1, skip=5)) <= set(first)
    pool_size = len(make_samples._sentence_pool())
    with pytest.raises(ValueError, match="outside the pool"):
        make_samples.english_sentences(10, seed=0, skip=pool_size - 5)


@needs_espeak
def test_synthesize_returns_float32_mono_at_the_requested_rate():
    audio = make_samples.synthesize("hello there my friend", "en-us", speed=160)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert 0.5 < len(audio) / 16000 < 3.0 and 0.05 < np.abs(audio).max() <= 1.0
    native = make_samples.synthesize("hello there my friend", "en-us", speed=160, sample_rate=22050)
    assert abs(len(native) / 22050 - len(audio) / 16000) < 0.01
    other = make_samples.synthesize("hello there my friend", "en-gb-scotland", speed=160)
    assert len(other) != len(audio) or not np.array_equal(other, audio)


def test_committed_sample_layout():
    talks = sorted(p.stem for p in (SAMPLE / "data" / "sph").glob("*.sph"))
    assert talks == sorted(p.stem for p in (SAMPLE / "data" / "stm").glob("*.stm"))
    assert talks == sorted(t.name for t in make_samples.TEDLIUM_TALKS)
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
    make_samples.build_tedlium(out)
    for path in sorted(SAMPLE.rglob("*")):
        twin = out / path.relative_to(SAMPLE)
        if path.is_symlink():
            assert os.readlink(twin) == os.readlink(path)
        elif path.is_file():
            assert filecmp.cmp(path, twin, shallow=False), f"{path} differs"
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == sorted(
        p.relative_to(SAMPLE) for p in SAMPLE.rglob("*")
    )
