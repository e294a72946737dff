"""The accompaniment task end to end on a tiny pipeline and a tiny click-track dataset, the augmentation chain and
the level setting it uses, and the `mslddm accompany` command."""

import json

import numpy as np
import pytest
import soundfile as sf

from conftest import STEMS, tiny_pipeline
from mslddm.audio import rms_db
from mslddm.data.augment import draw_chain, set_level
from mslddm.evaluation.accompaniment import AccompanimentConfig, evaluate_accompaniment

SR = 22050


@pytest.fixture(scope="module")
def clicks_data(tmp_path_factory):
    """Two test songs of 3 s at 120 BPM: a click per beat in every stem, at different pitches."""
    root = tmp_path_factory.mktemp("clicks")
    t = np.arange(3 * SR) / SR
    for i in range(2):
        folder = root / "test" / f"Track{i:05d}"
        folder.mkdir(parents=True)
        (folder / "metadata.json").write_text(json.dumps({"tempo": 120, "beats_per_bar": 4}))
        for k, stem in enumerate(STEMS):
            audio = 0.3 * np.sin(2 * np.pi * 110 * (k + 1) * t) * np.exp(-12 * (t % 0.5))
            sf.write(folder / f"{stem}.wav", audio.astype(np.float32), SR)
    return root


def test_set_level_reaches_the_level_and_limits_instead_of_clipping():
    rng = np.random.default_rng(0)
    audio = (0.05 * rng.standard_normal(SR)).astype(np.float32)
    assert rms_db(set_level(audio, -30.0)) == pytest.approx(-30.0, abs=0.01)
    loud = set_level(audio, -8.0)  # noise at -8 dBFS RMS peaks over full scale: limited, then levelled
    assert rms_db(loud) == pytest.approx(-8.0, abs=0.01) and np.abs(loud).max() <= 0.999
    with pytest.raises(ValueError, match="would clip"):
        set_level(audio, -8.0, limit=False)
    assert not set_level(np.zeros(10, np.float32), -20).any()


def test_augmentation_chain_is_seeded_and_keeps_the_level():
    rng = np.random.default_rng(1)
    audio = (0.1 * rng.standard_normal(SR)).astype(np.float32)
    a, b, c = draw_chain(3), draw_chain(3), draw_chain(4)
    assert a == b and a != c
    out = a(audio, SR)
    assert out.shape == audio.shape and np.isfinite(out).all()
    assert rms_db(out) == pytest.approx(rms_db(audio), abs=0.05)
    assert np.abs(out - audio).max() > 1e-3  # it does change the sound
    np.testing.assert_array_equal(out, b(audio, SR))


def test_accompaniment_task_on_a_tiny_pipeline(clicks_data):
    pipe = tiny_pipeline()
    config = AccompanimentConfig(num_clips=1, seconds=2.0, given=("guitar", "bass"), levels_dbfs=(-40.0, None),
                                 augment=True, num_inference_steps=2)
    results = evaluate_accompaniment(pipe, clicks_data, config)
    records = results["records"]
    assert len(records) == 1 * 2 * 2 and {r["given"] for r in records} == {"guitar", "bass"}
    first = records[0]
    assert set(first["stems"]) == set(STEMS) - {first["given"]}
    assert first["beats"]["f_measure_real"] > 0.8  # real drums on the song's grid: the grid is right
    # The real band's level relation is to the song's own given stem, whatever level the model got it at
    real = [r["stems"]["drums"]["level_db_real"] for r in records if r["given"] == "guitar"]
    assert max(real) - min(real) < 0.5
    summary = results["summary"]
    assert {"all", "guitar@-40.0", "guitar@None", "bass@-40.0", "bass@None"} <= set(summary)
    assert summary["all"]["runs"] == 4 and np.isfinite(summary["all"]["level_error_db"])
    with pytest.raises(ValueError, match="Unknown stem"):
        evaluate_accompaniment(pipe, clicks_data, AccompanimentConfig(given=("vocals",)))


def test_accompany_command_writes_the_results(clicks_data, saved_pipeline, tmp_path, capsys):
    from mslddm.cli import main

    code = main(["accompany", "--pipeline", str(saved_pipeline), "--data", str(clicks_data), "--out",
                 str(tmp_path), "--clips", "1", "--seconds", "2", "--given", "drums", "--steps", "2"])
    assert code == 0
    results = json.loads((tmp_path / "accompaniment.json").read_text())
    assert results["summary"]["all"]["runs"] == 1 and "beats" not in results["records"][0]  # drums given
    assert "| drums@None | 1 |" in capsys.readouterr().out
