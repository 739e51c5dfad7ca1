"""The committed pretrained Wav2Vec2 samples (tests/samples/models/tiny-wav2vec2 and small-wav2vec2, made by
tools/samples/tiny_wav2vec2.py): each loads cleanly, has the architecture of its ``--size`` and its
documented size, and its weights really are pretrained - with its pretraining CTC head it transcribes the
mini TED-LIUM sample, which a random initialisation of the same architecture cannot."""

import json
from pathlib import Path

import jiwer
import pytest
import torch
from conftest import SMALL_WAV2VEC2, TINY_WAV2VEC2, load_repo_script
from transformers import AutoModel, Wav2Vec2Model

from cald_brain.data.audio import read_segment

tool = load_repo_script("tools/samples/tiny_wav2vec2.py", "tiny_wav2vec2")

# folder -> (its --size, weight-file bound, folder bound, CER bound on 12 TED-LIUM segments with its head).
# The folders are committed: together with the other samples they must stay under 20 MB.
MODELS = {
    TINY_WAV2VEC2: ("tiny", 3_000_000, 3_200_000, 0.45),  # 0.27 with the committed weights
    SMALL_WAV2VEC2: ("small", 4_000_000, 4_200_000, 0.2),  # 0.10 with the committed weights
}
folders = pytest.mark.parametrize("folder", list(MODELS), ids=lambda f: f.name)


def _load(folder: Path) -> Wav2Vec2Model:
    model, info = AutoModel.from_pretrained(folder, output_loading_info=True)
    assert {k: v for k, v in info.items() if v} == {}, f"unclean load: {info}"
    return model.eval()


@folders
def test_loads_with_documented_config_and_size(folder):
    size, max_weight_bytes, max_folder_bytes, _ = MODELS[folder]
    model = _load(folder)
    assert isinstance(model, Wav2Vec2Model)
    cfg = model.config
    assert {key: getattr(cfg, key) for key in tool.SIZES[size]} == tool.SIZES[size]
    assert cfg.feat_extract_norm == "layer" and cfg.do_stable_layer_norm  # uses the attention mask
    assert cfg.layerdrop == 0.0
    assert list(cfg.conv_stride) == [5, 2, 2, 2, 2, 2, 2] and len(cfg.conv_dim) == 7  # 320 samples/frame
    assert cfg.hidden_size % cfg.num_conv_pos_embedding_groups == 0
    assert sum(p.numel() for p in model.parameters()) < 1_500_000
    preprocessor = json.loads((folder / "preprocessor_config.json").read_text())
    assert preprocessor["sampling_rate"] == 16000
    assert preprocessor["do_normalize"] is True and preprocessor["return_attention_mask"] is True
    assert (folder / "model.safetensors").stat().st_size < max_weight_bytes
    assert sum(f.stat().st_size for f in folder.iterdir()) < max_folder_bytes
    readme = (folder / "README.md").read_text()
    assert "held-out" in readme and f"{sum(p.numel() for p in model.parameters()):,}" in readme


@folders
def test_hidden_states_shape_and_padding(folder):
    torch.manual_seed(0)
    model = _load(folder)
    wav = torch.randn(2, 16000)
    mask = torch.ones(2, 16000, dtype=torch.long)
    mask[1, 8000:] = 0
    with torch.no_grad():
        out = model(wav, attention_mask=mask, output_hidden_states=True)
        alone = model(wav[1:, :8000], output_hidden_states=True)
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1
    assert all(h.shape == (2, 49, model.config.hidden_size) for h in out.hidden_states)
    # The attention mask is honoured: the padded item's real frames match the unpadded forward.
    real = alone.last_hidden_state[0]
    torch.testing.assert_close(out.last_hidden_state[1, : len(real)], real, atol=1e-4, rtol=0)


def test_pretraining_corpus_is_disjoint_from_the_samples():
    train, heldout, source = tool.corpus_plan(num_train=1400, num_heldout=100, voices_per_sentence=2, seed=0)
    train_text, heldout_text = {u.text for u in train}, {u.text for u in heldout}
    assert len(train) == 2800 and len(heldout_text) == 100
    assert source["from_extra"] == 0  # tiny-wav2vec2's corpus lies inside the pool
    assert not train_text & heldout_text
    sample_text = {text for *_, text in tool.tedlium_sample_segments()}
    assert len(sample_text) > 20
    assert not (train_text | heldout_text) & sample_text
    assert all(set(text) <= set(tool.CHARS) for text in train_text)


def test_a_plan_read_back_is_checked_against_the_samples(tmp_path):
    """--plan re-runs the disjointness check where the model is trained (another Python, another pool)."""
    train, heldout, source = tool.corpus_plan(num_train=6, num_heldout=2, voices_per_sentence=2, seed=0)
    tool.write_plan(tmp_path / "plan.json", train, heldout, source)
    assert tool.read_plan(tmp_path / "plan.json")[:2] == (train, heldout)
    segment = next(text for *_, text in tool.tedlium_sample_segments() if len(text.split()) >= 4)
    leaking = [tool.Utterance(f"as we said {segment}", "en-us", 150, 50), *train]
    tool.write_plan(tmp_path / "leak.json", leaking, heldout, source)
    with pytest.raises(RuntimeError, match="segment of the mini TED-LIUM sample"):
        tool.read_plan(tmp_path / "leak.json")


def test_fit_steps_ends_in_time_on_an_eval_boundary():
    args = type("Args", (), {"train_minutes": 5.0, "steps": 30000, "eval_every": 500})()
    # 300 s - 20 s elapsed at 50 ms a step: 0.9 * 280 / 0.05 = 5040 more steps after step 300.
    assert tool.fit_steps(args, 300, 0.05, 20.0) == 5000
    assert tool.fit_steps(args, 300, 0.001, 20.0) == 30000  # never more than --steps
    assert tool.fit_steps(args, 300, 10.0, 20.0) == 300  # never fewer than done


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


@folders
def test_weights_are_pretrained_not_random(folder):
    """Greedy CTC on the mini TED-LIUM sample (sentences unseen in pretraining) with the saved head."""
    torch.manual_seed(0)
    head, vocabulary = tool.load_ctc_head(folder)
    assert vocabulary == ["<blank>", *tool.CHARS]
    segments = tool.tedlium_sample_segments()[:12]
    waves = [read_segment(path, start, stop) for path, start, stop, _ in segments]
    references = [text for *_, text in segments]
    model = _load(folder)
    cer = jiwer.cer(references, tool.transcribe(model, head, waves))
    torch.manual_seed(0)
    random_cer = jiwer.cer(references, tool.transcribe(Wav2Vec2Model(model.config), head, waves))
    assert cer < MODELS[folder][3], cer
    assert random_cer > 0.8, random_cer  # tiny: 0.86 to 2.6 over 12 random seeds
