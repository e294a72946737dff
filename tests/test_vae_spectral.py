"""SpectralSourceVAE: the frame-rate VAE behind the SourceVAE interface (length arithmetic, exact tiling, exact
STFT framing, save/load through the VAE registry, use inside the pipeline)."""

import pytest
import torch

from mslddm import EDMScheduler, MultiSourceLatentPipeline, MultiSourceUNet1DModel
from mslddm.models import VAE_CLASSES, load_vae_folder, vae_class
from mslddm.models.autoencoder_spectral import SpectralSourceVAE
from mslddm.factory import build_vae
from mslddm.presets import PRESETS

TINY = dict(hop_length=320, n_fft=1280, latent_channels=8, encoder_dim=16, encoder_blocks=2, decoder_dim=16,
            decoder_blocks=2, intermediate_multiplier=2)


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    vae = SpectralSourceVAE(**TINY).eval()
    with torch.no_grad():  # layer scales and biases off their init so that every parameter matters
        for name, p in vae.named_parameters():
            if name.endswith("gamma") or name.endswith("bias"):
                p.uniform_(-0.5, 0.5)
    return vae


def test_length_arithmetic_and_shapes(tiny):
    for samples in (320, 321, 12 * 22050, 70 * 320):
        frames = -(-samples // 320)
        assert tiny.num_frames(samples) == frames
        with torch.no_grad():
            posterior = tiny.encode(torch.randn(2, 1, samples) * 0.1).latent_dist
            assert posterior.mean.shape == (2, 8, frames)
            assert tiny.decode(posterior.mean).sample.shape == (2, 1, tiny.num_samples(frames)) == (2, 1, 320 * frames)
    assert tiny.hop_length == 320


def test_decoder_inverts_the_encoders_stft_framing(tiny):
    """Weighted overlap-add of the encoder's own STFT gives the audio back: the framing is exact, no edge loss."""
    audio = torch.randn(2, 1, 50 * 320) * 0.3
    enc, dec = tiny.encoder, tiny.decoder
    pad = (1280 - 320) // 2
    spec = torch.stft(torch.nn.functional.pad(audio[:, 0], (pad, pad)), 1280, 320, window=enc.window,
                      center=False, return_complex=True)
    dec.spectrum = lambda latents: spec
    torch.testing.assert_close(dec(torch.zeros(2, 8, 50)), audio, atol=1e-5, rtol=0)


def _tiled_against_untiled(vae, fn, x, tile_frames, overlap_frames=None):
    with torch.no_grad():
        vae.disable_tiling()
        reference = fn(x)
        vae.enable_tiling(tile_frames=tile_frames, overlap_frames=overlap_frames)
        return reference, fn(x)


def test_tiled_encode_and_decode_equal_untiled(tiny):
    audio = torch.randn(2, 1, 90 * 320 + 77) * 0.1
    reference, tiled = _tiled_against_untiled(tiny, lambda x: tiny.encode(x).latent_dist.parameters, audio, 30)
    torch.testing.assert_close(tiled, reference, atol=1e-4, rtol=1e-4)
    latents = torch.randn(2, 8, 90)
    reference, tiled = _tiled_against_untiled(tiny, lambda z: tiny.decode(z).sample, latents, 30)
    torch.testing.assert_close(tiled, reference, atol=1e-5, rtol=1e-5)
    # ... and a too-small overlap does not: the test above cannot pass vacuously.
    reference, tiled = _tiled_against_untiled(tiny, lambda z: tiny.decode(z).sample, latents, 30, overlap_frames=1)
    assert (tiled - reference).abs().max() > 1e-4


def _dependency(fn, x, index):
    x = x.clone().requires_grad_(True)
    fn(x)[..., index].sum().backward()
    nonzero = x.grad.abs().sum(dim=tuple(range(x.ndim - 1))).nonzero()
    return nonzero.min().item(), nonzero.max().item()


def test_receptive_fields_match_autograd(tiny):
    vae, hop, f = tiny.double(), 320, 40
    first, last = _dependency(vae.decoder, torch.randn(1, 8, 80, dtype=torch.float64), slice(f * hop, (f + 1) * hop))
    assert max(f - first, last - f) == vae.decoder_context_frames()
    first, last = _dependency(vae.encoder, torch.randn(1, 1, 80 * hop, dtype=torch.float64) * 0.1, f)
    assert max(-(-(f * hop - first) // hop), -(-(last + 1 - (f + 1) * hop) // hop)) == vae.encoder_context_frames()


def test_registry_save_load_and_errors(tiny, tmp_path):
    assert vae_class("SpectralSourceVAE") is SpectralSourceVAE and set(VAE_CLASSES) >= {"SourceVAE"}
    with pytest.raises(ValueError, match="Unknown VAE class 'Nope'"):
        vae_class("Nope")
    tiny.save_pretrained(tmp_path / "vae")
    loaded = load_vae_folder(tmp_path / "vae")
    assert type(loaded) is SpectralSourceVAE
    audio = torch.randn(1, 1, 4000) * 0.1
    with torch.no_grad():
        torch.testing.assert_close(loaded(audio).sample, tiny(audio).sample)
    with pytest.raises(ValueError, match="n_fft"):
        SpectralSourceVAE(hop_length=320, n_fft=1281)
    with pytest.raises(ValueError, match="kernel_size"):
        SpectralSourceVAE(kernel_size=4)


def test_posterior_logvar_bias_and_preset():
    vae = build_vae("small")
    assert type(vae) is SpectralSourceVAE and vae.config.latent_channels == PRESETS["small"]["vae"]["latent_channels"]
    vae.set_posterior_logvar_bias(-6.0)
    with torch.no_grad():
        posterior = vae.encode(torch.randn(1, 1, 3200) * 0.1).latent_dist
    assert torch.allclose(posterior.logvar.mean(), torch.tensor(-6.0), atol=1.0)


def test_pipeline_runs_on_a_spectral_vae_and_round_trips(tiny, tmp_path):
    unet = MultiSourceUNet1DModel(**{**PRESETS["tiny"]["unet"], "in_channels": 2 * 8})
    pipe = MultiSourceLatentPipeline(vae=tiny, unet=unet, scheduler=EDMScheduler(), stem_names=["a", "b"])
    pipe.set_progress_bar_config(disable=True)
    given = torch.randn(5000).numpy() * 0.1
    out = pipe(stems={"a": given}, audio_length_in_s=5000 / 22050, num_inference_steps=2,
               generator=torch.Generator().manual_seed(0))
    assert out.stems.shape == (1, 2, 5000) and (out.stems[0, 0] == given.astype("float32")).all()
    pipe.save_pretrained(tmp_path / "pipe")
    again = MultiSourceLatentPipeline.from_pretrained(tmp_path / "pipe")
    assert type(again.vae) is SpectralSourceVAE
    repeat = again(stems={"a": given}, audio_length_in_s=5000 / 22050, num_inference_steps=2,
                   generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(torch.from_numpy(repeat.stems), torch.from_numpy(out.stems))
