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
