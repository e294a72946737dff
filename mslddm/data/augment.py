"""What a real recording does to a stem that a SoundFont render does not: level, EQ, drive, compression, room.

A seeded chain of `pedalboard` effects (Spotify's, maintained; numpy in, numpy out) drawn per item:
gain to a target level, a low shelf / peak / high shelf EQ (+-6 dB), amp-like drive (0-18 dB) on half the draws,
a compressor, and a room reverb on half the draws. Used to test accompaniment on given stems that sound recorded
(`mslddm.evaluation.accompaniment`) and, for training, to widen what the model has heard.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..audio import rms_db


@dataclass(frozen=True)
class AugmentationChain:
    """The drawn effect settings of one item (see :func:`draw_chain`); ``__call__`` applies them."""

    low_shelf_db: float
    peak_hz: float
    peak_db: float
    high_shelf_db: float
    drive_db: float
    compressor_threshold_db: float
    reverb_room: float
    reverb_wet: float

    def board(self):
        import pedalboard as pb

        effects = [pb.LowShelfFilter(cutoff_frequency_hz=200.0, gain_db=self.low_shelf_db),
                   pb.PeakFilter(cutoff_frequency_hz=self.peak_hz, gain_db=self.peak_db, q=1.0),
                   pb.HighShelfFilter(cutoff_frequency_hz=4000.0, gain_db=self.high_shelf_db)]
        if self.drive_db > 0:
            effects.append(pb.Distortion(drive_db=self.drive_db))
        effects.append(pb.Compressor(threshold_db=self.compressor_threshold_db, ratio=4.0, attack_ms=5.0,
                                     release_ms=100.0))
        if self.reverb_wet > 0:
            effects.append(pb.Reverb(room_size=self.reverb_room, wet_level=self.reverb_wet, dry_level=1.0))
        return pb.Pedalboard(effects)

    def __call__(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        audio = np.asarray(audio, dtype=np.float32)
        if not np.any(audio):
            return audio.copy()
        level = rms_db(audio)
        out = self.board()(audio[None], sample_rate)[0]
        return set_level(out, level)  # the chain changes colour, not level: the level is set separately


def draw_chain(seed: int) -> AugmentationChain:
    """Random effect settings from ``seed`` (the same seed, the same chain)."""
    rng = np.random.default_rng(seed)
    drive, wet = rng.random() < 0.5, rng.random() < 0.5
    return AugmentationChain(
        low_shelf_db=float(rng.uniform(-6, 6)), peak_hz=float(np.exp(rng.uniform(np.log(300), np.log(3000)))),
        peak_db=float(rng.uniform(-6, 6)), high_shelf_db=float(rng.uniform(-6, 6)),
        drive_db=float(rng.uniform(3, 18)) if drive else 0.0,
        compressor_threshold_db=float(rng.uniform(-30, -10)),
        reverb_room=float(rng.uniform(0.1, 0.6)), reverb_wet=float(rng.uniform(0.05, 0.3)) if wet else 0.0)


def set_level(audio: np.ndarray, dbfs: float, peak: float = 0.999, limit: bool = True) -> np.ndarray:
    """``audio`` scaled to an RMS of ``dbfs`` (silence stays silence). Where that would clip, ``limit`` soft-clips
    the peaks (``peak * tanh(x / peak)``, what a limiter on a loud take does) and levels again; without it, or
    when a level cannot be reached under ``peak``, a ValueError says so."""
    out = np.asarray(audio, dtype=np.float32)
    if not np.isfinite(rms_db(out)):
        return out.copy()
    for _ in range(8):
        out = out * np.float32(10 ** ((dbfs - rms_db(out)) / 20))
        if np.abs(out).max() <= peak:
            return out
        if not limit:
            break
        out = (peak * np.tanh(out / peak)).astype(np.float32)
    raise ValueError(f"Setting the level to {dbfs} dBFS would clip (peak {np.abs(out).max():.2f} over {peak}).")
