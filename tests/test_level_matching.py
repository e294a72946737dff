"""Level matching: a given stem is encoded at the level the model was trained at, and the band comes back at the
upload's level, so the same take played 20 dB louder gives the same band 20 dB louder."""

import numpy as np
import pytest
import torch

from conftest import tiny_pipeline
from mslddm import MultiSourceLatentPipeline
from mslddm.loudness import active_level_db

SR = 16000
LEVELS = {"bass": -28.0, "drums": -27.0, "guitar": -28.0, "piano": -28.5}


def take(seconds=1.0, level_db=-30.0):
    rng = np.random.default_rng(3)
    t = np.arange(int(seconds * SR)) / SR
    audio = np.sin(2 * np.pi * 196 * t) * (1 + 0.5 * np.sin(2 * np.pi * 2 * t)) + 0.1 * rng.standard_normal(t.size)
    return (audio * 10 ** (level_db / 20) / np.sqrt(np.mean(audio ** 2))).astype(np.float32)


def levelled_pipeline():
    pipe = tiny_pipeline()
    return MultiSourceLatentPipeline(vae=pipe.vae, unet=pipe.unet, scheduler=pipe.scheduler,
                                     stem_names=pipe.stem_names, sample_rate=SR, stem_levels_dbfs=LEVELS)


def run(pipe, stems, **kwargs):
    return pipe(stems=stems, num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                input_sample_rate=SR, **kwargs)


@pytest.mark.parametrize("extend_s", [None, 0.5])
def test_a_louder_take_gives_the_same_band_louder(extend_s):
    pipe = levelled_pipeline()
    quiet, loud = take(level_db=-40.0), take(level_db=-20.0)
    out_quiet, out_loud = run(pipe, {"guitar": quiet}, extend_s=extend_s), run(pipe, {"guitar": loud}, extend_s=extend_s)
    generated = [i for i, name in enumerate(pipe.stem_names) if name in out_loud.generated]
    np.testing.assert_allclose(out_loud.stems[:, generated], 10 * out_quiet.stems[:, generated], rtol=1e-3, atol=1e-6)
    g = pipe.stem_names.index("guitar")
    if extend_s is None:  # the take itself comes back as uploaded
        np.testing.assert_array_equal(out_loud.stems[0, g], loud)
    else:  # the take, then its continuation at the take's level
        np.testing.assert_array_equal(out_loud.stems[0, g, :len(loud) - 512], loud[:len(loud) - 512])
    gains = out_loud.sampling["levels"]
    assert gains["given_gain_db"]["guitar"][0] == pytest.approx(LEVELS["guitar"] + 20.0, abs=0.2)
    assert gains["band_gain_db"][0] == pytest.approx(-gains["given_gain_db"]["guitar"][0], abs=0.01)


def test_without_matching_the_encoder_hears_the_level():
    """The control: with match_levels=False the band is not a scaled copy (the VAE is not linear in level)."""
    pipe = levelled_pipeline()
    quiet, loud = take(level_db=-40.0), take(level_db=-20.0)
    out_quiet = run(pipe, {"guitar": quiet}, match_levels=False)
    out_loud = run(pipe, {"guitar": loud}, match_levels=False)
    assert "levels" not in out_loud.sampling
    bass = pipe.stem_names.index("bass")
    error = np.abs(out_loud.stems[0, bass] - 10 * out_quiet.stems[0, bass]).max()
    assert error > 1e-2 * np.abs(out_loud.stems[0, bass]).max()


def test_a_take_at_the_training_level_leaves_the_band_as_generated():
    pipe = levelled_pipeline()
    audio = take(level_db=LEVELS["guitar"])
    assert active_level_db(audio, SR) == pytest.approx(LEVELS["guitar"], abs=0.1)
    matched, plain = run(pipe, {"guitar": audio}), run(pipe, {"guitar": audio}, match_levels=False)
    np.testing.assert_allclose(matched.stems, plain.stems, rtol=1e-2, atol=2e-3 * np.abs(plain.stems).max())


def test_levels_are_saved_and_a_folder_without_them_generates_as_before(tmp_path):
    pipe = levelled_pipeline()
    pipe.save_pretrained(tmp_path / "levelled")
    assert MultiSourceLatentPipeline.from_pretrained(tmp_path / "levelled").stem_levels_dbfs == LEVELS
    plain = tiny_pipeline()
    plain.save_pretrained(tmp_path / "plain")
    assert "stem_levels_dbfs" not in (tmp_path / "plain" / "model_index.json").read_text()
    loaded = MultiSourceLatentPipeline.from_pretrained(tmp_path / "plain")
    assert loaded.stem_levels_dbfs is None
    with pytest.raises(ValueError, match="records no stem_levels_dbfs"):
        loaded(stems={"guitar": take()}, input_sample_rate=SR, num_inference_steps=2, match_levels=True)
    with pytest.raises(ValueError, match="match_levels must be"):
        pipe(stems={"guitar": take()}, input_sample_rate=SR, num_inference_steps=2, match_levels="yes")


def test_unknown_or_bad_levels_are_refused():
    pipe = tiny_pipeline()
    with pytest.raises(ValueError, match="unknown stem"):
        MultiSourceLatentPipeline(vae=pipe.vae, unet=pipe.unet, scheduler=pipe.scheduler,
                                  stem_levels_dbfs={"vocals": -20.0})
    with pytest.raises(ValueError, match="finite dBFS"):
        MultiSourceLatentPipeline(vae=pipe.vae, unet=pipe.unet, scheduler=pipe.scheduler,
                                  stem_levels_dbfs={"bass": float("nan")})
