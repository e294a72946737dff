"""`mslddm evaluate` end to end on a tiny random pipeline and a fixture dataset."""

import argparse
import importlib.util
import json

import pytest
from eval_fixtures import write_dataset

from mslddm.cli import main

pytestmark = pytest.mark.slow  # real subprocesses / servers: seconds each


def test_every_option_has_help():
    from mslddm.commands import evaluate

    parser = argparse.ArgumentParser()
    evaluate.add_arguments(parser)
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert len(options) >= 20 and all(a.help for a in options)
    assert evaluate.HELP and "\n" not in evaluate.HELP


def test_bad_arguments_are_explained(tmp_path, monkeypatch):
    data = write_dataset(tmp_path / "data", num_tracks=1, seconds=3.0)
    base = ["evaluate", "--data", str(data), "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit, match="--tasks"):
        main(base + ["--tasks", "everything"])
    with pytest.raises(SystemExit, match="no 'dev' split"):
        main(base + ["--split", "dev"])
    with pytest.raises(SystemExit, match="--separation-steps must be at least 1"):
        main(base + ["--tasks", "separation", "--separation-steps", "0"])
    with pytest.raises(SystemExit, match="--separation-churn must be at least 0"):
        main(base + ["--tasks", "separation", "--separation-churn", "-1"])
    for bad in ("0", "-2", "inf", "nan"):  # before anything is generated or written
        with pytest.raises(SystemExit, match="--window-s must be a positive, finite number"):
            main(base + ["--window-s", bad])
    assert not (tmp_path / "out").exists()
    monkeypatch.delenv("MSLDDM_VGGISH_WEIGHTS", raising=False)
    with pytest.raises(SystemExit, match="needs weights"):
        main(base + ["--embedder", "vggish"])


needs_musicnn = pytest.mark.skipif(
    importlib.util.find_spec("musicnn") is None,
    reason="musicnn is not installed: pip install --no-deps musicnn==0.1.0",
)


@needs_musicnn
def test_evaluate_runs_the_protocol_and_resumes(tmp_path, saved_pipeline, capsys, monkeypatch):
    data = write_dataset(tmp_path / "data", num_tracks=3, seconds=6.0)
    out = tmp_path / "out"
    args = [
        "evaluate",
        "--pipeline",
        str(saved_pipeline),
        "--data",
        str(data),
        "--out",
        str(out),
        "--num-clips",
        "3",
        "--num-chunks",
        "2",
        "--clip-seconds",
        "3",
        "--steps",
        "2",
        "--subsets",
        "B,DGP",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "Total generation: FAD" in printed and "| B | DGP | overall |" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["protocol"]["embedder"]["model"] == "MTT_musicnn"
    assert set(results["total"]["fad"]) == {"bass", "drums", "guitar", "piano", "mix"}
    assert list(results["partial"]["sub_fad"]) == ["B", "DGP"]
    assert (out / "audio" / "total" / "00002" / "piano.wav").is_file()
    assert {p.name for p in out.glob("*.png")} == {"fad_total.png", "subfad.png", "coherence.png", "fad_quality.png"}
    # beside the generations: the VAE's reconstruction of the same chunks (no train split here: no floor)
    assert set(results["reconstruction"]["fad"]) == set(results["total"]["fad"]) and results["floor"] is None
    assert "| VAE reconstruction |" in printed and "No train split" in printed
    # the rerun loads no pipeline (all audio is there) and gives the same numbers
    from mslddm import MultiSourceLatentPipeline

    def no_loading(*a, **k):
        raise AssertionError("the pipeline was loaded although every clip was on disk")

    monkeypatch.setattr(MultiSourceLatentPipeline, "from_pretrained", no_loading)
    assert main(args) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["total"]["fad"] == results["total"]["fad"] and again["partial"] == results["partial"]
    with pytest.raises(SystemExit, match="generated with"):
        main(args + ["--seed", "1"])


@needs_musicnn
def test_pipeline_none_evaluates_only_existing_audio(tmp_path):
    data = write_dataset(tmp_path / "data", num_tracks=2, seconds=3.0)
    out = tmp_path / "out"
    args = [
        "evaluate",
        "--pipeline",
        "none",
        "--data",
        str(data),
        "--out",
        str(out),
        "--embedder",
        "musicnn-msd",
    ]
    with pytest.raises(SystemExit, match="no generated audio"):
        main(args)
    (out / "audio").mkdir(parents=True)
    generation = {
        "clip_seconds": 1.0,
        "seed": 0,
        "num_inference_steps": 150,
        "sampler": "euler",
        "s_churn": 20.0,
    }
    manifest = {"pipeline": "", "stem_names": ["bass", "drums", "guitar", "piano"], "sample_rate": 22050}
    (out / "audio" / "manifest.json").write_text(json.dumps({**manifest, "generation": generation}))
    with pytest.raises(SystemExit, match="clips are missing"):
        main(args + ["--clip-seconds", "1", "--num-clips", "2", "--tasks", "partial", "--num-chunks", "2"])
    assert json.loads((out / "state" / "chunks-partial.json").read_text())["chunks"]


def test_few_step_sampler_runs_without_a_churn_flag(tmp_path, saved_pipeline):
    """--churn defaults to the sampler's own (euler: the paper's 20; dpmpp_2m takes none), and is recorded."""
    data = write_dataset(tmp_path / "data", num_tracks=2, seconds=4.0)
    args = ["evaluate", "--pipeline", str(saved_pipeline), "--data", str(data), "--out", str(tmp_path / "out"),
            "--tasks", "total", "--num-clips", "2", "--clip-seconds", "2", "--steps", "2", "--sampler", "dpmpp_2m",
            "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"]
    assert main(args) == 0
    protocol = json.loads((tmp_path / "out" / "results.json").read_text())["protocol"]
    assert protocol["sampler"] == "dpmpp_2m" and protocol["s_churn"] == 0.0
