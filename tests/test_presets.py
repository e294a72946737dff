"""Named model sizes (data) and the factory: every preset builds, the paper's sizes are exact, and the bundled
pipeline's size fits the repository's budget."""

import pytest
import torch

from mslddm.factory import build_pipeline, build_unet, unet_config
from mslddm.presets import PRESETS

BUNDLE_LIMIT_BYTES = 40 * 10**6  # a bundled pipeline under pipelines/ is at most 40 MB (fp16 weights)


def parameters(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_builds_for_any_stems(preset):
    with torch.device("meta"):
        pipe = build_pipeline(preset, stem_names=["vocals", "keys", "bass"])
    assert pipe.unet.config.in_channels == 3 * pipe.vae.config.latent_channels
    assert pipe.stem_names == ["vocals", "keys", "bass"]


def test_small_preset_fits_the_bundle_budget_in_fp16():
    with torch.device("meta"):
        pipe = build_pipeline("small")
    fp16_bytes = 2 * (parameters(pipe.unet) + parameters(pipe.vae))
    assert fp16_bytes < BUNDLE_LIMIT_BYTES - 10**6  # room for configs and the model card


def test_unknown_preset_is_named():
    with pytest.raises(ValueError, match="'huge'"):
        build_pipeline("huge")


def test_factory_builds_the_paper_unets_exactly():
    with torch.device("meta"):
        msldm = build_unet("msldm", in_channels=320)
        large = build_unet("msldm-large", in_channels=160)
    assert parameters(msldm) == 364_416_864
    assert large.config.in_channels == 160 and large.config.attention_features == 128
    assert large.length_multiple == 16 * 16


def test_presets_are_data():
    """presets.py states only what differs from the constructors: the paper's MSLDM is the defaults, once."""
    assert PRESETS["msldm"]["unet"] == {} and PRESETS["msldm"]["vae"] == {}
    config = unet_config("msldm", in_channels=320)
    assert config["multipliers"] == [1, 2, 2, 2, 1, 1, 1] and config["attention_heads"] == 12


def test_unknown_preset_and_missing_waveform_unet_are_named():
    with pytest.raises(ValueError, match="'huge'"):
        build_unet("huge", in_channels=8)
    with pytest.raises(ValueError, match="waveform_unet"):
        build_unet("msldm-large", in_channels=4, entry="waveform_unet")
