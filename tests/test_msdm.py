"""MSDM, the waveform baseline: the pipeline (total and partial generation, separation), its sampler and
preconditioning, and its size."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import assert_same_outputs, assert_same_weights

from mslddm import MultiSourceLatentPipeline, MultiSourceUNet1DModel
from mslddm.pipelines.pipeline_multisource_diffusion import MultiSourceDiffusionPipeline, msdm_scheduler
from mslddm.schedulers.sampling import Denoiser, sample_separation
from mslddm.schedulers.scheduling_edm import get_sigmas_karras
from mslddm.training.losses import si_sdr

STEMS = ["bass", "drums", "guitar", "piano"]
SR = 22050
TINY = dict(channels=16, patch_factor=4, multipliers=(1, 2, 2), factors=(4, 4), num_blocks=(1, 1),
            attentions=(False, True), attention_heads=2, attention_features=8, resnet_groups=4,
            window_frames=16384)


def tiny_msdm():
    torch.manual_seed(0)
    pipe = MultiSourceDiffusionPipeline(unet=MultiSourceUNet1DModel(in_channels=4, **TINY), scheduler=msdm_scheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def tone(freq, seconds=0.5, amp=0.2):
    t = np.arange(int(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_msdm_preset_has_the_papers_parameter_count():
    from mslddm.presets import PRESETS

    with torch.device("meta"):
        unet = MultiSourceUNet1DModel(in_channels=4, **PRESETS["msldm"]["waveform_unet"])
    assert sum(p.numel() for p in unet.parameters()) == 405_497_700
    assert unet.length_multiple == 8192  # 262144-sample segments are 32 strides
    scheduler = msdm_scheduler()
    c = scheduler.config
    assert (c.sigma_data, c.training_sigma_distribution, c.training_log_normal_mean, c.training_log_normal_std,
            c.clip_denoised, c.sigma_min, c.sigma_max) == (0.2, "log_normal", -3.0, 1.0, 1.0, 1e-4, 20.0)


def test_the_denoiser_clamps_where_asked_and_only_there():
    class Wild(torch.nn.Module):
        def forward(self, x, c_noise):
            return type("Out", (), {"sample": 50 * torch.ones_like(x)})()

    x = torch.zeros(1, 4, 8)
    assert Denoiser(Wild(), 0.2)(x, torch.tensor(1.0)).max() > 1
    assert Denoiser(Wild(), 0.2, clip=1.0)(x, torch.tensor(1.0)).max() == 1.0
    assert msdm_scheduler().denoiser(Wild())(x, torch.tensor(1.0)).max() == 1.0
    with pytest.raises(ValueError, match="clip_denoised"):
        msdm_scheduler(clip_denoised=-1.0)


def test_total_and_partial_generation_on_waveforms():
    pipe = tiny_msdm()
    out = pipe(audio_length_in_s=0.5, num_samples=2, num_inference_steps=4, generator=[gen(0), gen(1)])
    assert out.stems.shape == (2, 4, SR // 2) and np.isfinite(out.stems).all()
    assert np.abs(out.stems).max() <= 1.0  # the last Euler step lands on the clamped estimate
    np.testing.assert_allclose(out.mixture, out.stems.sum(1), atol=1e-6)
    again = pipe(audio_length_in_s=0.5, num_inference_steps=4, generator=[gen(1)])
    np.testing.assert_allclose(again.stems[0], out.stems[1], atol=1e-5)  # per-sample seeds
    given = tone(110)
    partial = pipe(stems={"bass": given, "piano": tone(440)}, num_inference_steps=4, generator=gen())
    np.testing.assert_array_equal(partial.stems[0, 0], given)
    np.testing.assert_array_equal(partial.stems[0, 3], tone(440))
    assert partial.generated == ["drums", "guitar"] and pipe.model_kind == "msdm"


def oracle_denoiser(sources):
    """The ideal denoiser of a prior concentrated on ``sources``: D(x, sigma) = sources."""
    return lambda x, sigma: sources.expand_as(x)


@pytest.mark.parametrize("method, steps, churn, resamples", [
    ("dirac", 150, 20.0, 1), ("dirac", 60, 0.0, 2), ("gaussian", 150, 20.0, 1), ("gaussian", 60, 0.0, 1)])
def test_separation_with_an_ideal_prior_recovers_the_sources(method, steps, churn, resamples):
    sources = torch.from_numpy(np.stack([tone(55), tone(220, amp=0.1), tone(330, amp=0.15), tone(660, amp=0.1)]))[None]
    mixture = sources.sum(1, keepdim=True)
    sigmas = get_sigmas_karras(steps, 1e-4, 20.0)
    x = 20.0 * torch.randn(sources.shape, generator=gen())
    separated = sample_separation(oracle_denoiser(sources), x, sigmas, mixture, method=method, s_churn=churn,
                                  num_resamples=resamples, generator=gen(1))
    assert torch.allclose(separated.sum(1, keepdim=True), mixture, atol=1e-5)
    assert (si_sdr(separated[0], sources[0]) > 30).all()


def test_dirac_separation_with_coarse_churned_steps_is_unstable_as_the_math_says():
    """With K sources the Dirac separator multiplies the error of the free sources' sum by K r - (K - 1) per step
    (r = sigma_next / sigma_hat): coarse churned steps (r < (K - 2) / K) amplify it. docs/msdm.md says so."""
    sources = torch.from_numpy(np.stack([tone(55), tone(220), tone(330), tone(660)]))[None]
    x = 20.0 * torch.randn(sources.shape, generator=gen())
    separated = sample_separation(oracle_denoiser(sources), x, get_sigmas_karras(20, 1e-4, 20.0),
                                  sources.sum(1, keepdim=True), s_churn=20.0, generator=gen(1))
    assert (si_sdr(separated[0], sources[0]) < 0).all()


def test_separation_from_the_pipeline_sums_to_the_mixture():
    pipe = tiny_msdm()
    mixture = tone(110) + tone(330) + 0.05 * np.random.default_rng(0).standard_normal(SR // 2).astype(np.float32)
    for method, resamples in (("dirac", 1), ("gaussian", 2)):
        out = pipe.separate(mixture, method=method, num_inference_steps=30, num_resamples=resamples,
                            num_samples=2, generator=[gen(0), gen(1)], window_s=0.3)
        assert out.stems.shape == (2, 4, SR // 2) and out.mixture.shape == (2, SR // 2)
        scale = max(1.0, float(np.abs(out.stems).max()))
        np.testing.assert_allclose(out.stems.sum(1), out.mixture, atol=1e-5 * scale)
        np.testing.assert_allclose(out.mixture[0], mixture, atol=1e-7)
        assert out.sampling["method"] == method and out.sampling["windows"] == 2
        assert out.sampling["model_evaluations"] == 30 * resamples * 2
        assert not np.allclose(out.stems[0], out.stems[1])
    # any rate and channel count in, as for given stems
    stereo = np.stack([mixture, mixture])[:, ::2]
    out = pipe.separate((stereo, SR // 2), num_inference_steps=4)
    assert abs(out.stems.shape[-1] - SR // 2) <= 1


@pytest.mark.parametrize("kwargs, match", [
    ({"method": "median"}, "method must be one of"),
    ({"constrained_stem": "voice"}, "not one of this pipeline's stems"),
    ({"num_samples": 0}, "num_samples"),
    ({"num_resamples": 0}, "num_resamples"),
    ({"num_samples": 2, "generator": [torch.Generator()]}, "one per sample"),
])
def test_bad_separation_arguments_are_sentences(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_msdm().separate(tone(110), num_inference_steps=2, **kwargs)


def test_silent_mixture_is_refused():
    with pytest.raises(ValueError, match="mixture"):
        tiny_msdm().separate(np.zeros(SR, np.float32), num_inference_steps=2)


def test_msdm_saves_without_a_vae_and_loads_as_its_class(tmp_path):
    pipe = tiny_msdm()
    pipe.save_pretrained(tmp_path / "msdm")
    assert sorted(p.name for p in (tmp_path / "msdm").iterdir()) == ["README.md", "checksums.json",
                                                                    "model_index.json", "scheduler", "unet"]
    index = json.loads((tmp_path / "msdm" / "model_index.json").read_text())
    assert index["_class_name"] == "MultiSourceDiffusionPipeline" and "vae" not in index
    card = (tmp_path / "msdm" / "README.md").read_text()
    assert "MSDM pipeline" in card and "pipe.separate" in card
    loaded = MultiSourceLatentPipeline.from_pretrained(tmp_path / "msdm")
    assert isinstance(loaded, MultiSourceDiffusionPipeline) and loaded.scheduler.config.clip_denoised == 1.0
    loaded.set_progress_bar_config(disable=True)
    assert_same_weights(loaded.unet, pipe.unet)
    kwargs = dict(audio_length_in_s=0.3, num_inference_steps=3)
    expected = pipe(generator=gen(), **kwargs).stems
    assert_same_outputs(loaded(generator=gen(), **kwargs).stems, expected)
    # the tolerance is tight enough to see one wrong weight (here of the middle convolution: 3e-4 off)
    convolutions = [p for p in loaded.unet.parameters() if p.ndim == 3]
    with torch.no_grad():
        convolutions[len(convolutions) // 2].view(-1)[0] += 0.01
    with pytest.raises(AssertionError, match="Not equal to tolerance"):
        assert_same_outputs(loaded(generator=gen(), **kwargs).stems, expected)


def test_separate_cli_writes_stems_that_sum_to_the_mixture(tmp_path):
    import soundfile as sf

    from mslddm.cli import main

    tiny_msdm().save_pretrained(tmp_path / "msdm")
    mixture = tone(110, 1.0) + tone(550, 1.0)
    sf.write(tmp_path / "mix.flac", np.stack([mixture, mixture], 1)[::2], SR // 2)  # stereo, another rate
    assert main(["separate", str(tmp_path / "mix.flac"), "--pipeline", str(tmp_path / "msdm"), "--steps", "40", "--churn", "0",
                 "--out", str(tmp_path / "out"), "--seed", "3", "--device", "cpu"]) == 0
    folder = tmp_path / "out" / "seed3"
    assert sorted(p.name for p in folder.iterdir()) == [
        "bass.wav", "drums.wav", "guitar.wav", "mix.wav", "piano.wav", "settings.json"]
    stems = np.stack([sf.read(folder / f"{s}.wav", dtype="float32")[0] for s in STEMS])
    mix = sf.read(folder / "mix.wav", dtype="float32")[0]
    settings = json.loads((folder / "settings.json").read_text())
    assert settings["method"] == "dirac" and settings["seed"] == 3 and settings["max_sum_error"] < 1e-4
    assert np.abs(stems.sum(0) - mix).max() < 1e-3 * max(1.0, np.abs(stems).max())  # 16-bit files
    with pytest.raises(SystemExit, match="separation needs a waveform multi-source model"):
        from conftest import tiny_pipeline

        tiny_pipeline().save_pretrained(tmp_path / "latent")
        main(["separate", str(tmp_path / "mix.flac"), "--pipeline", str(tmp_path / "latent"), "--device", "cpu"])


def test_evaluate_scores_separation_and_skips_what_a_waveform_model_lacks(tmp_path):
    from eval_fixtures import write_dataset
    from test_eval_protocol import BandEnergyEmbedder

    from mslddm.evaluation.protocol import ProtocolConfig, evaluate
    from mslddm.evaluation.report import markdown

    data = write_dataset(tmp_path / "data", num_tracks=3, seconds=2.0)
    config = ProtocolConfig(num_clips=2, num_chunks=2, clip_seconds=1.0, batch_size=2, num_inference_steps=40,
                            s_churn=0.0, tasks=("reconstruction", "total", "separation"), separation_steps=30,
                            separation_churn=0.0)
    logs = []
    result = evaluate(tiny_msdm(), data, tmp_path / "eval", BandEnergyEmbedder(), config,
                      cache_dir=tmp_path / "cache", log=logs.append, pipeline_name="msdm").to_dict()
    assert result["reconstruction"] is None and any("no autoencoder" in line for line in logs)
    assert set(result["total"]["fad"]) == {*STEMS, "mix"}
    sep = result["separation"]
    assert set(sep["si_sdri"]) == set(STEMS) and all(np.isfinite(v) for v in sep["si_sdri"].values())
    for name in STEMS:  # SI-SDRi is the separated stems' SI-SDR over the mixture's
        assert sep["si_sdri"][name] == pytest.approx(sep["si_sdr"][name] - sep["si_sdr_mixture"][name], abs=1e-6)
    separated = tmp_path / "eval" / "audio" / "separation" / "00001"
    assert sorted(p.name for p in separated.iterdir()) == sorted(f"{s}.wav" for s in STEMS)
    assert (sep["method"], sep["num_inference_steps"], sep["s_churn"]) == ("dirac", 30, 0.0)  # its own settings
    assert "## Separation: SI-SDR improvement" in markdown(result) and "Euler x 30" in markdown(result)
    with pytest.raises(ValueError, match="separations in .* were made with"):  # a resume with other settings
        evaluate(tiny_msdm(), data, tmp_path / "eval", BandEnergyEmbedder(), replace(config, separation_steps=31),
                 cache_dir=tmp_path / "cache", pipeline_name="msdm")


def test_separation_settings_default_to_msdms_and_are_checked():
    from mslddm.evaluation.protocol import ProtocolConfig

    config = ProtocolConfig(num_inference_steps=50, s_churn=40.0)  # generation's settings are not separation's
    config = config.resolved(msdm_scheduler())
    assert (config.separation_method, config.separation_steps, config.separation_churn) == ("dirac", 150, 20.0)
    with pytest.raises(ValueError, match="separation_method must be one of"):
        ProtocolConfig(separation_method="oracle")


def test_a_stored_evaluation_of_more_tasks_is_reused_and_separation_settings_count_only_for_separation(
        tmp_path, monkeypatch):
    """What `mslddm compare` does with an evaluation already under its folder: reuse it when it was made with the
    same protocol and the same tasks or more (separation settings matter only to separation), evaluate otherwise."""
    import argparse

    from eval_fixtures import write_dataset
    from test_eval_protocol import BandEnergyEmbedder

    import mslddm.evaluation.embedders
    import mslddm.evaluation.protocol
    from mslddm.cli import main
    from mslddm.commands import evaluate as command

    data, out, pipeline = write_dataset(tmp_path / "data", num_tracks=2, seconds=2.0), tmp_path / "out", tmp_path / "msdm"
    tiny_msdm().save_pretrained(pipeline)
    monkeypatch.setattr(mslddm.evaluation.embedders, "get_embedder", lambda *args, **kwargs: BandEnergyEmbedder())
    common = ["--pipeline", str(pipeline), "--data", str(data), "--out", str(out), "--num-clips", "2",
              "--num-chunks", "2", "--clip-seconds", "1", "--steps", "2", "--churn", "0", "--separation-steps", "2",
              "--separation-churn", "0", "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"]
    assert main(["evaluate", *common, "--tasks", "total,separation"]) == 0
    stored = json.loads((out / "results.json").read_text())

    class Evaluated(Exception):
        pass

    def evaluate(*args, **kwargs):
        raise Evaluated

    monkeypatch.setattr(mslddm.evaluation.protocol, "evaluate", evaluate)
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)

    def reused(*options):
        try:
            return command.evaluate_one(parser.parse_args(common + list(options)), str(pipeline), out,
                                        reuse=True) == stored
        except Evaluated:
            return False

    assert reused("--tasks", "total,separation") and reused("--tasks", "total")
    assert reused("--tasks", "total", "--separation-steps", "50")  # no separation asked for: its settings do not count
    assert not reused("--tasks", "total,separation", "--separation-steps", "50")
    assert not reused("--tasks", "total,partial")  # a task it did not run
    assert not reused("--tasks", "total", "--seed", "1") and not reused("--tasks", "total", "--steps", "3")


def test_si_sdr_of_a_perfect_and_a_scaled_estimate():
    from mslddm.evaluation.protocol import si_sdr_db

    ref = tone(220, 0.2)
    assert si_sdr_db(ref, ref) > 70 and si_sdr_db(0.5 * ref, ref) > 70
    noisy = ref + 0.1 * np.random.default_rng(0).standard_normal(len(ref)).astype(np.float32)
    expected = 10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / np.sum((noisy - ref).astype(np.float64) ** 2))
    assert si_sdr_db(noisy, ref) == pytest.approx(expected, abs=0.1)
