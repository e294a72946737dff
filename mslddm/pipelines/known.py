"""The known part of a generation: which stems and frames are given, the audio they are encoded from, and the given
stems put back exactly after decoding (partial generation, continuation, stems held silent).

Pure functions over names, lengths and arrays: the pipeline's ``__call__`` orders them; the codec encodes.
"""

from __future__ import annotations

import math
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from ..audio import rms_db
from ..loudness import band_gain
from ..stems import SILENCE_DBFS, StemError

CONTINUATION_FADE_SAMPLES = 512  # a continued stem crossfades from the take into its continuation over these


def stems_to_generate(names: Sequence[str], given: Mapping, generate: Optional[Sequence[str]],
                      continuing: bool) -> List[str]:
    """The stems the model generates, in ``names`` order: those asked for (default: those not given); in
    continuation the given stems too, after their ends."""
    if generate is None:
        return [s for s in names if s not in given or continuing]
    return [s for s in names if s in generate or (continuing and s in given)]


def given_and_generated(names: Sequence[str], given: Mapping[str, np.ndarray], generate: Optional[Sequence[str]],
                        continuing: bool) -> Tuple[Dict[str, np.ndarray], List[str]]:
    """``(given stems, stems to generate)``. In a continuation, given stems silent in every sample (under
    ``SILENCE_DBFS``: a result's held-silent stems) are held silent again instead of continued; a continuation of
    nothing but silence is refused."""
    silent = [n for n, audio in given.items() if all(rms_db(a) < SILENCE_DBFS for a in audio)] if continuing else []
    if silent and len(silent) == len(given):
        raise StemError(f"Every given stem ({silent}) is silent: there is nothing to continue.")
    if silent:
        given = {n: a for n, a in given.items() if n not in silent}
        generate = [s for s in (names if generate is None else generate) if s not in silent]
    return dict(given), stems_to_generate(names, given, generate, continuing)


def fit_length(audio: np.ndarray, length: int) -> np.ndarray:
    """Crops or zero-pads ``(batch, samples)`` audio to ``length`` samples."""
    if audio.shape[1] >= length:
        return audio[:, :length]
    return np.pad(audio, ((0, 0), (0, length - audio.shape[1])))


def result_length(given_length: Mapping[str, int], sample_rate: int, audio_length_in_s: Optional[float],
                  extend_s: Optional[float], default_s: float) -> int:
    """Samples of the result: the longest given stem plus ``extend_s``, else ``audio_length_in_s``, else the longest
    given stem, else ``default_s``."""
    if extend_s is not None:
        length = max(given_length.values()) + round(extend_s * sample_rate)
    elif audio_length_in_s is None:
        length = max(given_length.values(), default=round(default_s * sample_rate))
    else:
        length = round(audio_length_in_s * sample_rate)
    if length < 1:
        raise ValueError(f"audio_length_in_s={audio_length_in_s} is shorter than one sample.")
    return length


def known_frames(names: Sequence[str], generate: Sequence[str], given_length: Mapping[str, int], frames: int,
                 hop_length: int, context_frames: int, continuing: bool) -> torch.Tensor:
    """``(num_stems,)`` frames known from the start of each stem: all of a stem not generated (given, or held
    silent); in continuation, a given stem up to the frames its end (zeros after it) does not reach."""
    known = torch.zeros(len(names), dtype=torch.long)
    for i, name in enumerate(names):
        if name not in generate:
            known[i] = frames
        elif name in given_length and continuing:
            known[i] = max(0, min(frames, given_length[name] // hop_length - context_frames))
    return known


def known_mask(known: torch.Tensor, latent_channels: int, frames: int) -> torch.Tensor:
    """``(1, num_stems * latent_channels, frames)``: where the latents are known (each stem's channels alike)."""
    k = known.numel()
    mask = torch.arange(frames).view(1, 1, frames) < known.view(1, k, 1)
    return mask.unsqueeze(2).expand(1, k, latent_channels, frames).reshape(1, k * latent_channels, frames)


def given_audio(names: Sequence[str], given: Mapping[str, np.ndarray], gains: Mapping[str, np.ndarray],
                num_samples: int, samples: int) -> torch.Tensor:
    """``(num_samples, num_stems, samples)`` audio to encode: the given stems (at their training level when a gain
    is given), silence for the others and after the ends."""
    audio = torch.zeros(num_samples, len(names), samples)
    for i, name in enumerate(names):
        if name in given:
            stem = given[name] * gains[name][:, None] if name in gains else given[name]
            audio[:, i, :stem.shape[1]] = torch.from_numpy(stem)
    return audio


def apply_output_gains(audio: torch.Tensor, names: Sequence[str], generate: Sequence[str],
                       gains_db: Mapping[str, float], given: Sequence[str] = ()) -> Dict[str, float]:
    """Multiplies each generated stem by its calibrated gain, in place; returns the gains applied (dB). A continued
    stem (``given`` and generated) keeps its level: its take anchors it, and the gain was measured on stems
    generated from nothing."""
    applied = {}
    for i, name in enumerate(names):
        if name in generate and name not in given and gains_db.get(name):
            audio[:, i] *= 10.0 ** (gains_db[name] / 20.0)
            applied[name] = float(gains_db[name])
    return applied


def restore_upload_level(audio: torch.Tensor, names: Sequence[str], generate: Sequence[str],
                         gains: Mapping[str, np.ndarray]) -> Dict[str, object]:
    """Gives the generated stems back at the upload's level, in place: a continued stem by the inverse of its own
    gain, the others by the inverse of the given stems' mean gain (:func:`band_gain`). Returns the gains in dB."""
    band = torch.tensor([band_gain([g[b] for g in gains.values()]) for b in range(audio.shape[0])])
    for i, name in enumerate(names):
        if name in generate:
            scale = torch.from_numpy(1.0 / gains[name]) if name in gains else band
            audio[:, i] *= scale.to(audio.device, audio.dtype)[:, None]
    return {"given_gain_db": {n: [round(20 * math.log10(v), 2) for v in g] for n, g in gains.items()},
            "band_gain_db": [round(20 * math.log10(v), 2) for v in band.tolist()]}


def restore_given(audio: torch.Tensor, names: Sequence[str], given: Mapping[str, np.ndarray],
                  given_length: Mapping[str, int], generate: Sequence[str],
                  fade: int = CONTINUATION_FADE_SAMPLES) -> None:
    """Puts the given stems back exactly, in place: a stem not generated is its given audio (or silence); a
    continued stem is its take, then a crossfade of ``fade`` samples into its continuation."""
    for i, name in enumerate(names):
        if name in given and name in generate:
            end = given_length[name]
            n = min(fade, end)
            ramp = torch.linspace(1.0, 0.0, n + 2, device=audio.device)[1:-1]
            take = torch.from_numpy(given[name][:, :end]).to(audio.device)
            audio[:, i, :end - n] = take[:, :end - n]
            audio[:, i, end - n:end] = ramp * take[:, end - n:] + (1 - ramp) * audio[:, i, end - n:end]
        elif name not in generate:
            audio[:, i] = torch.from_numpy(given[name]).to(audio.device) if name in given else 0.0
