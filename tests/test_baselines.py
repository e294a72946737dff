"""The paper's latent baselines on tiny components: ISLDM (one independent UNet per stem, through the MSLDM
pipeline) and MixLDM (a mixture-only pipeline), their saving and loading, training data, recipes, evaluation and the
comparison table."""

import json

import numpy as np
import pytest
import torch
from conftest import LATENT, STEMS, assert_same_outputs, assert_same_weights, tiny_vae

from mslddm import (EDMScheduler, IndependentSourceUNet1DModel, MixtureLatentPipeline, MultiSourceLatentPipeline,
                    MultiSourceUNet1DModel)

UNET_ARGS = dict(channels=16, patch_factor=2, patch_blocks=1, multipliers=(1, 2, 1), factors=(2, 2),
                 num_blocks=(1, 1), attentions=(False, True), attention_heads=2, attention_features=8,
                 attention_multiplier=2, resnet_groups=4)


def tiny_isldm(num_stems=len(STEMS)):
    torch.manual_seed(2)
    return IndependentSourceUNet1DModel(in_channels=num_stems * LATENT, num_sources=num_stems, **UNET_ARGS)


def isldm_pipeline():
    pipe = MultiSourceLatentPipeline(vae=tiny_vae(), unet=tiny_isldm(), scheduler=EDMScheduler(), stem_names=STEMS)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def mixldm_pipeline():
    from mslddm import SourceVAE

    torch.manual_seed(0)
    vae = SourceVAE(encoder_dim=4, latent_channels=len(STEMS) * LATENT, decoder_dim=16)  # stems x C
    torch.manual_seed(1)
    unet = MultiSourceUNet1DModel(in_channels=len(STEMS) * LATENT, **UNET_ARGS)
    pipe = MixtureLatentPipeline(vae=vae, unet=unet, scheduler=EDMScheduler(), mixture_of=STEMS)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------------------------
# ISLDM
# ---------------------------------------------------------------------------------------------------------------
def test_isldm_stem_outputs_depend_only_on_their_own_channels():
    unet = tiny_isldm().eval()
    x = torch.randn(2, len(STEMS) * LATENT, 16, generator=gen())
    changed = x.clone()
    changed[:, 2 * LATENT:3 * LATENT] = torch.randn(2, LATENT, 16, generator=gen(5))
    with torch.no_grad():
        a, b = unet(x, 0.1).sample, unet(changed, 0.1).sample
    per_stem = lambda t: t.reshape(2, len(STEMS), LATENT, 16)  # noqa: E731
    same = [torch.equal(per_stem(a)[:, k], per_stem(b)[:, k]) for k in range(len(STEMS))]
    assert same == [True, True, False, True]
    # each stem's output is its own sub-UNet's on its own channels
    with torch.no_grad():
        alone = unet.source_model(1)(x[:, LATENT:2 * LATENT], 0.1).sample
    assert torch.equal(per_stem(a)[:, 1], alone)
    assert sum(p.numel() for p in unet.parameters()) == 4 * sum(p.numel() for p in unet.source_model(0).parameters())


def test_isldm_bad_channel_split_is_a_sentence():
    with pytest.raises(ValueError, match="multiple of num_sources"):
        IndependentSourceUNet1DModel(in_channels=10, num_sources=4, **UNET_ARGS)
    with pytest.raises(ValueError, match="only_sources needs 4 flags"):
        with tiny_isldm().only_sources([True]):
            pass


def test_isldm_total_generation_changing_one_stems_noise_leaves_the_others_unchanged():
    pipe = isldm_pipeline()
    frames = pipe.num_frames_for(int(1.0 * pipe.sample_rate))
    noise = torch.randn(1, len(STEMS) * LATENT, frames, generator=gen(1))
    other = noise.clone()
    other[:, 0:LATENT] = torch.randn(1, LATENT, frames, generator=gen(7))  # new noise for the bass only
    kwargs = dict(audio_length_in_s=1.0, num_inference_steps=4, sampler="euler", s_churn=20.0)
    a = pipe(latents=noise, generator=gen(3), **kwargs).stems
    b = pipe(latents=other, generator=gen(3), **kwargs).stems
    assert not np.allclose(a[0, 0], b[0, 0])
    np.testing.assert_allclose(a[0, 1:], b[0, 1:], rtol=0, atol=1e-6)
    assert np.abs(a).max() > 0 and np.isfinite(a).all()


def test_isldm_partial_generation_keeps_given_stems_and_skips_their_models():
    pipe = isldm_pipeline()
    calls = [0] * len(STEMS)
    for k in range(len(STEMS)):
        pipe.unet.source_model(k).register_forward_hook(lambda *a, k=k: calls.__setitem__(k, calls[k] + 1))
    given = 0.1 * np.sin(np.linspace(0, 400, pipe.sample_rate)).astype(np.float32)
    out = pipe(stems={"drums": given, "piano": given}, audio_length_in_s=1.0, num_inference_steps=3,
               sampler="dpmpp_2m", generator=gen())
    np.testing.assert_array_equal(out.stems[0, 1], given)
    np.testing.assert_array_equal(out.stems[0, 3], given)
    assert out.generated == ["bass", "guitar"]
    assert calls[1] == calls[3] == 0 and calls[0] == calls[2] == out.sampling["model_evaluations"] > 0
    # and the generated stems are what total generation gives with the same noise: independent of the given ones
    frames = pipe.num_frames_for(pipe.sample_rate)
    noise = torch.randn(1, len(STEMS) * LATENT, frames, generator=gen(4))
    kwargs = dict(audio_length_in_s=1.0, num_inference_steps=3, sampler="dpmpp_2m", latents=noise)
    total = pipe(generator=gen(), **kwargs).stems
    partial = pipe(stems={"drums": given}, generator=gen(), **kwargs).stems
    np.testing.assert_allclose(partial[0, [0, 2, 3]], total[0, [0, 2, 3]], rtol=0, atol=1e-6)


def test_isldm_saves_as_one_component_and_loads(tmp_path):
    pipe = isldm_pipeline()
    pipe.save_pretrained(tmp_path / "isldm")
    index = json.loads((tmp_path / "isldm" / "model_index.json").read_text())
    assert index["unet"] == ["mslddm.models.unet_1d_independent", "IndependentSourceUNet1DModel"]
    assert sorted(p.name for p in (tmp_path / "isldm" / "unet").iterdir()) == [
        "config.json", "diffusion_pytorch_model.safetensors"]
    card = (tmp_path / "isldm" / "README.md").read_text()
    assert "ISLDM baseline" in card and "independent" in card
    loaded = MultiSourceLatentPipeline.from_pretrained(tmp_path / "isldm")
    assert isinstance(loaded.unet, IndependentSourceUNet1DModel) and loaded.model_kind == "isldm"
    loaded.set_progress_bar_config(disable=True)
    assert_same_weights(loaded.unet, pipe.unet)
    kwargs = dict(audio_length_in_s=0.5, num_inference_steps=2, sampler="dpmpp_2m")
    assert_same_outputs(loaded(generator=gen(), **kwargs).stems, pipe(generator=gen(), **kwargs).stems)


# ---------------------------------------------------------------------------------------------------------------
# MixLDM
# ---------------------------------------------------------------------------------------------------------------
def test_mixldm_generates_one_mixture_per_sample():
    pipe = mixldm_pipeline()
    out = pipe(audio_length_in_s=0.5, num_samples=2, num_inference_steps=3, generator=[gen(0), gen(1)])
    assert out.mixture.shape == (2, pipe.sample_rate // 2) and np.isfinite(out.mixture).all()
    assert np.abs(out.mixture).max() > 0 and not np.allclose(out.mixture[0], out.mixture[1])
    again = pipe(audio_length_in_s=0.5, num_samples=1, num_inference_steps=3, generator=[gen(1)])
    np.testing.assert_allclose(again.mixture[0], out.mixture[1], atol=1e-6)  # per-sample seeds
    assert pipe.stem_names == ["mix"] and pipe.mixture_of == STEMS and not pipe.generates_stems
    (mixture,) = pipe(audio_length_in_s=0.5, num_inference_steps=2, return_dict=False)
    assert mixture.shape == (1, pipe.sample_rate // 2)
    latents = pipe(audio_length_in_s=0.5, num_inference_steps=2, output_type="latent").mixture
    assert latents.shape[:2] == (1, len(STEMS) * LATENT)


@pytest.mark.parametrize("kwargs", [
    {"stems": {"bass": np.zeros(1000, np.float32)}},
    {"generate": ["drums"]},
    {"stems": {"mix": np.zeros(1000, np.float32)}, "extend_s": 1.0},
])
def test_mixldm_asked_for_stems_is_a_clear_error(kwargs):
    pipe = mixldm_pipeline()
    with pytest.raises(ValueError, match="MixLDM pipeline: it models the mixture of bass, drums, guitar, piano"):
        pipe(audio_length_in_s=0.5, num_inference_steps=2, **kwargs)
    out = pipe(audio_length_in_s=0.5, num_inference_steps=2)
    assert not hasattr(out, "stems")  # its output has the fields it has: a mixture, no stems


def test_mixldm_saves_and_loads_through_the_multisource_class(tmp_path):
    pipe = mixldm_pipeline()
    pipe.save_pretrained(tmp_path / "mixldm")
    index = json.loads((tmp_path / "mixldm" / "model_index.json").read_text())
    assert index["_class_name"] == "MixtureLatentPipeline" and index["mixture_of"] == STEMS
    assert "MixLDM baseline" in (tmp_path / "mixldm" / "README.md").read_text()
    loaded = MultiSourceLatentPipeline.from_pretrained(tmp_path / "mixldm")
    assert isinstance(loaded, MixtureLatentPipeline) and loaded.mixture_of == STEMS
    loaded.set_progress_bar_config(disable=True)
    assert_same_weights(loaded.vae, pipe.vae)
    assert_same_weights(loaded.unet, pipe.unet)
    kwargs = dict(audio_length_in_s=0.5, num_inference_steps=2)
    assert_same_outputs(loaded(generator=gen(), **kwargs).mixture, pipe(generator=gen(), **kwargs).mixture)
    with pytest.raises(ValueError, match="one signal named 'mix'"):
        MixtureLatentPipeline(vae=pipe.vae, unet=pipe.unet, scheduler=pipe.scheduler, stem_names=STEMS)


# ---------------------------------------------------------------------------------------------------------------
# Training data and recipes
# ---------------------------------------------------------------------------------------------------------------
def test_recipes_inherit_from_their_base():
    from mslddm.training.recipes import load_recipe

    base, isldm = load_recipe("small-cpu"), load_recipe("isldm-small-cpu", ["msldm.batch_size=4"])
    assert isldm["model"] == "isldm" and isldm["name"] == "isldm-small-cpu"
    assert isldm["msldm"]["batch_size"] == 4 and isldm["msldm"]["learning_rate"] == base["msldm"]["learning_rate"]
    assert isldm["vae"] == base["vae"]
    assert load_recipe("mixldm-tiny")["model"] == "mixldm" and load_recipe("tiny").get("model") is None


def test_recipe_that_inherits_from_itself_is_refused(tmp_path):
    from mslddm.training.recipes import load_recipe

    (tmp_path / "a.yaml").write_text("base: b.yaml\nx: 1\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\ny: 2\n")
    with pytest.raises(ValueError, match="inherits from itself"):
        load_recipe(tmp_path / "a.yaml")


def test_mixture_clips_are_sums_of_the_stems(tmp_path):
    from eval_fixtures import write_dataset

    from mslddm.data.datasets import MixtureClipDataset, load_tracks

    root = write_dataset(tmp_path / "data", num_tracks=2, seconds=2.0, split="train")
    tracks = load_tracks(root, "train", STEMS)
    clips = MixtureClipDataset(tracks, clip_length=4000, clips_per_epoch=5, seed=3)
    clip = clips[0]
    assert clip.shape == (1, 4000) and clip.dtype == torch.float32
    rng = clips.rng(0)
    item, start = clips.draw(rng)
    np.testing.assert_allclose(clip[0].numpy(), tracks[item].read(start, 4000).sum(0), atol=1e-6)


def test_encode_latents_mix_writes_one_mixture_source(tmp_path):
    from eval_fixtures import write_dataset
    from safetensors import safe_open

    from mslddm.cli import main

    root = write_dataset(tmp_path / "data", num_tracks=2, seconds=1.0, split="train")
    vae_dir = tmp_path / "mixvae"
    mixldm_pipeline().vae.save_pretrained(vae_dir)
    assert main(["encode-latents", str(root), "--vae", str(vae_dir), str(tmp_path / "lat"), "--mix", "--quiet",
                 "--device", "cpu"]) == 0
    header = json.loads((tmp_path / "lat" / "latents.json").read_text())
    assert header["stems"] == ["mix"] and header["mixture_of"] == STEMS
    first = sorted((tmp_path / "lat" / "train").glob("*.safetensors"))[0]
    with safe_open(str(first), framework="pt") as f:
        assert f.get_tensor("latents").shape[:2] == (1, len(STEMS) * LATENT)


# ---------------------------------------------------------------------------------------------------------------
# Command line and page
# ---------------------------------------------------------------------------------------------------------------
def test_generate_cli_writes_a_mix_only_for_mixldm_and_refuses_stems(tmp_path, capsys):
    from mslddm.cli import main

    mixldm_pipeline().save_pretrained(tmp_path / "mixldm")
    assert main(["generate", "--pipeline", str(tmp_path / "mixldm"), "--duration", "0.5", "--steps", "2",
                 "--num-samples", "2", "--out", str(tmp_path / "out"), "--device", "cpu"]) == 0
    folders = sorted((tmp_path / "out").iterdir())
    assert [sorted(p.name for p in f.iterdir()) for f in folders] == [["mix.wav", "settings.json"]] * 2
    settings = json.loads((folders[0] / "settings.json").read_text())
    assert settings["mixture_of"] == STEMS and settings["duration_s"] == pytest.approx(0.5, abs=1e-3)
    with pytest.raises(SystemExit, match="MixLDM pipeline.*--stem, --generate"):
        main(["generate", "--pipeline", str(tmp_path / "mixldm"), "--stem", f"bass={folders[0] / 'mix.wav'}",
              "--out", str(tmp_path / "out2"), "--device", "cpu"])


def test_the_page_refuses_a_mixture_only_pipeline(tmp_path, capsys):
    import app

    mixldm_pipeline().save_pretrained(tmp_path / "mixldm")
    assert app.main(["--pipeline", str(tmp_path / "mixldm"), "--port", "0", "--device", "cpu"]) == 2
    assert "MixLDM pipeline" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# Evaluation and comparison
# ---------------------------------------------------------------------------------------------------------------
def test_protocol_scores_a_mixture_model_on_the_mix_only(tmp_path):
    from eval_fixtures import write_dataset
    from test_eval_protocol import BandEnergyEmbedder

    from mslddm.evaluation.protocol import ProtocolConfig, evaluate
    from mslddm.evaluation.report import markdown

    data = write_dataset(tmp_path / "data", num_tracks=3, seconds=4.0)
    config = ProtocolConfig(num_clips=3, num_chunks=2, clip_seconds=2.0, batch_size=2, num_inference_steps=2,
                            tasks=("reconstruction", "total", "partial"))
    logs = []
    result = evaluate(mixldm_pipeline(), data, tmp_path / "eval", BandEnergyEmbedder(), config,
                      cache_dir=tmp_path / "cache", log=logs.append, pipeline_name="mixldm").to_dict()
    assert result["protocol"]["mixture_only"] and result["protocol"]["stem_names"] == STEMS
    assert list(result["total"]["fad"]) == ["mix"] and np.isfinite(result["total"]["fad"]["mix"])
    assert list(result["reconstruction"]["fad"]) == ["mix"] and result["total"]["coherence"] == {}
    assert result["partial"] == {} and any("takes no stems" in line for line in logs)
    assert sorted(p.name for p in (tmp_path / "eval" / "audio" / "total" / "00002").iterdir()) == ["mix.wav"]
    text = markdown(result)
    assert "| mix |" in text and "mixture-only model" in text and "Coherence" not in text


@pytest.mark.slow
def test_compare_writes_one_table_and_chart_for_four_kinds_of_model(tmp_path, saved_pipeline, capsys):
    from eval_fixtures import write_dataset
    from test_msdm import tiny_msdm

    from mslddm.cli import main

    data = write_dataset(tmp_path / "data", num_tracks=3, seconds=4.0)
    write_dataset(tmp_path / "data", num_tracks=3, seconds=4.0, split="train")
    isldm_pipeline().save_pretrained(tmp_path / "isldm")
    mixldm_pipeline().save_pretrained(tmp_path / "mixldm")
    tiny_msdm().save_pretrained(tmp_path / "msdm")
    protocol = ["--data", str(data), "--num-clips", "2", "--num-chunks", "2", "--clip-seconds", "2", "--steps", "2",
                "--subsets", "B,DG", "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"]
    # MSDM evaluated first with separation too (its own settings): the comparison reuses that run of more tasks
    assert main(["evaluate", "--pipeline", str(tmp_path / "msdm"), "--out", str(tmp_path / "cmp" / "MSDM"), *protocol,
                 "--tasks", "floor,reconstruction,total,partial,separation", "--separation-steps", "4",
                 "--separation-churn", "0"]) == 0
    args = ["compare", "--pipeline", f"MSLDM={saved_pipeline}", "--pipeline", f"ISLDM={tmp_path / 'isldm'}",
            "--pipeline", f"MixLDM={tmp_path / 'mixldm'}", "--pipeline", f"MSDM={tmp_path / 'msdm'}",
            "--out", str(tmp_path / "cmp"), *protocol, "--timing-seconds", "1", "--timing-runs", "1"]
    capsys.readouterr()
    assert main(args) == 0
    assert capsys.readouterr().out.count("results.json of the same protocol found; reused") == 1  # MSDM's
    comparison = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    models = comparison["models"]
    assert list(models) == ["MSLDM", "ISLDM", "MixLDM", "MSDM"]
    assert [m["kind"] for m in models.values()] == ["msldm", "isldm", "mixldm", "msdm"]
    assert models["ISLDM"]["parameters"]["unet"] > models["MSLDM"]["parameters"]["unet"]
    assert models["MSDM"]["parameters"]["vae"] == 0 and models["MSDM"]["parameters"]["unet"] > 0  # no autoencoder
    assert list(models["MSDM"]["results"]["partial"]["sub_fad"]) == ["B", "DG"]
    # each model's resolved sampler is recorded (here --steps 2 and every scheduler's Euler churn 20)
    assert all(m["sampling"] == {"sampler": "euler", "num_inference_steps": 2, "s_churn": 20.0} for m in models.values())
    assert all(m["seconds_per_song"] > 0 for m in models.values())
    assert all(m["timing"]["windows"] >= 1 and m["timing"]["model_evaluations"] >= 2 for m in models.values())
    assert list(models["ISLDM"]["results"]["partial"]["sub_fad"]) == ["B", "DG"]
    assert models["MixLDM"]["results"]["partial"] == {}
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| real training chunks (floor) | data |" in table and "| MixLDM | mixldm | n/a | n/a |" in table
    assert "| ISLDM |" in table and "## Coherence of total generation" in table and "## Size and speed" in table
    assert "1 window, 2 evaluations" in table  # the time per song says how many windows and evaluations it took
    assert "## Separation: SI-SDR improvement" in table and "| MSDM |" in table
    assert "## Mix FAD and KAD with 95 % intervals" in table and "| MSLDM: VAE reconstruction |" in table
    assert all("fad_interval" in m["results"]["total"] for k, m in models.items() if k != "MixLDM")  # stems
    assert (tmp_path / "cmp" / "comparison.png").stat().st_size > 1000
    assert (tmp_path / "cmp" / "ISLDM" / "results.md").is_file()
    capsys.readouterr()
    assert main(args) == 0  # finished evaluations of the same protocol are reused, not recomputed
    assert capsys.readouterr().out.count("results.json of the same protocol found; reused") == 4
    assert json.loads((tmp_path / "cmp" / "comparison.json").read_text())["models"]["ISLDM"]["results"] == models[
        "ISLDM"]["results"]
    with pytest.raises(SystemExit, match="given twice"):
        main(["compare", "--pipeline", f"A={saved_pipeline}", "--pipeline", f"A={saved_pipeline}", "--data",
              str(data), "--out", str(tmp_path / "x")])


@pytest.mark.parametrize("name", ["compare", "separate", "convert_msdm"])
def test_every_option_of_the_new_commands_has_help(name):
    import argparse
    import importlib

    module = importlib.import_module(f"mslddm.commands.{name}")
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert options and all(a.help for a in options)
    assert module.HELP and "\n" not in module.HELP
