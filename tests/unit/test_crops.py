"""cald_brain.data.crops: random fixed-length training crops."""

import pytest
import speechbrain as sb
import torch

from cald_brain.data.crops import crop_pipeline, random_crop


def test_random_crop_is_a_window_of_the_signal():
    signal = torch.arange(100.0)
    starts = set()
    for seed in range(20):
        crop = random_crop(signal, 10, torch.Generator().manual_seed(seed))
        assert torch.equal(crop, torch.arange(crop[0].item(), crop[0].item() + 10))
        starts.add(int(crop[0]))
    assert len(starts) > 5 and min(starts) >= 0 and max(starts) <= 90
    assert torch.equal(random_crop(signal[:7], 10), signal[:7])  # shorter: whole
    with pytest.raises(ValueError, match="positive"):
        random_crop(signal, 0)


def test_crop_pipeline_replaces_sig_in_a_dataset():
    data = sb.dataio.dataset.DynamicItemDataset({"a": {"n": 300}, "b": {"n": 50}})

    @sb.utils.data_pipeline.takes("n")
    @sb.utils.data_pipeline.provides("sig")
    def load(n):
        return torch.arange(float(n))

    data.add_dynamic_item(load)
    data.add_dynamic_item(crop_pipeline(seconds=0.1, sample_rate=1000))
    data.set_output_keys(["id", "sig"])
    lengths = {item["id"]: len(item["sig"]) for item in data}
    assert lengths == {"a": 100, "b": 50}
