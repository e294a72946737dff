"""Separation on the page (MSDM pipelines): the handler, the page's components, and the public ``/separate``
endpoint through ``gradio_client``."""

import json
import socket
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("gradio")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from conftest import STEMS, tiny_pipeline
from test_msdm import tiny_msdm

from space.handlers import Limits, Studio
from space.ui import build_demo, launch_kwargs

SR = 22050


def mixture_file(path, seconds=1.0, sr=44100):
    t = np.arange(int(seconds * sr)) / sr
    mono = 0.2 * np.sin(2 * np.pi * 110 * t) + 0.1 * np.sign(np.sin(2 * np.pi * 4 * t)) * np.exp(-(t % 0.25) * 30)
    sf.write(path, np.stack([mono, mono], 1), sr)
    return str(path)


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    studio = Studio(tiny_msdm(), "msdm-tiny", Limits(max_steps=40), workdir=str(tmp_path_factory.mktemp("space")))
    yield studio
    studio.close()


def test_separate_handler_writes_stems_that_sum_to_the_mixture(studio, tmp_path):
    out = studio.separate(mixture_file(tmp_path / "song.wav"), "dirac", 30, 0.0, "7", 2)
    assert sorted(out.players) == sorted([*STEMS, "mix"]) and out.variation_labels == ["1 (seed 7)", "2 (seed 8)"]
    with zipfile.ZipFile(out.zip_path) as zf:
        settings = json.loads(zf.read("settings.json"))
    ratio = settings["mix_gain_applied"] / settings["gain_applied"]  # the mix has its own gain
    stems = np.stack([sf.read(out.players[n], dtype="float32")[0] for n in STEMS]) * ratio
    mix = sf.read(out.players["mix"], dtype="float32")[0]
    assert np.abs(stems.sum(0) - mix).max() < 5e-4 * max(1.0, np.abs(stems).max())  # 16-bit players
    assert settings["separated_from"] == "song.wav" and settings["method"] == "dirac" and settings["steps"] == 30
    assert "Separated **song.wav** into **bass, drums, guitar, piano**" in out.info
    # the mixer re-mixes a separation like a generation, without separating again
    remixed = studio.remix(str(out.zip_path), out.variation_labels[1], {"drums": (0.0, True)})
    with zipfile.ZipFile(remixed.zip_path) as zf:
        settings = json.loads(zf.read("settings.json"))
    parts = {n: sf.read(remixed.players[n], dtype="float32")[0] for n in [*STEMS, "mix"]}
    others = sum(parts[n] for n in STEMS if n != "drums") * settings["mix_gain_applied"] / settings["gain_applied"]
    assert np.abs(parts["mix"] - others).max() < 5e-4 * max(1.0, np.abs(others).max())  # drums muted in the mix


def test_separate_handler_refuses_bad_input_in_sentences(studio, tmp_path):
    import gradio as gr

    with pytest.raises(gr.Error, match="Upload a mixture"):
        studio.separate(None, "dirac", 4, 0.0, "1", 1)
    sf.write(tmp_path / "silent.wav", np.zeros(SR, np.float32), SR)
    with pytest.raises(gr.Error, match="mixture"):
        studio.separate(str(tmp_path / "silent.wav"), "dirac", 4, 0.0, "1", 1)
    with pytest.raises(gr.Error, match="Steps must be"):
        studio.separate(mixture_file(tmp_path / "m.wav"), "dirac", 400, 0.0, "1", 1)
    latent = Studio(tiny_pipeline(), "tiny", workdir=str(tmp_path / "w"))
    assert not latent.can_separate
    with pytest.raises(gr.Error, match="cannot separate"):
        latent.separate(mixture_file(tmp_path / "m2.wav"), "dirac", 4, 0.0, "1", 1)
    latent.close()


def test_the_page_has_a_separate_section_only_for_pipelines_that_separate(studio, tmp_path):
    config = build_demo(studio).get_config_file()
    ids = {c.get("props", {}).get("elem_id") for c in config["components"]}
    assert {"upload-mixture", "separation-method", "separate-button"} <= ids
    assert "separate" in {d.get("api_name") for d in config["dependencies"]}
    latent = Studio(tiny_pipeline(), "tiny", workdir=str(tmp_path / "w"))
    ids = {c.get("props", {}).get("elem_id") for c in build_demo(latent).get_config_file()["components"]}
    assert "separate-button" not in ids and "generate-button" in ids
    latent.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_separate_from_gradio_client(studio, tmp_path):
    gradio_client = pytest.importorskip("gradio_client")
    demo = build_demo(studio)
    demo.queue(max_size=4, default_concurrency_limit=1)
    _, url, _ = demo.launch(**launch_kwargs(studio, "127.0.0.1", free_port(), share=False), prevent_thread_lock=True,
                            quiet=True)
    try:
        client = gradio_client.Client(url, verbose=False)
        *players, mix, _spectrogram, zip_path, _info, variation = client.predict(
            mixture=gradio_client.handle_file(mixture_file(tmp_path / "api.flac")), method="gaussian", steps=20,
            churn=0.0, seed="3", variations=1, api_name="/separate")
        assert [Path(p).name for p in players] == [f"{n}.wav" for n in STEMS] and variation == "1 (seed 3)"
        stems = np.stack([sf.read(p, dtype="float32")[0] for p in players])
        assert np.abs(stems.sum(0) - sf.read(mix, dtype="float32")[0]).max() < 5e-4 * max(1.0, np.abs(stems).max())
        with zipfile.ZipFile(zip_path) as zf:
            assert json.loads(zf.read("settings.json"))["method"] == "gaussian"
    finally:
        demo.close()
