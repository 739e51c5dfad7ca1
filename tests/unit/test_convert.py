"""cald_brain.convert: attention surgery on tiny Hugging Face models of every supported family.

Every model is built from a tiny config, saved to tmp_path and loaded back with from_pretrained, as a real
checkpoint would be. Checks: parameters outside the replaced modules are bit-identical and no attention
parameter remains; forward/backward with padding; hidden-state count; save -> load_student round trip;
init="attention" copies; padding invariance; errors.
"""

import logging
import re
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest
import torch
from conftest import TINY_AUDIO_CONFIG
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    Data2VecAudioConfig,
    Data2VecAudioModel,
    GPT2Config,
    GPT2Model,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    HubertConfig,
    HubertModel,
    RobertaConfig,
    RobertaForSequenceClassification,
    Wav2Vec2Config,
    Wav2Vec2ForCTC,
    WavLMConfig,
    WavLMModel,
)

from cald_brain.brain import CALDBrain
from cald_brain.convert import convert, load_and_convert, load_student, supported_model_types
from cald_brain.mixers.masking import lengths_to_mask

AUDIO = TINY_AUDIO_CONFIG
TEXT = dict(
    vocab_size=100,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=64,
)
MAMBA2 = dict(d_state=8, headdim=16, chunk_size=8)  # tiny, and several chunks on 18 frames
# wav2vec2-large-lv60 style: layer-norm feature encoder (padding invariant), pre-LN encoder layers
LV60 = dict(vocab_size=12, feat_extract_norm="layer", do_stable_layer_norm=True, **AUDIO)

# Replaced-module prefixes per family, written from the transformers sources (not from the adapters).
AUDIO_ATTENTION = r"(^|\.)encoder\.layers\.\d+\.attention\."
TEXT_ATTENTION = r"(^|\.)encoder\.layer\.\d+\.attention\.self\."
NEOX_ATTENTION = r"(^|\.)layers\.\d+\.attention\."


@dataclass
class Case:
    model_class: type
    config: object
    mixer: str
    attention: str  # regex of the replaced modules' parameter names
    kwargs: dict = field(default_factory=dict)

    @property
    def audio(self) -> bool:
        return self.model_class.main_input_name == "input_values"


CASES = {
    "wav2vec2-bimamba2": Case(
        Wav2Vec2ForCTC, Wav2Vec2Config(vocab_size=12, **AUDIO), "bimamba2", AUDIO_ATTENTION, MAMBA2
    ),
    "wav2vec2-stable-linformer": Case(
        Wav2Vec2ForCTC,
        Wav2Vec2Config(**LV60),
        "linformer",
        AUDIO_ATTENTION,
        dict(k=8, max_len=64),
    ),
    "hubert-bimamba2": Case(HubertModel, HubertConfig(**AUDIO), "bimamba2", AUDIO_ATTENTION, MAMBA2),
    "wavlm-bimamba2": Case(
        WavLMModel,
        WavLMConfig(num_buckets=16, max_bucket_distance=40, **AUDIO),
        "bimamba2",
        AUDIO_ATTENTION,
        MAMBA2,
    ),
    "data2vec-audio-mamba2": Case(
        Data2VecAudioModel,
        Data2VecAudioConfig(**{**AUDIO, "num_conv_pos_embeddings": 1}, conv_pos_kernel_size=5),
        "mamba2",
        AUDIO_ATTENTION,
        dict(unidirectional=True, **MAMBA2),
    ),
    "roberta-linformer": Case(
        RobertaForSequenceClassification,
        RobertaConfig(pad_token_id=1, **TEXT),
        "linformer",
        TEXT_ATTENTION,
        dict(k=8),
    ),
    "bert-bimamba2": Case(
        BertForSequenceClassification, BertConfig(**TEXT), "bimamba2", TEXT_ATTENTION, MAMBA2
    ),
    "gpt_neox-mamba": Case(
        GPTNeoXForCausalLM,
        GPTNeoXConfig(tie_word_embeddings=True, **TEXT),
        "mamba",
        NEOX_ATTENTION,
        dict(d_state=8, d_inner=48, dt_rank=3),  # explicit: the default sizes are the reference's (5120, 160)
    ),
    "gpt_neox-mamba2": Case(GPTNeoXForCausalLM, GPTNeoXConfig(**TEXT), "mamba2", NEOX_ATTENTION, MAMBA2),
}


def save_teacher(case: Case, folder) -> str:
    """A tiny randomly initialised transformer saved like a real checkpoint; returns the folder."""
    torch.manual_seed(0)
    case.model_class(case.config).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """saved(name): the folder of CASES[name]'s teacher, saved once per module."""
    folders = {}

    def folder(name: str) -> str:
        if name not in folders:
            folders[name] = save_teacher(CASES[name], tmp_path_factory.mktemp(name))
        return folders[name]

    return folder


def batch(case: Case, lengths=(400, 250)) -> dict:
    """A right-padded batch: waveforms (samples) for audio, token ids for text, with its attention_mask."""
    torch.manual_seed(1)
    if case.audio:
        lengths = torch.tensor(lengths)
        values = torch.randn(len(lengths), int(lengths.max())) * lengths_to_mask(lengths, int(lengths.max()))
        return {"input_values": values, "attention_mask": lengths_to_mask(lengths, values.shape[1]).long()}
    lengths = torch.tensor([12, 7])
    ids = torch.randint(3, 100, (2, 12)) * lengths_to_mask(lengths, 12) + 1 * ~lengths_to_mask(lengths, 12)
    return {"input_ids": ids, "attention_mask": lengths_to_mask(lengths, 12).long()}


def hidden_states(model, inputs) -> tuple[torch.Tensor, ...]:
    return model(**inputs, output_hidden_states=True).hidden_states


@pytest.mark.parametrize("name", CASES)
def test_convert_keeps_everything_but_attention(name, saved, caplog):
    case = CASES[name]
    folder = saved(name)
    teacher = case.model_class.from_pretrained(folder).eval()
    model = case.model_class.from_pretrained(folder)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with caplog.at_level(logging.INFO, logger="cald_brain.convert"):
        student = convert(model, case.mixer, **case.kwargs)
    assert student is model
    after = student.state_dict()

    replaced_types = {type(m) for n, m in teacher.named_modules() if re.search(case.attention + "$", n + ".")}
    assert len(replaced_types) == 1 and not any(
        isinstance(m, tuple(replaced_types)) for m in student.modules()
    )
    attention_keys = [k for k in before if re.search(case.attention, k)]
    assert attention_keys, "the test's attention pattern matches nothing"
    for key, value in before.items():
        if key not in attention_keys:
            assert torch.equal(after[key], value) and after[key].dtype == value.dtype, key
        elif key in after:  # only a Linformer host's new out_proj reuses the attention's name
            assert case.mixer == "linformer" and ".attention.out_proj." in key, (
                f"attention parameter {key} survived"
            )
    new_keys = {k for k in after if re.search(case.attention, k)}
    assert new_keys and new_keys.isdisjoint(set(before) - set(attention_keys))

    counts = student.cald_parameter_count
    assert counts.before == sum(p.numel() for p in teacher.parameters())
    assert counts.after == sum(p.numel() for p in student.parameters())
    assert counts.kept == counts.before - counts.removed > 0
    assert "parameters: kept" in caplog.text
    assert student.config.cald_conversion["mixer"] == case.mixer

    inputs = batch(case)
    student.train()
    out = student(**inputs)
    loss = (out.logits if hasattr(out, "logits") else out.last_hidden_state).pow(2).mean()
    loss.backward()
    mixer_grads = [p.grad for k, p in student.named_parameters() if k in new_keys]
    assert all(g is not None and torch.isfinite(g).all() for g in mixer_grads)
    assert any(g.abs().sum() > 0 for g in mixer_grads)

    student.eval()
    with torch.no_grad():
        got, want = hidden_states(student, inputs), hidden_states(teacher, inputs)
    assert len(got) == len(want) == case.config.num_hidden_layers + 1
    assert [h.shape for h in got] == [h.shape for h in want]
    assert torch.equal(got[0], want[0])  # embeddings / feature projection: untouched


@pytest.mark.parametrize(
    "name, extra",
    [("wav2vec2-bimamba2", {}), ("roberta-linformer", dict(share="layer")), ("gpt_neox-mamba", {})],
)
def test_save_and_load_student_round_trip(name, extra, saved, tmp_path):
    case = CASES[name]
    folder = saved(name)
    student = load_and_convert(
        folder, case.mixer, model_class=case.model_class, **case.kwargs, **extra
    ).eval()
    student.save_pretrained(tmp_path / "student")
    again = load_student(tmp_path / "student")
    assert type(again) is type(student) and not again.training
    assert again.config.cald_conversion == student.config.cald_conversion
    assert again.config.cald_conversion["mixer_kwargs"] == {**case.kwargs, **extra}
    inputs = batch(case)
    with torch.no_grad():
        for got, want in zip(hidden_states(again, inputs), hidden_states(student, inputs), strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert again.state_dict().keys() == student.state_dict().keys()


def test_init_attention_bimamba2_copies_v_k_q_o(saved):
    case = CASES["wav2vec2-bimamba2"]
    teacher = case.model_class.from_pretrained(saved("wav2vec2-bimamba2"))
    attention = teacher.wav2vec2.encoder.layers[1].attention
    q, k, v, o = (getattr(attention, n).weight.clone() for n in ("q_proj", "k_proj", "v_proj", "out_proj"))
    convert(teacher, "bimamba2", init="attention", **case.kwargs)
    mixer = teacher.wav2vec2.encoder.layers[1].attention.mixer
    for mamba in (mixer.mamba_fwd, mixer.mamba_bwd):
        z, x, b, c, dt = mamba.in_proj.weight.split([32, 32, 8, 8, mamba.nheads])
        assert torch.equal(x, v) and torch.equal(b, k[:8]) and torch.equal(c, q[:8])
        assert torch.equal(mamba.out_proj.weight, o / 2)  # the two directions are summed
    assert not torch.equal(
        mixer.mamba_fwd.in_proj.weight[:32], mixer.mamba_bwd.in_proj.weight[:32]
    )  # z: random
    assert teacher.cald_parameter_count.copied == 2 * 2 * (32 * 32 + 2 * 8 * 32 + 32 * 32)


def test_init_random_copies_nothing_into_mamba(saved):
    case = CASES["wav2vec2-bimamba2"]
    teacher = case.model_class.from_pretrained(saved("wav2vec2-bimamba2"))
    v = teacher.wav2vec2.encoder.layers[0].attention.v_proj.weight.clone()
    convert(teacher, "bimamba2", **case.kwargs)
    assert not torch.equal(
        teacher.wav2vec2.encoder.layers[0].attention.mixer.mamba_fwd.in_proj.weight[32:64], v
    )
    assert teacher.cald_parameter_count.copied == 0


def test_init_attention_bert_mamba2_uses_identity_out_proj(saved):
    """BERT's output dense stays outside the replaced module, so out_proj starts as the identity."""
    case = CASES["bert-bimamba2"]
    teacher = case.model_class.from_pretrained(saved("bert-bimamba2"))
    value = teacher.bert.encoder.layer[0].attention.self.value
    v, bv = value.weight.clone(), value.bias.clone()
    convert(teacher, "bimamba2", init="attention", bias=True, **case.kwargs)
    mamba = teacher.bert.encoder.layer[0].attention.self.mixer.mamba_bwd
    assert torch.equal(mamba.in_proj.weight[32:64], v) and torch.equal(mamba.in_proj.bias[32:64], bv)
    assert torch.equal(mamba.out_proj.weight, torch.eye(32) / 2)


def test_init_attention_mamba_deinterleaves_gpt_neox_qkv(saved):
    """x rows <- W_v and out_proj <- dense, checked through GPT-NeoX's own head-interleaved qkv layout."""
    case = CASES["gpt_neox-mamba"]
    teacher = case.model_class.from_pretrained(saved("gpt_neox-mamba"))
    attention = teacher.gpt_neox.layers[0].attention
    h = torch.randn(3, 32)
    qkv = torch.nn.functional.linear(h, attention.query_key_value.weight)  # no bias: compare weights only
    value = qkv.view(3, 2, 3, 16)[:, :, 2].reshape(3, 32)  # per head [q, k, v]
    dense = attention.dense.weight.clone()
    convert(teacher, "mamba", init="attention", **case.kwargs)
    mamba = teacher.gpt_neox.layers[0].attention.mixer
    torch.testing.assert_close(h @ mamba.in_proj.weight[:32].T, value)
    assert torch.equal(mamba.out_proj.weight[:, :32], dense)


@pytest.mark.parametrize("init", ["random", "attention"])
def test_linformer_keeps_q_k_v_o(saved, init):
    case = CASES["wav2vec2-stable-linformer"]
    teacher = case.model_class.from_pretrained(saved("wav2vec2-stable-linformer"))
    attention = teacher.wav2vec2.encoder.layers[0].attention
    names = {"q_proj": "query", "k_proj": "key", "v_proj": "value"}
    saved = {
        n: (getattr(attention, n).weight.clone(), getattr(attention, n).bias.clone())
        for n in [*names, "out_proj"]
    }
    convert(teacher, "linformer", init=init, **case.kwargs)
    host = teacher.wav2vec2.encoder.layers[0].attention
    for old, new in names.items():
        assert torch.equal(getattr(host.mixer, new).weight, saved[old][0])
        assert torch.equal(getattr(host.mixer, new).bias, saved[old][1])
    assert torch.equal(host.out_proj.weight, saved["out_proj"][0]) and torch.equal(
        host.out_proj.bias, saved["out_proj"][1]
    )


def assert_padding_invariant(model, padded: dict, items: list[dict], valid: list[int]) -> None:
    with torch.no_grad():
        together = model(**padded).last_hidden_state
        for i, (item, n) in enumerate(zip(items, valid, strict=True)):
            alone = model(**item).last_hidden_state
            torch.testing.assert_close(together[i, :n], alone[0, :n], rtol=1e-5, atol=1e-5)


def test_padding_invariance_wav2vec2_bimamba2(tmp_path):
    """Layer-norm feature encoder (wav2vec2-large-lv60 style): the whole student is padding invariant."""
    case = Case(Wav2Vec2ForCTC, Wav2Vec2Config(**LV60), "bimamba2", AUDIO_ATTENTION, MAMBA2)
    student = load_and_convert(save_teacher(case, tmp_path), "bimamba2", model_class=Wav2Vec2ForCTC, **MAMBA2)
    base = student.wav2vec2.eval()
    inputs = batch(case, lengths=(400, 250))
    frames = [18, 11]
    items = [{"input_values": inputs["input_values"][i : i + 1, :n]} for i, n in enumerate((400, 250))]
    assert_padding_invariant(base, inputs, items, frames)
    with torch.no_grad():  # control: without the mask the padding leaks into the short item's frames
        leaked = base(inputs["input_values"]).last_hidden_state[1, :11]
        assert not torch.allclose(leaked, base(**items[1]).last_hidden_state[0], atol=1e-3)


def test_group_norm_wav2vec2_mask_reaches_mixers(saved):
    """wav2vec2-base style (feat_extract_norm="group"): its processor returns no attention_mask, but the
    caller passes one and every mixer receives the frame mask; the encoder is then padding invariant."""
    case = CASES["wav2vec2-bimamba2"]
    student = load_and_convert(saved("wav2vec2-bimamba2"), model_class=Wav2Vec2ForCTC, **MAMBA2).eval()
    inputs = batch(case)
    seen = []
    for layer in student.wav2vec2.encoder.layers:
        layer.attention.register_forward_pre_hook(
            lambda m, a, kw: seen.append(kw["attention_mask"]), with_kwargs=True
        )
    with torch.no_grad():
        student(**inputs)
    frame_mask = student._get_feature_vector_attention_mask(18, inputs["attention_mask"])
    assert len(seen) == 2 and all(m.dtype == torch.bool and torch.equal(m, frame_mask) for m in seen)

    torch.manual_seed(2)
    hidden = torch.randn(2, 18, 32)
    items = [{"hidden_states": hidden[i : i + 1, :n].clone()} for i, n in enumerate((18, 11))]
    padded = {"hidden_states": hidden.clone(), "attention_mask": frame_mask}
    assert_padding_invariant(student.wav2vec2.encoder, padded, items, [18, 11])


def test_padding_invariance_roberta_linformer(saved):
    case = CASES["roberta-linformer"]
    student = load_and_convert(saved("roberta-linformer"), model_class=RobertaForSequenceClassification, k=8)
    base = student.roberta.eval()
    inputs = batch(case)
    items = [{"input_ids": inputs["input_ids"][i : i + 1, :n]} for i, n in enumerate((12, 7))]
    assert_padding_invariant(base, inputs, items, [12, 7])


def test_activation_checkpointing_keeps_the_padding_mask(tmp_path):
    """Checkpointed layers are re-run in backward; the mask is a call argument, so gradients are unchanged."""
    config = Wav2Vec2Config(
        vocab_size=12,
        hidden_dropout=0.0,
        activation_dropout=0.0,
        feat_proj_dropout=0.0,
        final_dropout=0.0,
        **AUDIO,
    )
    case = Case(Wav2Vec2ForCTC, config, "bimamba2", AUDIO_ATTENTION, MAMBA2)
    student = load_and_convert(save_teacher(case, tmp_path), model_class=Wav2Vec2ForCTC, **MAMBA2).train()
    inputs = batch(case)

    def gradients() -> dict[str, torch.Tensor]:
        student.zero_grad()
        student(**inputs).logits.pow(2).mean().backward()
        return {k: p.grad.clone() for k, p in student.named_parameters() if p.grad is not None}

    plain = gradients()
    student.activation_checkpointing_enable()
    checkpointed = gradients()
    assert plain.keys() == checkpointed.keys()
    for key, grad in plain.items():
        torch.testing.assert_close(checkpointed[key], grad, rtol=1e-5, atol=1e-7)


def test_wavlm_position_bias_path_is_gone_and_model_runs(saved):
    case = CASES["wavlm-bimamba2"]
    student = load_and_convert(saved("wavlm-bimamba2"), model_class=WavLMModel, **MAMBA2).eval()
    assert not any("rel_attn_embed" in k or "gru_rel_pos" in k for k in student.state_dict())
    with torch.no_grad():
        out = student(**batch(case), output_hidden_states=True)
    assert len(out.hidden_states) == 3 and torch.isfinite(out.last_hidden_state).all()


def test_causal_lm_student_refuses_kv_cache(saved):
    case = CASES["gpt_neox-mamba"]
    student = load_and_convert(saved("gpt_neox-mamba"), model_class=GPTNeoXForCausalLM, **case.kwargs).eval()
    assert student.config.use_cache is False
    ids = batch(case)["input_ids"]
    assert student(ids).logits.shape == (2, 12, 100)
    with pytest.raises(ValueError, match="no KV cache"):
        student(ids, use_cache=True)


def test_student_refuses_a_4d_mask_after_attn_implementation_change(saved):
    case = CASES["roberta-linformer"]
    student = load_and_convert(saved("roberta-linformer"), model_class=case.model_class, k=8)
    student.config._attn_implementation = "eager"
    with pytest.raises(ValueError, match="2-D padding mask"):
        student(**batch(case))


def test_errors(saved, tmp_path):
    gpt2 = GPT2Model(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=50))
    with pytest.raises(ValueError, match="gpt2") as err:
        convert(gpt2)
    assert all(t in str(err.value) for t in supported_model_types())
    assert set(supported_model_types()) >= {
        "wav2vec2",
        "hubert",
        "wavlm",
        "data2vec-audio",
        "bert",
        "roberta",
        "gpt_neox",
    }

    neox = GPTNeoXForCausalLM(GPTNeoXConfig(**TEXT))
    with pytest.raises(ValueError, match="causal LM"):
        convert(neox, "bimamba2")
    with pytest.raises(ValueError, match="causal LM"):
        convert(neox, "linformer")
    wav2vec2 = Wav2Vec2ForCTC(Wav2Vec2Config(vocab_size=12, **AUDIO))
    with pytest.raises(ValueError, match="unidirectional=True"):
        convert(wav2vec2, "mamba2")
    with pytest.raises(ValueError, match="max_len"):
        convert(wav2vec2, "linformer")
    with pytest.raises(ValueError, match="unknown mixer"):
        convert(wav2vec2, "retnet")
    with pytest.raises(ValueError, match="init"):
        convert(wav2vec2, "bimamba2", init="copy")
    convert(wav2vec2, "bimamba2", **MAMBA2)
    with pytest.raises(ValueError, match="already converted"):
        convert(wav2vec2, "bimamba2", **MAMBA2)

    missing = tmp_path / "no" / "such" / "model"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        load_and_convert(missing, "bimamba2")
    with pytest.raises(FileNotFoundError, match="student"):
        load_student(tmp_path / "student")
    folder = saved("hubert-bimamba2")
    with pytest.raises(ValueError, match="not a converted student"):
        load_student(folder)


# --- student_init: teacher with a Linformer student --------------------------------------------------------


class Wrapper(torch.nn.Module):
    """Holds the model at `.model`, as the recipes' encoder wrappers do (teacher and student alike)."""

    def __init__(self, model):
        super().__init__()
        self.model = model


@pytest.mark.parametrize(
    ("model_class", "config", "names", "kwargs"),
    [
        (
            RobertaForSequenceClassification,
            RobertaConfig(pad_token_id=1, **TEXT),
            {"query": "query", "key": "key", "value": "value"},
            dict(k=8),
        ),
        (
            Wav2Vec2ForCTC,
            Wav2Vec2Config(vocab_size=12, **AUDIO),
            {"query": "q_proj", "key": "k_proj", "value": "v_proj"},
            dict(k=8, max_len=64),
        ),
    ],
)
def test_student_init_from_teacher_copies_the_fine_tuned_qkv_into_linformer(
    model_class, config, names, kwargs
):
    """Conversion moves Q/K/V under `.mixer.`; student_init: teacher must still load the teacher's fine-tuned
    ones (the reference does), plus everything else whose name is unchanged."""
    torch.manual_seed(0)
    source = model_class(config)
    student = Wrapper(convert(model_class(config).eval(), "linformer", **kwargs))
    student.model.load_state_dict(source.state_dict(), strict=False)
    teacher = Wrapper(source)
    with torch.no_grad():  # "fine-tuning": every teacher tensor differs from the source's
        for p in teacher.parameters():
            p.add_(torch.randn_like(p))
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    fake_brain = SimpleNamespace(
        student=student, guidance=SimpleNamespace(teacher=SimpleNamespace(source="t"))
    )
    CALDBrain._init_student(fake_brain, teacher_state)

    own = student.state_dict()
    host = (
        "model.wav2vec2.encoder.layers.1.attention"
        if config.model_type == "wav2vec2"
        else ("model.roberta.encoder.layer.1.attention.self")
    )
    for role, old in names.items():
        for suffix in ("weight", "bias"):
            assert torch.equal(own[f"{host}.mixer.{role}.{suffix}"], teacher_state[f"{host}.{old}.{suffix}"])
    if config.model_type == "wav2vec2":  # the output projection keeps its name
        assert torch.equal(own[f"{host}.out_proj.weight"], teacher_state[f"{host}.out_proj.weight"])
    unchanged = [k for k in own if ".mixer." not in k]
    assert all(torch.equal(own[k], teacher_state[k]) for k in unchanged)
    # the Linformer sequence projections have no counterpart: they keep the student's own values
    projections = [k for k in own if "mixer." in k and "_projection" in k]
    assert projections and not any(k in teacher_state for k in projections)


def test_pythia_mamba_defaults_to_the_reference_sizes(saved, tmp_path):
    """The reference builds the Mamba blocks from mamba-2.8b's config and then sets the hidden size, so every
    Pythia student has d_inner 5120 and dt_rank 160 (not 2 x hidden and hidden / 16); recorded with the
    conversion, so load_student rebuilds the same sizes."""
    student = load_and_convert(saved("gpt_neox-mamba"), model_class=GPTNeoXForCausalLM, d_state=8)
    mixer = student.gpt_neox.layers[0].attention.mixer
    assert (mixer.d_inner, mixer.dt_rank) == (5120, 160)
    assert tuple(mixer.in_proj.weight.shape) == (2 * 5120, 32)
    assert tuple(mixer.x_proj.weight.shape) == (160 + 2 * 8, 5120)
    assert student.config.cald_conversion["mixer_kwargs"] == dict(d_state=8, d_inner=5120, dt_rank=160)
    student.save_pretrained(tmp_path / "student")
    again = load_student(tmp_path / "student").gpt_neox.layers[0].attention.mixer
    assert (again.d_inner, again.dt_rank) == (5120, 160)
    explicit = load_and_convert(saved("gpt_neox-mamba"), model_class=GPTNeoXForCausalLM, d_inner=64)
    assert explicit.gpt_neox.layers[0].attention.mixer.d_inner == 64
