"""Coherence metrics: aligned stems must score clearly above the same stems shuffled across songs."""

import numpy as np
import pytest
from eval_fixtures import SR, STEMS, song

from mslddm.evaluation.coherence import (
    CoherenceConfig,
    ShuffledAcrossSongs,
    coherence_metrics,
    harmonic_agreement,
    is_silent,
    rhythmic_agreement,
)


@pytest.fixture(scope="module")
def clips():
    return np.stack([song(seed, 6.0) for seed in range(10)])


@pytest.fixture(scope="module")
def aligned_and_shuffled(clips):
    return coherence_metrics(clips, STEMS, SR), coherence_metrics(ShuffledAcrossSongs(clips), STEMS, SR)


def test_rhythm_aligned_beats_shuffled(aligned_and_shuffled):
    aligned, shuffled = aligned_and_shuffled
    assert set(aligned["rhythm"]) == {"bass", "guitar", "piano"}
    assert aligned["rhythm_mean"] > shuffled["rhythm_mean"] + 0.15, (aligned["rhythm"], shuffled["rhythm"])
    for stem in aligned["rhythm"]:
        assert aligned["rhythm"][stem] > shuffled["rhythm"][stem] + 0.1


def test_harmony_aligned_beats_shuffled(aligned_and_shuffled):
    aligned, shuffled = aligned_and_shuffled
    assert set(aligned["harmony"]) == {"guitar", "piano"}  # drums are unpitched, bass is the reference
    assert aligned["harmony_mean"] > shuffled["harmony_mean"] + 0.15, (
        aligned["harmony"],
        shuffled["harmony"],
    )
    for stem in aligned["harmony"]:
        assert aligned["harmony"][stem] > shuffled["harmony"][stem] + 0.1


def test_a_time_shift_breaks_rhythm_and_a_transposition_breaks_harmony(clips):
    drums, bass, piano = clips[0, 1], clips[0, 0], clips[0, 3]
    shifted = np.roll(piano, int(0.11 * SR))  # off the beat grid (beats are 0.375-0.75 s)
    assert rhythmic_agreement(piano, drums, SR) > rhythmic_agreement(shifted, drums, SR) + 0.1
    tritone = np.interp(np.arange(len(piano)) * 2 ** (6 / 12), np.arange(len(piano)), piano, right=0.0)
    assert (
        harmonic_agreement(piano, bass, SR) > harmonic_agreement(tritone.astype(np.float32), bass, SR) + 0.1
    )


def test_silence_rate_and_silent_stems_left_out(clips):
    muted = clips[:4].copy()
    muted[0, 2] = 0.0  # guitar silent in clip 0
    muted[1, 2] = 1e-5 * muted[1, 2]  # near silent (-100 dB)
    result = coherence_metrics(muted, STEMS, SR)
    assert result["silence_rate"]["guitar"] == 0.5
    assert result["silence_rate"]["bass"] == 0.0
    assert result["silence_rate_mean"] == pytest.approx(2 / 16)
    assert np.isfinite(result["rhythm"]["guitar"])  # computed over the two clips where the guitar sounds
    assert is_silent(np.zeros(100)) and not is_silent(clips[0, 0])


def test_any_stem_names_and_missing_references(clips):
    names = ["low", "perc", "keys", "lead"]
    config = CoherenceConfig(rhythm_reference="perc", harmony_reference="low", unpitched=("perc",))
    renamed = coherence_metrics(clips[:3], names, SR, config)
    default = coherence_metrics(clips[:3], STEMS, SR)
    assert renamed["rhythm"]["keys"] == pytest.approx(default["rhythm"]["guitar"])
    no_refs = coherence_metrics(clips[:3], names, SR)  # no "drums", no "bass": agreements are empty
    assert no_refs["rhythm"] == {} and no_refs["harmony"] == {} and np.isnan(no_refs["rhythm_mean"])
    with pytest.raises(ValueError, match="expected"):
        coherence_metrics(clips[:2, :3], STEMS, SR)


def test_shuffle_keeps_each_stem_and_takes_stems_from_different_songs(clips):
    shuffled = ShuffledAcrossSongs(clips)
    n, k = clips.shape[:2]
    sources = [
        [next(j for j in range(n) if np.array_equal(shuffled[i][s], clips[j, s])) for s in range(k)]
        for i in range(n)
    ]
    for i in range(n):
        assert len(set(sources[i])) == k  # four stems from four songs
    for s in range(k):
        assert sorted(row[s] for row in sources) == list(range(n))  # every stem used exactly once


def test_stem_similarity_exposes_copies(clips, aligned_and_shuffled):
    aligned, _ = aligned_and_shuffled
    copies = np.repeat(clips[:3, :1], 4, axis=1) * np.array([1.0, 0.5, 0.8, 1.2])[None, :, None]
    copied = coherence_metrics(copies, STEMS, SR)
    assert copied["similarity_mean"] == pytest.approx(1.0, abs=1e-6)
    assert aligned["similarity_mean"] < 0.5 and len(aligned["similarity"]) == 6
