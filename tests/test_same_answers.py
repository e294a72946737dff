"""The same request gives the same answer from Python, the CLI, the web page's handler and the HTTP API: the same
sampler settings when none are given, and the same sentence for the same bad input."""

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

import gradio as gr  # noqa: E402
from conftest import STEMS, tiny_pipeline  # noqa: E402

from mslddm.cli import main  # noqa: E402
from mslddm.schedulers import SAMPLER_DEFAULTS  # noqa: E402
from space.handlers import Limits, Studio  # noqa: E402
from space.ui import build_demo, launch_kwargs  # noqa: E402

pytestmark = pytest.mark.slow
SR = 22050
LIMITS = Limits(max_duration_s=4, max_upload_s=3, max_steps=200)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    t = np.arange(int(3.5 * SR)) / SR
    sf.write(root / "long.wav", 0.3 * np.sin(2 * np.pi * 110 * t), SR)
    sf.write(root / "silent.wav", np.zeros(SR, np.float32), SR)
    (root / "corrupt.wav").write_bytes(b"RIFF0000WAVEnot really audio")
    sf.write(root / "good.wav", 0.3 * np.sin(2 * np.pi * 220 * t[:SR]), SR)
    return root


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    studio = Studio(tiny_pipeline(), "tiny", LIMITS, workdir=str(tmp_path_factory.mktemp("w")))
    yield studio
    studio.close()


@pytest.fixture(scope="module")
def api(studio):
    demo = build_demo(studio)
    demo.queue(max_size=4, default_concurrency_limit=1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _, url, _ = demo.launch(**launch_kwargs(studio, "127.0.0.1", port, share=False), prevent_thread_lock=True,
                            quiet=True)
    yield gradio_client.Client(url, verbose=False)
    demo.close()


def ask(surface, *, saved_pipeline, studio, api, tmp_path, stem=None, sampler=None, churn=None):
    """Generates 1 s (bass given when ``stem`` is a file) from ``surface``; returns the sampling settings used or
    the error message."""
    try:
        if surface == "python":
            pipe = tiny_pipeline()
            out = pipe(stems={"bass": str(stem)} if stem else None, audio_length_in_s=1.0, sampler=sampler,
                       s_churn=churn, generator=None)
            return out.sampling
        if surface == "cli":
            args = ["generate", "--pipeline", str(saved_pipeline), "--duration", "1", "--out", str(tmp_path / "cli"),
                    "--max-stem-seconds", "3"]
            args += ["--stem", f"bass={stem}"] if stem else []
            args += ["--sampler", sampler] if sampler else []
            args += ["--churn", str(churn)] if churn is not None else []
            main(args)
            settings = json.loads(next((tmp_path / "cli").glob("*/settings.json")).read_text())
        elif surface == "page":
            out = studio.generate({"bass": str(stem)} if stem else {}, dict.fromkeys(STEMS, True), 1.0, None,
                                  sampler, churn, "0", 1)
            with zipfile.ZipFile(out.zip_path) as zf:
                settings = json.loads(zf.read("settings.json"))
        else:
            kwargs = {"bass": gradio_client.handle_file(str(stem))} if stem else {}
            kwargs.update({"sampler": sampler} if sampler else {})
            kwargs.update({"churn": churn} if churn is not None else {})
            result = api.predict(duration=1.0, api_name="/generate", **kwargs)
            with zipfile.ZipFile(result[-3]) as zf:
                settings = json.loads(zf.read("settings.json"))
        return {"sampler": settings["sampler"], "num_inference_steps": settings["steps"],
                "s_churn": settings["s_churn"], "model_evaluations": settings["model_evaluations"]}
    except (ValueError, SystemExit, gr.Error, gradio_client.exceptions.AppError) as error:
        return str(error.code if isinstance(error, SystemExit) else error).strip("'\"")


SURFACES = ("python", "cli", "page", "api")


@pytest.mark.parametrize("sampler", [None, *SAMPLER_DEFAULTS])
def test_every_surface_uses_the_samplers_defaults(sampler, saved_pipeline, studio, api, tmp_path):
    expected = SAMPLER_DEFAULTS[sampler or "euler"]  # the tiny pipeline's scheduler: euler by default
    for surface in SURFACES:
        got = ask(surface, saved_pipeline=saved_pipeline, studio=studio, api=api, tmp_path=tmp_path / surface,
                  sampler=sampler)
        assert isinstance(got, dict), (surface, got)
        assert (got["sampler"], got["num_inference_steps"], got["s_churn"]) == (
            sampler or "euler", expected.num_inference_steps, expected.s_churn), surface


@pytest.mark.parametrize("case, first_sentence", [
    ("corrupt", "The bass stem (corrupt.wav) could not be read as audio: give a WAV, FLAC, OGG or MP3 file instead."),
    ("silent", "The bass stem (silent.wav) is silent (-120 dBFS RMS): give a stem you can hear, or leave it out to "
               "generate bass."),
    ("long", "The bass stem (long.wav) is 3.5 s long; stems may be at most 3 s."),
    ("churn", "sampler='dpmpp_2m' takes no churn; pass s_churn=0."),
])
def test_every_surface_gives_the_same_sentence(case, first_sentence, files, saved_pipeline, studio, api, tmp_path):
    stem = files / f"{case}.wav" if case != "churn" else None
    kwargs = {"sampler": "dpmpp_2m", "churn": 5.0} if case == "churn" else {}
    for surface in SURFACES:
        if case == "long" and surface == "python":
            continue  # the Python API takes any length (long-form generation); the CLI and the page limit it
        got = ask(surface, saved_pipeline=saved_pipeline, studio=studio, api=api, tmp_path=tmp_path / surface,
                  stem=stem, **kwargs)
        assert isinstance(got, str), (surface, got)
        assert got.startswith(first_sentence), (surface, got)
        assert "/tmp" not in got and "Traceback" not in got, (surface, got)
