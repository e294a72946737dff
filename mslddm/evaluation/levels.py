"""What a listener hears before any embedding: per-stem level, silence, noise floor and low end.

For each stem (and the mix) over a set of clips ``(K, T)``:

- ``mean_dbfs``: mean over clips of the clip's RMS level in dBFS (silent clips included, floored at -120);
- ``share_below_silence``: share of clips whose RMS is under ``silence_db`` (default
  ``mslddm.stems.SILENCE_DBFS``, -50 dBFS);
- ``frame_energy_range_db``: over sounding clips, the mean of (95th - 10th percentile) of the frame energies in dB
  (46-ms frames, hop 23 ms): large for notes over quiet gaps, small for a noise floor that fills the gaps;
- ``low_energy_share``: over sounding clips, the mean share of spectral energy under 250 Hz.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..stems import SILENCE_DBFS

FRAME, HOP = 1024, 512
LOW_HZ = 250.0
FLOOR_DB = -120.0


def _db(power: np.ndarray) -> np.ndarray:
    return 10 * np.log10(np.maximum(power, 10 ** (FLOOR_DB / 10)))


def clip_levels(audio: np.ndarray, sample_rate: int) -> dict:
    """The four numbers of one mono clip (``frame_energy_range_db`` and ``low_energy_share`` even if silent)."""
    audio = np.asarray(audio, dtype=np.float64)
    level = float(_db(np.mean(audio ** 2)))
    if len(audio) < FRAME:
        audio = np.pad(audio, (0, FRAME - len(audio)))
    frames = np.lib.stride_tricks.sliding_window_view(audio, FRAME)[::HOP]
    energy = _db(np.mean(frames ** 2, axis=1))
    spectrum = np.abs(np.fft.rfft(frames * np.hanning(FRAME), axis=1)) ** 2
    freqs = np.fft.rfftfreq(FRAME, 1.0 / sample_rate)
    total = spectrum.sum()
    low = float(spectrum[:, freqs < LOW_HZ].sum() / total) if total > 0 else float("nan")
    return {"dbfs": level, "range_db": float(np.percentile(energy, 95) - np.percentile(energy, 10)), "low": low}


def level_statistics(clips: Sequence[np.ndarray], stem_names: Sequence[str], sample_rate: int,
                     silence_db: float = SILENCE_DBFS) -> dict:
    """``{stem or "mix": {mean_dbfs, share_below_silence, frame_energy_range_db, low_energy_share, clips}}``."""
    per_part: dict[str, list[dict]] = {name: [] for name in [*stem_names, "mix"]}
    for i in range(len(clips)):
        clip = np.asarray(clips[i])
        for k, name in enumerate(stem_names):
            per_part[name].append(clip_levels(clip[k], sample_rate))
        per_part["mix"].append(clip_levels(clip.sum(axis=0), sample_rate))
    result = {}
    for name, values in per_part.items():
        levels = np.array([v["dbfs"] for v in values])
        sounding = [v for v in values if v["dbfs"] >= silence_db]
        result[name] = {
            "clips": len(values),
            "mean_dbfs": float(levels.mean()) if len(levels) else float("nan"),
            "share_below_silence": float(np.mean(levels < silence_db)) if len(levels) else float("nan"),
            "frame_energy_range_db": float(np.mean([v["range_db"] for v in sounding])) if sounding else float("nan"),
            "low_energy_share": float(np.nanmean([v["low"] for v in sounding])) if sounding else float("nan"),
        }
    return result
