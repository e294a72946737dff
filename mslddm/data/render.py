"""MIDI -> one mono signal per stem: MMA's multi-track MIDI is split by GM instrument class and each class is
rendered on its own with FluidSynth, the way Slakh renders every instrument of a MIDI file separately.

Rendering is deterministic: one synthesis thread, reverb and chorus off, and a new synthesizer for every render,
so a stem's samples depend only on its events, SoundFont, program and sample rate, not on what the process
rendered before.
"""

from __future__ import annotations

import ctypes
import io
import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mslddm.data.system import INSTALL_HINT, find_mma, import_fluidsynth

DRUM_CHANNEL = 9  # MIDI channel 10
# GM program // 8 -> stem class (Slakh's inst_class for these families).
PROGRAM_FAMILY_TO_STEM = {0: "piano", 3: "guitar", 4: "bass"}
DRUM_BANK = 128


class MMAError(RuntimeError):
    """MMA could not turn a chord chart into MIDI."""


def run_mma(chart: str) -> bytes:
    """Runs MMA on a chord chart (its source text) and returns the MIDI file's bytes."""
    mma = find_mma()
    with tempfile.TemporaryDirectory(prefix="mslddm-mma-") as tmp:
        src, out = os.path.join(tmp, "song.mma"), os.path.join(tmp, "song.mid")
        Path(src).write_text(chart)
        # MMA draws its humanisation from Python's `random`, seeded by the chart's RndSeed; a fixed hash seed
        # keeps any set/dict iteration inside MMA identical between runs too.
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        # Relative names: MMA writes the input file name into the MIDI file.
        proc = subprocess.run(
            [mma, "-f", "song.mid", "song.mma"], check=False, capture_output=True, text=True, cwd=tmp, env=env
        )
        errors = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("Error")]
        if proc.returncode != 0 or errors or not os.path.exists(out):
            message = " ".join(errors) or proc.stderr.strip() or f"exit status {proc.returncode}"
            if "could not be found" in message:
                message += f" (is MMA's groove database built? Run `sudo mma -G`.) {INSTALL_HINT}"
            raise MMAError(f"MMA failed: {message}")
        return Path(out).read_bytes()


# --------------------------------------------------------------------------------------------------------------
# MIDI -> per-stem events
# --------------------------------------------------------------------------------------------------------------
@dataclass
class StemPart:
    """The MIDI events of one stem, ``(seconds, order, kind, channel, a, b)`` sorted by time then file order,
    and its notes."""

    events: list[tuple[float, int, str, int, int, int]] = field(default_factory=list)
    channels: set[int] = field(default_factory=set)
    notes: list[tuple[float, float, int]] = field(default_factory=list)  # (onset s, offset s, pitch)


def stem_of_program(channel: int, program: int | None) -> str | None:
    """The stem class of a MIDI channel playing ``program`` (``None``: not one of the four classes)."""
    if channel == DRUM_CHANNEL:
        return "drums"
    if program is None:
        return None
    return PROGRAM_FAMILY_TO_STEM.get(program // 8)


def split_midi_by_stem(midi: bytes | str | os.PathLike) -> dict[str, StemPart]:
    """Splits a MIDI file into the parts of the bass, drums, guitar and piano classes.

    A note belongs to the class of its channel's program when it starts (a channel can change program); notes of
    other instruments are dropped. Controllers and pitch bends go to every class that uses their channel.
    Program and bank changes are dropped: the renderer chooses the programs.
    """
    import mido

    midi_file = mido.MidiFile(file=io.BytesIO(midi)) if isinstance(midi, bytes) else mido.MidiFile(midi)
    parts: dict[str, StemPart] = {}
    program: dict[int, int] = {}
    sounding: dict[tuple[int, int], list[tuple[str, float]]] = {}
    channel_stems: dict[int, set[str]] = {}
    controls: list[tuple[float, int, str, int, int, int]] = []
    now = 0.0
    for order, msg in enumerate(midi_file):  # merged tracks, delta times in seconds (tempo map applied)
        now += msg.time
        if msg.is_meta or not hasattr(msg, "channel"):
            continue
        ch = msg.channel
        if msg.type == "program_change":
            program[ch] = msg.program
        elif msg.type == "note_on" and msg.velocity > 0:
            stem = stem_of_program(ch, program.get(ch))
            if stem is not None:
                part = parts.setdefault(stem, StemPart())
                part.events.append((now, order, "on", ch, msg.note, msg.velocity))
                part.channels.add(ch)
                channel_stems.setdefault(ch, set()).add(stem)
            sounding.setdefault((ch, msg.note), []).append((stem, now))
        elif msg.type in ("note_off", "note_on"):
            started = sounding.get((ch, msg.note))
            if started:
                stem, onset = started.pop(0)
                if stem is not None:
                    parts[stem].events.append((now, order, "off", ch, msg.note, 0))
                    parts[stem].notes.append((onset, now, msg.note))
        elif msg.type == "control_change" and msg.control not in (0, 32):
            controls.append((now, order, "cc", ch, msg.control, msg.value))
        elif msg.type == "pitchwheel":
            controls.append((now, order, "bend", ch, msg.pitch, 0))
    for event in controls:
        for stem in channel_stems.get(event[3], ()):
            parts[stem].events.append(event)
    for part in parts.values():
        part.events.sort(key=lambda e: (e[0], e[1]))
        part.notes.sort()
    return parts


# --------------------------------------------------------------------------------------------------------------
# FluidSynth
# --------------------------------------------------------------------------------------------------------------
class FluidSynthRenderer:
    """Renders :class:`StemPart` s with FluidSynth.

    Every render runs on a new synthesizer: a reused one carries state from one render to the next (measured:
    the same part rendered twice in a row differed in the first samples of its notes, and a drum part after
    another song differed throughout). SoundFonts are loaded once per process (sf3 files take seconds) into a
    holder synthesizer and lent to each new one.
    """

    def __init__(self, sample_rate: int = 44100, gain: float = 0.3):
        self.sample_rate = int(sample_rate)
        self.gain = float(gain)
        fs = self._fluidsynth = import_fluidsynth()
        synth_arg, ptr = ("synth", ctypes.c_void_p, 1), ctypes.c_void_p
        self._write_float = fs.cfunc(
            "fluid_synth_write_float", ctypes.c_int, synth_arg, ("len", ctypes.c_int, 1),
            ("lout", ptr, 1), ("loff", ctypes.c_int, 1), ("lincr", ctypes.c_int, 1),
            ("rout", ptr, 1), ("roff", ctypes.c_int, 1), ("rincr", ctypes.c_int, 1),
        )
        self._get_sfont = fs.cfunc("fluid_synth_get_sfont_by_id", ptr, synth_arg, ("id", ctypes.c_int, 1))
        self._add_sfont = fs.cfunc("fluid_synth_add_sfont", ctypes.c_int, synth_arg, ("sfont", ptr, 1))
        self._remove_sfont = fs.cfunc("fluid_synth_remove_sfont", ctypes.c_int, synth_arg, ("sfont", ptr, 1))
        # FluidSynth warns on stderr about every channel of a synthesizer that has no SoundFont yet.
        set_log = fs.cfunc("fluid_set_log_function", ptr, ("level", ctypes.c_int, 1), ("fun", ptr, 1),
                           ("data", ptr, 1))
        for level in (2, 3, 4):  # FLUID_WARN, FLUID_INFO, FLUID_DBG
            set_log(level, None, None)
        self._fonts: dict[str, tuple[object, int, int]] = {}

    def _new_synth(self):
        return self._fluidsynth.Synth(
            gain=self.gain, samplerate=float(self.sample_rate), channels=16,
            **{"synth.reverb.active": 0, "synth.chorus.active": 0, "synth.cpu-cores": 1},
        )

    def _font(self, soundfont: str) -> tuple[object, int, int]:
        """(holder synthesizer, SoundFont id in it, fluid_sfont_t pointer) of a loaded SoundFont."""
        if soundfont not in self._fonts:
            holder = self._new_synth()
            sfid = holder.sfload(str(soundfont))
            if sfid < 0:
                raise RuntimeError(f"FluidSynth could not load the SoundFont {soundfont!r}.")
            self._fonts[soundfont] = (holder, sfid, self._get_sfont(holder.synth, sfid))
        return self._fonts[soundfont]

    def preset_name(self, soundfont: str, bank: int, program: int) -> str | None:
        holder, sfid, _ = self._font(soundfont)
        return holder.sfpreset_name(sfid, bank, program)

    def render(
        self,
        part: StemPart,
        soundfont: str,
        program: int,
        num_samples: int,
        velocity_scale: float = 1.0,
        velocity_jitter: float = 0.0,
        rng: np.random.Generator | None = None,
    ) -> np.ndarray:
        """``num_samples`` mono float32 samples of ``part`` played with ``program`` (a drum kit on channel 10).

        Note-on velocities are scaled by ``velocity_scale`` and shifted by Gaussian ``velocity_jitter`` (drawn
        from ``rng``). Events take effect on FluidSynth's 64-sample blocks (1.5 ms at 44.1 kHz).
        """
        _, _, sfont = self._font(soundfont)
        synth = self._new_synth()
        sfid = self._add_sfont(synth.synth, sfont)
        try:
            for ch in sorted(part.channels):
                bank = DRUM_BANK if ch == DRUM_CHANNEL else 0
                if synth.program_select(ch, sfid, bank, program) != 0 and ch == DRUM_CHANNEL:
                    synth.program_select(ch, sfid, bank, 0)  # the SoundFont lacks this kit: standard kit
            return self._play(synth, part, num_samples, velocity_scale, velocity_jitter, rng)
        finally:
            self._remove_sfont(synth.synth, sfont)  # the holder keeps owning it
            synth.delete()

    def _play(self, synth, part, num_samples, velocity_scale, velocity_jitter, rng) -> np.ndarray:
        stereo = np.zeros(2 * num_samples, dtype=np.float32)
        pointer = stereo.ctypes.data
        position = 0

        def advance(to: int):
            nonlocal position
            if to > position:
                self._write_float(synth.synth, to - position, pointer, 2 * position, 2, pointer, 2 * position + 1, 2)
                position = to

        jitter = rng.normal(0.0, velocity_jitter, size=len(part.events)) if rng is not None else None
        for i, (seconds, _, event, ch, a, b) in enumerate(part.events):
            advance(min(round(seconds * self.sample_rate), num_samples))
            if event == "on":
                velocity = b * velocity_scale + (jitter[i] if jitter is not None else 0.0)
                synth.noteon(ch, a, int(np.clip(round(velocity), 1, 127)))
            elif event == "off":
                synth.noteoff(ch, a)
            elif event == "cc":
                synth.cc(ch, a, b)
            elif event == "bend":
                synth.pitch_bend(ch, a)
        advance(num_samples)
        return stereo.reshape(num_samples, 2).mean(axis=1)
