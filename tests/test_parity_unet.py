"""Numerical parity with the reference `UNet1d` (audio-diffusion-pytorch 0.0.43) through the conversion path.

Runs only where the reference package is installed (see the module docstring of unet_1d_multisource.py).
"""

import math

import pytest
import torch

ref_modules = pytest.importorskip("audio_diffusion_pytorch.modules")

from mslddm.conversion import UNET_PRESETS
from mslddm.models.unet_1d_multisource import MultiSourceUNet1DModel, convert_reference_unet_state_dict

# The paper's level structure at small widths.
PAPER_STRUCTURE = dict(
    {k: UNET_PRESETS["msldm"][k] for k in ("multipliers", "factors", "num_blocks", "attentions")},
    in_channels=8,
    channels=32,
    patch_factor=4,
    patch_blocks=1,
    attention_heads=2,
    attention_features=8,
    attention_multiplier=2,
    resnet_groups=8,
    kernel_multiplier_downsample=2,
    use_nearest_upsample=False,
    use_skip_scale=True,
    use_attention_bottleneck=True,
)
# Every other switch flipped: two patch blocks, odd factor, nearest upsampling, no skip scale, no bottleneck attention.
VARIANT = {
    "in_channels": 4,
    "channels": 16,
    "patch_factor": 2,
    "patch_blocks": 2,
    "multipliers": [1, 2, 1, 1],
    "factors": [1, 3, 2],
    "num_blocks": [1, 2, 1],
    "attentions": [True, False, True],
    "attention_heads": 2,
    "attention_features": 4,
    "attention_multiplier": 3,
    "resnet_groups": 4,
    "kernel_multiplier_downsample": 4,
    "use_nearest_upsample": True,
    "use_skip_scale": False,
    "use_attention_bottleneck": False,
}


def build_pair(config):
    torch.manual_seed(0)
    reference = ref_modules.UNet1d(**config, kernel_sizes_init=[1, 3, 7], use_context_time=True).eval()
    with torch.no_grad():  # move norm gains/biases off their 1/0 init so every parameter matters
        for p in reference.parameters():
            p.mul_(1 + 0.2 * torch.randn_like(p)).add_(0.02 * torch.randn_like(p))
    ours = MultiSourceUNet1DModel(**config).eval()
    lightning = {f"model.unet.{k}": v for k, v in reference.state_dict().items()}
    lightning.update({f"model.diffusion.net.{k}": v for k, v in reference.state_dict().items()})
    ours.load_state_dict(convert_reference_unet_state_dict({"state_dict": lightning}), strict=True)
    return reference, ours


@pytest.mark.parametrize("config", [PAPER_STRUCTURE, VARIANT], ids=["paper-structure", "variant"])
def test_matches_reference_unet(config):
    reference, ours = build_pair(config)
    assert reference.state_dict().keys() == ours.state_dict().keys()
    generator = torch.Generator().manual_seed(1)
    for sigmas, length in [((0.01, 0.5, 3.0), ours.length_multiple), ((0.2, 1.0), 4 * ours.length_multiple)]:
        c_noise = torch.log(torch.tensor(sigmas)) / 4
        x = torch.randn(len(sigmas), config["in_channels"], length, generator=generator)
        with torch.no_grad():
            expected = reference(x, c_noise)
            actual = ours(x, c_noise).sample
        assert expected.abs().max() > 0.1  # a non-trivial output, so a tolerance of 1e-5 means something
        assert (actual - expected).abs().max().item() <= 1e-5


def test_paper_parameter_counts_match_reference():
    for name, expected in [("msldm", 364_416_864), ("msldm-large", 441_314_656)]:
        config = {k: v for k, v in UNET_PRESETS[name].items()}
        with torch.device("meta"):
            reference = ref_modules.UNet1d(
                **config, resnet_groups=8, kernel_multiplier_downsample=2, kernel_sizes_init=[1, 3, 7],
                use_nearest_upsample=False, use_skip_scale=True, use_attention_bottleneck=True, use_context_time=True,
            )
            ours = MultiSourceUNet1DModel(**UNET_PRESETS[name])
        shapes = lambda m: {k: tuple(v.shape) for k, v in m.state_dict().items()}
        assert shapes(reference) == shapes(ours)
        assert sum(p.numel() for p in reference.parameters()) == expected
        assert sum(p.numel() for p in ours.parameters()) == expected
        assert math.prod(config["factors"]) * config["patch_factor"] == ours.length_multiple
