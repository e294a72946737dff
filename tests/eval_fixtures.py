"""Small synthetic multi-stem songs for the evaluation tests, and the dataset layout written from them.

Each song has its own tempo, key and chord progression; its four stems play on one beat grid and one harmony:
bass roots on every beat, drum hits (kick + noise hat) on the beats and off-beats, guitar triads on beats 1
and 3, piano arpeggios in eighths. Shuffling stems across songs therefore breaks both rhythm and harmony.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 22050
STEMS = ["bass", "drums", "guitar", "piano"]
PROGRESSIONS = ([0, 7, 9, 5], [0, 5, 7, 0], [9, 5, 0, 7], [0, 9, 5, 7])  # I-V-vi-IV and friends
MAJOR_TRIAD = (0, 4, 7)


def _tone(midi: float, length: int, sr: int, harmonics=(1.0, 0.5, 0.25), decay: float = 4.0) -> np.ndarray:
    t = np.arange(length) / sr
    f = 440.0 * 2 ** ((midi - 69) / 12)
    wave = sum(a * np.sin(2 * np.pi * f * (h + 1) * t) for h, a in enumerate(harmonics))
    return (wave * np.exp(-decay * t)).astype(np.float32)


def _place(track: np.ndarray, sound: np.ndarray, start: int):
    end = min(len(track), start + len(sound))
    if start < end:
        track[start:end] += sound[: end - start]


def song(seed: int, seconds: float = 6.0, sr: int = SR) -> np.ndarray:
    """``(4, samples)`` stems (bass, drums, guitar, piano) of one synthetic song."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    bpm = rng.uniform(80, 160)
    beat = int(sr * 60 / bpm)
    offset = int(rng.integers(0, beat))
    key = int(rng.integers(0, 12))
    progression = PROGRESSIONS[int(rng.integers(0, len(PROGRESSIONS)))]
    stems = np.zeros((4, n), dtype=np.float32)
    kick = _tone(36, int(0.15 * sr), sr, harmonics=(1.0,), decay=25.0)
    for b, start in enumerate(range(offset, n, beat)):
        chord_root = key + progression[(b // 4) % len(progression)]
        _place(stems[0], 0.5 * _tone(36 + chord_root % 12, beat, sr, decay=3.0), start)
        _place(stems[1], 0.6 * kick, start)
        for hat in (start, start + beat // 2):
            _place(stems[1], 0.2 * rng.normal(size=int(0.03 * sr)).astype(np.float32), hat)
        if b % 2 == 0:
            for interval in MAJOR_TRIAD:
                _place(
                    stems[2], 0.15 * _tone(48 + (chord_root + interval) % 12, 2 * beat, sr, decay=2.0), start
                )
        for e in range(2):
            note = 60 + (chord_root + MAJOR_TRIAD[(2 * b + e) % 3]) % 12
            _place(stems[3], 0.2 * _tone(note, beat // 2, sr, decay=6.0), start + e * (beat // 2))
    return stems


def write_dataset(
    root: Path,
    num_tracks: int = 4,
    seconds: float = 6.0,
    split: str = "test",
    drop: dict | None = None,
    sr: int = SR,
) -> Path:
    """Write ``root/split/TrackNNNNN/{stem}.wav, mix.wav, metadata.json``; ``drop`` maps a track index to stems
    left out (a missing file means silence)."""
    drop = drop or {}
    for i in range(num_tracks):
        folder = root / split / f"Track{i + 1:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        stems = song(1000 + i, seconds, sr)
        for name, audio in zip(STEMS, stems):
            if name in drop.get(i, ()):
                stems[STEMS.index(name)] = 0.0
                continue
            sf.write(folder / f"{name}.wav", audio, sr, subtype="PCM_16")
        sf.write(folder / "mix.wav", np.clip(stems.sum(0), -1, 1), sr, subtype="PCM_16")
        (folder / "metadata.json").write_text(json.dumps({"seed": 1000 + i}))
    return root
