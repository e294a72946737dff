"""The interface every FAD embedder implements: audio in, one embedding per analysis window out."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from ...audio import resample, to_mono


class AudioEmbedder(ABC):
    """Maps mono audio to ``(num_windows, dim)`` float32 embeddings.

    Subclasses set ``name``, ``sample_rate`` (the rate the model expects) and ``dim``, and implement
    :meth:`embed_resampled`. :meth:`embed` does the parts every embedder shares the same way, so that they are
    fixed once for all: channels are averaged to mono, then the audio is resampled with soxr (HQ) to
    ``sample_rate``; audio shorter than ``min_samples`` (one analysis window) is zero-padded to it.
    """

    name: str
    sample_rate: int
    dim: int
    min_samples: int

    def embed(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """Embeddings ``(num_windows, dim)`` of ``(samples,)`` or ``(channels, samples)`` audio at ``sample_rate``."""
        audio = resample(to_mono(audio), int(sample_rate), self.sample_rate)
        if not np.isfinite(audio).all():
            raise ValueError(f"{self.name}: the audio holds NaN or infinite values.")
        if audio.shape[0] < self.min_samples:
            audio = np.pad(audio, (0, self.min_samples - audio.shape[0]))
        return self.embed_resampled(audio)

    @abstractmethod
    def embed_resampled(self, audio: np.ndarray) -> np.ndarray:
        """Embeddings of mono float32 audio already at ``self.sample_rate``."""

    @abstractmethod
    def identity(self) -> dict:
        """What the embeddings depend on (model, weights checksum, front end), for statistics cache keys."""


def file_sha256(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()


def frame_patches(features: np.ndarray, length: int) -> np.ndarray:
    """Cut ``(frames, bins)`` into non-overlapping ``(num_patches, length, bins)``, dropping an incomplete tail."""
    count = features.shape[0] // length
    if count == 0:
        raise ValueError(f"{features.shape[0]} feature frames are fewer than one patch of {length}.")
    return np.ascontiguousarray(features[: count * length].reshape(count, length, features.shape[1]))
