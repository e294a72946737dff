"""Multi-stem tracks on disk: finding them, checking them, and reading aligned pieces of their stems.

A :class:`Track` maps each stem name to the audio files summed into it (one file in the stem-folder layout, all
the instruments of a class in Slakh2100) and reads any range of any stem at the dataset's sample rate. Index
functions never stop on bad input: a missing stem file is silence (counted), an unreadable file skips its track
(logged with the reason), stems of different lengths follow ``on_length_mismatch``. An index with no usable
track is an error that says what was expected where.

Stem-folder layout (MSDM / MSLDM preprocessed Slakh, and ``mslddm make-dataset``)::

    ROOT/{train,validation,test}/TRACK/{bass,drums,guitar,piano}.wav     any stem names, any rate / channels
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from mslddm.audio import AudioReadError, resample
from ..stems import DEFAULT_STEMS  # noqa: F401  (re-exported)

logger = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")
LENGTH_POLICIES = ("pad", "trim", "skip")
# Margin (in source samples) read around a window that must be resampled, so the resampler's edges fall outside.
_RESAMPLE_MARGIN = 2048


@dataclass(frozen=True)
class AudioFile:
    """One audio file that contributes to a stem: its path, rate and length in its own samples."""

    path: Path
    sample_rate: int
    num_frames: int

    @classmethod
    def probe(cls, path) -> AudioFile:
        info = sf.info(str(path))  # raises on unreadable files: callers skip the track and log why
        if info.frames <= 0:
            raise AudioReadError(f"{path} holds no samples.")
        return cls(Path(path), int(info.samplerate), int(info.frames))

    def length_at(self, sample_rate: int) -> int:
        return round(self.num_frames * sample_rate / self.sample_rate)

    def read(self, start: int, num_samples: int, sample_rate: int) -> np.ndarray:
        """``num_samples`` mono samples from ``start`` (both at ``sample_rate``); zeros past the end."""
        if self.sample_rate == sample_rate:
            audio = self._read_frames(start, num_samples)
        else:
            ratio = self.sample_rate / sample_rate
            first = max(math.floor(start * ratio) - _RESAMPLE_MARGIN, 0)
            last = math.ceil((start + num_samples) * ratio) + _RESAMPLE_MARGIN
            window = resample(self._read_frames(first, last - first), self.sample_rate, sample_rate)
            offset = round(start - first / ratio)
            audio = window[offset:offset + num_samples]
        if len(audio) < num_samples:
            audio = np.pad(audio, (0, num_samples - len(audio)))
        return audio

    def _read_frames(self, start: int, frames: int) -> np.ndarray:
        if start >= self.num_frames or frames <= 0:
            return np.zeros(0, dtype=np.float32)
        try:
            data, _ = sf.read(str(self.path), start=start, frames=frames, dtype="float32", always_2d=True)
        except Exception as error:  # libsndfile raises several types; all mean "cannot decode"
            raise AudioReadError(f"Could not read {self.path}: {error}") from error
        return data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]


@dataclass
class Track:
    """One multi-stem track: ``stems[name]`` lists the files summed into that stem (empty: silence)."""

    name: str
    path: Path
    stems: dict[str, list[AudioFile]]
    num_samples: int
    sample_rate: int

    @property
    def stem_names(self) -> list[str]:
        return list(self.stems)

    def read_stem(self, stem: str, start: int = 0, num_samples: int | None = None) -> np.ndarray:
        """Samples ``[start, start + num_samples)`` of one stem (default: to the end), float32, zero-padded."""
        num_samples = self.num_samples - start if num_samples is None else num_samples
        out = np.zeros(max(num_samples, 0), dtype=np.float32)
        for audio_file in self.stems[stem]:
            out += audio_file.read(start, num_samples, self.sample_rate)
        return out

    def read(self, start: int = 0, num_samples: int | None = None, stems=None) -> np.ndarray:
        """Aligned samples of several stems (default: all), shape ``(stems, samples)``."""
        return np.stack([self.read_stem(s, start, num_samples) for s in (stems or self.stem_names)])


@dataclass
class IndexSummary:
    """What indexing found: usable tracks, skipped ones with their reasons, stems that were missing."""

    root: str
    num_tracks: int = 0
    skipped: dict[str, str] = field(default_factory=dict)
    missing_stems: Counter = field(default_factory=Counter)
    length_mismatches: int = 0
    missing: dict[str, list[str]] = field(default_factory=dict)  # track -> its stems without a file (silence)
    mismatched: dict[str, str] = field(default_factory=dict)  # track -> which stems are short and what was done

    def __str__(self) -> str:
        parts = [f"{self.num_tracks} tracks in {self.root}"]
        if self.missing_stems:
            parts.append("missing stems (silence): " + ", ".join(f"{k} {v}" for k, v in self.missing_stems.items())
                         + f" ({_some(self.missing)})")
        if self.length_mismatches:
            parts.append(f"{self.length_mismatches} with stems of different lengths ({_some(self.mismatched)})")
        if self.skipped:
            parts.append(f"{len(self.skipped)} skipped ({_some(self.skipped)})")
        return "; ".join(parts)

    def to_dict(self) -> dict:
        """Every track that was skipped, padded, trimmed or missing a stem, by name (for a run's data report)."""
        return {"root": self.root, "tracks": self.num_tracks, "skipped": dict(self.skipped),
                "missing_stems": {k: list(v) for k, v in self.missing.items()},
                "length_mismatches": dict(self.mismatched)}


def _some(named: dict, limit: int = 3) -> str:
    """The first few entries of a by-track dict, for a log line (the run's data report has all of them)."""
    items = [f"{k}: {', '.join(v) if isinstance(v, list) else v}" for k, v in list(named.items())[:limit]]
    return "; ".join(items) + (f"; and {len(named) - limit} more" if len(named) > limit else "")


def finish_track(
    name: str,
    path: Path,
    stems: dict[str, list[AudioFile]],
    sample_rate: int,
    on_length_mismatch: str,
    summary: IndexSummary,
) -> Track | None:
    """Applies the length policy to a track's stems and records the result in ``summary``."""
    lengths = {s: max((f.length_at(sample_rate) for f in files), default=None) for s, files in stems.items()}
    present = [n for n in lengths.values() if n is not None]
    if not present:
        summary.skipped[name] = "no stem file found"
        return None
    for stem, n in lengths.items():
        if n is None:
            summary.missing_stems[stem] += 1
            summary.missing.setdefault(name, []).append(stem)
    longest, shortest = max(present), min(present)
    if longest != shortest:
        summary.length_mismatches += 1
        short = ", ".join(f"{s} {n} samples" for s, n in lengths.items() if n is not None and n < longest)
        done = {"pad": "padded with silence", "trim": "trimmed to the shortest", "skip": "skipped"}[on_length_mismatch]
        summary.mismatched[name] = f"{short} of {longest} (a truncated file?): {done}"
        if on_length_mismatch == "skip":
            summary.skipped[name] = f"stems differ in length ({shortest} to {longest} samples)"
            logger.warning("Skipping %s: stems differ in length (%d to %d samples).", path, shortest, longest)
            return None
    num_samples = shortest if on_length_mismatch == "trim" else longest
    summary.num_tracks += 1
    return Track(name, path, stems, num_samples, sample_rate)


def check_length_policy(on_length_mismatch: str) -> None:
    if on_length_mismatch not in LENGTH_POLICIES:
        raise ValueError(f"on_length_mismatch must be one of {LENGTH_POLICIES}, got {on_length_mismatch!r}.")


def split_dir(root, split: str | None) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Dataset folder {str(root)!r} does not exist.")
    folder = root / split if split else root
    if not folder.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        raise FileNotFoundError(
            f"Split folder {str(folder)!r} does not exist; {str(root)!r} holds {found or 'no folders'}."
        )
    return folder


def track_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def index_stem_folders(
    root,
    split: str | None = None,
    stem_names=DEFAULT_STEMS,
    sample_rate: int = 22050,
    on_length_mismatch: str = "pad",
) -> tuple[list[Track], IndexSummary]:
    """Tracks of ``ROOT/SPLIT/TRACK/{stem}.{wav,flac,...}`` (``split=None``: tracks directly under ROOT)."""
    check_length_policy(on_length_mismatch)
    folder = split_dir(root, split)
    summary = IndexSummary(str(folder))
    tracks = []
    for track_dir in track_dirs(folder):
        try:
            stems = {}
            for stem in stem_names:
                path = next((track_dir / f"{stem}{ext}" for ext in AUDIO_EXTENSIONS
                             if (track_dir / f"{stem}{ext}").is_file()), None)
                stems[stem] = [AudioFile.probe(path)] if path is not None else []
        except Exception as error:  # noqa: BLE001 - any bad track is skipped and logged, never stops a run
            summary.skipped[track_dir.name] = f"unreadable: {error}"
            logger.warning("Skipping %s: %s", track_dir, error)
            continue
        track = finish_track(track_dir.name, track_dir, stems, sample_rate, on_length_mismatch, summary)
        if track is not None:
            tracks.append(track)
    return tracks, summary


def require_tracks(tracks: list[Track], summary: IndexSummary, expected: str) -> None:
    """Raises a clear error for an empty index; logs the summary otherwise."""
    if not tracks:
        why = f" ({len(summary.skipped)} skipped, e.g. {next(iter(summary.skipped.items()))})" if summary.skipped else ""
        raise ValueError(f"No usable tracks under {summary.root}{why}; expected {expected}.")
    logger.info("%s", summary)
