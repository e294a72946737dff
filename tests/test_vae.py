import math

import pytest
import torch
from conftest import assert_same_outputs, assert_same_weights

from mslddm.models.autoencoder_source import (
    DiagonalGaussian,
    Snake1d,
    SourceVAE,
    SourceVAEDecoderOutput,
    SourceVAEEncoderOutput,
    WNConv1d,
    WNConvTranspose1d,
)

TINY = {"encoder_dim": 4, "latent_channels": 8, "decoder_dim": 16}


@pytest.fixture(scope="module")
def paper_vae():
    with torch.device("meta"):
        return SourceVAE()


@pytest.fixture
def tiny():
    """A tiny VAE with the paper's rates; alphas moved off 1, g off ||v|| and biases off 0 so every parameter
    matters."""
    torch.manual_seed(0)
    vae = SourceVAE(**TINY).eval()
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if name.endswith("alpha"):
                p.uniform_(0.5, 2.0)
            elif name.endswith("weight_g"):
                p.mul_(torch.empty_like(p).uniform_(0.5, 1.5))
            elif name.endswith("bias"):
                p.uniform_(-0.1, 0.1)
    return vae


def count(module):
    return sum(p.numel() for p in module.parameters())


# ------------------------------------------------------------------------------------------------------------
# The paper's configuration (meta device: no memory, no compute)
# ------------------------------------------------------------------------------------------------------------
def test_paper_parameter_count(paper_vae):
    assert count(paper_vae) == 61_050_402
    assert count(paper_vae.encoder) == 18_865_600  # UPSTREAM.md: 18.87M
    assert count(paper_vae.decoder) == 42_184_802  # 42.18M


def test_paper_state_dict_matches_released_checkpoint_layout(paper_vae):
    state = paper_vae.state_dict()
    assert len(state) == 238
    shapes = {
        "encoder.block.0.weight_g": (64, 1, 1),
        "encoder.block.0.weight_v": (64, 1, 7),
        "encoder.block.1.block.0.block.0.alpha": (1, 32 * 2, 1),
        "encoder.block.1.block.0.block.1.weight_v": (64, 64, 7),
        "encoder.block.4.block.4.weight_v": (1024, 512, 16),
        "encoder.block.5.alpha": (1, 1024, 1),
        "encoder.block.6.weight_v": (160, 1024, 3),
        "encoder.block.6.bias": (160,),
        "decoder.model.0.weight_v": (1536, 80, 7),
        # ConvTranspose1d weight is (in, out, k); torch's weight_norm(dim=0) keeps one g per *input* channel.
        "decoder.model.1.block.1.weight_g": (1536, 1, 1),
        "decoder.model.1.block.1.weight_v": (1536, 768, 16),
        "decoder.model.4.block.4.block.3.weight_v": (96, 96, 1),
        "decoder.model.5.alpha": (1, 96, 1),
        "decoder.model.6.weight_v": (1, 96, 7),
    }
    assert {k: tuple(state[k].shape) for k in shapes} == shapes
    assert not any(k.startswith("decoder.model.7") or k.endswith(".weight") for k in state)


def test_paper_length_arithmetic(paper_vae):
    assert paper_vae.hop_length == 320
    assert paper_vae.num_frames(327672) == 1024
    assert paper_vae.num_samples(1024) == 327672
    assert all(paper_vae.num_samples(f) == 320 * f - 8 for f in (1, 2, 64, 827))
    with torch.no_grad():
        latents = paper_vae.encode(torch.empty(1, 1, 327672, device="meta")).latent_dist.mean
        assert latents.shape == (1, 80, 1024)
        assert paper_vae.decode(latents).sample.shape == (1, 1, 327672)
    # Receptive fields, in latent frames, from the conv arithmetic (tight: see test_tiling_overlap_is_tight).
    assert (paper_vae.encoder_context_frames(), paper_vae.decoder_context_frames()) == (8, 10)


@pytest.mark.parametrize("rates", [((2, 4, 5, 8), (8, 5, 4, 2)), ((3, 2), (2, 3)), ((5,), (5,))])
def test_length_arithmetic_matches_real_shapes(rates):
    torch.manual_seed(0)
    vae = SourceVAE(
        encoder_dim=2, encoder_rates=rates[0], latent_channels=2, decoder_dim=16, decoder_rates=rates[1]
    )
    hop = math.prod(rates[0])
    with torch.no_grad():
        for samples in (hop, 3 * hop - 1, 4 * hop + 1, 7 * hop):
            assert vae.encode(torch.zeros(1, 1, samples)).latent_dist.mean.shape[-1] == vae.num_frames(
                samples
            )
        for frames in (1, 2, 5):
            assert vae.decode(torch.zeros(1, 2, frames)).sample.shape[-1] == vae.num_samples(frames)


# ------------------------------------------------------------------------------------------------------------
# Layers
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [WNConv1d, WNConvTranspose1d])
def test_weight_norm_is_torchs(cls):
    torch.manual_seed(0)
    conv = cls(3, 5, kernel_size=4, stride=2, padding=1)
    assert conv.weight_g.shape == (conv.weight_v.shape[0], 1, 1)
    torch.testing.assert_close(conv.weight, conv.weight_v)  # g = ||v|| at init, as torch's weight_norm
    with torch.no_grad():
        conv.weight_g.mul_(torch.rand_like(conv.weight_g) + 0.5)
    # torch._weight_norm is what torch.nn.utils.weight_norm(dim=0) computes for both conv kinds.
    torch.testing.assert_close(conv.weight, torch._weight_norm(conv.weight_v, conv.weight_g, 0))
    reference = (torch.nn.Conv1d if cls is WNConv1d else torch.nn.ConvTranspose1d)(
        3, 5, 4, stride=2, padding=1
    )
    with torch.no_grad():
        reference.weight.copy_(conv.weight)
        reference.bias.copy_(conv.bias)
    x = torch.randn(2, 3, 11)
    torch.testing.assert_close(conv(x), reference(x))
    assert conv(x).shape[-1] == conv.output_length(11)


def test_fresh_vae_has_zero_biases_and_maps_silence_to_the_zero_latent():
    """DAC's init: conv biases start at 0, so a fresh encoder's latent is all signal (no constant offset that would
    drown quiet stems) and silence encodes to mean 0, logvar 0."""
    torch.manual_seed(0)
    vae = SourceVAE(**TINY)
    biases = [name for name, _ in vae.named_parameters() if name.endswith("bias")]
    assert len(biases) > 20 and all(not vae.get_parameter(name).any() for name in biases)
    posterior = vae.encode(torch.zeros(1, 1, 3200)).latent_dist
    assert not posterior.mean.any() and not posterior.logvar.any()
    assert vae.encode(0.01 * torch.randn(1, 1, 3200)).latent_dist.mean.abs().max() > 0


def test_snake_formula():
    snake = Snake1d(2)
    with torch.no_grad():
        snake.alpha.copy_(torch.tensor([1.0, 2.0]).view(1, 2, 1))
    x = torch.tensor([[[0.5, -1.0], [0.5, -1.0]]])
    expected = torch.tensor(
        [
            [
                [0.5 + math.sin(0.5) ** 2, -1.0 + math.sin(-1.0) ** 2],
                [0.5 + math.sin(1.0) ** 2 / 2, -1.0 + math.sin(-2.0) ** 2 / 2],
            ]
        ]
    )
    torch.testing.assert_close(snake(x), expected)


# ------------------------------------------------------------------------------------------------------------
# Tiling and slicing
# ------------------------------------------------------------------------------------------------------------
def untiled_and_tiled(vae, fn, x, tile_frames, overlap_frames=None):
    with torch.no_grad():
        vae.disable_tiling()
        reference = fn(x)
        vae.enable_tiling(tile_frames=tile_frames, overlap_frames=overlap_frames)
        return reference, fn(x)


def assert_close_to(actual, reference, tol=1e-5):
    assert actual.shape == reference.shape
    torch.testing.assert_close(actual, reference, rtol=0, atol=tol * max(1.0, reference.abs().max().item()))


def test_tiled_decode_equals_untiled(tiny):
    calls = []
    tiny.decoder.register_forward_hook(lambda *args: calls.append(1))
    latents = torch.randn(2, 8, 70)
    reference, tiled = untiled_and_tiled(tiny, lambda z: tiny.decode(z).sample, latents, tile_frames=25)
    assert len(calls) > 1 + 5  # one untiled call, then many tiles
    assert_close_to(tiled, reference)


def test_tiled_encode_equals_untiled(tiny):
    audio = torch.randn(2, 1, 70 * 320 + 123)  # not a whole number of frames
    reference, tiled = untiled_and_tiled(tiny, lambda x: tiny.encode(x).latent_dist.parameters, audio, 25)
    assert reference.shape == (2, 16, 70)
    assert_close_to(tiled, reference)


def dependency_range(fn, x, output_index):
    """First and last input positions (last axis) whose gradient at one output position is non-zero."""
    x = x.clone().requires_grad_(True)
    fn(x)[..., output_index].sum().backward()
    nonzero = x.grad.abs().sum(dim=tuple(range(x.ndim - 1))).nonzero()
    return nonzero.min().item(), nonzero.max().item()


def test_receptive_fields_match_autograd(tiny):
    """The span arithmetic behind the tile overlaps equals the true dependency range, found by backprop."""
    vae, hop, f = tiny.double(), 320, 30
    first, _ = dependency_range(vae.decoder, torch.randn(1, 8, 60, dtype=torch.float64), f * hop)
    _, last = dependency_range(vae.decoder, torch.randn(1, 8, 60, dtype=torch.float64), f * hop - 1)
    assert (first, last) == (
        vae.decoder.input_span(f * hop, f * hop)[0],
        vae.decoder.input_span(f * hop - 1, f * hop - 1)[1],
    )
    assert max(f - first, last + 1 - f) == vae.decoder_context_frames() == 10
    first, last = dependency_range(vae.encoder, torch.randn(1, 1, 60 * hop, dtype=torch.float64), f)
    assert (first, last) == vae.encoder.input_span(f, f)
    assert max(math.ceil((f * hop - first) / hop), math.ceil((last + 1 - (f + 1) * hop) / hop)) == 8
    assert vae.encoder_context_frames() == 8


def test_too_small_overlap_breaks_tiling(tiny):
    """Guards the tiling tests above against passing vacuously."""
    latents = torch.randn(1, 8, 70)
    reference, tiled = untiled_and_tiled(tiny, lambda z: tiny.decode(z).sample, latents, 25, overlap_frames=3)
    assert (tiled - reference).abs().max() > 1e-3


def test_tiling_default_and_validation(tiny):
    assert tiny.use_tiling and tiny.tile_frames == 1024  # 12 s at 22050 Hz = 827 frames: one tile
    with pytest.raises(ValueError, match="tile_frames=20"):
        tiny.enable_tiling(tile_frames=20)  # overlap 10 on each side leaves nothing
    with pytest.raises(ValueError, match="overlap_frames"):
        tiny.enable_tiling(tile_frames=20, overlap_frames=0)


def test_slicing_equals_batched(tiny):
    audio = torch.randn(3, 1, 6 * 320)
    with torch.no_grad():
        posterior = tiny.encode(audio).latent_dist
        decoded = tiny.decode(posterior.mean).sample
        tiny.enable_slicing()
        assert_close_to(tiny.encode(audio).latent_dist.parameters, posterior.parameters)
        assert_close_to(tiny.decode(posterior.mean).sample, decoded)


# ------------------------------------------------------------------------------------------------------------
# Posterior
# ------------------------------------------------------------------------------------------------------------
def test_diagonal_gaussian_split_clamp_and_kl():
    mean = torch.tensor([[[0.5, -1.0], [2.0, 0.0]]])  # (B=1, C=2, T=2)
    logvar = torch.tensor([[[0.0, math.log(4.0)], [-40.0, 25.0]]])
    dist = DiagonalGaussian(torch.cat([mean, logvar], dim=1))
    clamped = torch.tensor([[[0.0, math.log(4.0)], [-30.0, 20.0]]])
    torch.testing.assert_close(dist.mean, mean)
    torch.testing.assert_close(dist.mode(), mean)
    torch.testing.assert_close(dist.logvar, clamped)
    torch.testing.assert_close(dist.var, clamped.exp())
    torch.testing.assert_close(dist.std, (clamped / 2).exp())
    # By hand, per element: mean^2 + var - 1 - logvar, then 0.5 * the mean of the four.
    terms = [
        0.25 + 1 - 1 - 0,
        1 + 4 - 1 - math.log(4.0),
        4 + math.exp(-30) - 1 + 30,
        0 + math.exp(20) - 1 - 20,
    ]
    expected = torch.tensor([0.5 * sum(terms) / 4])
    torch.testing.assert_close(dist.kl(), expected)
    assert dist.kl().shape == (1,)
    two = DiagonalGaussian(torch.cat([torch.cat([mean, logvar], 1), torch.zeros(1, 4, 2)]), -1.0, 1.0)
    torch.testing.assert_close(two.kl()[1], torch.tensor(0.0))
    assert two.logvar.min() == -1.0 and two.logvar.max() == 1.0


def test_posterior_sampling_is_reproducible_per_item():
    params = torch.randn(3, 8, 5)
    dist = DiagonalGaussian(params)
    a = dist.sample(torch.Generator().manual_seed(7))
    b = dist.sample(torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, dist.sample(torch.Generator().manual_seed(8)))
    batch = dist.sample([torch.Generator().manual_seed(s) for s in (1, 2, 3)])
    alone = DiagonalGaussian(params[2:]).sample([torch.Generator().manual_seed(3)])
    torch.testing.assert_close(batch[2:], alone)  # item 2 does not depend on the rest of the batch
    eps = torch.randn(1, 4, 5, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(alone, dist.mean[2:] + dist.std[2:] * eps)


# ------------------------------------------------------------------------------------------------------------
# Model API
# ------------------------------------------------------------------------------------------------------------
def test_forward_outputs(tiny):
    audio = torch.randn(2, 1, 4 * 320)
    with torch.no_grad():
        encoded = tiny.encode(audio)
        assert isinstance(encoded, SourceVAEEncoderOutput)
        posterior = encoded.latent_dist
        assert posterior.mean.shape == (2, 8, 4)
        decoded = tiny.decode(posterior.mean)
        assert isinstance(decoded, SourceVAEDecoderOutput) and decoded.sample.shape == (2, 1, 4 * 320 - 8)
        torch.testing.assert_close(tiny(audio).sample, decoded.sample)
        (reconstruction,) = tiny(audio, return_dict=False)
        torch.testing.assert_close(reconstruction, decoded.sample)
        g = torch.Generator().manual_seed(0)
        sampled = tiny(audio, sample_posterior=True, generator=g).sample
        expected = tiny.decode(posterior.sample(torch.Generator().manual_seed(0))).sample
        torch.testing.assert_close(sampled, expected)
        assert tiny.encode(audio, return_dict=False)[0].mean.shape == (2, 8, 4)


def test_save_and_load_round_trip(tiny, tmp_path):
    tiny.save_pretrained(tmp_path)
    loaded = SourceVAE.from_pretrained(tmp_path).eval()
    assert loaded.config.encoder_rates == [2, 4, 5, 8] and loaded.config.latent_channels == 8
    assert loaded.hop_length == 320
    audio = torch.randn(1, 1, 5 * 320)
    assert_same_weights(loaded, tiny)
    with torch.no_grad():
        assert_same_outputs(loaded(audio).sample, tiny(audio).sample)


@pytest.mark.parametrize(
    "method, shape",
    [
        ("encode", (2, 1000)),
        ("encode", (2, 3, 1000)),
        ("encode", (1, 1, 2, 1000)),
        ("decode", (2, 5, 10)),
        ("decode", (8, 10)),
    ],
)
def test_bad_input_shapes_raise(tiny, method, shape):
    with pytest.raises(ValueError, match=str(shape).replace("(", r"\(").replace(")", r"\)")):
        getattr(tiny, method)(torch.zeros(shape))


def test_too_short_inputs_and_bad_configs_raise(tiny):
    with pytest.raises(ValueError, match="too short"):
        tiny.encode(torch.zeros(1, 1, 100))
    with pytest.raises(ValueError, match="frame"):
        tiny.decode(torch.zeros(1, 8, 0))
    with pytest.raises(ValueError, match="decoder_rates"):
        SourceVAE(encoder_dim=2, latent_channels=2, decoder_dim=16, decoder_rates=(8, 5, 4, 4))
    with pytest.raises(ValueError, match="decoder_dim"):
        SourceVAE(encoder_dim=2, latent_channels=2, decoder_dim=24)


def test_gradient_checkpointing_gives_same_gradients(tiny):
    audio = torch.randn(1, 1, 3 * 320)

    def grads():
        tiny.zero_grad()
        tiny(audio).sample.square().mean().backward()
        return [p.grad.clone() for p in tiny.parameters()]

    plain = grads()
    tiny.enable_gradient_checkpointing()
    assert tiny.encoder.gradient_checkpointing and tiny.decoder.gradient_checkpointing
    for a, b in zip(grads(), plain):
        torch.testing.assert_close(a, b)


@pytest.mark.slow
def test_fused_activations_decode_as_the_plain_ones():
    """torch.compile'd Snake activations (inference only): the same decoding, and training is untouched."""
    from conftest import tiny_vae

    vae = tiny_vae().eval()
    latents = torch.randn(2, vae.config.latent_channels, 12)
    with torch.no_grad():
        plain = vae.decode(latents).sample
        vae.enable_fused_activations()
        fused = vae.decode(latents).sample
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)
    out = vae.decode(latents.requires_grad_()).sample  # with gradients: the plain path, differentiable
    out.square().mean().backward()
    assert latents.grad is not None and torch.isfinite(latents.grad).all()
