"""The committed tiny pretrained Wav2Vec2 (tests/samples/models/tiny-wav2vec2, made by
tools/samples/tiny_wav2vec2.py): it loads cleanly, has the documented architecture and size, and its weights
really are pretrained - with its pretraining CTC head it transcribes the mini TED-LIUM sample, which a
random initialisation of the same architecture cannot."""

import json

import jiwer
import torch
from conftest import TINY_WAV2VEC2 as MODEL
from conftest import load_repo_script
from transformers import AutoModel, Wav2Vec2Model

from cald_brain.data.audio import read_segment

MAX_WEIGHT_BYTES = 3_000_000  # the folder must stay small: it is committed
MAX_FOLDER_BYTES = 3_200_000


tool = load_repo_script("tools/samples/tiny_wav2vec2.py", "tiny_wav2vec2")


def _load() -> Wav2Vec2Model:
    model, info = AutoModel.from_pretrained(MODEL, output_loading_info=True)
    assert {k: v for k, v in info.items() if v} == {}, f"unclean load: {info}"
    return model.eval()


def test_loads_with_documented_config_and_size():
    model = _load()
    assert isinstance(model, Wav2Vec2Model)
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads) == (3, 128, 4)
    assert cfg.feat_extract_norm == "layer" and cfg.do_stable_layer_norm  # uses the attention mask
    assert cfg.layerdrop == 0.0
    assert list(cfg.conv_stride) == [5, 2, 2, 2, 2, 2, 2] and len(cfg.conv_dim) == 7  # 320 samples/frame
    assert cfg.hidden_size % cfg.num_conv_pos_embedding_groups == 0
    assert sum(p.numel() for p in model.parameters()) < 1_500_000
    preprocessor = json.loads((MODEL / "preprocessor_config.json").read_text())
    assert preprocessor["sampling_rate"] == 16000
    assert preprocessor["do_normalize"] is True and preprocessor["return_attention_mask"] is True
    assert (MODEL / "model.safetensors").stat().st_size < MAX_WEIGHT_BYTES
    assert sum(f.stat().st_size for f in MODEL.iterdir()) < MAX_FOLDER_BYTES
    assert "held-out" in (MODEL / "README.md").read_text()


def test_hidden_states_shape_and_padding():
    torch.manual_seed(0)
    model = _load()
    wav = torch.randn(2, 16000)
    mask = torch.ones(2, 16000, dtype=torch.long)
    mask[1, 8000:] = 0
    with torch.no_grad():
        out = model(wav, attention_mask=mask, output_hidden_states=True)
        alone = model(wav[1:, :8000], output_hidden_states=True)
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1
    assert all(h.shape == (2, 49, 128) for h in out.hidden_states)
    # The attention mask is honoured: the padded item's real frames match the unpadded forward.
    real = alone.last_hidden_state[0]
    torch.testing.assert_close(out.last_hidden_state[1, : len(real)], real, atol=1e-4, rtol=0)


def test_pretraining_corpus_is_disjoint_from_the_samples():
    train, heldout = tool.corpus_plan(num_train=1400, num_heldout=100, voices_per_sentence=2, seed=0)
    train_text, heldout_text = {u.text for u in train}, {u.text for u in heldout}
    assert len(train) == 2800 and len(heldout_text) == 100
    assert not train_text & heldout_text
    sample_text = {text for *_, text in tool.tedlium_sample_segments()}
    assert len(sample_text) > 20
    assert not (train_text | heldout_text) & sample_text
    assert all(set(text) <= set(tool.CHARS) for text in train_text)


def test_epoch_batches_cover_every_utterance_once():
    lengths = torch.randint(16000, 80000, (300,), generator=torch.Generator().manual_seed(0)).numpy()
    for epoch in (0, 1):
        batches = tool.epoch_batches(lengths, 16 * 16000, seed=0, epoch=epoch)
        assert sorted(i for b in batches for i in b) == list(range(300))
        assert all(len(b) * max(lengths[i] for i in b) <= 16 * 16000 for b in batches)
    first = tool.epoch_batches(lengths, 16 * 16000, seed=0, epoch=0)
    assert [max(lengths[i] for i in b) for b in first] == sorted(max(lengths[i] for i in b) for b in first)


def test_greedy_decode_collapses_repeats_then_drops_blanks():
    h, e, l, o, space = tool.encode_text("helo ")
    assert tool.greedy_decode([0, h, h, 0, e, l, 0, l, o, space, space, 0]) == "hello "
    assert tool.greedy_decode([l, l, l]) == "l"


def test_weights_are_pretrained_not_random():
    """Greedy CTC on the mini TED-LIUM sample (sentences unseen in pretraining) with the saved head."""
    torch.manual_seed(0)
    head, vocabulary = tool.load_ctc_head(MODEL)
    assert vocabulary == ["<blank>", *tool.CHARS]
    segments = tool.tedlium_sample_segments()[:12]
    waves = [read_segment(path, start, stop) for path, start, stop, _ in segments]
    references = [text for *_, text in segments]
    model = _load()
    cer = jiwer.cer(references, tool.transcribe(model, head, waves))
    torch.manual_seed(0)
    random_cer = jiwer.cer(references, tool.transcribe(Wav2Vec2Model(model.config), head, waves))
    assert cer < 0.45, cer  # 0.27 with the committed weights (README: 29.9 % on all 35)
    assert random_cer > 0.8, random_cer  # 0.86 to 2.6 over 12 random seeds
