"""cald_brain.models.long_audio: one whole recording through the encoder in pieces equals the plain forward
pass (feature encoder in both layouts, odd lengths, many pieces; teacher and BiMamba2 student; CTC and pooled
heads; a minute of audio in one call), BiMamba2 run in pieces with its state carried, and the
eager-attention guard."""

import pytest
import torch
from conftest import LAYOUTS, tiny_audio_checkpoint

from cald_brain.mixers import BiMamba2
from cald_brain.models import SpeechEncoder, SpeechModel
from cald_brain.models.long_audio import (
    SAMPLE_RATE,
    StreamingMoments,
    check_attention_fits,
    encode_features,
    frame_geometry,
)
from cald_brain.models.speech import normalize_padded

MIXER = {"d_state": 16, "headdim": 32}
# wav2vec2's seven convolutions (400-sample field, 320-sample stride) at the tiny width; the tiny default
# (two convolutions, 45 / 20) is the other geometry tested.
SEVEN_CONVS = dict(conv_dim=(16,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2))
GEOMETRIES = {"two_convs": {}, "seven_convs": SEVEN_CONVS}


def checkpoint(tmp_path, layout: str, geometry: str) -> str:
    return tiny_audio_checkpoint(tmp_path / f"{layout}-{geometry}", layout, 0.0, **GEOMETRIES[geometry])


def test_frame_geometry_of_wav2vec2():
    class Config:
        conv_kernel, conv_stride = SEVEN_CONVS["conv_kernel"], SEVEN_CONVS["conv_stride"]

    assert frame_geometry(Config) == (400, 320)


def test_streaming_moments_match_whole_tensor():
    """Pieces of uneven sizes, a large offset (where a sum of squares would lose the variance)."""
    torch.manual_seed(0)
    x = 1000.0 + torch.randn(3, 100_003)
    moments = StreamingMoments()
    for piece in x.split(777, dim=-1):
        moments.add(piece)
    var, mean = torch.var_mean(x.double(), dim=-1, correction=0)
    torch.testing.assert_close(moments.mean.double(), mean, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(moments.variance().double(), var, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("geometry", list(GEOMETRIES))
@pytest.mark.parametrize("n_samples", [4001, 16_000 * 3 + 123])
def test_chunked_feature_encoder_equals_whole(layout, geometry, n_samples, tmp_path):
    """Feature encoder + projection in pieces of 3 frames (lengths not a multiple of the stride; the last
    piece partial) equal the whole-input computation, with and without waveform normalisation."""
    model = SpeechEncoder(checkpoint(tmp_path, layout, geometry)).model.eval()
    torch.manual_seed(1)
    wav = 0.3 + torch.randn(1, n_samples)
    for normalize in (False, True):
        with torch.no_grad():
            whole = wav if not normalize else normalize_padded(wav, torch.ones_like(wav, dtype=torch.bool))
            expected = model.feature_projection(model.feature_extractor(whole).transpose(1, 2))[0]
            got = encode_features(model, wav, normalize, piece_frames=3)
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("piece", [7, 32, 100])
@pytest.mark.parametrize("options", [{}, {"residual_inside": True, "post_norm": True}])
def test_bimamba2_in_pieces_equals_forward(piece, options):
    """Pieces shorter than, equal to and longer than the scan chunk (rounded up to it), 203 steps (the last
    piece partial in both directions), conv and SSM state carried across pieces."""
    torch.manual_seed(5)
    mixer = BiMamba2(64, d_state=16, headdim=16, **options).eval()
    x = torch.randn(1, 203, 64)
    with torch.no_grad():
        torch.testing.assert_close(mixer.forward_in_pieces(x, piece), mixer(x), rtol=1e-4, atol=1e-5)


def speech_model(source: str, mixer: str | None, pooling: str | None) -> SpeechModel:
    encoder = SpeechEncoder(source, mixer, MIXER if mixer else None)
    torch.manual_seed(2)
    return SpeechModel(encoder, num_outputs=5, pooling=pooling).eval()


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("mixer", [None, "bimamba2"])
@pytest.mark.parametrize("pooling", [None, "attentive"])
def test_forward_long_equals_forward(layout, mixer, pooling, tmp_path):
    model = speech_model(checkpoint(tmp_path, layout, "seven_convs"), mixer, pooling)
    torch.manual_seed(3)
    wav = torch.randn(SAMPLE_RATE * 2 + 555)
    with torch.no_grad():
        plain = model(wav.unsqueeze(0), torch.ones(1))
    long = model.forward_long(wav, piece_seconds=0.1)  # 5-frame pieces
    assert long.logits.shape == plain.logits.shape
    torch.testing.assert_close(long.logits, plain.logits, rtol=1e-4, atol=1e-5)
    assert len(long.hidden_states) == 1
    torch.testing.assert_close(long.hidden_states[0], plain.hidden_states[-1], rtol=1e-4, atol=1e-5)
    assert bool(long.mask.all()) and long.mask.shape == plain.mask.shape


@pytest.mark.parametrize("pooling", [None, "mean"])
def test_a_minute_in_one_call_equals_forward(pooling, tmp_path):
    """60 s through a BiMamba2 student with a group-norm feature encoder (the two-pass case), 20 s pieces."""
    model = speech_model(checkpoint(tmp_path, "base", "seven_convs"), "bimamba2", pooling)
    torch.manual_seed(4)
    wav = torch.randn(1, SAMPLE_RATE * 60)
    with torch.no_grad():
        plain = model(wav, torch.ones(1))
    long = model.forward_long(wav)
    torch.testing.assert_close(long.logits, plain.logits, rtol=1e-4, atol=1e-5)


def test_forward_long_refuses_training_mode_and_batches(tmp_path):
    model = speech_model(checkpoint(tmp_path, "stable", "seven_convs"), None, None)
    with pytest.raises(ValueError, match="one recording"):
        model.forward_long(torch.randn(2, SAMPLE_RATE))
    with pytest.raises(ValueError, match="at least 400"):
        model.forward_long(torch.randn(399))
    with pytest.raises(RuntimeError, match="eval"):
        model.train().forward_long(torch.randn(SAMPLE_RATE))


def test_eager_attention_that_cannot_fit_is_refused(tmp_path):
    model = SpeechEncoder(checkpoint(tmp_path, "stable", "seven_convs")).model
    check_attention_fits(model, 10**8, torch.float32, torch.device("cpu"))  # SDPA: no score matrices
    model.config._attn_implementation = "eager"
    check_attention_fits(model, 1000, torch.float32, torch.device("cpu"))
    with pytest.raises(MemoryError, match="holds at most .* min in one call"):
        check_attention_fits(model, 10**8, torch.float32, torch.device("cpu"))  # 80 PB of scores
