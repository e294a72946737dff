"""Unset sampler settings resolve one way, from the pipeline's own scheduler config, at every entry point: the
Python call, ``mslddm generate`` / ``evaluate`` / ``separate``, and the page's handlers (which the API's endpoints
call)."""

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import STEMS, tiny_pipeline

from mslddm import EDMScheduler
from mslddm.cli import main
from mslddm.evaluation.protocol import TASKS, ProtocolConfig

# Neither the defaults of EDMScheduler() nor any sampler's own from SAMPLER_DEFAULTS.
LATENT_OWN = {"sampler": "heun", "num_inference_steps": 2, "s_churn": 0.5}
MSDM_OWN = {"sampler": "euler", "num_inference_steps": 2, "s_churn": 0.5}


def triple(sampler, steps, churn):
    return {"sampler": sampler, "num_inference_steps": int(steps), "s_churn": float(churn)}


def of_sampling(record: dict) -> dict:
    """(sampler, steps, churn) of an ``output.sampling`` dict or a settings.json of the CLI or the page."""
    return triple(record["sampler"], record.get("num_inference_steps", record.get("steps")), record["s_churn"])


def evaluate_resolution(pipeline, out) -> dict:
    """What ``mslddm evaluate --pipeline PIPELINE`` without sampler flags resolves (before anything runs)."""
    from mslddm.commands.evaluate import _resolved_config, add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--pipeline", str(pipeline), "--data", str(out), "--out", str(out)])
    config = _resolved_config(args, TASKS, str(pipeline), out)
    assert config.is_resolved()
    return {"generation": triple(config.sampler, config.num_inference_steps, config.s_churn),
            "separation": triple("euler", config.separation_steps, config.separation_churn)}


@pytest.fixture(scope="module")
def latent(tmp_path_factory):
    pipe = tiny_pipeline()
    pipe.scheduler = EDMScheduler(**LATENT_OWN)
    folder = tmp_path_factory.mktemp("latent") / "pipe"
    pipe.save_pretrained(folder)
    return pipe, folder


@pytest.fixture(scope="module")
def msdm(tmp_path_factory):
    from test_msdm import tiny_msdm

    from mslddm.pipelines.pipeline_multisource_diffusion import msdm_scheduler

    pipe = tiny_msdm()
    pipe.scheduler = msdm_scheduler(num_inference_steps=MSDM_OWN["num_inference_steps"], s_churn=MSDM_OWN["s_churn"])
    folder = tmp_path_factory.mktemp("msdm") / "pipe"
    pipe.save_pretrained(folder)
    return pipe, folder


def test_every_entry_point_generates_with_the_pipelines_own_settings(latent, tmp_path):
    from space.handlers import Studio
    from space.render import read_render

    pipe, folder = latent
    resolved = {}
    out = pipe(audio_length_in_s=0.3, generator=torch.Generator().manual_seed(0))
    resolved["python"] = of_sampling(out.sampling)
    assert main(["generate", "--pipeline", str(folder), "--duration", "0.3", "--seed", "0", "--out",
                 str(tmp_path / "gen"), "--device", "cpu"]) == 0
    (record,) = (tmp_path / "gen").glob("sample_*/settings.json")
    resolved["cli generate"] = of_sampling(json.loads(record.read_text()))
    resolved["cli evaluate"] = evaluate_resolution(folder, tmp_path / "eval")["generation"]
    studio = Studio(pipe, "tiny", workdir=str(tmp_path / "page"))
    try:
        defaults = studio.sampling_defaults()
        resolved["page defaults"] = triple(defaults.sampler, defaults.num_inference_steps, defaults.s_churn)
        shown = studio.generate({}, {n: True for n in STEMS}, 0.3, None, None, None, "0", 1)
        resolved["page generate"] = of_sampling(read_render(shown.zip_path).settings)
    finally:
        studio.close()
    assert resolved == {entry: LATENT_OWN for entry in resolved}


def test_every_entry_point_separates_with_the_pipelines_own_settings(msdm, tmp_path):
    from space.handlers import Studio
    from space.render import read_render

    pipe, folder = msdm
    t = np.arange(int(0.3 * pipe.sample_rate)) / pipe.sample_rate
    mixture = (0.2 * np.sin(2 * np.pi * 110 * t) + 0.2 * np.sin(2 * np.pi * 550 * t)).astype(np.float32)
    sf.write(tmp_path / "mix.wav", mixture, pipe.sample_rate)
    resolved = {"python": of_sampling(pipe.separate(mixture, generator=torch.Generator().manual_seed(0)).sampling)}
    assert main(["separate", str(tmp_path / "mix.wav"), "--pipeline", str(folder), "--out", str(tmp_path / "sep"),
                 "--device", "cpu"]) == 0
    resolved["cli separate"] = of_sampling(json.loads((tmp_path / "sep" / "seed0" / "settings.json").read_text()))
    evaluated = evaluate_resolution(folder, tmp_path / "eval")
    resolved["cli evaluate"] = evaluated["separation"]
    studio = Studio(pipe, "msdm", workdir=str(tmp_path / "page"))
    try:
        shown = studio.separate(str(tmp_path / "mix.wav"), "dirac", None, None, "0", 1)
        resolved["page separate"] = of_sampling(read_render(shown.zip_path).settings)
    finally:
        studio.close()
    assert resolved == {entry: MSDM_OWN for entry in resolved}
    assert evaluated["generation"] == MSDM_OWN  # its generation too


def test_evaluate_runs_the_bundled_pipelines_own_sampler(tmp_path):
    bundled = Path(__file__).resolve().parents[1] / "pipelines" / "mslddm-synth-small"
    own = EDMScheduler.from_pretrained(bundled, subfolder="scheduler").sampling_settings()
    config = json.loads((bundled / "scheduler" / "scheduler_config.json").read_text())
    assert (own.sampler, own.num_inference_steps, own.s_churn) == (
        config["sampler"], config["num_inference_steps"], config["s_churn"])
    resolved = evaluate_resolution(bundled, tmp_path)["generation"]
    assert resolved == triple(own.sampler, own.num_inference_steps, own.s_churn)
    # explicit settings (an earlier run's flags) still win
    explicit = ProtocolConfig(sampler="euler", num_inference_steps=150, s_churn=20.0).resolved(
        EDMScheduler.from_pretrained(bundled, subfolder="scheduler"))
    assert (explicit.sampler, explicit.num_inference_steps, explicit.s_churn) == ("euler", 150, 20.0)
