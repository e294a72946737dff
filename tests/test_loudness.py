"""Gated stem levels: what the pipeline sets given stems to before encoding, and how the band comes back."""

import numpy as np
import pytest

from mslddm.loudness import active_level_db, band_gain, check_stem_levels, gain_to_level, stem_levels

SR = 22050


def tone(level_db, seconds=2.0):
    t = np.arange(int(seconds * SR)) / SR
    return (10 ** (level_db / 20) * np.sqrt(2) * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def test_active_level_ignores_rests():
    playing = tone(-20.0)
    assert active_level_db(playing, SR) == pytest.approx(-20.0, abs=0.05)
    with_rests = np.concatenate([playing, np.zeros(6 * SR, np.float32)])  # 75 % silence: whole-clip RMS -26 dB
    assert active_level_db(with_rests, SR) == pytest.approx(-20.0, abs=0.05)
    assert active_level_db(np.zeros(SR), SR) == float("-inf")
    assert active_level_db(np.ones(10) * 0.1, SR) == pytest.approx(-20.0, abs=0.01)  # shorter than one frame


def test_gains_bring_a_take_to_the_training_level_and_the_band_back():
    take = tone(-12.0)
    g = gain_to_level(take, SR, -28.0)
    assert active_level_db(take * g, SR) == pytest.approx(-28.0, abs=0.05)
    assert gain_to_level(np.zeros(SR), SR, -28.0) == 1.0
    assert 20 * np.log10(gain_to_level(tone(-69.0), SR, -28.0)) == pytest.approx(40.0)  # capped
    assert gain_to_level(tone(-90.0), SR, -28.0) == 1.0  # under the absolute gate: silence
    assert band_gain([g]) == pytest.approx(1 / g)
    assert band_gain([0.5, 2.0]) == pytest.approx(1.0) and band_gain([]) == 1.0


def test_stem_levels_of_data_and_their_checks():
    clips = [np.stack([tone(-30.0), tone(-25.0)]), np.stack([tone(-32.0), np.zeros(2 * SR, np.float32)])]
    assert stem_levels(clips, ["bass", "piano"], SR) == {"bass": -31.0, "piano": -25.0}
    with pytest.raises(ValueError, match=r"\['piano'\] sounding"):
        stem_levels([clips[1]], ["bass", "piano"], SR)
    assert check_stem_levels({"bass": -28}, ["bass", "piano"]) == {"bass": -28.0}
    with pytest.raises(ValueError, match="unknown stem"):
        check_stem_levels({"vocals": -20.0}, ["bass"])
    with pytest.raises(ValueError, match="finite"):
        check_stem_levels({"bass": float("nan")}, ["bass"])
