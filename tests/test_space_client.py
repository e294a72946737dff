"""The Space's ``/generate`` endpoint through ``gradio_client``, on a server started in this process."""

import io
import json
import socket
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from conftest import STEMS, tiny_pipeline

from space.handlers import Limits, Studio
from space.ui import build_demo, launch_kwargs

pytestmark = pytest.mark.slow  # real subprocesses / servers: seconds each


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    studio = Studio(tiny_pipeline(), "tiny", Limits(max_duration_s=4), workdir=str(tmp_path_factory.mktemp("w")))
    demo = build_demo(studio)
    demo.queue(max_size=4, default_concurrency_limit=1)
    kwargs = launch_kwargs(studio, "127.0.0.1", free_port(), share=False)
    _, url, _ = demo.launch(**kwargs, prevent_thread_lock=True, quiet=True)
    yield url
    demo.close()
    studio.close()


@pytest.mark.timeout(120)
def test_generate_from_gradio_client(server, tmp_path, capfd):
    t = np.arange(int(1.5 * 44100)) / 44100
    hits = 0.3 * np.sign(np.sin(2 * np.pi * 4 * t)) * np.exp(-(t % 0.25) * 30)
    sf.write(tmp_path / "drums.flac", np.stack([hits, 0.5 * hits], 1), 44100)  # stereo, 44.1 kHz
    client = gradio_client.Client(server, verbose=False)
    result = client.predict(drums=gradio_client.handle_file(str(tmp_path / "drums.flac")), steps=2,
                            seed="42", variations=2, mute_piano=True, api_name="/generate")
    *players, mix, spectrogram, zip_path, info, variation = result
    assert [Path(p).name for p in players] == [f"{n}.wav" for n in STEMS] and Path(mix).name == "mix.wav"
    assert Path(spectrogram).suffix == ".png" and "Seeds: 42, 43" in info
    assert variation == "1 (seed 42)"  # plain values, no component updates
    with zipfile.ZipFile(zip_path) as zf:
        settings = json.loads(zf.read("settings.json"))
        assert len([n for n in zf.namelist() if n.endswith(".wav")]) == 2 * (len(STEMS) + 1)
    assert settings["given"] == {"drums": "drums.flac"} and settings["mixer"]["piano"]["mute"] is True
    # Issue 26 items 7 and 8: the upload's length, rate and channels; the drums come back as decoded
    assert (settings["sample_rate"], settings["channels"], settings["duration_s"]) == (44100, 2, 1.5)
    with zipfile.ZipFile(zip_path) as zf:
        drums, rate = sf.read(io.BytesIO(zf.read("variation_1_seed42/drums.wav")), dtype="int16")
    assert rate == 44100 and np.array_equal(drums, sf.read(tmp_path / "drums.flac", dtype="int16")[0])

    # /extend continues the second variation by 0.5 s, with its seed; only the ZIP and the length are needed
    *players, mix, _, longer_zip, info, variation = client.predict(
        zip_path=gradio_client.handle_file(zip_path), selected="2 (seed 43)", extend_s=0.5, steps=2,
        api_name="/extend")
    with zipfile.ZipFile(longer_zip) as zf:
        longer = json.loads(zf.read("settings.json"))
    assert longer["seeds"] == [43] and longer["duration_s"] == pytest.approx(2.0) and "extended" in info
    assert sf.info(mix).duration == pytest.approx(2.0, abs=1e-3)
    # The server logged no traceback (the variation's label written into a Radio without choices logged one on
    # every generation and extend), and the API names its outputs (the spectrogram was "value_66")
    err = capfd.readouterr().err
    assert "Traceback" not in err and "not in the list of choices" not in err, err[-3000:]
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/generate"]["returns"]
    labels = [r["label"] for r in api]
    assert labels[-4] == "spectrogram" and labels[-1] == "variation" and not any("value_" in x for x in labels)
    assert api[-1]["type"]["type"] == "string"  # a label, not a Literal of no choices


@pytest.mark.timeout(60)
def test_bad_request_is_an_error_message(server):
    client = gradio_client.Client(server, verbose=False)
    with pytest.raises(gradio_client.exceptions.AppError, match="Nothing to generate"):
        client.predict(**{f"generate_{n}": False for n in STEMS}, duration=1.0, steps=2, api_name="/generate")
    with pytest.raises(gradio_client.exceptions.AppError, match="Steps must be between 1 and 200"):  # item 6
        client.predict(duration=1.0, steps=0, api_name="/generate")
