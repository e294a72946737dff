"""LoRA adapters of a pipeline's UNet (mslddm/pipelines/lora.py): saved beside the base in diffusers' format, loaded,
scaled, fused and unloaded with diffusers' names and semantics; unloading gives the base output back bit for bit."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_same_outputs, tiny_adapter, tiny_pipeline

from mslddm.pipelines.lora import (
    ADAPTER_CONFIG_NAME,
    LORA_WEIGHT_NAME,
    lora_config,
    read_adapter,
    write_adapter,
)

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "pipelines" / "mslddm-synth-small"


def sample(pipe):
    return pipe(audio_length_in_s=0.2, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).stems


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    return tiny_adapter(tmp_path_factory.mktemp("lora") / "adapter")


def test_the_adapter_folder_is_diffusers_format_with_a_config_naming_its_base(adapter):
    state, config = read_adapter(adapter)
    assert all(k.startswith("unet.") and (".lora_A." in k or ".lora_B." in k) for k in state)
    assert config["unet.r"] == 4 and set(config["unet.target_modules"]) >= {"to_q", "to_kv", "project"}
    record = json.loads((adapter / ADAPTER_CONFIG_NAME).read_text())
    assert record["base_pipeline"] == "tiny" and record["r"] == 4 and record["lora_alpha"] == 4.0
    assert record["stem_names"] == ["bass", "drums", "guitar", "piano"] and record["unet_in_channels"] == 16
    assert record["parameters"] == sum(v.numel() for v in state.values())


def test_unload_gives_the_base_output_back_bit_for_bit(adapter):
    pipe = tiny_pipeline()
    base = sample(pipe)
    assert pipe.load_lora_weights(adapter) == "default_0" and pipe.get_active_adapters() == ["default_0"]
    adapted = sample(pipe)
    assert np.abs(adapted - base).max() > 1e-3  # the adapter does something
    pipe.unload_lora_weights()
    assert np.array_equal(sample(pipe), base)
    assert not any("lora" in key for key in pipe.unet.state_dict())
    pipe.load_lora_weights(adapter, adapter_name="again")  # and again: the same adapted output
    assert np.array_equal(sample(pipe), adapted)


def test_scale_is_the_strength_and_zero_is_the_base(adapter):
    pipe = tiny_pipeline()
    base = sample(pipe)
    pipe.load_lora_weights(adapter, adapter_name="mine", scale=0.0)
    assert_same_outputs(sample(pipe), base, atol=1e-7)
    pipe.set_adapters("mine", 1.0)
    full = sample(pipe)
    pipe.set_adapters("mine", 0.5)
    half = sample(pipe)
    assert 0 < np.abs(half - base).max() < np.abs(full - base).max()
    pipe.disable_lora()
    assert_same_outputs(sample(pipe), base, atol=1e-7)


def test_fuse_is_the_unfused_output_and_unfuse_takes_it_back_out(adapter):
    pipe = tiny_pipeline()
    base = sample(pipe)
    pipe.load_lora_weights(adapter)
    adapted = sample(pipe)
    pipe.fuse_lora()
    assert pipe.fused_loras == {"default_0"}
    assert_same_outputs(sample(pipe), adapted, atol=1e-5)  # merged weights: the same up to rounding
    pipe.unfuse_lora()
    assert pipe.num_fused_loras == 0
    assert_same_outputs(sample(pipe), adapted, atol=1e-5)
    pipe.unload_lora_weights()
    assert_same_outputs(sample(pipe), base, atol=1e-5)  # W + BA - BA: equal up to rounding, not bit for bit


def test_a_pipeline_with_an_adapter_is_saved_fused_or_not_at_all(adapter, tmp_path):
    from mslddm import MultiSourceLatentPipeline

    pipe = tiny_pipeline()
    pipe.load_lora_weights(adapter)
    adapted = sample(pipe)
    with pytest.raises(ValueError, match=r"holds LoRA adapters: call unload_lora_weights\(\) first, or fuse_lora"):
        pipe.save_pretrained(tmp_path / "unfused")
    pipe.fuse_lora()
    pipe.unload_lora_weights()  # diffusers' way to a fused pipeline: the merged weights stay
    pipe.save_pretrained(tmp_path / "fused")
    fused = MultiSourceLatentPipeline.from_pretrained(tmp_path / "fused")
    fused.set_progress_bar_config(disable=True)
    assert_same_outputs(sample(fused), adapted, atol=1e-5)


def test_an_adapter_of_other_stems_is_refused_and_the_pipeline_is_left_as_it_was(tmp_path, adapter):
    other = tiny_adapter(tmp_path / "three", stem_names=("bass", "drums", "keys"))
    pipe = tiny_pipeline()
    base = sample(pipe)
    with pytest.raises(ValueError, match=r"does not fit this pipeline: it was trained for the stems \['bass', "
                                         r"'drums', 'keys'\], this pipeline has"):
        pipe.load_lora_weights(other)
    (other / ADAPTER_CONFIG_NAME).unlink()  # without its config, peft finds the shapes wrong: still one sentence
    with pytest.raises(ValueError, match="does not fit this pipeline's UNet: "):
        pipe.load_lora_weights(other)
    assert not getattr(pipe.unet, "peft_config", None) and np.array_equal(sample(pipe), base)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pipe.load_lora_weights(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=f"holds no {LORA_WEIGHT_NAME}"):
        pipe.load_lora_weights(tmp_path / "empty")


def test_an_adapter_of_the_bundled_pipeline_is_at_most_5_mb(tmp_path):
    """Rank 16 on every target module of the bundled small UNet, saved in float16 as training's export does."""
    from mslddm.models import load_unet_folder

    unet = load_unet_folder(BUNDLED, subfolder="unet")
    unet.add_adapter(lora_config(16), adapter_name="size")
    folder = write_adapter(tmp_path / "a", unet, "size", base_pipeline=BUNDLED.name,
                           stem_names=["bass", "drums", "guitar", "piano"], dtype=torch.float16)
    size = (folder / LORA_WEIGHT_NAME).stat().st_size
    parameters = json.loads((folder / ADAPTER_CONFIG_NAME).read_text())["parameters"]
    assert parameters == 886_784 and size <= 5_000_000, size  # 1.77 MB: 7 % of the UNet's 12.5 M parameters


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("musicnn") is None, reason="the offline FAD embedder's weights")
def test_evaluate_and_accompany_sample_with_the_adapter(adapter, saved_pipeline, tmp_path, capsys):
    """The worked example's commands: `mslddm evaluate --lora` and `mslddm accompany --lora` name the adapter in
    their results."""
    from eval_fixtures import write_dataset

    from mslddm.cli import main

    data = write_dataset(tmp_path / "data", num_tracks=2, seconds=4.0)
    assert main(["evaluate", "--pipeline", str(saved_pipeline), "--lora", str(adapter), "--lora-scale", "0.5",
                 "--data", str(data), "--out", str(tmp_path / "eval"), "--tasks", "total", "--num-clips", "2",
                 "--clip-seconds", "2", "--steps", "2", "--sampler", "dpmpp_2m", "--cache-dir", str(tmp_path / "c"),
                 "--device", "cpu"]) == 0
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["protocol"]["pipeline"].endswith(f" + LoRA {adapter} at 0.5"), results["protocol"]
    assert main(["accompany", "--pipeline", str(saved_pipeline), "--lora", str(adapter), "--data", str(data),
                 "--out", str(tmp_path / "acc"), "--clips", "1", "--seconds", "2", "--given", "drums",
                 "--steps", "2"]) == 0
    assert json.loads((tmp_path / "acc" / "accompaniment.json").read_text())["pipeline"].endswith(
        f" + LoRA {adapter} at 1")
