"""Where a stem's energy sits: the share above 4 kHz and the spectral centroid.

A sampler that stops with residual noise leaves a high-frequency floor under bass and piano that FAD barely
weighs; these two numbers show it next to the real stems of the same chunks (issue 24 measured bass 0.29 % above
4 kHz against 0.03 % real). Both are power-weighted over the whole clip (46-ms Hann frames, hop 23 ms), so quiet
frames count little and a clip of silence gives NaN rather than a number.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

FRAME, HOP = 1024, 512
HIGH_HZ = 4000.0


def power_spectrum(audio: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """The clip's summed power spectrum over its frames, and the frequencies of its bins."""
    audio = np.asarray(audio, dtype=np.float64)
    if len(audio) < FRAME:
        audio = np.pad(audio, (0, FRAME - len(audio)))
    frames = np.lib.stride_tricks.sliding_window_view(audio, FRAME)[::HOP]
    power = (np.abs(np.fft.rfft(frames * np.hanning(FRAME), axis=1)) ** 2).sum(0)
    return power, np.fft.rfftfreq(FRAME, 1.0 / sample_rate)


def spectral_shape(audio: np.ndarray, sample_rate: int, high_hz: float = HIGH_HZ) -> dict:
    """``{"high_share": share of power above high_hz, "centroid_hz": power-weighted mean frequency}``."""
    power, freqs = power_spectrum(audio, sample_rate)
    total = power.sum()
    if total <= 0:
        return {"high_share": float("nan"), "centroid_hz": float("nan")}
    return {"high_share": float(power[freqs >= high_hz].sum() / total),
            "centroid_hz": float((power * freqs).sum() / total)}


def spectral_statistics(clips: Sequence[np.ndarray], stem_names: Sequence[str], sample_rate: int,
                        sounding: Sequence[Sequence[bool]] | None = None) -> dict:
    """``{stem: {"high_share", "centroid_hz", "clips"}}``: means over the clips ``(K, T)`` where the stem sounds
    (``sounding[i][k]``; all when not given)."""
    result = {}
    for k, name in enumerate(stem_names):
        shapes = [spectral_shape(np.asarray(clips[i])[k], sample_rate) for i in range(len(clips))
                  if sounding is None or sounding[i][k]]
        shares = [s["high_share"] for s in shapes if np.isfinite(s["high_share"])]
        centroids = [s["centroid_hz"] for s in shapes if np.isfinite(s["centroid_hz"])]
        result[name] = {"high_share": float(np.mean(shares)) if shares else float("nan"),
                        "centroid_hz": float(np.mean(centroids)) if centroids else float("nan"),
                        "clips": len(shares)}
    return result
