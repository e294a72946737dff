"""The files of one generation: a WAV per stem and the mix for every variation, a ``settings.json``, the ZIP that
holds them all, and a spectrogram picture.

The WAVs are in the result's format (:mod:`mslddm.delivery`: the uploads' rate and channels). The stems are written
with one gain fixed for the result (1, so given stems come back as uploaded, unless a stem would clip), recorded as
``gain_applied``; the mix with its own gain, ``mix_gain_applied`` (the stems' gain, lowered when the mix would clip;
with *normalise*, set to -14 LUFS). A re-mix writes new mixes and copies the stems' files as they are, so a stem
downloaded twice is the same file. The ZIP is the render's only record: re-mixing and switching variation read it
back, so the page needs no server-side state and cached examples behave like fresh generations.

ZIP layout::

    settings.json                       # every setting, the seeds, the mixer, the gains, the file names
    variation_1_seed123/bass.wav        # the stems as generated (given stems as uploaded), x gain_applied
    variation_1_seed123/mix.wav         # sum of gain(dB) x stem over the unmuted stems, x mix_gain_applied
    variation_2_seed124/...
"""

from __future__ import annotations

import contextlib
import json
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mslddm.audio import read_audio, write_audio
from mslddm.delivery import HEADROOM_PEAK, mix_gain, stems_gain
from mslddm.loudness import STREAMING_LUFS, integrated_loudness_lufs
from mslddm.records import SETTINGS_FILE, write_settings

MIX = "mix"
MAX_ZIP_BYTES = 1 << 30  # refuse to read back anything larger (a render of 4 x 30 s stems is ~25 MB)

Mixer = Mapping[str, tuple[float, bool]]  # stem name -> (gain in dB, muted)


@dataclass
class Render:
    """One generation: the stems in the result's format and the settings that made them."""

    stems: np.ndarray  # (variations, stems, channels, samples) float32, the pipeline's levels
    stem_names: list[str]
    sample_rate: int
    seeds: list[int]
    settings: dict = field(default_factory=dict)  # pipeline, sampler, steps, ... (copied into settings.json)
    gain: float | None = None  # the stems' gain, fixed for the result (None: chosen when first written)


@dataclass
class RenderFiles:
    """Where a render was written: the ZIP and, per variation, a WAV per stem and ``"mix"``."""

    zip_path: Path
    variations: list[dict[str, Path]]
    settings: dict


def file_name(stem: str) -> str:
    """A stem name made safe as a file name (stem names come from a pipeline's config)."""
    return re.sub(r"[^\w.-]+", "_", stem).strip("._") or "stem"


def variation_folder(index: int, seed: int) -> str:
    return f"variation_{index + 1}_seed{seed}"


def linear_gains(mixer: Mixer, stem_names: list[str]) -> np.ndarray:
    """Linear gain per stem from ``{name: (gain_db, muted)}``; a stem the mixer does not name stays at 0 dB."""
    gains = []
    for name in stem_names:
        gain_db, muted = mixer.get(name, (0.0, False))
        gains.append(0.0 if muted else 10.0 ** (float(gain_db) / 20.0))
    return np.asarray(gains, dtype=np.float32)


def mix(stems: np.ndarray, gains: np.ndarray) -> np.ndarray:
    """``(variations, stems, channels, samples)`` and one gain per stem -> ``(variations, channels, samples)``."""
    return np.einsum("nkct,k->nct", stems, gains).astype(np.float32)


def stem_files(names: list[str], suffixes: Mapping[str, str] | None = None) -> dict[str, str]:
    """The stems' file names in a variation's folder (``suffixes``: e.g. ``{"drums": "_140bpm"}``)."""
    suffixes = suffixes or {}
    files = {name: f"{file_name(name)}{suffixes.get(name, '')}.wav" for name in names}
    if len(set(files.values())) != len(files) or f"{MIX}.wav" in files.values():
        files = {name: f"stem{k}_{file_name(name)}.wav" for k, name in enumerate(names)}
    return files


def normalised_mix_gain(mixes: np.ndarray, sample_rate: int, target_lufs: float = STREAMING_LUFS) -> float | None:
    """The gain that brings the loudest variation's mix to ``target_lufs``, lowered when a mix would clip; None for
    mixes too short or quiet to measure (under one 400-ms block)."""
    loudness = max(integrated_loudness_lufs(m, sample_rate) for m in mixes)
    if not np.isfinite(loudness):
        return None
    gain = 10.0 ** ((target_lufs - loudness) / 20.0)
    peak = float(np.max(np.abs(mixes)))
    return min(gain, HEADROOM_PEAK / peak) if peak > 0 else gain


def write_render(render: Render, mixer: Mixer, folder: str | Path, *, stems_from: str | Path | None = None,
                 normalise: bool = False) -> RenderFiles:
    """Writes every variation's stems (at the result's fixed gain) and mix (at its own gain) into ``folder`` and
    zips them with the settings; returns the paths. ``stems_from``: a render ZIP of the same result whose stem
    files are copied byte for byte (a re-mix). ``normalise``: the mix at -14 LUFS (as loud as streaming services
    play music) instead of the stems' level, lowered when it would clip."""
    folder = Path(folder)
    names = render.stem_names
    mixes = mix(render.stems, linear_gains(mixer, names))
    gain = stems_gain(render.stems) if render.gain is None else float(render.gain)
    gain_of_mix = normalised_mix_gain(mixes, render.sample_rate) if normalise else None
    gain_of_mix = mix_gain(mixes, gain) if gain_of_mix is None else gain_of_mix
    files = stem_files(names, render.settings.get("stem_file_suffixes"))
    variations = []
    with zipfile.ZipFile(stems_from) if stems_from else contextlib.nullcontext() as old:
        old_files = read_settings(stems_from)["files"] if stems_from else None
        for i, seed in enumerate(render.seeds):
            sub = folder / variation_folder(i, seed)
            paths = {}
            for k, name in enumerate(names):
                if old is not None:
                    paths[name] = sub / files[name]
                    sub.mkdir(parents=True, exist_ok=True)
                    member = f"{old_files['variations'][i]}/{old_files['stems'][name]}"
                    paths[name].write_bytes(old.read(member))
                else:
                    paths[name] = write_audio(sub / files[name], render.stems[i, k] * gain, render.sample_rate)
            paths[MIX] = write_audio(sub / f"{MIX}.wav", mixes[i] * gain_of_mix, render.sample_rate)
            variations.append(paths)
    settings = {
        **render.settings,
        "stem_names": names,
        "sample_rate": render.sample_rate,
        "channels": int(render.stems.shape[2]),
        "seeds": list(render.seeds),
        "mixer": {name: {"gain_db": float(mixer.get(name, (0.0, False))[0]),
                         "mute": bool(mixer.get(name, (0.0, False))[1])} for name in names},
        "gain_applied": float(gain),
        "mix_gain_applied": float(gain_of_mix),
        "normalise_mix": bool(normalise),
        "mix_loudness_lufs": _rounded(max(integrated_loudness_lufs(m * gain_of_mix, render.sample_rate)
                                          for m in mixes)),
        "files": {"stems": files, "mix": f"{MIX}.wav",
                  "variations": [variation_folder(i, s) for i, s in enumerate(render.seeds)]},
    }
    write_settings(folder, settings)
    zip_path = folder / f"mslddm_seed{render.seeds[0]}.zip"
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        zf.write(folder / SETTINGS_FILE, SETTINGS_FILE)
        for sub, paths in zip(settings["files"]["variations"], variations):
            for path in paths.values():
                zf.write(path, f"{sub}/{path.name}")
    return RenderFiles(zip_path, variations, settings)


def _rounded(value: float) -> float | None:
    return round(value, 1) if np.isfinite(value) else None


def read_settings(zip_path: str | Path) -> dict:
    """The ``settings.json`` of a render ZIP (raises ``ValueError`` for anything that is not one)."""
    try:
        with zipfile.ZipFile(zip_path) as zf:
            if sum(info.file_size for info in zf.infolist()) > MAX_ZIP_BYTES:
                raise ValueError("the archive is larger than a render can be")
            settings = json.loads(zf.read(SETTINGS_FILE))
    except (OSError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as error:
        raise ValueError(f"not a render ZIP ({error})") from error
    needed = ("stem_names", "sample_rate", "seeds", "gain_applied", "files")
    if not isinstance(settings, dict) or any(key not in settings for key in needed):
        raise ValueError(f"settings.json lacks one of {needed}")
    return settings


def read_render(zip_path: str | Path) -> Render:
    """Reads the stems of a render ZIP back at the pipeline's levels (the WAVs divided by ``gain_applied``), with
    the result's fixed gain."""
    settings = read_settings(zip_path)
    names, files = settings["stem_names"], settings["files"]
    gain = float(settings["gain_applied"])
    stems = []
    with zipfile.ZipFile(zip_path) as zf:
        for sub in files["variations"]:
            row = [read_audio(zf.read(f"{sub}/{files['stems'][name]}"))[0] for name in names]
            length = min(a.shape[-1] for a in row)
            stems.append(np.stack([a[..., :length] for a in row]))
    length = min(s.shape[-1] for s in stems)
    stems = np.stack([s[..., :length] for s in stems]) / gain
    keep = {k: v for k, v in settings.items() if k not in ("stem_names", "sample_rate", "channels", "seeds", "mixer",
                                                            "gain_applied", "mix_gain_applied", "files",
                                                            "normalise_mix", "mix_loudness_lufs")}
    return Render(stems.astype(np.float32), list(names), int(settings["sample_rate"]), list(settings["seeds"]), keep,
                  gain)


def extract_variation(zip_path: str | Path, index: int, folder: str | Path) -> dict[str, Path]:
    """Extracts one variation's WAVs (stems and mix) from a render ZIP into ``folder``."""
    settings = read_settings(zip_path)
    sub = settings["files"]["variations"][index]
    members = {name: f"{sub}/{settings['files']['stems'][name]}" for name in settings["stem_names"]}
    members[MIX] = f"{sub}/{settings['files']['mix']}"
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    with zipfile.ZipFile(zip_path) as zf:
        for name, member in members.items():
            paths[name] = folder / Path(member).name
            paths[name].write_bytes(zf.read(member))
    return paths


def _spectrogram_db(audio: np.ndarray, sample_rate: int, bins: int = 192, lowest_hz: float = 30.0,
                    n_fft: int = 2048, hop: int = 512) -> np.ndarray:
    """Magnitude STFT in dB (Hann window) on ``bins`` log-spaced frequencies from ``lowest_hz``: ``(bins, frames)``."""
    audio = np.pad(audio, (0, max(0, n_fft - len(audio))))
    frames = np.lib.stride_tricks.sliding_window_view(audio, n_fft)[::hop] * np.hanning(n_fft)
    magnitude = np.abs(np.fft.rfft(frames, axis=-1)).T / (n_fft / 4)
    position = np.geomspace(lowest_hz, sample_rate / 2, bins) * n_fft / sample_rate  # fractional FFT bin
    lower = np.minimum(position.astype(int), magnitude.shape[0] - 2)
    weight = (position - lower)[:, None]
    magnitude = magnitude[lower] * (1 - weight) + magnitude[lower + 1] * weight
    return 20.0 * np.log10(magnitude + 1e-6)


def plot_spectrograms(tracks: Mapping[str, np.ndarray], sample_rate: int, path: str | Path,
                      dynamic_range_db: float = 80.0, lowest_hz: float = 30.0) -> Path:
    """One spectrogram row per track (stems, then the mix) on a log frequency axis and a shared colour scale, so
    that levels compare across rows."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    spectra = {name: _spectrogram_db(np.asarray(audio, dtype=np.float32), sample_rate, lowest_hz=lowest_hz)
               for name, audio in tracks.items()}
    top = max(float(s.max()) for s in spectra.values())
    duration = max(len(a) for a in tracks.values()) / sample_rate
    octaves = np.log2(sample_rate / 2 / lowest_hz)
    ticks = [f for f in (100, 1000, 10000) if lowest_hz < f < sample_rate / 2]
    # Wide (the page shows it across its whole width), with its title inside the picture.
    fig, axes = plt.subplots(len(spectra), 1, figsize=(16, 0.9 * len(spectra) + 0.9), sharex=True,
                             squeeze=False, constrained_layout=True)
    fig.suptitle("Spectrograms, one colour scale for all rows", fontsize=9)
    for ax, (name, spec) in zip(axes[:, 0], spectra.items()):
        image = ax.imshow(spec, origin="lower", aspect="auto", cmap="magma", vmin=top - dynamic_range_db,
                          vmax=top, extent=(0.0, duration, 0.0, octaves), interpolation="nearest")
        ax.set_yticks([np.log2(f / lowest_hz) for f in ticks], [f"{f // 1000}k" if f >= 1000 else str(f)
                                                                 for f in ticks])
        ax.set_ylabel(f"{name}\nHz", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[-1, 0].set_xlabel("seconds", fontsize=8)
    fig.colorbar(image, ax=axes[:, 0], label="dB", shrink=0.8, pad=0.01)
    path = Path(path)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
