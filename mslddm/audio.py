"""Audio I/O used by the pipeline, the data code, the evaluation and the UI: one place that reads, resamples,
mixes down and writes audio.

Reading goes through libsndfile (``soundfile``: wav, flac, ogg/vorbis, opus, mp3 and more); formats libsndfile
cannot read (m4a/aac, wma, ...) are decoded with the ``ffmpeg`` program when it is installed. Resampling uses
``soxr`` (high quality, band-limited). All arrays are float32, channels first: ``(channels, samples)``.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Union

import numpy as np
import soundfile as sf
import soxr

PathLike = Union[str, os.PathLike]
AudioLike = Union[PathLike, bytes, np.ndarray, "torch.Tensor", tuple]  # noqa: F821


class AudioReadError(ValueError):
    """A file could not be decoded as audio."""


def read_audio(source: PathLike | bytes) -> tuple[np.ndarray, int]:
    """Read an audio file (path or bytes) into a float32 array ``(channels, samples)`` and its sample rate."""
    name = "<bytes>" if isinstance(source, (bytes, bytearray)) else str(source)
    if not isinstance(source, (bytes, bytearray)) and not Path(source).is_file():
        raise FileNotFoundError(f"Audio file {name!r} does not exist.")
    try:
        data, sr = sf.read(
            io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source,
            dtype="float32",
            always_2d=True,
        )
    except Exception as sf_error:  # libsndfile raises several types; all mean "cannot decode"
        data, sr = _read_with_ffmpeg(source, name, sf_error)
    if data.shape[0] == 0:
        raise AudioReadError(f"Audio file {name!r} holds no samples.")
    return np.ascontiguousarray(data.T), int(sr)


def _read_with_ffmpeg(source: PathLike | bytes, name: str, sf_error: Exception) -> tuple[np.ndarray, int]:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise AudioReadError(
            f"Could not read {name!r} as audio ({sf_error}). Supported without extra tools: wav, flac, ogg, "
            "opus, mp3, aiff; for other formats install ffmpeg (apt-get install ffmpeg) or convert the file."
        ) from sf_error
    with tempfile.TemporaryDirectory() as tmp:
        src = source
        if isinstance(source, (bytes, bytearray)):
            src = os.path.join(tmp, "input")
            Path(src).write_bytes(source)
        out = os.path.join(tmp, "decoded.wav")
        proc = subprocess.run(
            [ffmpeg, "-nostdin", "-v", "error", "-i", str(src), "-c:a", "pcm_f32le", out],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0 or not os.path.exists(out):
            raise AudioReadError(
                f"Could not read {name!r} as audio: libsndfile said {sf_error!s}; ffmpeg said "
                f"{proc.stderr.strip() or 'nothing'}."
            ) from sf_error
        data, sr = sf.read(out, dtype="float32", always_2d=True)
    return data, sr


def to_mono(audio: np.ndarray) -> np.ndarray:
    """Average the channels of ``(channels, samples)`` (or pass ``(samples,)`` through) into ``(samples,)``."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        return audio
    if audio.ndim != 2:
        raise ValueError(f"Expected audio of shape (samples,) or (channels, samples), got {audio.shape}.")
    return audio.mean(axis=0)


def resample(audio: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample along the last axis with soxr (high quality). A no-op when the rates are equal."""
    audio = np.asarray(audio, dtype=np.float32)
    if orig_sr <= 0 or target_sr <= 0:
        raise ValueError(f"Sample rates must be positive, got {orig_sr} -> {target_sr}.")
    if orig_sr == target_sr:
        return audio
    if audio.ndim == 1:
        return soxr.resample(audio, orig_sr, target_sr, quality="HQ").astype(np.float32)
    # soxr wants (samples, channels)
    return np.ascontiguousarray(soxr.resample(audio.T, orig_sr, target_sr, quality="HQ").T, dtype=np.float32)


def load_audio(source: AudioLike, sample_rate: int, *, source_sample_rate: int | None = None) -> np.ndarray:
    """Turn anything audio-like into a mono float32 array ``(samples,)`` at ``sample_rate``.

    ``source`` may be a file path, encoded bytes, a ``(array, sample_rate)`` tuple, or an array / tensor of shape
    ``(samples,)`` or ``(channels, samples)``. Bare arrays are taken to be at ``source_sample_rate`` (default:
    ``sample_rate``). Raises ``ValueError`` for empty audio or audio holding NaN / infinite values.
    """
    name = "audio"
    if isinstance(source, tuple):
        if len(source) != 2:
            raise ValueError("An audio tuple must be (array, sample_rate).")
        source, source_sample_rate = source
    if isinstance(source, (str, os.PathLike, bytes, bytearray)):
        name = "<bytes>" if isinstance(source, (bytes, bytearray)) else str(source)
        audio, source_sample_rate = read_audio(source)
    else:
        if hasattr(source, "detach"):  # torch.Tensor without importing torch here
            source = source.detach().cpu().float().numpy()
        audio = np.asarray(source, dtype=np.float32)
        if audio.ndim == 2 and audio.shape[0] > audio.shape[1]:
            raise ValueError(
                f"Audio array of shape {audio.shape} looks like (samples, channels); pass (channels, samples)."
            )
    audio = to_mono(audio)
    if audio.size == 0:
        raise ValueError(f"{name} holds no samples.")
    if not np.isfinite(audio).all():
        raise ValueError(f"{name} holds NaN or infinite values.")
    return resample(audio, int(source_sample_rate or sample_rate), sample_rate)


def common_gain(*arrays: np.ndarray, peak: float = 0.99) -> float:
    """One gain for several signals (stems and their mix) so that none exceeds ``peak``; never amplifies."""
    top = max((float(np.max(np.abs(a))) if np.size(a) else 0.0) for a in arrays) if arrays else 0.0
    return 1.0 if top <= peak else peak / top


def write_audio(
    path: PathLike,
    audio: np.ndarray,
    sample_rate: int,
    *,
    subtype: str | None = None,
    on_clip: str = "error",
) -> Path:
    """Write ``(samples,)`` or ``(channels, samples)`` audio; the format follows the file extension.

    ``subtype`` defaults to 16-bit PCM for wav/flac/aiff, Vorbis for ogg and MPEG layer III for mp3.

    Integer formats cannot hold values beyond full scale. ``on_clip`` decides what happens then: ``"error"``
    (default) raises, ``"scale"`` scales the whole file down to 0.99 peak, ``"clip"`` hard-clips. To keep the
    relative levels of several files (stems and mix), scale them together with :func:`common_gain` first.
    The file is written to a temporary name and renamed, so an interrupted write never leaves a partial file.
    """
    path = Path(path)
    fmt = _format_of(path)
    subtype = subtype or {"OGG": "VORBIS", "MP3": "MPEG_LAYER_III"}.get(fmt, "PCM_16")
    audio = np.asarray(audio, dtype=np.float32)
    if not np.isfinite(audio).all():
        raise ValueError(f"Refusing to write {path}: the audio holds NaN or infinite values.")
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak > 1.0 and not subtype.upper().startswith(("FLOAT", "DOUBLE")):
        if on_clip == "scale":
            audio = audio * (0.99 / peak)
        elif on_clip == "clip":
            audio = np.clip(audio, -1.0, 1.0)
        elif on_clip == "error":
            raise ValueError(
                f"Audio for {path} peaks at {peak:.3f} (> 1.0) and {subtype} would clip it; scale it first "
                "(mslddm.audio.common_gain keeps several files' relative levels) or pass on_clip='scale'."
            )
        else:
            raise ValueError(f"on_clip must be 'error', 'scale' or 'clip', got {on_clip!r}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    sf.write(tmp, audio.T if audio.ndim == 2 else audio, sample_rate, subtype=subtype, format=fmt)
    os.replace(tmp, path)
    return path


def _format_of(path: Path) -> str:
    ext = path.suffix.lower().lstrip(".")
    formats = {"wav": "WAV", "flac": "FLAC", "ogg": "OGG", "aiff": "AIFF", "aif": "AIFF", "mp3": "MP3"}
    if ext not in formats:
        raise ValueError(f"Cannot write audio with extension {path.suffix!r}; use one of .{', .'.join(formats)}.")
    return formats[ext]


def rms_db(audio: np.ndarray) -> float:
    """Root-mean-square level in dBFS (``-inf`` for digital silence)."""
    audio = np.asarray(audio, dtype=np.float64)
    rms = float(np.sqrt(np.mean(audio**2))) if audio.size else 0.0
    return 20.0 * np.log10(rms) if rms > 0 else float("-inf")
