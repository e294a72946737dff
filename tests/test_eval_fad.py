"""Fréchet distance and embedding statistics: exact on known cases, stable, cached safely."""

import itertools

import numpy as np
import pytest

from mslddm.evaluation.fad import (
    EmbeddingStatistics,
    StatisticsAccumulator,
    fad,
    frechet_distance,
    load_cached_statistics,
    save_cached_statistics,
)


def _gaussian(seed, n=400, d=16, scale=1.0, shift=0.0):
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(d, d)) / np.sqrt(d)
    return rng.normal(size=(n, d)) @ mixing * scale + shift


def test_fad_of_a_set_with_itself_is_zero():
    stats = EmbeddingStatistics.from_embeddings(_gaussian(0))
    assert fad(stats, stats) == pytest.approx(0.0, abs=1e-9)


def test_closed_form_for_diagonal_gaussians():
    # N(m1, diag(a)) vs N(m2, diag(b)): |m1-m2|^2 + sum (sqrt(a) - sqrt(b))^2
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.25])
    m1, m2 = np.zeros(3), np.array([1.0, -2.0, 0.5])
    expected = 1 + 4 + 0.25 + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(m1, np.diag(a), m2, np.diag(b)) == pytest.approx(expected, rel=1e-12)


def test_matches_the_textbook_formula_with_sqrtm():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    x, y = _gaussian(1), _gaussian(2, scale=1.3, shift=0.2)
    m1, s1, m2, s2 = x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False)
    textbook = ((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy_linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(textbook, rel=1e-9)


def test_fad_grows_with_added_noise():
    clean = _gaussian(3)
    reference = EmbeddingStatistics.from_embeddings(clean)
    rng = np.random.default_rng(4)
    distances = [
        fad(reference, EmbeddingStatistics.from_embeddings(clean + level * rng.normal(size=clean.shape)))
        for level in (0.0, 0.1, 0.3, 1.0, 3.0)
    ]
    assert distances[0] == pytest.approx(0.0, abs=1e-9)
    assert all(b > a for a, b in itertools.pairwise(distances)), distances


def test_singular_covariances_are_fine():
    # fewer embeddings than dimensions: rank-deficient covariances, still finite, non-negative, zero on itself
    x, y = _gaussian(5, n=10, d=64), _gaussian(6, n=10, d=64)
    sx, sy = EmbeddingStatistics.from_embeddings(x), EmbeddingStatistics.from_embeddings(y)
    assert np.isfinite(fad(sx, sy)) and fad(sx, sy) > 0
    assert fad(sx, sx) == pytest.approx(0.0, abs=1e-8)


def test_accumulator_in_batches_equals_one_pass():
    x = _gaussian(7, n=257) + 100.0  # a large offset: a naive sum-of-squares covariance would lose digits
    acc = StatisticsAccumulator()
    for start in range(0, len(x), 50):
        acc.add(x[start : start + 50])
    stats = acc.statistics()
    assert stats.count == 257
    np.testing.assert_allclose(stats.mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.cov, np.cov(x, rowvar=False), rtol=1e-9, atol=1e-12)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="at least 2"):
        StatisticsAccumulator().add(np.zeros((1, 3))).statistics()
    with pytest.raises(ValueError, match="NaN"):
        StatisticsAccumulator().add(np.array([[np.nan, 0.0]]))
    with pytest.raises(ValueError, match="dimension"):
        StatisticsAccumulator().add(np.zeros((2, 3))).add(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="Mismatched"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


def test_statistics_cache_round_trip_and_spec_check(tmp_path):
    spec = {"embedder": {"name": "x", "weights_sha256": "abc"}, "chunks": [1, 2, 3], "part": "mix"}
    assert load_cached_statistics(tmp_path, spec) is None
    stats = EmbeddingStatistics.from_embeddings(_gaussian(8))
    save_cached_statistics(tmp_path, spec, stats)
    loaded = load_cached_statistics(tmp_path, spec)
    np.testing.assert_array_equal(loaded.cov, stats.cov)
    assert loaded.count == stats.count and loaded.info["spec"] == spec
    assert load_cached_statistics(tmp_path, {**spec, "part": "bass"}) is None
    # a file whose stored spec does not match its name is not trusted
    (path,) = tmp_path.glob("stats-*.npz")
    EmbeddingStatistics(stats.mean, stats.cov, stats.count, {"spec": {"other": 1}}).save(path)
    assert load_cached_statistics(tmp_path, spec) is None
    assert load_cached_statistics(None, spec) is None
