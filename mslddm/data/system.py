"""The system programs and files the dataset generator needs (MMA, libfluidsynth, GM SoundFonts), found or
explained: every missing piece raises :class:`MissingDependencyError` naming the command that installs it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

INSTALL_HINT = (
    "Install the system dependencies with `sudo bash scripts/install_system_deps.sh` (or `make sysdeps`) from a "
    "checkout of mslddm; on Debian/Ubuntu that is `sudo apt-get install mma libfluidsynth3 fluid-soundfont-gm "
    "musescore-general-soundfont timgm6mb-soundfont && sudo mma -G`, plus `pip install 'mslddm[data]'` for the "
    "Python binding (pyfluidsynth)."
)

# The default timbre families: three independently made GM SoundFonts (Debian packages, MIT / GPL-2).
DEFAULT_SOUNDFONTS = (
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",
    "/usr/share/sounds/sf3/MuseScore_General_Full.sf3",
    "/usr/share/sounds/sf2/TimGM6mb.sf2",
)


class MissingDependencyError(RuntimeError):
    """A system program, library or file needed to make the synthetic dataset is not installed."""


def find_mma() -> str:
    """Path of the ``mma`` program (env ``MSLDDM_MMA`` overrides)."""
    mma = os.environ.get("MSLDDM_MMA") or shutil.which("mma")
    if not mma:
        raise MissingDependencyError(f"The `mma` program (Musical MIDI Accompaniment) is not installed. {INSTALL_HINT}")
    return mma


def import_fluidsynth():
    """The ``fluidsynth`` module (PyPI ``pyfluidsynth``) with libfluidsynth loaded."""
    try:
        import fluidsynth
    except ImportError as error:
        # pyfluidsynth raises ImportError both when it is absent and when libfluidsynth cannot be found.
        raise MissingDependencyError(f"FluidSynth is not usable from Python ({error}). {INSTALL_HINT}") from error
    return fluidsynth


def check_soundfonts(paths) -> tuple[str, ...]:
    """The given SoundFont paths, checked to exist (an empty list means :data:`DEFAULT_SOUNDFONTS`)."""
    paths = tuple(str(p) for p in paths) or DEFAULT_SOUNDFONTS
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise MissingDependencyError(f"SoundFont file(s) not found: {', '.join(missing)}. {INSTALL_HINT}")
    return paths


def check_generator_dependencies(soundfonts=()) -> tuple[str, ...]:
    """Fails early, before any work, if anything ``make-dataset`` needs is missing; returns the SoundFonts."""
    find_mma()
    import_fluidsynth()
    try:
        import mido  # noqa: F401
    except ImportError as error:
        raise MissingDependencyError(f"The Python package `mido` is missing. {INSTALL_HINT}") from error
    return check_soundfonts(soundfonts)
