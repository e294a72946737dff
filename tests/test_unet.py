"""MultiSourceUNet1DModel: sizes of the paper's models, shapes, batch independence, save/load, input checks."""

import math

import pytest
import torch
from conftest import assert_same_outputs, assert_same_weights

from mslddm.conversion import UNET_PRESETS
from mslddm.models.unet_1d_multisource import MultiSourceUNet1DModel, convert_reference_unet_state_dict

TINY = {
    "in_channels": 8,
    "channels": 16,
    "patch_factor": 2,
    "multipliers": (1, 2, 1),
    "factors": (2, 2),
    "num_blocks": (1, 1),
    "attentions": (False, True),
    "attention_heads": 2,
    "attention_features": 8,
    "resnet_groups": 4,
}


def tiny_model(**overrides):
    torch.manual_seed(0)
    return MultiSourceUNet1DModel(**{**TINY, **overrides}).eval()


def num_parameters(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "name, expected", [("msldm", 364_416_864), ("msldm-large", 441_314_656)]
)
def test_paper_parameter_counts(name, expected):
    with torch.device("meta"):
        model = MultiSourceUNet1DModel(**UNET_PRESETS[name])
    assert num_parameters(model) == expected


def test_defaults_are_the_paper_model():
    with torch.device("meta"):
        default = MultiSourceUNet1DModel()
    assert num_parameters(default) == 364_416_864
    assert default.config.multipliers == [1, 2, 2, 2, 1, 1, 1]
    assert default.length_multiple == 64
    # The reference's time mapping: 256 learned frequencies -> 513 features -> width 2048.
    assert default.to_time[0][0].weights.shape == (256,)
    assert default.to_time[0][1].weight.shape == (2048, 513)


def test_forward_shapes_and_return_types():
    model = tiny_model()
    assert model.length_multiple == 2 * 4
    x = torch.randn(2, 8, 32)
    with torch.no_grad():
        out = model(x, torch.tensor([-0.5, 0.2]))
        (as_tuple,) = model(x, torch.tensor([-0.5, 0.2]), return_dict=False)
    assert out.sample.shape == x.shape
    assert torch.equal(out.sample, as_tuple)
    assert torch.isfinite(out.sample).all()


def test_timestep_forms_agree_and_matter():
    model = tiny_model()
    x = torch.randn(3, 8, 16)
    with torch.no_grad():
        by_float = model(x, 0.3).sample
        by_scalar = model(x, torch.tensor(0.3)).sample
        by_batch = model(x, torch.full((3,), 0.3)).sample
        other = model(x, -1.0).sample
    torch.testing.assert_close(by_float, by_scalar, rtol=0, atol=0)
    torch.testing.assert_close(by_float, by_batch, rtol=0, atol=0)
    assert (by_float - other).abs().max() > 1e-4


def test_batch_independence():
    model = tiny_model()
    x = torch.randn(3, 8, 24)
    c_noise = torch.tensor([-1.0, 0.0, 0.25])
    with torch.no_grad():
        batched = model(x, c_noise).sample
        single = torch.cat([model(x[i : i + 1], c_noise[i : i + 1]).sample for i in range(3)])
    torch.testing.assert_close(batched, single, rtol=0, atol=1e-5)
    # The other items do not leak in: changing item 0 leaves items 1, 2 alone.
    x2 = x.clone()
    x2[0] += 1.0
    with torch.no_grad():
        changed = model(x2, c_noise).sample
    torch.testing.assert_close(changed[1:], batched[1:], rtol=0, atol=1e-5)
    assert (changed[0] - batched[0]).abs().max() > 1e-4


def test_save_load_round_trip(tmp_path):
    model = tiny_model(use_nearest_upsample=True, patch_blocks=2, factors=(3, 1))
    model.save_pretrained(tmp_path)
    loaded = MultiSourceUNet1DModel.from_pretrained(tmp_path).eval()
    assert list(loaded.config.multipliers) == [1, 2, 1]
    assert list(loaded.config.attentions) == [False, True]
    assert loaded.config.patch_blocks == 2 and loaded.length_multiple == 4 * 3
    assert_same_weights(loaded, model)
    x = torch.randn(2, 8, 24)
    with torch.no_grad():
        assert_same_outputs(loaded(x, 0.1).sample, model(x, 0.1).sample)


@pytest.mark.parametrize(
    "shape, match",
    [((2, 7, 32), r"\(2, 7, 32\)"), ((2, 8, 30), "multiple of length_multiple=8"), ((8, 32), r"\(8, 32\)")],
)
def test_bad_sample_shapes_raise(shape, match):
    with pytest.raises(ValueError, match=match):
        tiny_model()(torch.randn(shape), 0.0)


def test_bad_timestep_shape_raises():
    with pytest.raises(ValueError, match="timestep"):
        tiny_model()(torch.randn(2, 8, 16), torch.zeros(3))


def test_inconsistent_level_lists_raise():
    with pytest.raises(ValueError, match="multipliers"):
        MultiSourceUNet1DModel(**{**TINY, "num_blocks": (1, 1, 1)})


def test_gradient_checkpointing_same_gradients():
    x, c_noise = torch.randn(2, 8, 16), torch.tensor([0.1, -0.3])

    def gradients(model):
        model.zero_grad()
        model(x, c_noise).sample.square().mean().backward()
        return {name: p.grad.clone() for name, p in model.named_parameters()}

    model = tiny_model()
    reference = gradients(model)
    calls = []

    def counting_checkpoint(module, *args):
        calls.append(type(module).__name__)
        return torch.utils.checkpoint.checkpoint(module.__call__, *args, use_reentrant=False)

    model.enable_gradient_checkpointing(gradient_checkpointing_func=counting_checkpoint)
    assert model.is_gradient_checkpointing
    checkpointed = gradients(model)
    assert {"ResnetBlock1d", "TransformerBlock1d", "PatchBlock", "UnpatchBlock"} <= set(calls)
    for name in reference:
        torch.testing.assert_close(checkpointed[name], reference[name], rtol=1e-5, atol=1e-6)

    model.disable_gradient_checkpointing()
    calls.clear()
    gradients(model)
    assert calls == []


def test_convert_reference_state_dict_from_lightning_keys():
    model = tiny_model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    lightning = {"state_dict": {
        **{f"model.unet.{k}": v + 1 for k, v in state.items()},
        **{f"model.diffusion.net.{k}": v for k, v in state.items()},
    }}
    converted = convert_reference_unet_state_dict(lightning)
    assert converted.keys() == state.keys()
    model.load_state_dict(converted, strict=True)
    key = "to_time.0.0.weights"
    torch.testing.assert_close(model.state_dict()[key], state[key] + 1)
    # A bare reference state dict passes through unchanged.
    assert convert_reference_unet_state_dict(state).keys() == state.keys()


def test_attention_is_scaled_dot_product_with_fp32_softmax_equivalent():
    """The attention core matches the explicit softmax(q k^T / sqrt(d)) v of the reference formula."""
    model = tiny_model()
    attention = model.downsamples[1].transformer.attention.fn.attention
    q, k, v = (torch.randn(2, 5, 16) for _ in range(3))
    heads = lambda t: t.view(2, 5, 2, 8).transpose(1, 2)
    weights = (heads(q) @ heads(k).transpose(-1, -2) / math.sqrt(8)).softmax(-1)
    expected = attention.to_out((weights @ heads(v)).transpose(1, 2).reshape(2, 5, 16))
    torch.testing.assert_close(attention(q, k, v), expected, rtol=0, atol=1e-5)
