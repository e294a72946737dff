"""Reference audio for evaluation: the stems of ``ROOT/<split>/TrackNNNNN/<stem>.wav`` cut into chunks.

- tracks are the split's folders holding at least one stem file, in name order; a missing stem file is silence,
  a stem shorter than its track is zero-padded;
- every stem is read with libsndfile, its channels averaged, and resampled with soxr (HQ) only when the file is
  not at the requested rate (files at that rate are read partially, sample-exact);
- chunks are non-overlapping from each track's first sample; silent ones are dropped (any stem silent when all
  stems are required, the mixture silent otherwise) and a seeded draw without replacement picks the rest.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from ..audio import load_audio, rms_db, to_mono


@dataclass(frozen=True)
class Chunk:
    """``length`` samples from ``start`` of track ``track`` (a folder name in the split), at the pipeline rate."""

    track: str
    start: int
    length: int


def list_tracks(root: str | os.PathLike, split: str, stem_names: Sequence[str]) -> list[Path]:
    """Track folders of ``root/split`` holding at least one stem file, in name order."""
    folder = Path(root) / split
    if not folder.is_dir():
        raise FileNotFoundError(
            f"No {split!r} split at {folder}: expected ROOT/{split}/TrackNNNNN/<stem>.wav."
        )
    tracks = [
        t
        for t in sorted(folder.iterdir())
        if t.is_dir() and any((t / f"{s}.wav").is_file() for s in stem_names)
    ]
    if not tracks:
        raise FileNotFoundError(
            f"No track in {folder} has any of the stems {list(stem_names)} as <stem>.wav."
        )
    return tracks


def split_fingerprint(tracks: Sequence[Path], stem_names: Sequence[str]) -> str:
    """Hash of the stem files' names, sizes and modification times: changes when the data does."""
    entries = []
    for track in tracks:
        for stem in stem_names:
            path = track / f"{stem}.wav"
            st = path.stat() if path.is_file() else None
            entries.append((track.name, stem, st.st_size if st else None, st.st_mtime_ns if st else None))
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:16]


def read_stems(
    track: Path, stem_names: Sequence[str], sample_rate: int, start: int = 0, length: int | None = None
) -> np.ndarray:
    """``(K, samples)`` float32 stems of a track at ``sample_rate`` (all of it, or ``length`` from ``start``).

    Files already at ``sample_rate`` are read partially; others are read whole and resampled before cutting.
    """
    out = []
    for stem in stem_names:
        path = track / f"{stem}.wav"
        if not path.is_file():
            out.append(None)
            continue
        info = sf.info(str(path))
        if info.samplerate == sample_rate:
            stop = None if length is None else start + length
            data, _ = sf.read(str(path), start=start, stop=stop, dtype="float32", always_2d=True)
            audio = to_mono(data.T)
        else:
            audio = load_audio(path, sample_rate)
            audio = audio[start:] if length is None else audio[start : start + length]
        out.append(audio)
    total = length if length is not None else max((len(a) for a in out if a is not None), default=0)
    stems = np.zeros((len(stem_names), total), dtype=np.float32)
    for k, audio in enumerate(out):
        if audio is not None:
            stems[k, : min(total, len(audio))] = audio[:total]
    return stems


def select_chunks(
    root: str | os.PathLike,
    stem_names: Sequence[str],
    sample_rate: int,
    *,
    split: str,
    num_chunks: int,
    chunk_length: int,
    seed: int,
    require_all_stems: bool,
    silence_db: float,
    progress: Callable = lambda it, **kw: it,
) -> list[Chunk]:
    """Draw the reference chunks as the module docstring describes."""
    candidates = []
    for track in progress(list_tracks(root, split, stem_names), desc=f"Scanning {split} for chunks"):
        stems = read_stems(track, stem_names, sample_rate)
        for start in range(0, stems.shape[1] - chunk_length + 1, chunk_length):
            piece = stems[:, start : start + chunk_length]
            if require_all_stems:
                keep = all(rms_db(s) >= silence_db for s in piece)
            else:
                keep = rms_db(piece.sum(axis=0)) >= silence_db
            if keep:
                candidates.append(Chunk(track.name, start, chunk_length))
    if not candidates:
        what = "every stem" if require_all_stems else "any sound"
        raise ValueError(f"No {chunk_length}-sample chunk of {Path(root) / split} has {what}.")
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(candidates), size=min(num_chunks, len(candidates)), replace=False)
    return [candidates[i] for i in sorted(picked)]


class ReferenceClips(Sequence):
    """The chunks' stems, read on demand: ``clips[i]`` is ``(K, length)`` float32."""

    def __init__(
        self, root, split: str, chunks: Sequence[Chunk], stem_names: Sequence[str], sample_rate: int
    ):
        self.folder = Path(root) / split
        self.chunks, self.stem_names, self.sample_rate = list(chunks), list(stem_names), sample_rate

    def __len__(self):
        return len(self.chunks)

    def __getitem__(self, i):
        c = self.chunks[i]
        return read_stems(self.folder / c.track, self.stem_names, self.sample_rate, c.start, c.length)
