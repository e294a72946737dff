"""The UNet's optional frame-rate path (`full_rate_channels`, `FullRatePath`): off by default (the paper's model and
earlier folders unchanged), starts equal when added to a trained UNet, trains, saves, and lets the network's output
reach every channel of every frame, which the patcher / unpatcher bottleneck alone does not."""

import sys
from pathlib import Path

import pytest
import torch
from conftest import assert_same_outputs

from mslddm.models.unet_1d_multisource import MultiSourceUNet1DModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
from train_msldm import with_conditioning, with_full_rate_path  # noqa: E402

# Width 16 folded by 4: the unpatcher reaches a frame of the 32 input channels through 16 / 4 = 4 channels.
NARROW = {"in_channels": 32, "channels": 16, "patch_factor": 4, "multipliers": (1, 2, 1), "factors": (2, 1),
          "num_blocks": (1, 1), "attentions": (False, True), "attention_heads": 2, "attention_features": 8,
          "resnet_groups": 4}


def narrow_model(**overrides):
    torch.manual_seed(0)
    return MultiSourceUNet1DModel(**{**NARROW, **overrides}).eval()


def frame_jacobian_rank(model, frame: int = 20, frames: int = 48) -> int:
    """Rank of d output[:, frame] / d input[:, frame]: how many directions of one frame the network can move."""
    x = torch.randn(1, NARROW["in_channels"], frames, generator=torch.Generator().manual_seed(1))

    def one_frame(column):
        y = x.clone()
        y[0, :, frame] = column
        return model(y, torch.tensor([0.1])).sample[0, :, frame]

    jacobian = torch.autograd.functional.jacobian(one_frame, x[0, :, frame].clone())
    return int(torch.linalg.matrix_rank(jacobian.double(), rtol=1e-6))


def test_off_by_default_and_the_state_dict_of_earlier_folders_is_unchanged():
    base = narrow_model()
    assert base.config.full_rate_channels == 0 and base.full_rate is None
    assert not any(name.startswith("full_rate.") for name in base.state_dict())
    with torch.device("meta"):
        assert MultiSourceUNet1DModel().full_rate is None  # the paper's model


def test_added_path_starts_equal_then_trains_and_saves(tmp_path):
    base = narrow_model()
    grown = with_full_rate_path(base, 12)
    assert grown.config.full_rate_channels == 12 and grown.full_rate is not None
    assert with_full_rate_path(grown, 12) is grown
    with pytest.raises(ValueError, match="full_rate_channels is 12, not 8"):
        with_full_rate_path(grown, 8)
    x, t = torch.randn(2, 32, 32), torch.tensor([0.1, -0.3])
    with torch.no_grad():
        torch.testing.assert_close(grown(x, t).sample, base(x, t).sample)  # zero-initialised output
    grown.train()
    grown(x, t).sample.square().mean().backward()
    assert grown.full_rate.to_out.weight.grad.abs().sum() > 0  # the path learns from the first step
    with torch.no_grad():
        grown.full_rate.to_out.weight.normal_(0, 0.1)
    grown.eval().save_pretrained(tmp_path)
    loaded = MultiSourceUNet1DModel.from_pretrained(tmp_path).eval()
    assert loaded.config.full_rate_channels == 12
    with torch.no_grad():
        changed = grown(x, t).sample
        assert (changed - base(x, t).sample).abs().max() > 1e-3
        assert_same_outputs(loaded(x, t).sample, changed)


def test_conditioning_and_the_path_combine():
    grown = with_conditioning(with_full_rate_path(narrow_model(), 8), 8)
    assert grown.config.full_rate_channels == 8 and grown.config.conditioning_channels == 8


def test_the_path_lets_the_output_reach_every_channel_of_a_frame():
    base = narrow_model()
    # Through the unpatcher alone a frame's output depends on 4 channels of 5 frames (its two 3-tap convs) and the
    # group norms' statistics: fewer directions than the frame's 32 channels.
    assert frame_jacobian_rank(base) < 28
    grown = with_full_rate_path(base, 16)
    with torch.no_grad():
        grown.full_rate.to_out.weight.normal_(0, 0.1)
    assert frame_jacobian_rank(grown) == 32


@pytest.mark.parametrize("channels", [-8, 6, 2.5])
def test_a_width_the_path_cannot_have_is_named(channels):
    with pytest.raises(ValueError, match="full_rate_channels must be 0 .* multiple of resnet_groups=4"):
        narrow_model(full_rate_channels=channels)
