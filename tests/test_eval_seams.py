"""The seam statistics find a seam where there is one, and none in continuous audio."""

import numpy as np
import pytest

from mslddm.evaluation.seams import level_over_time, seam_statistics

SR = 22050


def notes(seconds, seed=0):
    """Random notes of 0.25 s with decaying envelopes: stationary music-like audio."""
    rng = np.random.default_rng(seed)
    n = int(0.25 * SR)
    t = np.arange(n) / SR
    parts = [0.2 * np.sin(2 * np.pi * rng.uniform(100, 800) * t) * np.exp(-6 * t) for _ in range(int(seconds * 4))]
    return np.concatenate(parts).astype(np.float32)


def test_a_level_step_and_a_change_of_timbre_are_seams():
    audio = notes(40)
    boundaries = [10.0, 20.0, 30.0]
    for b in boundaries:  # each "window" after a boundary comes in 12 dB quieter or louder
        audio[int(b * SR):] *= 4.0 if b == 20.0 else 0.25
    stats = seam_statistics(audio, SR, boundaries)
    assert stats["boundaries"] == 3
    assert stats["boundary"]["level_jump_db"]["mean"] > 2 * stats["inside"]["level_jump_db"]["p95"]
    assert stats["above_inside_p95"]["level_jump_db"] == 1.0
    clicks = notes(40, seed=1)
    for b in boundaries:
        clicks[int(b * SR)] = 1.0
    assert seam_statistics(clicks, SR, boundaries)["above_inside_p95"]["flux"] == 1.0


def test_continuous_audio_has_no_seams_at_arbitrary_positions():
    stats = seam_statistics(notes(60, seed=2), SR, [7.3, 19.1, 33.7, 48.2])
    assert stats["above_inside_p95"]["level_jump_db"] <= 0.25 and stats["above_inside_p95"]["flux"] <= 0.25
    assert stats["boundary"]["level_jump_db"]["mean"] < stats["inside"]["level_jump_db"]["p95"]


def test_level_over_time_and_short_audio():
    audio = np.concatenate([np.full(SR * 10, 0.1), np.full(SR * 5, 0.01)])
    assert level_over_time(audio, SR) == pytest.approx([-20.0, -40.0], abs=1e-6)
    with pytest.raises(ValueError, match="too short"):
        seam_statistics(notes(2), SR, [1.0])
