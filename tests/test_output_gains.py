"""Calibrated output gains: ``stem_output_gains_db`` scales every generated stem after decoding (never a given
one), survives save/load, and ``mslddm calibrate-levels`` measures it as the training level minus the generated
level, so that a calibrated pipeline's stems come out at the level it records."""

import json

import numpy as np
import pytest
import torch

from conftest import tiny_pipeline
from mslddm import MultiSourceLatentPipeline
from mslddm.loudness import stem_levels

SR = 16000
GAINS = {"bass": 6.0, "drums": -3.0, "guitar": 0.0, "piano": 12.0}


def with_gains(gains=GAINS, levels=None):
    pipe = tiny_pipeline()
    return MultiSourceLatentPipeline(vae=pipe.vae, unet=pipe.unet, scheduler=pipe.scheduler,
                                     stem_names=pipe.stem_names, sample_rate=SR, stem_levels_dbfs=levels,
                                     stem_output_gains_db=gains)


def generate(pipe, **kwargs):
    pipe.set_progress_bar_config(disable=True)
    return pipe(num_inference_steps=2, audio_length_in_s=0.5, generator=torch.Generator().manual_seed(0), **kwargs)


def test_gains_scale_the_generated_stems_and_not_a_given_one():
    plain, gained = with_gains(gains=None), with_gains()
    a, b = generate(plain), generate(gained)
    for i, name in enumerate(plain.stem_names):
        np.testing.assert_allclose(b.stems[:, i], a.stems[:, i] * 10 ** (GAINS[name] / 20), rtol=1e-4, atol=1e-7)
    assert b.sampling["output_gain_db"] == {"bass": 6.0, "drums": -3.0, "piano": 12.0}
    take = (0.1 * np.sin(2 * np.pi * 220 * np.arange(SR // 2) / SR)).astype(np.float32)
    partial = generate(gained, stems={"piano": take}, input_sample_rate=SR)
    np.testing.assert_array_equal(partial.stems[0, plain.stem_names.index("piano")], take)  # the take untouched
    gained.set_progress_bar_config(disable=True)
    continued = gained(stems={"bass": take}, input_sample_rate=SR, extend_s=0.25, num_inference_steps=2,
                       generator=torch.Generator().manual_seed(0))
    assert "bass" not in continued.sampling["output_gain_db"]  # its take sets a continued stem's level
    assert continued.sampling["output_gain_db"] == {"drums": -3.0, "piano": 12.0}


def test_gains_survive_save_and_load_and_bad_ones_are_named(tmp_path):
    with_gains().save_pretrained(tmp_path / "p")
    assert json.loads((tmp_path / "p" / "model_index.json").read_text())["stem_output_gains_db"] == GAINS
    assert MultiSourceLatentPipeline.from_pretrained(tmp_path / "p").stem_output_gains_db == GAINS
    with pytest.raises(ValueError, match="stem_output_gains_db names unknown stem"):
        with_gains({"vocals": 3.0})
    with pytest.raises(ValueError, match=r"within \+-24"):
        with_gains({"bass": 40.0})


def test_calibrate_levels_measures_and_records_the_gain(tmp_path, capsys):
    from mslddm.cli import main

    folder = tmp_path / "p"
    levels = {"bass": -20.0, "drums": -22.0, "guitar": -24.0, "piano": -26.0}
    with_gains(gains={"bass": 5.0}, levels=levels).save_pretrained(folder)  # an old calibration is measured past
    assert main(["calibrate-levels", "--pipeline", str(folder), "--clips", "3", "--seconds", "0.5",
                 "--batch-size", "2", "--write"]) == 0
    assert "| bass | -20.0 |" in capsys.readouterr().out
    pipe = MultiSourceLatentPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    gains = pipe.stem_output_gains_db
    assert set(gains) == set(levels) and all(abs(g) > 0.1 for g in gains.values())
    clips = [pipe(num_inference_steps=pipe.scheduler.config.num_inference_steps, audio_length_in_s=0.5,
                  generator=torch.Generator().manual_seed(1_000_000 + i)).stems[0] for i in range(3)]
    measured = stem_levels(clips, pipe.stem_names, SR)  # the calibration's own clips, now gained
    for name in levels:
        assert measured[name] == pytest.approx(levels[name], abs=0.15)


def test_calibrate_levels_needs_training_levels(tmp_path):
    from mslddm.cli import main

    with pytest.raises(SystemExit, match="does not exist"):
        main(["calibrate-levels", "--pipeline", str(tmp_path / "nowhere")])
    with pytest.raises(SystemExit, match="--clips and --batch-size must be at least 1"):
        main(["calibrate-levels", "--pipeline", str(tmp_path / "nowhere"), "--clips", "0"])

    with_gains(gains=None).save_pretrained(tmp_path / "p")
    with pytest.raises(SystemExit, match="records no training levels"):
        main(["calibrate-levels", "--pipeline", str(tmp_path / "p"), "--clips", "1", "--seconds", "0.5"])
    assert "stem_output_gains_db" not in json.loads((tmp_path / "p" / "model_index.json").read_text())


def adapter_with(folder, gains=None, levels=None):
    """The tiny adapter, recording ``gains`` (and the songs' ``levels``) as calibrate-levels --lora would."""
    from conftest import tiny_adapter

    folder = tiny_adapter(folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    config.update({k: v for k, v in {"stem_output_gains_db": gains, "stem_levels_dbfs": levels}.items() if v})
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


def test_an_adapters_gains_are_in_force_while_it_is_active_by_its_strength(tmp_path):
    own = {"bass": 2.0, "drums": 8.0, "guitar": -4.0, "piano": 0.0}
    folder = adapter_with(tmp_path / "a", gains=own)
    pipe = with_gains()
    pipe.load_lora_weights(folder, adapter_name="mine")
    assert pipe.stem_output_gains_db == own
    assert generate(pipe).sampling["output_gain_db"] == {"bass": 2.0, "drums": 8.0, "guitar": -4.0}  # 0 dB: none
    pipe.set_adapters("mine", 0.5)  # half way between the base's gain and the adapter's, in dB
    assert pipe.stem_output_gains_db == {"bass": 4.0, "drums": 2.5, "guitar": -2.0, "piano": 6.0}
    pipe.set_adapters("mine", 2.0)  # the page's strongest: further along, within the +-24 dB a gain may have
    assert pipe.stem_output_gains_db == {"bass": -2.0, "drums": 19.0, "guitar": -8.0, "piano": -12.0}
    pipe.set_adapters("mine", 5.0)
    assert pipe.stem_output_gains_db["drums"] == 24.0 and pipe.stem_output_gains_db["piano"] == -24.0
    pipe.disable_lora()
    assert pipe.stem_output_gains_db == GAINS
    pipe.enable_lora()
    pipe.set_adapters("mine", 1.0)
    with pipe.raw_output_levels():  # what calibrate-levels measures: no gain at all
        assert pipe.stem_output_gains_db is None and "output_gain_db" not in generate(pipe).sampling
    pipe.unload_lora_weights()
    assert pipe.stem_output_gains_db == GAINS  # not fused: the base pipeline, its own gains
    pipe.load_lora_weights(folder, adapter_name="again")
    pipe.delete_adapters("again")
    assert pipe.stem_output_gains_db == GAINS
    pipe.load_lora_weights(adapter_with(tmp_path / "b"))  # an adapter without gains keeps the base's
    assert pipe.stem_output_gains_db == GAINS


def test_a_fused_adapters_gains_stay_with_the_fused_weights(tmp_path):
    own = {"bass": 2.0, "drums": 8.0, "guitar": -4.0, "piano": 0.0}
    pipe = with_gains()
    pipe.load_lora_weights(adapter_with(tmp_path / "a", gains=own))
    pipe.fuse_lora(lora_scale=0.5)
    half = {"bass": 4.0, "drums": 2.5, "guitar": -2.0, "piano": 6.0}
    assert pipe.stem_output_gains_db == half
    pipe.unload_lora_weights()  # the fused weights stay, and the gains they need
    assert pipe.stem_output_gains_db == half
    pipe.save_pretrained(tmp_path / "fused")
    assert MultiSourceLatentPipeline.from_pretrained(tmp_path / "fused").stem_output_gains_db == half


def test_calibrate_levels_of_an_adapter_records_its_gains_beside_it(tmp_path, capsys):
    from mslddm.cli import main

    folder = tmp_path / "p"
    with_gains(gains={"bass": 5.0}, levels={"bass": -20.0, "drums": -20.0, "guitar": -20.0, "piano": -20.0}
               ).save_pretrained(folder)
    songs = {"bass": -30.0, "drums": -25.0, "guitar": -28.0, "piano": -26.0}
    adapter = adapter_with(tmp_path / "a", levels=songs)
    assert main(["calibrate-levels", "--pipeline", str(folder), "--lora", str(adapter), "--clips", "3",
                 "--seconds", "0.5", "--batch-size", "2", "--write"]) == 0
    assert "| bass | -30.0 |" in capsys.readouterr().out  # against the adapter's songs, not the pipeline's data
    assert "stem_output_gains_db" in json.loads((adapter / "adapter_config.json").read_text())
    assert json.loads((folder / "model_index.json").read_text())["stem_output_gains_db"] == {"bass": 5.0}
    pipe = MultiSourceLatentPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(adapter)
    clips = [pipe(num_inference_steps=pipe.scheduler.config.num_inference_steps, audio_length_in_s=0.5,
                  generator=torch.Generator().manual_seed(1_000_000 + i)).stems[0] for i in range(3)]
    measured = stem_levels(clips, pipe.stem_names, SR)
    for name in songs:
        assert measured[name] == pytest.approx(songs[name], abs=0.15)
    with pytest.raises(SystemExit, match="is not a LoRA adapter folder"):
        main(["calibrate-levels", "--pipeline", str(folder), "--lora", str(tmp_path), "--clips", "1"])
