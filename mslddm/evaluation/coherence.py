"""What FAD does not hear: whether the stems of one piece play together.

FAD compares each set's distribution of embeddings; a model whose bass is plausible and whose drums are
plausible, but which pairs them at random, can score well. These metrics look inside each clip instead:

- rhythmic agreement: Pearson correlation between a stem's onset-strength envelope (spectral flux) and the
  rhythm reference's (the drums), the reference max-filtered over +-46 ms so that near-coincident onsets count;
- harmonic agreement: mean cosine similarity of the 12-bin chroma of a stem and the harmony reference's (the
  bass), over the frames where both sound;
- silence rate: the fraction of clips in which a stem is (near) silent, the failure the MSLDM paper reports for
  MSDM;
- stem similarity: cosine similarity of two stems' magnitude spectrograms. Agreement alone would reward a model
  that plays the same sound in every stem; this shows it (real stems of different instruments score low).

Each is validated against real data: aligned stems score clearly higher than the same stems shuffled across
songs (:class:`ShuffledAcrossSongs`), which is also the chance level reported next to every evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import maximum_filter1d

from ..audio import rms_db
from ..stems import SILENCE_DBFS

ONSET_N_FFT, ONSET_HOP = 2048, 512  # 93-ms windows, 23-ms hop at 22.05 kHz
ONSET_TOLERANCE_S = 0.046
CHROMA_N_FFT, CHROMA_HOP = 8192, 2048  # 2.7-Hz bins: fine enough to tell semitones apart above ~45 Hz
CHROMA_FMIN, CHROMA_FMAX = 40.0, 5000.0
FRAME_ACTIVE_DB = -50.0  # a chroma frame counts when its level is above this (dBFS)


@dataclass(frozen=True)
class CoherenceConfig:
    """Which stems are references, and what counts as silence. Stems missing from a model are skipped."""

    rhythm_reference: str = "drums"
    harmony_reference: str = "bass"
    unpitched: tuple[str, ...] = ("drums",)
    silence_db: float = SILENCE_DBFS  # a stem whose RMS over the clip is below this (dBFS) is counted as silent


def _stft_magnitude(audio: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """``(frames, n_fft // 2 + 1)`` magnitude of a centred (zero-padded) Hann STFT."""
    audio = np.pad(np.asarray(audio, dtype=np.float64), (n_fft // 2, n_fft // 2))
    if len(audio) < n_fft:
        audio = np.pad(audio, (0, n_fft - len(audio)))
    frames = np.lib.stride_tricks.sliding_window_view(audio, n_fft)[::hop]
    return np.abs(np.fft.rfft(frames * np.hanning(n_fft + 1)[:-1], axis=1))


def _flux(magnitude: np.ndarray) -> np.ndarray:
    log_mag = np.log1p(1000.0 * magnitude)
    return np.concatenate([[0.0], np.maximum(0.0, np.diff(log_mag, axis=0)).sum(axis=1)])


def onset_envelope(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Spectral flux: per frame, the summed increase of log-compressed magnitude (one value per 512 samples)."""
    return _flux(_stft_magnitude(audio, ONSET_N_FFT, ONSET_HOP))


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    n = min(len(a), len(b))
    a, b = a[:n].ravel(), b[:n].ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-20))


def chroma(audio: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """``(frames, 12)`` pitch-class energy (C = 0) and each frame's level in dBFS."""
    mag = _stft_magnitude(audio, CHROMA_N_FFT, CHROMA_HOP)
    freqs = np.fft.rfftfreq(CHROMA_N_FFT, 1.0 / sample_rate)
    band = (freqs >= CHROMA_FMIN) & (freqs <= CHROMA_FMAX)
    pitch_class = np.round(12 * np.log2(freqs[band] / 440.0) + 69).astype(int) % 12
    energy = mag[:, band] ** 2
    out = np.zeros((mag.shape[0], 12))
    for pc in range(12):
        out[:, pc] = energy[:, pitch_class == pc].sum(axis=1)
    window_power = (np.hanning(CHROMA_N_FFT + 1)[:-1] ** 2).sum() * CHROMA_N_FFT / 2
    level = 10 * np.log10((mag**2).sum(axis=1) / window_power + 1e-20)
    return out, level


def _tolerant(envelope: np.ndarray, sample_rate: int) -> np.ndarray:
    """Max-filter a reference envelope over +-46 ms so that near-coincident onsets still correlate."""
    size = 2 * max(1, round(ONSET_TOLERANCE_S * sample_rate / ONSET_HOP)) + 1
    return maximum_filter1d(envelope, size=size)


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    n = min(len(a), len(b))
    a, b = a[:n], b[:n]
    if a.std() < 1e-9 or b.std() < 1e-9:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def _chroma_similarity(a, b) -> float:
    """Mean cosine similarity of two ``chroma()`` results over the frames where both sound."""
    (ca, la), (cb, lb) = a, b
    n = min(len(la), len(lb))
    both = (la[:n] > FRAME_ACTIVE_DB) & (lb[:n] > FRAME_ACTIVE_DB)
    if not both.any():
        return float("nan")
    ca, cb = ca[:n][both], cb[:n][both]
    cosine = (ca * cb).sum(axis=1) / (np.linalg.norm(ca, axis=1) * np.linalg.norm(cb, axis=1) + 1e-20)
    return float(cosine.mean())


def rhythmic_agreement(stem: np.ndarray, reference: np.ndarray, sample_rate: int) -> float:
    """Correlation of ``stem``'s onset envelope with ``reference``'s, tolerant to +-46 ms; NaN if one is flat."""
    return _correlation(
        onset_envelope(stem, sample_rate), _tolerant(onset_envelope(reference, sample_rate), sample_rate)
    )


def harmonic_agreement(stem: np.ndarray, reference: np.ndarray, sample_rate: int) -> float:
    """Mean chroma cosine similarity over frames where both sound (above -50 dBFS); NaN if there are none."""
    return _chroma_similarity(chroma(stem, sample_rate), chroma(reference, sample_rate))


def is_silent(audio: np.ndarray, threshold_db: float = CoherenceConfig.silence_db) -> bool:
    """Whether the RMS level of ``audio`` is below ``threshold_db`` dBFS."""
    return rms_db(audio) < threshold_db


class ShuffledAcrossSongs(Sequence):
    """Clips whose stem ``k`` of clip ``i`` comes from clip ``(i + k) % N``: every clip's stems come from
    different songs (when ``N`` >= number of stems) and each stem's own distribution is unchanged. The chance
    level of the agreement metrics. Deterministic; reads the underlying clips lazily."""

    def __init__(self, clips: Sequence[np.ndarray]):
        self.clips = clips

    def __len__(self):
        return len(self.clips)

    def __getitem__(self, i):
        n = len(self.clips)
        first = np.asarray(self.clips[i])
        return np.stack(
            [first[0]] + [np.asarray(self.clips[(i + k) % n])[k] for k in range(1, first.shape[0])]
        )


def _nanmean(values) -> float:
    values = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def coherence_metrics(
    clips: Sequence[np.ndarray],
    stem_names: Sequence[str],
    sample_rate: int,
    config: CoherenceConfig = CoherenceConfig(),
) -> dict:
    """Rhythmic and harmonic agreement, silence rates and stem similarity of clips ``(K, T)``, per stem (pair)
    and averaged.

    ``clips`` is an ``(N, K, T)`` array or any sequence of ``(K, T)`` arrays. A stem is left out of a clip's
    agreement when it or its reference is silent there (the silence rate counts it instead).
    """
    names = list(stem_names)
    index = {name: k for k, name in enumerate(names)}
    rhythm_ref, harmony_ref = index.get(config.rhythm_reference), index.get(config.harmony_reference)
    rhythm_members = [k for k, n in enumerate(names) if rhythm_ref is not None and k != rhythm_ref]
    harmony_members = [
        k
        for k, n in enumerate(names)
        if harmony_ref is not None and k != harmony_ref and n not in config.unpitched
    ]
    pairs = [(a, b) for a in range(len(names)) for b in range(a + 1, len(names))]
    silent = np.zeros((len(clips), len(names)), dtype=bool)
    rhythm = np.full((len(clips), len(names)), np.nan)
    harmony = np.full((len(clips), len(names)), np.nan)
    similarity = np.full((len(clips), len(pairs)), np.nan)
    for i in range(len(clips)):
        clip = np.asarray(clips[i])
        if clip.ndim != 2 or clip.shape[0] != len(names):
            raise ValueError(f"Clip {i} has shape {clip.shape}; expected ({len(names)}, samples).")
        silent[i] = [is_silent(stem, config.silence_db) for stem in clip]
        mags = [
            None if silent[i, k] else _stft_magnitude(stem, ONSET_N_FFT, ONSET_HOP)
            for k, stem in enumerate(clip)
        ]
        for p, (a, b) in enumerate(pairs):
            if mags[a] is not None and mags[b] is not None:
                similarity[i, p] = _cosine(mags[a], mags[b])
        if rhythm_ref is not None and mags[rhythm_ref] is not None:
            reference = _tolerant(_flux(mags[rhythm_ref]), sample_rate)
            for k in rhythm_members:
                if mags[k] is not None:
                    rhythm[i, k] = _correlation(_flux(mags[k]), reference)
        if harmony_ref is not None and mags[harmony_ref] is not None:
            reference = chroma(clip[harmony_ref], sample_rate)
            for k in harmony_members:
                if mags[k] is not None:
                    harmony[i, k] = _chroma_similarity(chroma(clip[k], sample_rate), reference)
    result = {
        "silence_rate": {n: float(silent[:, k].mean()) for k, n in enumerate(names)},
        "rhythm": {names[k]: _nanmean(rhythm[:, k]) for k in rhythm_members},
        "harmony": {names[k]: _nanmean(harmony[:, k]) for k in harmony_members},
        "similarity": {
            f"{names[a]}/{names[b]}": _nanmean(similarity[:, p]) for p, (a, b) in enumerate(pairs)
        },
    }
    result["silence_rate_mean"] = float(silent.mean()) if silent.size else float("nan")
    for metric in ("rhythm", "harmony", "similarity"):
        result[f"{metric}_mean"] = _nanmean(list(result[metric].values()))
    return result
