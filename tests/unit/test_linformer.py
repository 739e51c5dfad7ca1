"""Linformer self-attention: per-item reference, padding invariance, projection sharing, errors."""

import math

import pytest
import torch
import torch.nn as nn

from cald_brain.mixers import LinformerSelfAttention
from cald_brain.mixers.linformer import LinformerProjection

HIDDEN, HEADS, MAX_LEN, K = 16, 4, 12, 5


def make_layer(share="none", shared_projection=None, **kwargs) -> LinformerSelfAttention:
    return LinformerSelfAttention(
        HIDDEN, HEADS, MAX_LEN, k=K, share=share, shared_projection=shared_projection, **kwargs
    )


def reference_one_item(layer: LinformerSelfAttention, hidden: torch.Tensor) -> torch.Tensor:
    """Linformer on one unpadded item (length, hidden), written out head by head."""
    length = hidden.shape[0]
    proj_k, proj_v = (
        (layer.key_projection.weight, layer.value_projection.weight)
        if layer.share == "none"
        else (layer.projection.weight,) * 2
    )
    keys = proj_k[:length].T @ layer.key(hidden) / math.sqrt(length)  # (k, hidden)
    values = proj_v[:length].T @ layer.value(hidden) / math.sqrt(length)
    queries = layer.query(hidden)
    heads = []
    for h in range(HEADS):
        cols = slice(h * layer.head_dim, (h + 1) * layer.head_dim)
        scores = queries[:, cols] @ keys[:, cols].T / math.sqrt(layer.head_dim)
        heads.append(torch.softmax(scores, dim=-1) @ values[:, cols])
    return torch.cat(heads, dim=-1)


@pytest.mark.parametrize("share", ["none", "kv", "layer"])
def test_matches_reference_for_one_item(share):
    torch.manual_seed(0)
    layer = make_layer(share, LinformerProjection(MAX_LEN, K) if share == "layer" else None).double()
    hidden = torch.randn(1, 10, HIDDEN, dtype=torch.float64)
    out = layer(hidden)
    assert out.shape == hidden.shape
    torch.testing.assert_close(out[0], reference_one_item(layer, hidden[0]), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("pass_mask", [True, False])
def test_padded_batch_equals_items_alone(pass_mask):
    torch.manual_seed(0)
    layer = make_layer().double()
    lengths = torch.tensor([MAX_LEN, 7, 1])
    hidden = torch.randn(3, MAX_LEN, HIDDEN, dtype=torch.float64) * 3  # the pad frames hold garbage too
    mask = torch.arange(MAX_LEN)[None] < lengths[:, None]
    out = layer(hidden, mask=mask) if pass_mask else layer(hidden, lengths=lengths)
    for i, length in enumerate(lengths.tolist()):
        alone = layer(hidden[i : i + 1, :length])
        torch.testing.assert_close(out[i : i + 1, :length], alone, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(alone[0], reference_one_item(layer, hidden[i, :length]))
        assert (out[i, length:] == 0).all()


def test_pad_frames_do_not_change_real_outputs_or_get_gradients():
    torch.manual_seed(0)
    layer = make_layer()
    hidden = torch.randn(2, 9, HIDDEN, requires_grad=True)
    lengths = torch.tensor([9, 6])
    out = layer(hidden, lengths=lengths)
    out.square().sum().backward()
    assert (hidden.grad[1, 6:] == 0).all() and (hidden.grad[1, :6] != 0).any()
    # Gradient on the projection rows: item 1 contributes nothing to rows >= 6, item 0 to all rows.
    assert layer.key_projection.weight.grad[:9].abs().sum(-1).min() > 0
    assert (layer.key_projection.weight.grad[9:] == 0).all()


def test_share_modes_create_the_expected_parameters():
    linear = {f"{name}.{kind}" for name in ("query", "key", "value") for kind in ("weight", "bias")}
    none = dict(make_layer("none").named_parameters())
    assert set(none) == linear | {"key_projection.weight", "value_projection.weight"}
    assert none["key_projection.weight"].shape == (MAX_LEN, K)
    assert set(dict(make_layer("kv").named_parameters())) == linear | {"projection.weight"}
    assert all(isinstance(getattr(make_layer(), name), nn.Linear) for name in ("query", "key", "value"))
    no_bias = make_layer(bias=False)
    assert all(getattr(no_bias, name).bias is None for name in ("query", "key", "value"))


def test_layer_mode_shares_one_tensor_across_layers():
    torch.manual_seed(0)
    shared = LinformerProjection(MAX_LEN, K)
    layers = nn.ModuleList([make_layer("layer", shared), make_layer("layer", shared)])
    assert layers[0].projection.weight is layers[1].projection.weight
    own = 3 * (HIDDEN * HIDDEN + HIDDEN)
    assert sum(p.numel() for p in layers.parameters()) == 2 * own + MAX_LEN * K
    # The shared tensor gets the sum of both layers' gradients: compare with untied copies ("kv" mode has the
    # same state-dict keys, so the tied weights load into it).
    untied = nn.ModuleList([make_layer("kv"), make_layer("kv")])
    untied.load_state_dict(layers.state_dict())
    hidden = torch.randn(2, 8, HIDDEN)
    for stack in (layers, untied):
        stack[1](stack[0](hidden)).square().sum().backward()
    expected = untied[0].projection.weight.grad + untied[1].projection.weight.grad
    torch.testing.assert_close(shared.weight.grad, expected)
    assert all(layer.projection.weight.grad.abs().sum() > 0 for layer in untied)


def test_too_long_input_names_max_len_and_the_fix():
    layer = make_layer()
    with pytest.raises(ValueError, match=rf"max_len={MAX_LEN}.*larger max_len.*truncate"):
        layer(torch.randn(1, MAX_LEN + 1, HIDDEN))


def test_configuration_errors():
    with pytest.raises(ValueError, match="shared_projection"):
        make_layer("layer")
    with pytest.raises(ValueError, match="shared_projection"):
        make_layer("kv", LinformerProjection(MAX_LEN, K))
    with pytest.raises(ValueError, match=r"\(max_len, k\)"):
        make_layer("layer", LinformerProjection(MAX_LEN, K + 1))
    with pytest.raises(ValueError, match="share must be one of"):
        make_layer("heads")
    with pytest.raises(ValueError, match="lengths"):
        make_layer()(torch.randn(2, 4, HIDDEN), lengths=torch.tensor([4, 5]))


def test_dropout_only_in_training():
    torch.manual_seed(0)
    layer = make_layer(dropout=0.5)
    hidden = torch.randn(2, 8, HIDDEN)
    layer.eval()
    torch.testing.assert_close(layer(hidden), layer(hidden))
    layer.train()
    assert not torch.allclose(layer(hidden), layer.eval()(hidden))
