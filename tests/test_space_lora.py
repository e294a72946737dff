"""The page's LoRA adapters: a menu of the adapters found in a folder that fit the pipeline, and a strength; the
base pipeline's results are the same before and after an adapter was used (issue 28)."""

import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gradio")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `space/` sits next to the package

import gradio as gr
from conftest import STEMS, tiny_adapter, tiny_pipeline

from mslddm.pipelines.lora import find_adapters
from space.handlers import Limits, Studio
from space.render import read_render
from space.ui import build_demo


@pytest.fixture(scope="module")
def loras(tmp_path_factory):
    folder = tmp_path_factory.mktemp("loras")
    tiny_adapter(folder / "band", seed=0)
    tiny_adapter(folder / "other-stems", stem_names=["bass", "drums", "keys"])  # not offered: other stems
    (folder / "notes").mkdir()  # not an adapter
    return folder


@pytest.fixture(scope="module")
def studio(tmp_path_factory, loras):
    pipe = tiny_pipeline()
    studio = Studio(pipe, "tiny", Limits(max_duration_s=4, max_steps=10), workdir=str(tmp_path_factory.mktemp("s")),
                    loras=find_adapters(loras, pipe.stem_names, pipe.unet.config.in_channels))
    yield studio
    studio.close()


def stems(out) -> np.ndarray:
    """The render's stems at the pipeline's levels (its WAVs divided by the gain the page applied)."""
    return read_render(out.zip_path).stems


def run(studio, **kwargs):
    return studio.generate({}, dict.fromkeys(STEMS, True), 1.0, 2, "dpmpp_2m", 0.0, "3", 1, **kwargs)


def test_only_adapters_that_fit_the_pipeline_are_offered(studio, loras):
    assert list(studio.loras) == ["band"] and studio.loras["band"] == loras / "band"
    assert find_adapters(None, STEMS, 16) == {} and find_adapters(loras / "nowhere", STEMS, 16) == {}


def test_an_adapter_and_its_strength_change_the_result_and_none_is_the_base_again(studio):
    base = stems(run(studio))
    full = run(studio, lora="band", lora_scale=1.0)
    half = stems(run(studio, lora="band", lora_scale=0.5))
    assert 0 < np.abs(half - base).max() < np.abs(stems(full) - base).max()
    assert np.array_equal(stems(run(studio, lora="none")), base)  # adapters off: the base, bit for bit
    settings = json.loads(zipfile.ZipFile(full.zip_path).read("settings.json"))
    assert settings["lora"] == "band" and settings["lora_scale"] == 1.0
    assert "with the LoRA adapter **band** at strength 1" in full.info


@pytest.mark.parametrize("lora, scale, message", [
    ("elsewhere", 1.0, "Unknown LoRA adapter 'elsewhere'; this page has ['none', 'band']."),
    ("band", 3.0, "LoRA strength must be between 0 and 2, got 3.0."),
    ("band", float("nan"), "LoRA strength must be between 0 and 2"),
])
def test_a_bad_adapter_or_strength_is_a_sentence(studio, lora, scale, message):
    with pytest.raises(gr.Error, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")):
        run(studio, lora=lora, lora_scale=scale)


def test_the_page_has_the_menu_and_the_api_takes_it(studio, loras, tmp_path):
    demo = build_demo(studio)
    info = demo.get_api_info()["named_endpoints"]
    for endpoint in ("/generate", "/extend"):
        params = [p["parameter_name"] for p in info[endpoint]["parameters"]]
        assert params[-2:] == ["lora", "lora_scale"], endpoint
    generate = next(f for f in demo.fns.values() if f.api_name == "generate").fn
    values = ([None] * 4 + [True] * 4 + [1.0, 2, "dpmpp_2m", 0.0, "3", 1, False] + [0.0] * 4 + [False] * 4
              + [False] + ["band", 0.5])  # uploads, boxes, settings, faders, mutes, normalise, adapter
    shown = generate(*values, None, None)
    assert "with the LoRA adapter **band** at strength 0.5" in shown[-2]
    plain = Studio(tiny_pipeline(), "tiny", workdir=str(tmp_path))  # no adapters: no menu, the API as before
    params = [p["parameter_name"] for p in build_demo(plain).get_api_info()["named_endpoints"]["/generate"]
              ["parameters"]]
    assert "lora" not in params and params[-1] == "normalise_mix"
    plain.close()


def test_app_finds_the_adapters_beside_the_pipeline_or_in_lora_dir(loras, tmp_path):
    import argparse
    import shutil

    import app

    pipe = tiny_pipeline()
    found = app._adapters(argparse.Namespace(lora_dir=str(loras), pipeline="owner/hub-id"), pipe)
    assert list(found) == ["band"]
    pipe.save_pretrained(tmp_path / "pipelines" / "mine")  # a local pipeline folder: loras/ beside it is read
    shutil.copytree(loras / "band", tmp_path / "pipelines" / "loras" / "band")
    found = app._adapters(argparse.Namespace(lora_dir=None, pipeline=str(tmp_path / "pipelines" / "mine")), pipe)
    assert list(found) == ["band"]
    assert app._adapters(argparse.Namespace(lora_dir=None, pipeline="owner/hub-id"), pipe) == {}
