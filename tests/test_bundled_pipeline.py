"""The pipeline bundled under pipelines/ (what `make demo` and `mslddm generate` load by default): a complete,
loadable diffusers folder within the size budget, whose model makes sound that follows given stems."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mslddm.hub import BUNDLED_PIPELINE_NAME, default_pipeline

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "pipelines" / BUNDLED_PIPELINE_NAME
EXAMPLE_BASS = REPO / "space" / "examples" / "01_Track00001_bass" / "bass.flac"


@pytest.fixture(scope="module")
def pipe():
    from mslddm import MultiSourceLatentPipeline

    pipe = MultiSourceLatentPipeline.from_pretrained(BUNDLED, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_bundled_folder_is_complete_and_small(monkeypatch):
    monkeypatch.delenv("MSLDDM_PIPELINE", raising=False)
    assert default_pipeline() == str(BUNDLED)
    index = json.loads((BUNDLED / "model_index.json").read_text())
    assert index["vae"] == ["mslddm.models.autoencoder_spectral", "SpectralSourceVAE"]  # the small preset's VAE
    assert index["unet"] == ["mslddm.models.unet_1d_multisource", "MultiSourceUNet1DModel"]
    assert index["scheduler"] == ["mslddm.schedulers.scheduling_edm", "EDMScheduler"]
    size = sum(f.stat().st_size for f in BUNDLED.rglob("*") if f.is_file())
    assert size < 40 * 10**6, f"{BUNDLED} holds {size / 10**6:.1f} MB (at most 40)"
    card = (BUNDLED / "README.md").read_text()
    assert "CPU" in card and "mel_distance/mean" in card  # how it was trained, with its validation numbers


def test_bundled_pipeline_makes_sound(pipe):
    out = pipe(audio_length_in_s=3.0, num_inference_steps=8, sampler="dpmpp_2m",
               generator=torch.Generator().manual_seed(0))
    assert out.stems.shape == (1, len(pipe.stem_names), 3 * pipe.sample_rate)
    assert np.isfinite(out.stems).all()
    rms = np.sqrt((out.stems[0] ** 2).mean(-1))
    assert (rms > 1e-3).sum() >= 2, f"stem RMS {rms}: a trained model should not make (near) silence"
    assert np.abs(out.mixture).max() < 4.0


def _denoising_losses(unet, latents, sigma_data, sigmas):
    """EDM training loss of ``unet`` on ``latents`` at each of ``sigmas``, with fixed noise."""
    from mslddm.training.losses import edm_denoise, edm_training_loss

    generator, result = torch.Generator().manual_seed(0), []
    for s in sigmas:
        sigma = torch.full((latents.shape[0],), s)
        noisy = latents + s * torch.randn(latents.shape, generator=generator)
        with torch.no_grad():
            result.append(float(edm_training_loss(edm_denoise(unet, noisy, sigma, sigma_data), latents, sigma,
                                                  sigma_data)))
    return np.array(result)


def test_bundled_unet_denoises_held_out_music_far_better_than_untrained(pipe):
    """Two synthetic songs it never saw (tests/eval_fixtures.py, each stem at the level the bundle records for it),
    encoded by the bundled VAE: the trained UNet's EDM loss is far below the same architecture's re-initialised,
    and below the loss of predicting nothing (F = 0, D = c_skip x) where the noise hides the music."""
    from eval_fixtures import song

    from mslddm import MultiSourceUNet1DModel

    stems = np.stack([song(seed, 3.0) for seed in (0, 1)])
    levels = json.loads((BUNDLED / "model_index.json").read_text())["stem_levels_dbfs"]
    target = np.array([levels[name] for name in pipe.stem_names])[None, :, None]
    stems = stems / np.sqrt((stems**2).mean(-1, keepdims=True)) * 10 ** (target / 20)
    audio = torch.from_numpy(stems.astype(np.float32))
    b, k, n = audio.shape
    with torch.no_grad():
        latents = pipe.vae.encode(audio.reshape(b * k, 1, n)).latent_dist.mean
    latents = latents.reshape(b, k * latents.shape[1], -1)
    latents = latents[..., : latents.shape[-1] // pipe.unet.length_multiple * pipe.unet.length_multiple]
    sigma_data, sigmas = pipe.scheduler.config.sigma_data, (0.3, 1.0, 3.0)

    class Nothing(torch.nn.Module):
        def forward(self, x, c_noise):
            return type("Out", (), {"sample": torch.zeros_like(x)})()

    torch.manual_seed(0)
    untrained = MultiSourceUNet1DModel.from_config(pipe.unet.config).eval()
    trained = _denoising_losses(pipe.unet, latents, sigma_data, sigmas)
    fresh = _denoising_losses(untrained, latents, sigma_data, sigmas)
    nothing = _denoising_losses(Nothing(), latents, sigma_data, sigmas)
    assert trained.mean() < 0.6 * fresh.mean(), (trained, fresh)
    assert (trained[1:] < 0.8 * nothing[1:]).all(), (trained, nothing)


@pytest.mark.slow
def test_bundled_pipeline_keeps_a_given_stem_and_fills_the_rest(pipe):
    from mslddm.audio import load_audio

    bass = load_audio(EXAMPLE_BASS, pipe.sample_rate)
    bass = bass[: 3 * pipe.sample_rate]
    out = pipe(stems={"bass": EXAMPLE_BASS}, audio_length_in_s=3.0, num_inference_steps=8, sampler="dpmpp_2m",
               generator=torch.Generator().manual_seed(0))
    k = pipe.stem_names.index("bass")
    np.testing.assert_allclose(out.stems[0, k], bass, atol=1e-6)
    others = np.delete(out.stems[0], k, axis=0)
    assert np.isfinite(others).all() and np.sqrt((others ** 2).mean()) > 1e-3
