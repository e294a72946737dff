"""Distances between sets of embeddings that come with their uncertainty: FAD with a bootstrap interval over clips,
and the Kernel Audio Distance (KAD; Chung et al., 2025), an MMD that is unbiased at small sample sizes.

Both take the embeddings *per clip* (a list of ``(frames, dim)`` arrays): frames of one clip are not independent
draws, so the bootstrap resamples whole clips, of the generated set and of the reference set alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .fad import EmbeddingStatistics, fad

KAD_SCALE = 100.0  # KAD is reported x100, as the kadtk toolkit does
BOOTSTRAP_DRAWS = 200
CONFIDENCE = 0.95


def _stack(clips: Sequence[np.ndarray]) -> np.ndarray:
    if not len(clips):
        raise ValueError("Expected the embeddings of at least one clip, got none.")
    return np.concatenate([np.asarray(c, dtype=np.float64).reshape(-1, np.shape(c)[-1]) for c in clips])


def median_bandwidth(embeddings: np.ndarray) -> float:
    """The median pairwise Euclidean distance of a set (the Gaussian kernel's bandwidth by the median heuristic)."""
    x = np.asarray(embeddings, dtype=np.float64)
    squared = np.maximum((x**2).sum(1)[:, None] + (x**2).sum(1)[None, :] - 2 * x @ x.T, 0.0)
    upper = squared[np.triu_indices(len(x), k=1)]
    if not len(upper):
        raise ValueError("The bandwidth needs at least two embeddings.")
    return float(np.sqrt(np.median(upper)))


def kernel_audio_distance(x: np.ndarray, y: np.ndarray, bandwidth: float | None = None) -> float:
    """Unbiased MMD^2 between embeddings ``x`` (generated) and ``y`` (reference) with the Gaussian kernel
    ``exp(-|a - b|^2 / (2 h^2))``, ``h`` the median pairwise distance of ``y`` unless given; times ``KAD_SCALE``.
    Zero in expectation for two samples of one distribution (so it can come out slightly negative)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 2 or len(y) < 2:
        raise ValueError(f"KAD needs at least two embeddings per set, got {len(x)} and {len(y)}.")
    h = median_bandwidth(y) if bandwidth is None else float(bandwidth)
    gamma = 1.0 / (2.0 * h * h)

    def kernel(a, b):
        squared = (a**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2 * a @ b.T
        return np.exp(-gamma * np.maximum(squared, 0.0))

    kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
    n, m = len(x), len(y)
    xx = (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
    yy = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(KAD_SCALE * (xx + yy - 2 * kxy.mean()))


def bootstrap_interval(metric: Callable[[np.ndarray, np.ndarray], float], generated: Sequence[np.ndarray],
                       reference: Sequence[np.ndarray], draws: int | None = None, seed: int = 0,
                       confidence: float = CONFIDENCE) -> dict:
    """``metric`` on the stacked embeddings, and its interval over ``draws`` resamplings (with replacement) of the
    clips of both sets: ``{"value", "low", "high", "draws", "clips"}``. ``draws`` defaults to
    :data:`BOOTSTRAP_DRAWS`, read at each call (the tests lower it).

    The interval is the resampled values' percentile interval shifted by their mean's offset from ``value``:
    resampling duplicates clips, which inflates FAD (and the kernel terms of KAD) by itself; the spread is what
    the resampling tells, the shift removes that artefact."""
    draws = BOOTSTRAP_DRAWS if draws is None else int(draws)
    rng = np.random.default_rng(seed)
    value = metric(_stack(generated), _stack(reference))
    values = []
    for _ in range(draws):
        g = [generated[i] for i in rng.integers(len(generated), size=len(generated))]
        r = [reference[i] for i in rng.integers(len(reference), size=len(reference))]
        values.append(metric(_stack(g), _stack(r)))
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(values, [tail, 100 - tail]) + (value - np.mean(values))
    return {"value": float(value), "low": float(low), "high": float(high), "draws": draws,
            "clips": [len(generated), len(reference)]}


def fad_from_embeddings(x: np.ndarray, y: np.ndarray) -> float:
    """FAD between two stacked embedding sets."""
    return fad(EmbeddingStatistics.from_embeddings(x), EmbeddingStatistics.from_embeddings(y))


def fad_interval(generated: Sequence[np.ndarray], reference: Sequence[np.ndarray], **kwargs) -> dict:
    """FAD with its bootstrap interval over clips (:func:`bootstrap_interval`)."""
    return bootstrap_interval(fad_from_embeddings, generated, reference, **kwargs)


def kad_interval(generated: Sequence[np.ndarray], reference: Sequence[np.ndarray], **kwargs) -> dict:
    """KAD with its bootstrap interval over clips; the bandwidth is fixed from the whole reference set, so that
    every resampling measures with the same kernel."""
    bandwidth = median_bandwidth(_stack(reference))
    return bootstrap_interval(lambda x, y: kernel_audio_distance(x, y, bandwidth), generated, reference, **kwargs)


def intervals_overlap(a: dict, b: dict) -> bool:
    """Whether two ``{"low", "high"}`` intervals overlap (a difference not shown by these samples)."""
    return not (a["high"] < b["low"] or b["high"] < a["low"])
