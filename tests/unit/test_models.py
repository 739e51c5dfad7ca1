"""cald_brain.models: speech / text / causal-LM wrappers, teacher and student alike, loaded from folders and
from hub names in an offline Hugging Face cache; pooling; config overrides; clear loading errors; which
hidden state is paired at each index (both wav2vec2 layer-norm layouts) and LayerDrop that keeps them all."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import (
    LAYOUTS,
    TINY_AUDIO_CONFIG,
    TINY_WAV2VEC2,
    offline_hub_cache,
    offline_hub_env,
    tiny_audio_checkpoint,
)
from hyperpyyaml import load_hyperpyyaml
from transformers import (
    BertConfig,
    BertModel,
    BertTokenizer,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
)

from cald_brain.convert import resolve_source
from cald_brain.data.text import tokenize
from cald_brain.models import (
    CausalLM,
    ModelOutputs,
    Pooling,
    SpeechEncoder,
    SpeechModel,
    TextClassifier,
    next_token_loss,
)
from cald_brain.models.speech import conv_output_lengths

MIXER = {"d_state": 16, "headdim": 32}
TEXT = dict(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "a", "mat", "dog"]


def speech_model(mixer: str | None = None, **kwargs) -> SpeechModel:
    encoder = SpeechEncoder(str(TINY_WAV2VEC2), mixer=mixer, mixer_kwargs=MIXER if mixer else None)
    return SpeechModel(encoder, **kwargs).eval()


def test_speech_teacher_and_student_pair_hidden_states_and_mask():
    wavs, lens = torch.randn(2, 16000), torch.tensor([1.0, 0.6])
    with torch.no_grad():
        teacher = speech_model(num_outputs=7)(wavs, lens)
        student = speech_model("bimamba2", num_outputs=7)(wavs, lens)
    for out in (teacher, student):
        assert isinstance(out, ModelOutputs)
        assert out.logits.shape == (2, 49, 7)
        assert len(out.hidden_states) == 3 + 1  # embeddings + one per layer (tiny model: 3 layers)
    # Frame mask from the convolution lengths, as the HF model computes them internally.
    hf = speech_model(num_outputs=7).encoder.model
    expected = hf._get_feat_extract_output_lengths(torch.tensor([16000, 9600]))
    assert teacher.mask.sum(1).tolist() == expected.tolist() == student.mask.sum(1).tolist()
    lengths = torch.arange(400, 20000, 37)
    assert torch.equal(conv_output_lengths(hf.config, lengths), hf._get_feat_extract_output_lengths(lengths))


def test_feature_encoder_frozen_by_public_api():
    model = speech_model("bimamba2", num_outputs=3)
    frozen = [p.requires_grad for p in model.encoder.model.feature_extractor.parameters()]
    assert frozen and not any(frozen)
    assert model.head.weight.requires_grad


@pytest.mark.parametrize("kind", ["mean", "statistics", "attentive"])
def test_pooling_ignores_padding(kind):
    torch.manual_seed(0)
    pool = Pooling(kind, 8).eval()
    feats = torch.randn(2, 10, 8)
    mask = torch.arange(10)[None] < torch.tensor([[10], [6]])
    padded = pool(feats, mask)
    alone = pool(feats[1:, :6], torch.ones(1, 6, dtype=torch.bool))
    assert padded.shape == (2, 8 if kind == "mean" else 16)
    torch.testing.assert_close(padded[1:], alone)
    if kind == "statistics":
        valid = feats[1, :6]
        torch.testing.assert_close(padded[1], torch.cat([valid.mean(0), valid.std(0, unbiased=False)]))


def test_speech_classifier_pools_per_utterance():
    out = speech_model("bimamba2", num_outputs=5, pooling="statistics")(
        torch.randn(2, 8000), torch.tensor([1.0, 0.5])
    )
    assert out.logits.shape == (2, 5)
    with pytest.raises(ValueError, match="pooling"):
        speech_model(num_outputs=5, pooling="max")


def test_config_overrides_apply_before_loading():
    overrides = {"hidden_dropout": 0.2, "mask_time_prob": 0.1, "layerdrop": 0.0}
    for mixer in (None, "bimamba2"):
        model = SpeechEncoder(str(TINY_WAV2VEC2), mixer, MIXER if mixer else None, config_overrides=overrides)
        assert model.model.config.mask_time_prob == 0.1
        assert model.model.encoder.layers[0].feed_forward.output_dropout.p == 0.2  # built with it
    with pytest.raises(ValueError, match="hidden_dropuot"):
        SpeechEncoder(str(TINY_WAV2VEC2), config_overrides={"hidden_dropuot": 0.2})


def test_missing_folder_is_a_clear_error(tmp_path):
    missing = tmp_path / "no" / "model"
    for source in (str(missing), "./not-here", "~/not-here"):
        with pytest.raises(FileNotFoundError, match="does not exist"):
            resolve_source(source)
    with pytest.raises(FileNotFoundError, match=str(missing)):
        SpeechEncoder(str(missing))
    assert resolve_source("facebook/wav2vec2-base") == "facebook/wav2vec2-base"  # a hub name


def test_hub_name_loads_from_offline_cache(tmp_path):
    """Teacher and student by hub name, HF_HUB_OFFLINE=1 (huggingface_hub reads HF_HOME at import, so in a
    fresh process); a name missing from the cache fails naming it."""
    offline_hub_cache(tmp_path / "hf", "cald-test/tiny-wav2vec2", TINY_WAV2VEC2)
    script = textwrap.dedent(
        f"""
        import torch
        from cald_brain.models import SpeechEncoder, SpeechModel
        wavs, lens = torch.randn(1, 8000), torch.ones(1)
        for mixer in (None, "bimamba2"):
            kwargs = {{"mixer_kwargs": {MIXER!r}}} if mixer else {{}}
            model = SpeechModel(SpeechEncoder("cald-test/tiny-wav2vec2", mixer, **kwargs), 4)
            print(mixer, len(model(wavs, lens).hidden_states))
        try:
            SpeechEncoder("cald-test/not-cached")
        except FileNotFoundError as err:
            print("missing:", err)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], env=offline_hub_env(tmp_path / "hf"), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[:2] == ["None 4", "bimamba2 4"]
    assert lines[2].startswith("missing: 'cald-test/not-cached' is neither a local folder")


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> tuple[Path, BertTokenizer]:
    folder = tmp_path_factory.mktemp("tiny-bert")
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    tokenizer = BertTokenizer(str(folder / "vocab.txt"))
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    BertModel(BertConfig(max_position_embeddings=64, **TEXT)).save_pretrained(folder)
    return folder, tokenizer


def test_text_classifier_single_sentences_and_pairs(tiny_bert):
    folder, tokenizer = tiny_bert
    single = tokenize(tokenizer, ["the cat sat", "a dog"])
    pairs = tokenize(tokenizer, ["the cat sat", "a dog"], ["on a mat", "the mat"])
    assert pairs["token_type_ids"].max() == 1 and single["token_type_ids"].max() == 0
    assert single["attention_mask"][1].sum() == 4  # [CLS] a dog [SEP]
    teacher = TextClassifier(str(folder), num_labels=3).eval()
    student = TextClassifier(str(folder), 3, mixer="linformer", mixer_kwargs={"k": 4}).eval()
    for model in (teacher, student):
        for batch in (single, pairs):
            out = model(**batch)
            assert out.logits.shape == (2, 3)
            assert len(out.hidden_states) == TEXT["num_hidden_layers"] + 1
            assert torch.equal(out.mask, batch["attention_mask"].bool())
    with pytest.raises(ValueError, match="without a mixer"):
        TextClassifier(str(folder), 3, mixer_kwargs={"k": 4})


def test_wrappers_build_from_yaml(tiny_bert, tmp_path):
    torch.manual_seed(0)
    GPTNeoXForCausalLM(GPTNeoXConfig(max_position_embeddings=64, **TEXT)).save_pretrained(tmp_path)
    hparams = load_hyperpyyaml(
        f"""
        lm: !new:cald_brain.models.CausalLM
            source: {tmp_path}
            mixer: mamba
            mixer_kwargs: {{d_state: 4}}
            config_overrides: {{hidden_dropout: 0.2}}
        classifier: !new:cald_brain.models.TextClassifier
            source: {tiny_bert[0]}
            num_labels: 2
            config_overrides: {{hidden_dropout_prob: 0.3}}
        """
    )
    assert hparams["lm"].model.config.hidden_dropout == 0.2
    assert hparams["lm"].model.config.cald_conversion["mixer"] == "mamba"
    assert hparams["classifier"].model.config.hidden_dropout_prob == 0.3
    assert hparams["classifier"].model.config.num_labels == 2


def test_causal_lm_teacher_and_student(tmp_path):
    torch.manual_seed(0)
    GPTNeoXForCausalLM(GPTNeoXConfig(max_position_embeddings=64, **TEXT)).save_pretrained(tmp_path)
    ids = torch.randint(0, TEXT["vocab_size"], (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0
    for mixer in (None, "mamba"):
        model = CausalLM(str(tmp_path), mixer=mixer, mixer_kwargs={"d_state": 4} if mixer else None).eval()
        out = model(ids, mask)
        assert out.logits.shape == (2, 9, TEXT["vocab_size"])
        assert len(out.hidden_states) == TEXT["num_hidden_layers"] + 1
        loss = next_token_loss(out.logits, ids, out.mask)
        changed = ids.clone()
        changed[1, 7] = (changed[1, 7] + 1) % TEXT["vocab_size"]  # a padded target: no effect on the loss
        assert torch.equal(loss, next_token_loss(out.logits, changed, out.mask))
        assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "gpt_neox"


AUDIO = {**TINY_AUDIO_CONFIG, "num_hidden_layers": 3}


def layer_io(encoder: SpeechEncoder) -> list:
    """Records (input, output) of every encoder layer on the next forward."""
    records = []
    for layer in encoder.model.encoder.layers:
        layer.register_forward_hook(lambda m, args, out: records.append((args[0], out)))
    return records


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("mixer", [None, "bimamba2"])
def test_paired_hidden_states_per_index(layout, mixer, tmp_path):
    """Index 0: input of layer 0; index i: output of layer i; the last one: the encoder output (after the
    final LayerNorm in the stable layout, as the reference)."""
    source = tiny_audio_checkpoint(tmp_path, layout, 0.1, num_hidden_layers=AUDIO["num_hidden_layers"])
    encoder = SpeechEncoder(source, mixer, MIXER if mixer else None).eval()
    records = layer_io(encoder)
    feats, hidden, _ = encoder(torch.randn(2, 4000), torch.tensor([1.0, 0.7]))
    assert len(hidden) == AUDIO["num_hidden_layers"] + 1
    assert torch.equal(hidden[0], records[0][0])
    for i in range(1, AUDIO["num_hidden_layers"]):
        assert torch.equal(hidden[i], records[i - 1][1])
    assert torch.equal(hidden[-1], feats)
    final_norm = encoder.model.encoder.layer_norm
    if layout == "stable":
        torch.testing.assert_close(hidden[-1], final_norm(records[-1][1]))
    else:
        assert torch.equal(hidden[-1], records[-1][1])


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layerdrop_keeps_every_hidden_state_for_teacher_and_student(layout, tmp_path):
    """With the checkpoint's layerdrop active in training, teacher and student always return N + 1 states;
    a skipped layer's slot holds its input. (transformers 5's own LayerDrop would return fewer.)"""
    source = tiny_audio_checkpoint(tmp_path, layout, 0.1, num_hidden_layers=AUDIO["num_hidden_layers"])
    teacher = SpeechEncoder(source).train()
    student = SpeechEncoder(source, "bimamba2", MIXER).train()
    assert teacher.layerdrop == student.layerdrop == 0.1
    wavs, lens = torch.randn(2, 4000), torch.tensor([1.0, 0.7])
    skipped = 0
    torch.manual_seed(0)
    for _ in range(15):
        for encoder in (teacher, student):
            _, hidden, _ = encoder(wavs, lens)
            assert len(hidden) == AUDIO["num_hidden_layers"] + 1
            skipped += sum(torch.equal(hidden[i], hidden[i + 1]) for i in range(len(hidden) - 2))
    assert skipped > 0  # 0.1 x 2 layers x 30 forwards: some skips are all but certain
    teacher.eval()
    _, first, _ = teacher(wavs, lens)
    _, second, _ = teacher(wavs, lens)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))  # no LayerDrop in eval
    off = SpeechEncoder(source, config_overrides={"layerdrop": 0.0}).train()
    assert off.layerdrop == 0.0
