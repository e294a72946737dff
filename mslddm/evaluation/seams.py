"""Whether windowed generation leaves seams: statistics at window boundaries against the same statistics inside
windows, on the audio itself.

At a position ``t`` (a frame of 46 ms, hop 23 ms):

- **level jump**: ``|level(t .. t + span) - level(t - span .. t)|`` in dB, the RMS levels of the ``span`` seconds
  after and before ``t`` (a window that comes in louder or quieter than the one before it);
- **spectral flux**: the largest frame-to-frame change of the log-magnitude spectrum within +-2 frames of ``t``
  (mean absolute difference of ``log(1 + 1000 |X|)``: a click or an abrupt change of timbre).

:func:`seam_statistics` evaluates both at the boundaries and at every position at least ``guard`` seconds away
from any boundary (the in-window distribution): a seamless join has boundary values inside that distribution
(about 5% of the boundaries above its 95th percentile by chance).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .coherence import _stft_magnitude

FRAME, HOP = 1024, 512  # 46-ms frames, 23-ms hop at 22.05 kHz
FLUX_RADIUS = 2  # frames on each side of a position over which the largest flux counts


def frame_features(audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per frame: RMS level in dB (floored at -120) and the spectral flux into that frame."""
    audio = np.asarray(audio, dtype=np.float64)
    padded = np.pad(audio, (FRAME // 2, FRAME // 2 + FRAME))
    frames = np.lib.stride_tricks.sliding_window_view(padded, FRAME)[::HOP][: len(audio) // HOP + 1]
    level = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
    log_mag = np.log1p(1000.0 * _stft_magnitude(audio, FRAME, HOP))[: len(level)]
    flux = np.concatenate([[0.0], np.abs(np.diff(log_mag, axis=0)).mean(axis=1)])
    return level, flux


def _power_db(level_db: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(10 ** (level_db / 10)) + 1e-12))


def position_statistics(level: np.ndarray, flux: np.ndarray, t: int, span: int) -> tuple[float, float]:
    """Level jump (dB) and spectral flux at frame ``t`` (see the module docstring)."""
    jump = abs(_power_db(level[t:t + span]) - _power_db(level[max(0, t - span):t]))
    peak = float(flux[max(0, t - FLUX_RADIUS):t + FLUX_RADIUS + 1].max())
    return jump, peak


def seam_statistics(audio: np.ndarray, sample_rate: int, boundaries_s: Sequence[float], span_s: float = 0.5,
                    guard_s: float = 1.0) -> dict:
    """Level jump and flux at ``boundaries_s`` against the in-window distribution of the same audio.

    Returns ``{"boundary": {...}, "inside": {...}, "above_inside_p95": {...}, "boundaries": n}`` with, for each
    statistic, the boundary mean and max, the in-window mean and 95th percentile, and the share of boundaries
    above that percentile. Positions closer than ``span_s`` to either end are not used.
    """
    level, flux = frame_features(audio)
    fps = sample_rate / HOP
    span, guard = max(1, round(span_s * fps)), round(guard_s * fps)
    usable = range(span, len(level) - span)
    marks = [round(b * fps) for b in boundaries_s]
    marks = [m for m in marks if m in usable]
    inside = [t for t in usable if all(abs(t - m) > guard for m in marks)]
    if not inside:
        raise ValueError("The audio is too short for in-window statistics away from its boundaries.")
    at = np.array([position_statistics(level, flux, t, span) for t in marks]).reshape(-1, 2)
    away = np.array([position_statistics(level, flux, t, span) for t in inside])
    result = {"boundaries": len(marks), "boundary": {}, "inside": {}, "above_inside_p95": {}}
    for k, name in enumerate(("level_jump_db", "flux")):
        p95 = float(np.percentile(away[:, k], 95))
        result["inside"][name] = {"mean": float(away[:, k].mean()), "p95": p95}
        result["boundary"][name] = ({"mean": float(at[:, k].mean()), "max": float(at[:, k].max())} if len(at)
                                    else {"mean": float("nan"), "max": float("nan")})
        result["above_inside_p95"][name] = float((at[:, k] > p95).mean()) if len(at) else float("nan")
    return result


def level_over_time(audio: np.ndarray, sample_rate: int, segment_s: float = 10.0) -> list[float]:
    """RMS level (dBFS) of consecutive ``segment_s`` segments (the last one may be shorter)."""
    n = max(1, round(segment_s * sample_rate))
    audio = np.asarray(audio, dtype=np.float64)
    return [float(10 * np.log10(np.mean(audio[i:i + n] ** 2) + 1e-12)) for i in range(0, len(audio), n)]
