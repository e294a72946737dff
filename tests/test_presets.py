"""Named model sizes: every preset builds, and the bundled pipeline's size fits the repository's budget."""

import pytest
import torch

from mslddm.presets import PRESETS, build_pipeline

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
