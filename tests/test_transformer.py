"""The transformer denoiser (issue 24's second network shape): shapes and refusals, the adaLN-Zero start (the
denoiser starts as c_skip x), a pipeline that generates, saves and loads with it, and gradient checkpointing."""

import numpy as np
import pytest
import torch

from conftest import LATENT, STEMS, tiny_vae
from mslddm import EDMScheduler, MultiSourceLatentPipeline, MultiSourceTransformer1DModel


def tiny_transformer(**overrides):
    torch.manual_seed(2)
    return MultiSourceTransformer1DModel(**{"in_channels": len(STEMS) * LATENT, "patch_frames": 2, "width": 16,
                                            "depth": 2, "heads": 2, **overrides})


def test_shapes_start_and_refusals():
    model = tiny_transformer()
    x = torch.randn(3, len(STEMS) * LATENT, 10)
    out = model(x, torch.tensor([0.1, -0.5, 0.3])).sample
    assert out.shape == x.shape and model.length_multiple == 2
    assert torch.count_nonzero(out) == 0  # zero-initialised output layer: D(x) = c_skip x at the start
    with pytest.raises(ValueError, match="multiple of 2"):
        model(torch.randn(1, len(STEMS) * LATENT, 9), 0.0)
    with pytest.raises(ValueError, match="takes no `conditioning`"):
        model(x, 0.0, conditioning=torch.zeros(3, 4, 10))
    with pytest.raises(ValueError, match="position_kernel odd"):
        tiny_transformer(position_kernel=4)


def test_it_learns():
    """A few Adam steps towards one target bring the output closer (the zero-initialised gates and output open)."""
    model = tiny_transformer()
    x, target = torch.randn(2, len(STEMS) * LATENT, 8), torch.randn(2, len(STEMS) * LATENT, 8)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = (model(x, 0.2).sample - target).square().mean()
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert losses[-1] < 0.8 * losses[0]
    assert model.blocks[0].modulation[1].weight.abs().max() > 0


def test_a_pipeline_generates_saves_and_loads_with_it(tmp_path):
    pipe = MultiSourceLatentPipeline(vae=tiny_vae(), unet=tiny_transformer(), scheduler=EDMScheduler(),
                                     stem_names=STEMS)
    pipe.set_progress_bar_config(disable=True)
    torch.nn.init.normal_(pipe.unet.to_frames.weight, std=0.05)  # a trained-looking output, not zeros
    out = pipe(num_inference_steps=3, audio_length_in_s=0.5, generator=torch.Generator().manual_seed(0))
    assert out.stems.shape[:2] == (1, 4) and np.isfinite(out.stems).all()
    pipe.save_pretrained(tmp_path / "p")
    loaded = MultiSourceLatentPipeline.from_pretrained(tmp_path / "p")
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.unet).__name__ == "MultiSourceTransformer1DModel"
    again = loaded(num_inference_steps=3, audio_length_in_s=0.5, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(again.stems, out.stems, rtol=1e-4, atol=1e-6)
    partial = loaded(stems={"bass": out.stems[0, 0]}, input_sample_rate=pipe.sample_rate, num_inference_steps=3,
                     generator=torch.Generator().manual_seed(0))  # imputation: the given stem comes back exactly
    np.testing.assert_array_equal(partial.stems[0, 0], out.stems[0, 0])


def test_gradient_checkpointing_gives_the_same_gradients():
    x = torch.randn(2, len(STEMS) * LATENT, 8)
    grads = []
    for checkpointing in (False, True):
        model = tiny_transformer()
        torch.nn.init.normal_(model.to_frames.weight, std=0.1)
        if checkpointing:
            model.enable_gradient_checkpointing()
        model(x, 0.3).sample.square().mean().backward()
        grads.append(model.to_tokens.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])
