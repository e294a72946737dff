"""A result in the uploads' format: the model samples mono at its own rate (an internal detail), the files a
musician gets back are at the given stems' sample rate and channel count.

The rule (the CLI, the page and its API alike):

- **Format**: the highest sample rate and the most channels among the given stems; the model's rate, mono, when
  none is given. (A 44.1 kHz stereo take and a 48 kHz mono one give 48 kHz stereo.)
- **Given stems come back untouched**: the decoded upload itself, sample for sample, when it is already in that
  format; a mono upload is copied to every channel, and only an upload at a lower rate than another one is
  resampled. A stem with fewer channels than the format repeats its channels (channel ``c`` is the upload's
  ``c % channels``).
- **Generated stems** are resampled from the model's rate (soxr, as everywhere) and copied to every channel.
- **Continued stems** (Extend) are their take, then a crossfade of the pipeline's length into their continuation.
- **Levels**: the stems are written at their own level (gain 1) unless one would clip in 16-bit PCM (peak over full
  scale); then every stem shares one gain, fixed for the result. The mix has its own gain (the stems' gain, lowered
  when the mix would clip), so a re-mix never changes a stem's file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .audio import read_audio, resample

FULL_SCALE = 1.0  # a stem peaking at or under it is written in 16-bit PCM as it is
HEADROOM_PEAK = 0.99  # what a gain lowers a too-loud peak to


@dataclass(frozen=True)
class AudioFormat:
    """Sample rate and channel count of the files a result is written as."""

    sample_rate: int
    channels: int


@dataclass
class Upload:
    """A given stem as decoded from its file: ``(channels, samples)`` float32 at ``sample_rate``."""

    audio: np.ndarray
    sample_rate: int

    @classmethod
    def read(cls, path) -> Upload:
        audio, sample_rate = read_audio(path)
        return cls(audio, sample_rate)

    @property
    def seconds(self) -> float:
        return self.audio.shape[-1] / self.sample_rate


def output_format(uploads: Sequence[Upload], model_sample_rate: int) -> AudioFormat:
    """The highest rate and the most channels of ``uploads``; the model's rate, mono, without uploads."""
    if not uploads:
        return AudioFormat(int(model_sample_rate), 1)
    return AudioFormat(max(u.sample_rate for u in uploads), max(u.audio.shape[0] for u in uploads))


def fit_channels(audio: np.ndarray, channels: int) -> np.ndarray:
    """``(samples,)`` or ``(c, samples)`` -> ``(channels, samples)``: channel ``i`` is the input's ``i % c``."""
    audio = np.asarray(audio, dtype=np.float32)
    audio = audio[None] if audio.ndim == 1 else audio
    if audio.shape[0] == channels:
        return audio
    if audio.shape[0] > channels:  # only a format chosen elsewhere (a render read back) can be narrower
        return audio.mean(axis=0, keepdims=True).repeat(channels, axis=0)
    return audio[np.arange(channels) % audio.shape[0]]


def fit_length(audio: np.ndarray, length: int) -> np.ndarray:
    """Crops or zero-pads the last axis to ``length``."""
    if audio.shape[-1] >= length:
        return audio[..., :length]
    return np.pad(audio, [(0, 0)] * (audio.ndim - 1) + [(0, length - audio.shape[-1])])


def in_format(upload: Upload, fmt: AudioFormat, length: int) -> np.ndarray:
    """A given stem in ``fmt``, ``(channels, length)``: untouched when it is already at that rate."""
    audio = resample(upload.audio, upload.sample_rate, fmt.sample_rate)
    return fit_length(fit_channels(audio, fmt.channels), length)


def output_length(uploads: Sequence[Upload], fmt: AudioFormat, duration_s: float | None) -> int:
    """Samples of a result in ``fmt``: ``duration_s``, else the longest upload."""
    if duration_s is not None:
        return max(1, round(duration_s * fmt.sample_rate))
    return max(round(u.audio.shape[-1] * fmt.sample_rate / u.sample_rate) for u in uploads)


def deliver(stems: np.ndarray, model_sample_rate: int, names: Sequence[str], fmt: AudioFormat, length: int,
            given: Mapping[str, np.ndarray] | None = None, continued: Mapping[str, int] | None = None,
            fade_s: float = 0.0) -> np.ndarray:
    """The pipeline's ``(batch, stems, samples)`` output as ``(batch, stems, channels, length)`` in ``fmt``.

    ``given``: stems already in ``fmt`` (:func:`in_format`), put in as they are; ``continued``: of those, the ones
    the model continued, with the sample where their take ends: the take, then a crossfade of ``fade_s`` into the
    continuation."""
    given, continued = dict(given or {}), dict(continued or {})
    stems = np.asarray(stems, dtype=np.float32)
    out = np.empty((stems.shape[0], len(names), fmt.channels, length), dtype=np.float32)
    for k, name in enumerate(names):
        if name in given and name not in continued:
            out[:, k] = fit_length(given[name], length)
            continue
        made = fit_length(resample(stems[:, k], model_sample_rate, fmt.sample_rate), length)
        out[:, k] = made[:, None, :]
        if name in continued:
            end = min(continued[name], length)
            n = min(round(fade_s * fmt.sample_rate), end)
            take = fit_length(given[name], end)
            ramp = np.linspace(1.0, 0.0, n + 2, dtype=np.float32)[1:-1]
            out[:, k, :, :end - n] = take[:, :end - n]
            out[:, k, :, end - n:end] = ramp * take[:, end - n:] + (1 - ramp) * out[:, k, :, end - n:end]
    return out


def stems_gain(stems: np.ndarray) -> float:
    """The stems' gain: 1 (written as they are) unless one peaks over full scale; then one gain for all."""
    peak = float(np.max(np.abs(stems))) if np.size(stems) else 0.0
    return 1.0 if peak <= FULL_SCALE else HEADROOM_PEAK / peak


def mix_gain(mixes: np.ndarray, stems_gain_: float) -> float:
    """The mix's gain: the stems' gain, lowered when the mix would clip (never above the stems')."""
    peak = float(np.max(np.abs(mixes))) * stems_gain_ if np.size(mixes) else 0.0
    return stems_gain_ if peak <= HEADROOM_PEAK else stems_gain_ * HEADROOM_PEAK / peak
