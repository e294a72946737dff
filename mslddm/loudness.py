"""The level a stem plays at, measured the way a mixer hears it: the RMS of its sounding part.

A take with long rests and a SoundFont render that plays throughout can have the same playing level and very
different whole-clip RMS, so levels are gated, in the manner of ITU-R BS.1770's relative gate: the RMS over the
100-ms frames within ``RELATIVE_GATE_DB`` of the loudest frame (and above ``ABSOLUTE_GATE_DB``). The pipeline sets
given stems to the level the model was trained at (its ``stem_levels_dbfs``) before encoding them, and gives the
generated band back at the upload's level.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

FRAME_S = 0.1
RELATIVE_GATE_DB = 30.0
ABSOLUTE_GATE_DB = -70.0


def active_level_db(audio: np.ndarray, sample_rate: int) -> float:
    """Gated RMS level of a mono clip in dBFS (``-inf`` for silence)."""
    audio = np.asarray(audio, dtype=np.float64).reshape(-1)
    frame = min(len(audio), max(1, int(FRAME_S * sample_rate)))  # a clip shorter than a frame is one frame
    if frame == 0:
        return float("-inf")
    usable = len(audio) - len(audio) % frame
    power = (audio[:usable].reshape(-1, frame) ** 2).mean(1)
    if not np.any(power > 0):
        return float("-inf")
    level = 10 * np.log10(np.maximum(power, 1e-30))
    keep = (level > ABSOLUTE_GATE_DB) & (level > level.max() - RELATIVE_GATE_DB)
    if not keep.any():
        return float("-inf")
    return float(10 * np.log10(power[keep].mean()))


def gain_to_level(audio: np.ndarray, sample_rate: int, target_dbfs: float, max_gain_db: float = 40.0) -> float:
    """The linear gain that brings ``audio``'s active level to ``target_dbfs`` (1 for silence), at most
    ``max_gain_db`` either way (a near-silent stem is not blown up into noise)."""
    level = active_level_db(audio, sample_rate)
    if not np.isfinite(level):
        return 1.0
    return float(10 ** (np.clip(target_dbfs - level, -max_gain_db, max_gain_db) / 20))


def band_gain(gains: Sequence[float]) -> float:
    """One gain for the generated stems from the given stems' normalising gains: the inverse of their mean in dB, so
    that the band keeps the level relation it has to the given stems at the training level."""
    if not len(gains):
        return 1.0
    return float(10 ** (-np.mean(20 * np.log10(np.asarray(gains, dtype=np.float64))) / 20))


def stem_levels(clips: Sequence[np.ndarray], stem_names: Sequence[str], sample_rate: int) -> dict[str, float]:
    """The median active level per stem over clips ``(K, T)`` where the stem sounds: what a pipeline records as
    ``stem_levels_dbfs`` from its training data."""
    levels: dict[str, list[float]] = {name: [] for name in stem_names}
    for clip in clips:
        for k, name in enumerate(stem_names):
            level = active_level_db(np.asarray(clip)[k], sample_rate)
            if np.isfinite(level):
                levels[name].append(level)
    missing = [name for name, values in levels.items() if not values]
    if missing:
        raise ValueError(f"No clip has the stem(s) {missing} sounding: their training level is unknown.")
    return {name: round(float(np.median(values)), 2) for name, values in levels.items()}


def check_stem_levels(stem_levels_dbfs: Mapping[str, float], stem_names: Sequence[str],
                      key: str = "stem_levels_dbfs", limit: float = float("inf"), unit: str = "dBFS"
                      ) -> dict[str, float]:
    """Validates a pipeline's recorded levels (or gains, ``key``): one finite number per stem name, within
    ``+-limit``."""
    unknown = sorted(set(stem_levels_dbfs) - set(stem_names))
    if unknown:
        raise ValueError(f"{key} names unknown stem(s) {unknown}; the stems are {list(stem_names)}.")
    bad = {k: v for k, v in stem_levels_dbfs.items()
           if not isinstance(v, (int, float)) or not np.isfinite(v) or abs(v) > limit}
    if bad:
        within = "" if limit == float("inf") else f" within +-{limit:g}"
        raise ValueError(f"{key} must hold finite {unit} numbers{within}, got {bad}.")
    return {k: float(v) for k, v in stem_levels_dbfs.items()}


OUTPUT_GAIN_LIMIT_DB = 24.0  # a calibration beyond this is a broken model, not a quiet one


STREAMING_LUFS = -14.0  # the loudness streaming services play music at: what "normalise mix" aims for


def integrated_loudness_lufs(audio: np.ndarray, sample_rate: int) -> float:
    """ITU-R BS.1770 integrated loudness (``pyloudnorm``) of ``(samples,)`` or ``(channels, samples)`` audio in
    LUFS; ``-inf`` for silence or a clip shorter than one 400-ms block."""
    import pyloudnorm

    audio = np.asarray(audio, dtype=np.float64)
    data = audio if audio.ndim == 1 else audio.T
    if data.shape[0] < int(0.4 * sample_rate) or not np.any(data):
        return float("-inf")
    return float(pyloudnorm.Meter(sample_rate).integrated_loudness(data))
