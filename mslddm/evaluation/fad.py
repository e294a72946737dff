"""Fréchet distance between two sets of embeddings, and the statistics (mean, covariance, count) it needs.

Everything is float64. The matrix square root goes through two symmetric eigendecompositions instead of
``scipy.linalg.sqrtm``: ``tr sqrt(S1 S2) = tr sqrt(S1^1/2 S2 S1^1/2)`` and the right-hand matrix is symmetric
positive semi-definite, so the result is real, needs no epsilon added to the diagonal, and is the same on every
machine to ~1e-10 even when a covariance is singular (fewer embeddings than dimensions).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class EmbeddingStatistics:
    """Mean ``(D,)``, unbiased covariance ``(D, D)`` and number of embeddings of one set; ``info`` says what set."""

    mean: np.ndarray
    cov: np.ndarray
    count: int
    info: dict = field(default_factory=dict)

    @classmethod
    def from_embeddings(cls, embeddings: np.ndarray, info: dict | None = None) -> EmbeddingStatistics:
        """Statistics of an ``(N, D)`` array of embeddings."""
        return StatisticsAccumulator().add(embeddings).statistics(info)

    def save(self, path: str | os.PathLike) -> Path:
        """Write to ``path`` (``.npz``); written under a temporary name and renamed, so never half-written."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.partial.npz")
        np.savez(tmp, mean=self.mean, cov=self.cov, count=np.int64(self.count), info=json.dumps(self.info))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> EmbeddingStatistics:
        with np.load(path, allow_pickle=False) as data:
            return cls(
                np.asarray(data["mean"], np.float64),
                np.asarray(data["cov"], np.float64),
                int(data["count"]),
                json.loads(str(data["info"])),
            )


class StatisticsAccumulator:
    """Running mean and covariance over batches of embeddings (Chan et al.'s pairwise update, in float64)."""

    def __init__(self):
        self.count = 0
        self._mean = None
        self._m2 = None  # sum of outer products of deviations from the mean

    def add(self, embeddings: np.ndarray) -> StatisticsAccumulator:
        x = np.asarray(embeddings, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(f"Embeddings must be an (N, D) array, got shape {x.shape}.")
        if not np.isfinite(x).all():
            raise ValueError("Embeddings hold NaN or infinite values.")
        n = x.shape[0]
        if n == 0:
            return self
        mean = x.mean(axis=0)
        dev = x - mean
        m2 = dev.T @ dev
        if self._mean is None:
            self.count, self._mean, self._m2 = n, mean, m2
            return self
        if x.shape[1] != self._mean.shape[0]:
            raise ValueError(
                f"Embeddings of dimension {x.shape[1]} added to a set of dimension {self._mean.shape[0]}."
            )
        total = self.count + n
        delta = mean - self._mean
        self._m2 = self._m2 + m2 + np.outer(delta, delta) * (self.count * n / total)
        self._mean = self._mean + delta * (n / total)
        self.count = total
        return self

    def statistics(self, info: dict | None = None) -> EmbeddingStatistics:
        if self.count < 2:
            raise ValueError(f"A covariance needs at least 2 embeddings, got {self.count}.")
        return EmbeddingStatistics(
            self._mean.copy(), self._m2 / (self.count - 1), self.count, dict(info or {})
        )


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (negative round-off eigenvalues set to 0)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2): |mu1-mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^1/2)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(
            f"Mismatched statistics: means {mu1.shape} and {mu2.shape}, covariances {sigma1.shape} and {sigma2.shape}."
        )
    root1 = _sqrt_psd(sigma1)
    middle = root1 @ sigma2 @ root1
    eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_sqrt = float(np.sqrt(np.clip(eigenvalues, 0.0, None)).sum())
    diff = mu1 - mu2
    distance = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)
    return max(distance, 0.0)


def fad(stats1: EmbeddingStatistics, stats2: EmbeddingStatistics) -> float:
    """Fréchet audio distance between two sets' statistics."""
    return frechet_distance(stats1.mean, stats1.cov, stats2.mean, stats2.cov)


def statistics_key(spec: dict) -> str:
    """A short stable hash of a JSON-able description of a set (embedder, audio, chunk list, ...)."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _cache_path(cache_dir: str | os.PathLike, spec: dict) -> Path:
    return Path(cache_dir) / f"stats-{statistics_key(spec)}.npz"


def _normalised(spec: dict) -> dict:
    return json.loads(json.dumps(spec, sort_keys=True, default=str))


def load_cached_statistics(cache_dir: str | os.PathLike | None, spec: dict) -> EmbeddingStatistics | None:
    """The statistics stored for ``spec`` in ``cache_dir``, or ``None``.

    ``spec`` must name everything the statistics depend on (embedder and its weights, the chunk list and the
    data's fingerprint, the audio handling). Files are named by its hash and store it; a file whose stored spec
    differs (a hash collision, a hand-edited file) is ignored.
    """
    if cache_dir is None or not _cache_path(cache_dir, spec).is_file():
        return None
    stats = EmbeddingStatistics.load(_cache_path(cache_dir, spec))
    return stats if stats.info.get("spec") == _normalised(spec) else None


def save_cached_statistics(cache_dir: str | os.PathLike | None, spec: dict, stats: EmbeddingStatistics):
    """Store ``stats`` for ``spec`` in ``cache_dir`` (no-op when ``cache_dir`` is ``None``); returns them with
    the spec in their ``info``."""
    stats = EmbeddingStatistics(stats.mean, stats.cov, stats.count, {**stats.info, "spec": _normalised(spec)})
    if cache_dir is not None:
        stats.save(_cache_path(cache_dir, spec))
    return stats


def load_cached_embeddings(cache_dir: str | os.PathLike | None, spec: dict) -> list[np.ndarray] | None:
    """The per-clip embeddings stored for ``spec`` (a list of ``(frames, D)`` arrays), or ``None``: what the
    intervals of :mod:`mslddm.evaluation.distances` resample."""
    path = None if cache_dir is None else Path(cache_dir) / f"embeddings-{statistics_key(spec)}.npz"
    if path is None or not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as data:
        if json.loads(str(data["spec"])) != _normalised(spec):
            return None
        return np.split(np.asarray(data["embeddings"], np.float64), np.cumsum(data["lengths"])[:-1])


def save_cached_embeddings(cache_dir: str | os.PathLike | None, spec: dict, clips: list[np.ndarray]) -> None:
    """Store per-clip embeddings for ``spec`` (no-op without ``cache_dir``); written under a temporary name and
    renamed, so never half-written."""
    if cache_dir is None:
        return
    path = Path(cache_dir) / f"embeddings-{statistics_key(spec)}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.partial.npz")
    np.savez(tmp, embeddings=np.concatenate(clips), lengths=np.array([len(c) for c in clips], np.int64),
             spec=json.dumps(_normalised(spec)))
    os.replace(tmp, path)
