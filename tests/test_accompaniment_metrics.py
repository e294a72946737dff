"""Issue 24's measurements: FAD and KAD with bootstrap intervals, the spectral shape of stems, beat tracking against
a known grid and rhythmic agreement against chance."""

import numpy as np
import pytest

from mslddm.evaluation.beats import (accompaniment_clip, beat_f_measure, beat_grid, chance_agreement, tempo_bpm,
                                     track_beats)
from mslddm.evaluation.coherence import rhythmic_agreement
from mslddm.evaluation.distances import (fad_interval, intervals_overlap, kad_interval, kernel_audio_distance,
                                         median_bandwidth)
from mslddm.evaluation.spectral import spectral_shape, spectral_statistics

SR = 22050


def clips(rng, n, shift=0.0, frames=8, dim=6):
    return [rng.standard_normal((frames, dim)) + shift for _ in range(n)]


def test_kad_is_unbiased_and_grows_with_the_difference():
    rng = np.random.default_rng(0)
    same = [kernel_audio_distance(rng.standard_normal((20, 4)), rng.standard_normal((20, 4))) for _ in range(200)]
    assert abs(np.mean(same)) < 0.1 * np.std(same)  # zero in expectation at 20 samples (a biased MMD is not)
    assert min(same) < 0  # the unbiased estimate does go below zero
    y = rng.standard_normal((200, 4))
    near, far = (kernel_audio_distance(rng.standard_normal((200, 4)) + s, y) for s in (0.3, 1.0))
    assert 0 < near < far
    assert median_bandwidth(np.array([[0.0], [1.0], [3.0]])) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="at least two"):
        kernel_audio_distance(y[:1], y)


def test_bootstrap_intervals_separate_what_differs_and_only_that():
    rng = np.random.default_rng(1)
    reference = clips(rng, 40)
    same, shifted = clips(rng, 40), clips(rng, 40, shift=1.0)
    for interval in (fad_interval, kad_interval):
        a, b = interval(same, reference, draws=60), interval(shifted, reference, draws=60)
        assert a["low"] <= a["value"] <= a["high"] and b["low"] <= b["value"] <= b["high"]
        assert a["high"] < b["low"] and not intervals_overlap(a, b)
        again = interval(same, reference, draws=60)
        assert again == a  # seeded: the same clips give the same interval
        assert intervals_overlap(a, interval(clips(rng, 40), reference, draws=60))
    with pytest.raises(ValueError, match="at least one clip"):
        fad_interval([], reference)


def sine(freq, seconds=1.0, level=0.3):
    return level * np.sin(2 * np.pi * freq * np.arange(int(seconds * SR)) / SR)


def test_spectral_shape_of_tones_and_silence():
    low, high = spectral_shape(sine(1000), SR), spectral_shape(sine(6000), SR)
    assert low["centroid_hz"] == pytest.approx(1000, rel=0.03) and low["high_share"] < 1e-4
    assert high["centroid_hz"] == pytest.approx(6000, rel=0.03) and high["high_share"] > 0.999
    both = spectral_shape(sine(1000) + sine(6000), SR)
    assert both["high_share"] == pytest.approx(0.5, abs=0.02)
    assert np.isnan(spectral_shape(np.zeros(SR), SR)["high_share"])
    stats = spectral_statistics([np.stack([sine(200), np.zeros(SR)])] * 3, ["bass", "piano"], SR)
    assert stats["bass"]["clips"] == 3 and stats["bass"]["centroid_hz"] == pytest.approx(200, rel=0.1)
    assert stats["piano"]["clips"] == 0 and np.isnan(stats["piano"]["centroid_hz"])


def clicks(bpm, seconds=12.0, offset_s=0.0, freq=150.0):
    """A kick-like click on every beat of a grid with beat 1 at -offset_s."""
    audio = np.zeros(int(seconds * SR))
    decay = np.exp(-np.arange(2000) / 250.0) * np.sin(2 * np.pi * freq * np.arange(2000) / SR)
    for t in beat_grid(bpm, offset_s, seconds):
        i = int(round(t * SR))
        audio[i:i + 2000] += decay[: len(audio) - i]
    return audio.astype(np.float32)


def test_beat_grid_of_a_chunk():
    np.testing.assert_allclose(beat_grid(120, 0.0, 2.0), [0.0, 0.5, 1.0, 1.5])
    np.testing.assert_allclose(beat_grid(120, 10.2, 1.0), [0.3, 0.8])  # the song's beats 10.5 and 11.0


def test_beat_tracking_finds_the_grid_and_only_the_right_one():
    audio = clicks(120, offset_s=3.1)
    beats = track_beats(audio, SR)
    assert tempo_bpm(beats) == pytest.approx(120, rel=0.03)
    assert beat_f_measure(beats, beat_grid(120, 3.1, 12.0)) > 0.9
    assert beat_f_measure(beats, beat_grid(120, 3.1 + 0.25, 12.0)) < 0.2  # off-beat grid: misses
    assert beat_f_measure(beats, beat_grid(87, 0.0, 12.0)) < 0.5  # another tempo
    assert len(track_beats(np.zeros(SR * 2, np.float32), SR)) == 0


def test_a_results_tempo_only_when_the_pulse_is_steady():
    """The page's and the CLI's tempo (issue 26): the drums' when they sound, else the mix's; none for noise (the
    DBN finds a steady path in noise too: the beat network's weak activation rules it out)."""
    from mslddm.evaluation.beats import result_tempo, steady_tempo_bpm

    drums = clicks(120)
    assert steady_tempo_bpm(drums, SR) == pytest.approx(120, rel=0.03)
    noise = 0.1 * np.random.default_rng(0).standard_normal(len(drums)).astype(np.float32)
    assert steady_tempo_bpm(noise, SR) is None and steady_tempo_bpm(np.zeros(SR * 4, np.float32), SR) is None
    stems = np.stack([noise, drums])
    assert result_tempo(stems, ["bass", "drums"], SR) == (pytest.approx(120, rel=0.03), "drums")
    assert result_tempo(stems, ["bass", "piano"], SR)[1] == "mix"


def test_agreement_with_a_given_stem_against_chance():
    given = clicks(100)
    follows, other = clicks(100, freq=60.0), clicks(137, freq=60.0)
    assert rhythmic_agreement(follows, given, SR) > 0.5
    chance = chance_agreement(follows, given, SR, seed=0)
    assert chance.shape == (20,) and chance.mean() < 0.5 * rhythmic_agreement(follows, given, SR)
    assert rhythmic_agreement(other, given, SR) < 0.3

    real = np.stack([given, follows])
    off_beat = clicks(100, offset_s=0.3, freq=60.0)  # the given tempo, a third of a beat late throughout
    generated = np.stack([given, 0.1 * off_beat])
    clip = accompaniment_clip(given, generated, real, ["guitar", "drums"], 0, SR, reference_beats=beat_grid(
        100, 0.0, 12.0))
    drums = clip["stems"]["drums"]
    assert drums["agreement"] < drums["agreement_real"]
    assert drums["level_db"] == pytest.approx(drums["level_db_real"] - 20, abs=0.5)  # 0.1x: 20 dB under the real
    assert clip["beats"]["f_measure_real"] > 0.9 > clip["beats"]["f_measure"]
    assert clip["beats"]["tempo_bpm"] == pytest.approx(100, rel=0.05)


def test_chunk_intervals_resample_whole_chunks():
    from mslddm.evaluation.accompaniment import chunk_intervals

    def record(chunk, agreement, real=0.2):
        return {"track": f"T{chunk}", "start": 0, "given": "guitar", "level": None,
                "stems": {"drums": {"agreement": agreement, "agreement_real": real, "level_db": -30.0,
                                    "level_db_real": -31.0}},
                "beats": {"f_measure": agreement * 4}}

    same = chunk_intervals([record(i, 0.1) for i in range(6)])
    assert same["drums_agreement"]["low"] == pytest.approx(0.1) and same["drums_agreement"]["high"] == pytest.approx(0.1)
    assert same["drums_agreement_ratio"]["value"] == pytest.approx(0.5)
    assert same["level_error_db"]["value"] == pytest.approx(1.0)
    spread = chunk_intervals([record(i, 0.05 * i) for i in range(8)])
    row = spread["drums_agreement"]
    assert row["low"] < row["value"] < row["high"] and row["chunks"] == 8
    # Ten runs of one chunk are one chunk: no spread from them
    one = chunk_intervals([record(0, 0.05 * i) for i in range(10)])
    assert one["drums_agreement"]["low"] == pytest.approx(one["drums_agreement"]["high"])
