"""cald_brain.export + cald_brain.inference + Hugging Face remote code: an exported student gives the
in-memory model's outputs through `cald_brain.inference.load` and through `transformers.Auto*` /
`pipeline(..., trust_remote_code=True)`, for each task (CTC, pooled speech classifier, text classifier,
causal LM); without trust_remote_code transformers refuses to load it; audio files are read in other rates
and channel counts; the command line works from another directory and names a bad file."""

import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import ROOT, SAMPLES, tiny_audio_checkpoint
from transformers import (
    AutoModel,
    AutoModelForAudioClassification,
    AutoModelForCausalLM,
    AutoModelForCTC,
    AutoModelForSequenceClassification,
    pipeline,
)

from cald_brain.data.audio import AudioFileError
from cald_brain.export import CTCUnits, ModelCard, export_student
from cald_brain.inference import load
from cald_brain.models import CausalLM, SpeechEncoder, SpeechModel, TextClassifier, load_tokenizer

MIXER = {"d_state": 8, "headdim": 16}
CHARACTERS = ("<blank>", "a", "b", " ", "c", "'")
LABELS = ["alice", "bruno", "chloe"]
TINY_ROBERTA = SAMPLES / "models" / "tiny-roberta"
TINY_PYTHIA = SAMPLES / "models" / "tiny-pythia"


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, str]:
    """Tiny wav2vec2 checkpoints in both layer-norm layouts (base: group-norm feature encoder)."""
    return {
        layout: tiny_audio_checkpoint(tmp_path_factory.mktemp(layout) / "source", layout, 0.1)
        for layout in ("base", "stable")
    }


def speech_student(source: str, num_outputs: int, **kwargs) -> SpeechModel:
    torch.manual_seed(0)
    encoder = SpeechEncoder(source, mixer="bimamba2", mixer_kwargs=MIXER)
    return SpeechModel(encoder, num_outputs, **kwargs).eval()


def padded_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two waveforms (the second 60% long, zero-padded), relative lengths and the sample mask."""
    torch.manual_seed(1)
    wavs = torch.randn(2, 8000)
    wavs[1, 4800:] = 0
    mask = torch.ones(2, 8000, dtype=torch.long)
    mask[1, 4800:] = 0
    return wavs, torch.tensor([1.0, 0.6]), mask


def write_wav(path, audio: np.ndarray, rate: int) -> str:
    sf.write(str(path), audio.astype(np.float32), rate)
    return str(path)


@pytest.fixture(scope="module")
def ctc(tmp_path_factory, sources):
    """A CTC student (character units) and its export."""
    model = speech_student(sources["base"], len(CHARACTERS))
    wavs, lens, _ = padded_batch()
    with torch.no_grad():
        before = model(wavs, lens).logits
    folder = tmp_path_factory.mktemp("export") / "ctc-student"
    card = ModelCard(
        recipe="recipes/TEDLIUM", guidance_mode="target", training_steps=7, test_metrics={"WER": 1.5}
    )
    export_student(model, folder, units=CTCUnits(0, characters=CHARACTERS), card=card)
    with torch.no_grad():  # exporting leaves the trained model as it was
        torch.testing.assert_close(model(wavs, lens).logits, before, rtol=0, atol=0)
    return model, folder


def test_ctc_export_gives_the_models_logits_through_load_and_hugging_face(ctc):
    model, folder = ctc
    wavs, lens, mask = padded_batch()
    with torch.no_grad():
        expected = model(wavs, lens).logits
        loaded = load(folder).net(wavs, lens).logits
        remote = AutoModelForCTC.from_pretrained(folder, trust_remote_code=True)(
            wavs, attention_mask=mask
        ).logits
    torch.testing.assert_close(loaded, expected, rtol=0, atol=0)
    frames = int(model(wavs, lens).mask[1].sum())  # the padded utterance's valid frames
    torch.testing.assert_close(remote[0], expected[0], rtol=0, atol=0)
    torch.testing.assert_close(remote[1, :frames], expected[1, :frames], rtol=0, atol=0)
    assert type(AutoModel.from_pretrained(folder, trust_remote_code=True)).__name__ == "CaldForCTC"


@pytest.mark.parametrize("auto_class", [AutoModel, AutoModelForCTC])
def test_loading_without_trust_remote_code_raises(ctc, auto_class):
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        auto_class.from_pretrained(ctc[1])


def test_folder_layout_and_model_card(ctc):
    folder = ctc[1]
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "configuration_cald.py", "modeling_cald.py"} <= names
    assert {"vocab.json", "tokenizer_config.json", "preprocessor_config.json", "README.md"} <= names
    assert not list(folder.parent.glob("*.tmp")) and not list(folder.parent.glob("*.old"))
    card = (folder / "README.md").read_text()
    for expected in ("pipeline_tag: automatic-speech-recognition", "recipes/TEDLIUM", "target", "WER: 1.5"):
        assert expected in card


def test_transcribe_batch_and_the_asr_pipeline_decode_the_models_greedy_path(ctc):
    model, folder = ctc
    wavs, lens, _ = padded_batch()
    with torch.no_grad():
        out = model(wavs, lens)
    expected = []
    for row, frames in zip(out.logits.argmax(dim=-1), out.mask.sum(dim=1), strict=True):
        path = row[:frames].tolist()
        ids = [u for i, u in enumerate(path) if u != 0 and (i == 0 or u != path[i - 1])]
        expected.append("".join(CHARACTERS[u] for u in ids))
    asr = load(folder)
    texts, tokens = asr.transcribe_batch(wavs, lens)
    assert texts == expected and all(tokens)
    asr_pipeline = pipeline("automatic-speech-recognition", model=str(folder), trust_remote_code=True)
    assert asr_pipeline(wavs[0].numpy())["text"].split() == expected[0].split()


def test_transcribe_file_reads_other_rates_and_channels(ctc, tmp_path):
    asr = load(ctc[1])
    t = np.arange(4000) / 8000
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    stereo = write_wav(tmp_path / "stereo8k.wav", np.stack([tone, tone], axis=1), 8000)
    heard = asr.load_audio(stereo)
    reference = 0.5 * np.sin(2 * np.pi * 440 * np.arange(8000) / 16000)
    assert heard.shape == (8000,)
    np.testing.assert_allclose(heard[100:-100].numpy(), reference[100:-100], atol=0.02)
    assert asr.transcribe_file(stereo) == asr.transcribe_batch(heard[None])[0][0]


def test_missing_and_corrupt_files_are_named(ctc, tmp_path):
    asr = load(ctc[1])
    with pytest.raises(FileNotFoundError, match="nowhere.wav"):
        asr.transcribe_file(tmp_path / "nowhere.wav")
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF not really audio")
    with pytest.raises(AudioFileError, match="corrupt.wav"):
        asr.transcribe_file(corrupt)
    with pytest.raises(FileNotFoundError, match="no-such-folder"):
        load(tmp_path / "no-such-folder")


@pytest.mark.slow
def test_cli_from_another_directory_prints_one_transcript_per_file(ctc, tmp_path):
    audio = np.random.default_rng(0).standard_normal(6000) * 0.1
    wav = write_wav(tmp_path / "utt.wav", audio, 16000)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "cald_brain.inference", str(ctc[1]), wav, "missing.wav"],
        cwd=elsewhere,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1  # the missing file
    assert proc.stdout == f"{wav}\t{load(ctc[1]).transcribe_file(wav)}\n"
    assert "missing.wav" in proc.stderr


def test_pooled_classifier_labels_embedding_and_verification(tmp_path, sources):
    model = speech_student(sources["stable"], len(LABELS), pooling="attentive", attention_channels=16)
    audio = np.random.default_rng(0).standard_normal(8000) * 0.1
    wav = write_wav(tmp_path / "utt.wav", audio, 16000)
    signal = torch.from_numpy(audio).float()[None]
    with torch.no_grad():
        expected = model(signal, torch.ones(1)).logits
    folder = export_student(model, tmp_path / "sid-student", labels=LABELS)
    with torch.no_grad():
        remote = AutoModelForAudioClassification.from_pretrained(folder, trust_remote_code=True)(
            signal
        ).logits
    torch.testing.assert_close(remote, expected, rtol=0, atol=0)
    classifier = load(folder)
    label, score = classifier.classify_file(wav)
    probs = expected.softmax(dim=-1)[0]
    assert label == LABELS[int(probs.argmax())] and score == pytest.approx(float(probs.max()), abs=1e-5)
    embedding = classifier.embed_file(wav)
    torch.testing.assert_close(model.head(embedding), expected[0], rtol=1e-5, atol=1e-5)
    other = write_wav(tmp_path / "other.wav", audio[::-1].copy(), 16000)
    same, accepted = classifier.verify_files(wav, wav)
    assert same == pytest.approx(1.0, abs=1e-5) and accepted
    assert classifier.verify_files(wav, other)[0] < same


def test_two_head_classifier_exports_one_label_per_head_and_the_joint_one(tmp_path, sources):
    """SLURP's scenario and action heads: per-head softmax, labels from each head's own set, the joint
    (intent) label with the product of the probabilities; the command line prints all three."""
    heads = {"scenario": ["iot", "play"], "action": ["hue_lightup", "music", "query"]}
    model = speech_student(sources["stable"], [2, 3], pooling="mean")
    audio = np.random.default_rng(0).standard_normal(8000) * 0.1
    wav = write_wav(tmp_path / "utt.wav", audio, 16000)
    with torch.no_grad():
        expected = model(torch.from_numpy(audio).float()[None], torch.ones(1)).logits[0]
    with pytest.raises(ValueError, match="needs labels="):
        export_student(model, tmp_path / "bad", labels=LABELS)
    folder = export_student(model, tmp_path / "slurp-student", labels=heads, joint_name="intent")
    found = load(folder).classify_file(wav)
    assert list(found) == ["scenario", "action", "intent"]
    joint_score = 1.0
    for (name, names), logits in zip(heads.items(), expected.split([2, 3]), strict=True):
        probs = logits.softmax(dim=-1)
        assert found[name][0] == names[int(probs.argmax())]
        assert found[name][1] == pytest.approx(float(probs.max()), abs=1e-5)
        joint_score *= found[name][1]
    assert found["intent"] == (f"{found['scenario'][0]}_{found['action'][0]}", pytest.approx(joint_score))
    proc = subprocess.run(
        [sys.executable, "-m", "cald_brain.inference", str(folder), wav], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"\tintent={found['intent'][0]}\t" in proc.stdout


def test_text_classifier_export_pipeline_and_pairs(tmp_path):
    torch.manual_seed(0)
    model = TextClassifier(
        str(TINY_ROBERTA), 2, mixer="linformer", mixer_kwargs={"k": 8, "max_len": 64}
    ).eval()
    tokenizer = load_tokenizer(str(TINY_ROBERTA))
    texts, pairs = ["a fine film", "dull and long, far too long"], ["yes", "no"]
    batch = tokenizer(texts, pairs, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model(**batch).logits
    folder = export_student(
        model, tmp_path / "text-student", labels=["negative", "positive"], tokenizer=tokenizer
    )
    with torch.no_grad():
        remote = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)(
            **batch
        ).logits
    torch.testing.assert_close(remote, expected, rtol=0, atol=0)
    classifier = load(folder)
    torch.testing.assert_close(classifier.logits(texts, pairs), expected, rtol=1e-6, atol=1e-6)
    label, score = classifier.classify(texts[:1])[0]
    found = pipeline("text-classification", model=str(folder), trust_remote_code=True)(texts[0])[0]
    assert found["label"] == label and found["score"] == pytest.approx(score, abs=1e-5)
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        AutoModelForSequenceClassification.from_pretrained(folder)


def test_language_model_export_generates_with_the_recurrent_cache(tmp_path):
    torch.manual_seed(0)
    model = CausalLM(str(TINY_PYTHIA), mixer="mamba", mixer_kwargs={"d_state": 4}).eval()
    tokenizer = load_tokenizer(str(TINY_PYTHIA))
    ids = tokenizer(["the cat sat on the"], return_tensors="pt").input_ids
    with torch.no_grad():
        expected = model(ids).logits
    folder = export_student(model, tmp_path / "lm-student", tokenizer=tokenizer)
    remote = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
    with torch.no_grad():
        torch.testing.assert_close(remote(ids).logits, expected, rtol=0, atol=0)
        greedy = ids
        for _ in range(6):  # the full-forward greedy continuation the cache must reproduce
            greedy = torch.cat([greedy, model(greedy).logits[:, -1:].argmax(dim=-1)], dim=1)
    assert torch.equal(remote.generate(ids, max_new_tokens=6, do_sample=False)[:, : greedy.shape[1]], greedy)
    continuation = load(folder).generate("the cat sat on the", max_new_tokens=6)
    generator = pipeline("text-generation", model=str(folder), trust_remote_code=True)
    text = generator("the cat sat on the", max_new_tokens=6, do_sample=False)[0]["generated_text"]
    assert text == "the cat sat on the" + continuation
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        AutoModelForCausalLM.from_pretrained(folder)


@pytest.mark.parametrize("network", ["text", "lm"])
def test_teacher_exports_load_as_the_transformer(network, tmp_path):
    """A teacher run's network (no conversion) exports and loads back as the transformer, same logits."""
    torch.manual_seed(0)
    source = TINY_ROBERTA if network == "text" else TINY_PYTHIA
    model = (TextClassifier(str(source), 2) if network == "text" else CausalLM(str(source))).eval()
    ids = load_tokenizer(str(source))(["the cat sat on the"], return_tensors="pt").input_ids
    folder = export_student(model, tmp_path / "teacher", tokenizer=load_tokenizer(str(source)))
    loaded = load(folder).net
    assert not any(type(m).__module__.startswith("cald_brain.mixers") for m in loaded.modules())
    with torch.no_grad():
        mask = torch.ones_like(ids)
        torch.testing.assert_close(loaded(ids, mask).logits, model(ids, mask).logits, rtol=0, atol=0)


def test_export_replaces_an_earlier_export(tmp_path, sources):
    model = speech_student(sources["base"], len(CHARACTERS))
    folder = tmp_path / "student"
    export_student(model, folder, units=CTCUnits(0, characters=CHARACTERS))
    (folder / "stale.txt").write_text("from an earlier export")
    export_student(model, folder, units=CTCUnits(0, characters=CHARACTERS))
    assert not (folder / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student"]


def test_exported_config_holds_no_path(ctc, sources):
    """The exported folder is self-contained: no path to the source checkpoint or the repository."""
    config = (ctc[1] / "config.json").read_text()
    assert sources["base"] not in config and str(ROOT) not in config


def test_sentencepiece_units_decode_like_the_tokenizer(tmp_path, sources):
    import sentencepiece

    text = tmp_path / "train.txt"
    text.write_text("the cat sat on the mat\nthe dog sat\na cat and a dog\n" * 20)
    sentencepiece.SentencePieceTrainer.train(
        input=str(text), model_prefix=str(tmp_path / "bpe"), vocab_size=20, model_type="bpe", minloglevel=2
    )
    pieces = sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / "bpe.model"))
    model = speech_student(sources["base"], pieces.vocab_size())
    folder = export_student(
        model, tmp_path / "bpe-student", units=CTCUnits(0, sentencepiece_model=str(tmp_path / "bpe.model"))
    )
    wavs, lens, _ = padded_batch()
    texts, tokens = load(folder).transcribe_batch(wavs, lens)
    assert texts == [pieces.decode_ids(t) for t in tokens] and all(tokens)


@pytest.mark.slow
def test_torch_export_of_a_speech_student_with_padding(ctc):
    """torch.export traces the exported CTC student (the padding checks are skipped while exporting)."""
    model = load(ctc[1]).model
    wavs, _, mask = padded_batch()
    program = torch.export.export(model, (wavs,), {"attention_mask": mask})
    with torch.no_grad():
        expected = model(wavs, attention_mask=mask).logits
    torch.testing.assert_close(program.module()(wavs, attention_mask=mask).logits, expected)
