"""What the page's events do: check the inputs, sample with a progress bar, write the render, re-mix it, show a
variation. Every bad input raises ``gr.Error`` with a sentence that says what to do; the Blocks live in ``ui.py``.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import secrets
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import numpy as np
import torch

from mslddm.audio import read_audio, rms_db
from mslddm.delivery import AudioFormat, Upload, deliver, in_format, output_format, output_length
from mslddm.devices import use_free_cores
from mslddm.files import sha256
from mslddm.pipelines.known import CONTINUATION_FADE_SAMPLES
from mslddm.records import sampling_record
from mslddm.schedulers import SAMPLER_DEFAULTS
from mslddm.stems import MAX_STEM_SECONDS, SILENCE_DBFS, StemError, load_stem, unknown_stems_message

from .render import (
    MIX,
    Mixer,
    Render,
    extract_variation,
    plot_spectrograms,
    read_render,
    read_settings,
    write_render,
)

try:  # ZeroGPU: a GPU is attached only while a function decorated with spaces.GPU runs
    import spaces

    gpu = spaces.GPU
except ImportError:  # anywhere else the decorator is a no-op

    def gpu(fn=None, **kwargs):
        return fn if fn is not None else (lambda f: f)


def user_error(message: str) -> gr.Error:
    """A bad request: shown on the page and returned by the API as one sentence, not logged as a traceback."""
    return gr.Error(message, print_exception=False)


SAMPLERS = {name: d.label for name, d in SAMPLER_DEFAULTS.items()}  # value -> label; defaults: the scheduler's
NO_LORA = "none"  # the adapter menu's entry for the base pipeline
MAX_LORA_SCALE = 2.0  # the strength slider's end


def _lora_record(adapter: tuple | None) -> dict:
    """What a render's settings say about the adapter it was sampled with (nothing for the base)."""
    return {} if adapter is None else {"lora": adapter[0], "lora_scale": adapter[1]}


@dataclass
class Limits:
    """What one request may ask for; every limit is a flag of ``app.py``."""

    max_duration_s: float = 30.0  # longest generation from the duration slider
    max_upload_s: float = MAX_STEM_SECONDS  # longest upload (cropped to the duration unless "whole song")
    max_song_s: float = MAX_STEM_SECONDS  # longest whole-song accompaniment or extended result (in windows)
    max_steps: int = 200
    max_variations: int = 4
    max_file_size: str = "120mb"  # enforced by Gradio's upload route (10 min of 44.1 kHz stereo WAV: 106 MB)
    silence_dbfs: float = SILENCE_DBFS  # an upload quieter than this (RMS) is rejected as silent
    gpu_duration_s: int = 120  # ZeroGPU time asked for one generation
    detect_tempo: bool = True  # the results' tempo (madmom, when installed) in the summary and file names


@dataclass
class Outputs:
    """What an event shows: a WAV per stem and the mix of the selected variation, the spectrogram, the ZIP."""

    players: dict[str, Path]  # stem name -> WAV, and "mix"
    spectrogram: Path
    zip_path: Path
    info: str
    variation_labels: list[str]
    variation: int


def variation_label(index: int, seed: int) -> str:
    return f"{index + 1} (seed {seed})"


def parse_variation(label: str | None, count: int) -> int:
    """Index of the variation named by a label of :func:`variation_label` (the first one when unknown)."""
    try:
        index = int(str(label).split(" ", 1)[0]) - 1
    except ValueError:
        return 0
    return index if 0 <= index < count else 0


class Studio:
    """The page's handlers for one loaded pipeline. Files go to one folder per event under ``workdir`` (one
    sub-folder per browser session); a session's older folders are removed by its next event or when it leaves,
    everybody's are removed after ``ttl_s`` and at exit. Gradio serves its own copies of the outputs."""

    def __init__(self, pipe, pipeline_name: str = "", limits: Limits | None = None,
                 workdir: str | None = None, ttl_s: float = 3600.0, loras: Mapping[str, str] | None = None,
                 student=None, student_name: str = ""):
        self.pipe = pipe
        # A consistency-distilled student of the pipeline (docs/distillation.md): the page's fast option, sampled
        # whenever the visitor picks the consistency sampler; None: that sampler runs the pipeline's UNet. Its
        # pipeline (a folder from train/distill.py, loaded) brings its scheduler, whose plan is the student's own
        # (its sigma_min); a bare UNet is sampled with the pipeline's scheduler.
        self.student = getattr(student, "unet", student)
        self.student_scheduler = getattr(student, "scheduler", None)
        # the student's own calibrated output gains (a pipeline's; None: none), not the teacher's
        self.student_gains = getattr(student, "stem_output_gains_db", None)
        self.student_name = student_name
        self.loras = dict(loras or {})  # the LoRA adapters a visitor may pick, by name (mslddm.pipelines.lora)
        self._lora_names = {name: f"page_{i}" for i, name in enumerate(self.loras)}  # peft's names for them
        self._lora_lock = threading.Lock()  # one adapter setting (and one UNet: the student's or not) per sampling
        self._loaded: set[str] = set()
        self.pipeline_name = pipeline_name or getattr(pipe, "_name_or_path", "") or "pipeline"
        self.limits = limits or Limits()
        if workdir:
            Path(workdir).mkdir(parents=True, exist_ok=True)
        self.workdir = Path(tempfile.mkdtemp(prefix="mslddm-space-", dir=workdir))  # removed by close()
        self.ttl_s = ttl_s
        self._active: set[Path] = set()  # event folders whose files are being written
        self._sample = gpu(duration=self.limits.gpu_duration_s)(self._run_pipeline)
        atexit.register(self.close)

    @property
    def stem_names(self) -> list[str]:
        return self.pipe.stem_names

    @property
    def public_pipeline_name(self) -> str:
        """The pipeline as the files a user downloads name it: a Hub id, or a local folder's name (never the
        server's absolute path)."""
        path = Path(self.pipeline_name)
        return path.name if path.is_absolute() or path.exists() else self.pipeline_name

    # ------------------------------------------------------------------------------------------------------
    # Events
    # ------------------------------------------------------------------------------------------------------
    def generate(self, uploads: Mapping[str, str | None], generate: Mapping[str, bool], duration_s: float,
                 steps: int, sampler: str, churn: float, seed: str | int | None, variations: int,
                 whole_song: bool = True, mixer: Mixer | None = None, progress: Callable | None = None,
                 session: str = "api", normalise: bool = False, lora: str | None = None,
                 lora_scale: float = 1.0) -> Outputs:
        """Generates the stems ticked in ``generate`` around the uploaded ones (total generation when nothing is
        uploaded), writes the render and returns what the page shows for its first variation. The result is as
        long as the longest upload (up to ``max_song_s``, in windows) unless ``whole_song`` is off, or nothing is
        uploaded: then ``duration_s`` (the CLI's and Python's rule: the uploads' length unless a duration is
        given). The files are at the uploads' rate and channels (:mod:`mslddm.delivery`). ``lora`` names one of
        :attr:`loras` (None or "none": the base pipeline), sampled at ``lora_scale``."""
        # 1. Check the settings, then the uploads
        given = {name: path for name, path in uploads.items() if path}
        uploads_length = bool(whole_song) and bool(given)
        duration_s, sampling, variations = self._check_settings(None if uploads_length else duration_s, steps,
                                                                sampler, churn, variations)
        seeds = self._seeds(seed, variations)
        adapter = self._check_lora(lora, lora_scale)
        message = unknown_stems_message(uploads, self.stem_names)
        if message:
            raise user_error(message)
        to_generate = [n for n in self.stem_names if n not in given and generate.get(n, False)]
        if len(given) == len(self.stem_names):
            raise user_error("Every stem has an upload, so nothing is left to generate: remove the upload of a "
                           "stem you want generated.")
        if not to_generate:
            raise user_error("Nothing to generate: tick 'generate' under at least one stem that has no upload.")
        stems, decoded, notes = {}, {}, []
        for name, path in given.items():
            stems[name], decoded[name], note = self._load_upload(name, path, duration_s)
            notes += [note] if note else []
            same = [o for o in list(given)[:list(given).index(name)] if _same_file(given[o], path)]
            notes += [f"the {name} upload is the same file as the {' and '.join(same)} upload"] if same else []

        # 2. Sample
        result, seconds = self._timed_sample({
            "stems": stems or None, "generate": to_generate, "audio_length_in_s": duration_s,
            "num_inference_steps": sampling.num_inference_steps, "sampler": sampling.sampler,
            "s_churn": sampling.s_churn, "num_samples": variations,
            "generator": [torch.Generator().manual_seed(s) for s in seeds],
        }, progress, adapter)

        # 3. Put the result in the uploads' format and write the render
        fmt = output_format(list(decoded.values()), result.sample_rate)
        length = output_length(list(decoded.values()), fmt, duration_s)
        audio = deliver(result.stems, result.sample_rate, self.stem_names, fmt, length,
                        {n: in_format(u, fmt, length) for n, u in decoded.items()})
        settings = {
            "pipeline": self._pipeline_record(sampling.sampler), "given": {n: Path(p).name for n, p in given.items()},
            "silent": [n for n in self.stem_names if n not in given and n not in to_generate], **_lora_record(adapter),
        }
        return self._write(result, audio, fmt, seeds, settings, seconds, mixer, notes, progress, session,
                           normalise)

    def extend(self, zip_path: str | None, variation: str | None, extend_s: float, steps: int, sampler: str,
               churn: float, mixer: Mixer | None = None, progress: Callable | None = None,
               session: str = "api", normalise: bool = False, lora: str | None = None,
               lora_scale: float = 1.0) -> Outputs:
        """Continues the shown variation of a render by ``extend_s`` seconds: its stems are kept and every one
        that sounds continues after them (a silent one stays silent); the same seed, a new render (with the LoRA
        adapter picked now, as :meth:`generate`)."""
        # 1. Check the settings and read the variation back
        render = self._read(zip_path, read_render, "Nothing to extend yet: press Generate first (Extend continues "
                            "a result).")
        index = parse_variation(variation, len(render.seeds))
        if extend_s is None or not math.isfinite(float(extend_s)) or float(extend_s) <= 0:
            raise user_error(f"Extend by must be a positive number of seconds, got {extend_s}.")
        length_s = render.stems.shape[-1] / render.sample_rate
        if length_s + float(extend_s) > self.limits.max_song_s:
            raise user_error(f"The result would be {length_s + float(extend_s):.1f} s long; this page makes at most "
                             f"{self.limits.max_song_s:g} s: extend by less.")
        _, sampling, _ = self._check_settings(float(extend_s), steps, sampler, churn, 1, max_duration=math.inf)
        adapter = self._check_lora(lora, lora_scale)
        if render.stem_names != self.stem_names:
            raise user_error(f"The render has the stems {render.stem_names}, this pipeline {self.stem_names}: "
                             "extend it where it was made.")
        takes = {name: render.stems[index, k] for k, name in enumerate(self.stem_names)}
        sounding = {name: take.mean(axis=0) for name, take in takes.items()
                    if rms_db(take.mean(axis=0)) >= self.limits.silence_dbfs}  # silent: under it
        if not sounding:
            raise user_error("Every stem of this variation is silent: there is nothing to continue.")

        # 2. Sample the continuation with the variation's seed
        seed = render.seeds[index]
        result, seconds = self._timed_sample({
            "stems": sounding, "generate": list(sounding), "extend_s": float(extend_s),
            "input_sample_rate": render.sample_rate, "num_inference_steps": sampling.num_inference_steps,
            "sampler": sampling.sampler, "s_churn": sampling.s_churn, "num_samples": 1,
            "generator": [torch.Generator().manual_seed(seed)],
        }, progress, adapter)

        # 3. The takes as they were, their continuations in the render's format; write the render
        fmt = AudioFormat(render.sample_rate, render.stems.shape[2])
        length = render.stems.shape[-1] + round(float(extend_s) * fmt.sample_rate)
        end = render.stems.shape[-1]
        audio = deliver(result.stems, result.sample_rate, self.stem_names, fmt, length,
                        {n: takes[n] for n in sounding}, dict.fromkeys(sounding, end),
                        fade_s=CONTINUATION_FADE_SAMPLES / result.sample_rate)
        settings = {
            "pipeline": self._pipeline_record(sampling.sampler), "given": {},
            "silent": [n for n in self.stem_names if n not in sounding], "extended_from_s": round(length_s, 3),
            **_lora_record(adapter),
        }
        note = f"the first {length_s:.1f} s are the variation you extended, the last {float(extend_s):g} s are new"
        return self._write(result, audio, fmt, [seed], settings, seconds, mixer, [note], progress, session,
                           normalise)

    def _pipeline_record(self, sampler: str) -> str:
        """The pipeline a render names: the student's folder when the student sampled it."""
        if self.uses_student(sampler):
            return Path(self.student_name).name or "distilled student"
        return self.public_pipeline_name

    @property
    def can_separate(self) -> bool:
        """Whether the pipeline separates mixtures (a waveform multi-source model: MSDM)."""
        return hasattr(self.pipe, "separate")

    def separate(self, mixture_path: str | None, method: str, steps: int, churn: float, seed: str | int | None,
                 variations: int, mixer: Mixer | None = None, progress: Callable | None = None,
                 session: str = "api", normalise: bool = False) -> Outputs:
        """Separates an uploaded mixture into the pipeline's stems (their sum is the mixture); the same players,
        mixer and ZIP as a generation."""
        # 1. Check the settings and the upload
        if not self.can_separate:
            raise user_error(f"This pipeline ({self.public_pipeline_name}) cannot separate mixtures: separation "
                             "needs a waveform multi-source model (MSDM).")
        if not mixture_path:
            raise user_error("Upload a mixture to separate.")
        # Separation is Euler: sampling_settings("euler", ...) is the scheduler's separation_settings rule.
        _, sampling, variations = self._check_settings(1.0, steps, "euler", churn, variations)
        seeds = self._seeds(seed, variations)
        try:
            mixture = load_stem("mixture", mixture_path, self.pipe.sample_rate, max_seconds=self.limits.max_song_s,
                                silence_dbfs=self.limits.silence_dbfs, limit_hint=" Trim it and upload it again.")
        except StemError as error:
            raise user_error(str(error)) from None

        # 2. Separate
        result, seconds = self._timed_sample({
            "_separate": True, "mixture": mixture, "method": method or "dirac",
            "num_inference_steps": sampling.num_inference_steps, "s_churn": sampling.s_churn,
            "num_samples": variations, "generator": [torch.Generator().manual_seed(s) for s in seeds],
        }, progress)

        # 3. Write the render
        settings = {"pipeline": self.public_pipeline_name, "given": {}, "silent": [],
                    "separated_from": Path(mixture_path).name, "method": result.sampling["method"]}
        fmt = AudioFormat(result.sample_rate, 1)
        audio = np.asarray(result.stems, dtype=np.float32)[:, :, None]
        return self._write(result, audio, fmt, seeds, settings, seconds, mixer, [], progress, session, normalise)

    def remix(self, zip_path: str | None, variation: str | None, mixer: Mixer,
              session: str = "api", normalise: bool = False) -> Outputs:
        """Re-mixes a render with new gains and mutes (and the mix at -14 LUFS or not) without sampling again;
        writes a new ZIP whose stem files are the old ones, byte for byte."""
        render = self._read(zip_path, read_render)
        files = write_render(render, mixer, self._event_dir(session), stems_from=zip_path, normalise=normalise)
        index = parse_variation(variation, len(render.seeds))
        info = self._describe(files.settings)
        return self._outputs(files.zip_path, files.variations[index], files.settings, index, info, session)

    def show(self, zip_path: str | None, variation: str | None, session: str = "api") -> Outputs:
        """Shows another variation of a render (its players and spectrogram)."""
        settings = self._read(zip_path, read_settings)
        index = parse_variation(variation, len(settings["seeds"]))
        folder = self._event_dir(session)
        players = extract_variation(zip_path, index, folder)
        return self._outputs(Path(zip_path), players, settings, index, self._describe(settings), session,
                             folder)

    def check_upload(self, name: str, path: str, uploads: Mapping[str, str | None] | None = None) -> str | None:
        """Checks an upload when it arrives, with the checks Generate makes (readable, not empty, not silent, not
        too long; the sentence names the file); returns a warning or None. The same file in another slot is a
        warning: the model would hear one part twice."""
        try:
            load_stem(name, path, self.pipe.sample_rate, max_seconds=self.limits.max_upload_s, silence_dbfs=self.limits.silence_dbfs,
                      limit_hint=" Trim it and upload it again.")
        except StemError as error:
            raise user_error(str(error)) from None
        same = [other for other, p in (uploads or {}).items() if p and other != name and _same_file(p, path)]
        if same:
            return (f"the {name} upload ({Path(path).name}) is the same file as the {' and '.join(same)} upload: "
                    "the model would hear one part twice; upload the part each slot is for.")
        return None

    def end_session(self, session: str) -> None:
        """Removes a browser session's files (called when the page is closed). An event still writing its files,
        or just done (Gradio copies its outputs after it returns), keeps its folder; the hourly sweep and exit
        remove it."""
        session_dir = self.workdir / _safe(session)
        now = time.time()
        for event_dir in list(session_dir.iterdir()) if session_dir.is_dir() else []:
            if event_dir not in self._active and now - event_dir.stat().st_mtime > 10.0:
                shutil.rmtree(event_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            session_dir.rmdir()  # only when empty

    def close(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)

    # ------------------------------------------------------------------------------------------------------
    # Helpers
    # ------------------------------------------------------------------------------------------------------
    def _check_settings(self, duration_s, steps, sampler, churn, variations, max_duration=None):
        """The settings checked; ``duration_s`` None means "as long as the uploads" (whole song)."""
        lim = self.limits
        max_duration = lim.max_duration_s if max_duration is None else max_duration
        if duration_s is not None and (not math.isfinite(float(duration_s))
                                       or not 0 < float(duration_s) <= max_duration):
            raise user_error(f"Duration must be between 0 and {max_duration:g} seconds, got {duration_s}.")
        steps, churn = _number(steps, "Steps"), _number(churn, "Churn")
        if steps is not None and (not math.isfinite(float(steps)) or int(steps) != float(steps)
                                  or not 1 <= int(steps) <= lim.max_steps):
            raise user_error(f"Steps must be between 1 and {lim.max_steps} (a whole number), got {steps:g}.")
        if churn is not None and (not math.isfinite(float(churn)) or not 0 <= float(churn) <= 100):
            raise user_error(f"Churn must be between 0 and 100, got {churn:g}.")
        if variations is None or int(variations) != float(variations) or not 1 <= int(variations) <= lim.max_variations:
            raise user_error(f"Variations must be a whole number from 1 to {lim.max_variations}, got {variations}.")
        try:  # unset ones: the pipeline's own (its scheduler config), resolved as for every caller
            sampling = self.pipe.scheduler.sampling_settings(sampler or None, None if steps is None else int(steps),
                                                             None if churn is None else float(churn))
        except ValueError as error:
            raise user_error(str(error)) from None
        if sampling.num_inference_steps > lim.max_steps:  # only a default can get here: this server's limit
            sampling = self.pipe.scheduler.sampling_settings(sampling.sampler, lim.max_steps, sampling.s_churn)
        return None if duration_s is None else float(duration_s), sampling, int(variations)

    def sampling_defaults(self, sampler: str | None = None):
        """The pipeline's sampler (or ``sampler``) with its default steps and churn: what the page starts from."""
        return self.pipe.scheduler.sampling_settings(sampler)

    @staticmethod
    def _seeds(seed, variations: int) -> list[int]:
        """``seed, seed + 1, ...`` (as ``mslddm generate``); a random seed when the field is empty."""
        if seed is None or (isinstance(seed, str) and not seed.strip()):
            seed = secrets.randbelow(2**31)
        try:
            seed = int(float(seed))
        except (TypeError, ValueError):
            raise user_error(f"Seed must be a whole number (or empty for a random one), got {seed!r}.") from None
        if not 0 <= seed < 2**63 - variations:
            raise user_error(f"Seed must be between 0 and 2^63, got {seed}.")
        return [seed + i for i in range(variations)]

    def _load_upload(self, name: str, path: str, duration_s: float | None):
        """Reads, checks and converts one uploaded stem (the library's checks and sentences, as in Python and the
        CLI); returns it at the pipeline's rate, cut to the duration (whole when it is None), the upload as decoded
        (what the result gives back) and a note or None."""
        sr = self.pipe.sample_rate
        longest = self.limits.max_upload_s if duration_s is not None else min(self.limits.max_upload_s,
                                                                               self.limits.max_song_s)
        try:
            audio = load_stem(name, path, sr, use_seconds=duration_s, max_seconds=longest,
                              silence_dbfs=self.limits.silence_dbfs, limit_hint=" Trim it and upload it again.")
            decoded = Upload.read(path)
        except (StemError, ValueError, OSError) as error:
            raise user_error(str(error)) from None
        if duration_s is None:
            return audio, decoded, None
        length_s = len(audio) / sr
        stem = audio[: round(duration_s * sr)]  # resampled whole and cut after: no filter edge at the cut
        note = None
        if length_s > duration_s + 1e-3:
            note = (f"the {name} upload was cut to the first {duration_s:g} s of its {length_s:.1f} s (tick 'As long "
                    "as the uploads' for all of it)")
        elif length_s < duration_s - 1e-3:
            note = f"the {name} upload ({length_s:.1f} s) was padded with silence to {duration_s:g} s"
        return stem, decoded, note

    def uses_student(self, sampler: str | None) -> bool:
        """Whether ``sampler`` runs the distilled student (the consistency sampler, on a page that has one)."""
        return self.student is not None and sampler == "consistency"

    def _timed_sample(self, kwargs: dict, progress: Callable | None, adapter: tuple | None = None):
        """The pipeline run (with ``adapter``, ``(name, strength)`` or None: the base; with the student's UNet for
        the consistency sampler) and its wall-clock seconds. Sampling keeps no state in the pipeline, so calls may
        overlap (calls of a page with adapters or a student take turns: they are set on the pipeline); the page's
        queue (``concurrency_id="sampling"`` in ``ui.py``) still runs one at a time, for the device's memory."""
        if self.uses_student(kwargs.get("sampler")) and adapter is not None:
            raise user_error("LoRA adapters are made for the pipeline's own UNet, not for the distilled student "
                             "that the consistency sampler runs: pick another sampler, or no adapter.")
        with self._adapter(adapter), self._student(self.uses_student(kwargs.get("sampler"))):
            tic = time.perf_counter()
            result = self._sample(kwargs, progress)
            return result, time.perf_counter() - tic

    @contextlib.contextmanager
    def _student(self, wanted: bool):
        """The pipeline with the student's UNet (and scheduler, if it came with one) in place of its own while
        ``wanted`` (the adapters' lock held)."""
        if self.student is None:
            yield
            return
        with self._lora_lock if not self.loras else contextlib.nullcontext():  # _adapter holds it with adapters
            own, own_scheduler = self.pipe.unet, self.pipe.scheduler
            own_gains = self.pipe.config.get("stem_output_gains_db")
            if wanted:
                self.pipe.unet = self.student
                if self.student_scheduler is not None:  # (a scheduler has a length: no `or` here)
                    self.pipe.scheduler = self.student_scheduler
                if own_gains or self.student_gains:  # the student's level calibration, or none
                    self.pipe.register_to_config(stem_output_gains_db=self.student_gains)
            try:
                yield
            finally:
                self.pipe.unet, self.pipe.scheduler = own, own_scheduler
                if own_gains or self.student_gains:
                    self.pipe.register_to_config(stem_output_gains_db=own_gains)

    def _check_lora(self, lora: str | None, scale: float | None) -> tuple | None:
        """``(name, strength)`` of a picked adapter, None for the base; an unknown name or a strength off the
        slider is one sentence."""
        if lora in (None, "", NO_LORA):
            return None
        if lora not in self.loras:
            raise user_error(f"Unknown LoRA adapter {lora!r}; this page has {[NO_LORA, *self.loras]}.")
        if scale is None or not math.isfinite(float(scale)) or not 0 <= float(scale) <= MAX_LORA_SCALE:
            raise user_error(f"LoRA strength must be between 0 and {MAX_LORA_SCALE:g}, got {scale}.")
        return lora, float(scale)

    @contextlib.contextmanager
    def _adapter(self, adapter: tuple | None):
        """The pipeline with ``adapter`` active (loaded the first time it is picked), or with every adapter off."""
        if not self.loras:
            yield
            return
        with self._lora_lock:
            if adapter is None:
                if self._loaded:
                    self.pipe.disable_lora()
            else:
                name, scale = adapter
                if name not in self._loaded:
                    try:
                        self.pipe.load_lora_weights(self.loras[name], adapter_name=self._lora_names[name])
                    except (ValueError, OSError, ModuleNotFoundError) as error:
                        raise user_error(f"The LoRA adapter {name!r} could not be loaded: {error}") from None
                    self._loaded.add(name)
                self.pipe.enable_lora()
                self.pipe.set_adapters(self._lora_names[name], scale)
            yield

    def _write(self, result, audio, fmt, seeds, settings, seconds, mixer, notes, progress, session,
               normalise=False) -> Outputs:
        """Writes a result (``audio``: its stems in the format ``fmt``) as a render with the sampling settings it
        used; what the page shows of it."""
        settings = {**settings, **sampling_record(result), "duration_s": audio.shape[-1] / fmt.sample_rate,
                    "model_sample_rate": int(result.sample_rate), "seconds": round(seconds, 3), "notes": notes,
                    **self._tempo(audio, list(result.stem_names), fmt.sample_rate)}
        render = Render(audio, list(result.stem_names), fmt.sample_rate, seeds, settings)
        if progress is not None:
            progress(1.0, desc="Writing the files")
        files = write_render(render, mixer or {}, self._event_dir(session), normalise=normalise)
        info = self._describe(files.settings)
        return self._outputs(files.zip_path, files.variations[0], files.settings, 0, info, session)

    def _tempo(self, audio: np.ndarray, names: list[str], sample_rate: int) -> dict:
        """The detected tempo per variation (``tempo_bpm``, None where not confident) of the drums, or of the mix
        when there are no sounding drums (``tempo_of``: :func:`~mslddm.evaluation.beats.result_tempo`); when every variation has the same whole-number tempo the
        stems' file names carry it (``drums_140bpm.wav``), so they drop onto a DAW's grid. Nothing under
        ``TEMPO_MIN_SECONDS`` (too few beats to be sure) or without madmom (the eval extra)."""
        try:
            from mslddm.evaluation.beats import TEMPO_MIN_SECONDS, result_tempo
        except ImportError:
            return {}
        if not self.limits.detect_tempo or audio.shape[-1] < TEMPO_MIN_SECONDS * sample_rate:
            return {}

        found = [result_tempo(variation, names, sample_rate) for variation in audio]
        tempos, of = [t for t, _ in found], "drums" if all(o == "drums" for _, o in found) else "mix"
        record = {"tempo_bpm": [None if t is None else round(t, 1) for t in tempos], "tempo_of": of}
        whole = {None if t is None else round(t) for t in tempos}
        if len(whole) == 1 and None not in whole:
            record["stem_file_suffixes"] = dict.fromkeys(names, f"_{whole.pop()}bpm")
        return record

    def _run_pipeline(self, kwargs: dict, progress: Callable | None):
        """Runs the pipeline (on the GPU under ZeroGPU); the progress bar follows the model evaluations over all
        windows."""

        if self.pipe.device.type == "cpu":  # a long-lived server: the idle cores now, not at its start
            use_free_cores()

        def on_step(pipe, i, t, tensors):
            if progress is not None:
                progress((i + 1, pipe.num_timesteps), desc="Sampling", unit="model evaluations")
            return tensors

        try:
            if kwargs.pop("_separate", False):
                if progress is not None:
                    progress(0.0, desc="Separating")
                return self.pipe.separate(**kwargs, output_type="np")
            result = self.pipe(**kwargs, output_type="np", callback_on_step_end=on_step)
        except FloatingPointError as error:
            raise user_error(f"{error} Try the Euler sampler with less churn, or more steps.") from None
        except ValueError as error:  # the pipeline's checks are sentences already
            raise user_error(str(error)) from None
        return result

    def _read(self, zip_path, reader, missing: str = "Nothing to re-mix yet: press Generate first."):
        if not zip_path:
            raise user_error(missing)
        try:
            return reader(zip_path)
        except (ValueError, KeyError, IndexError, OSError) as error:
            raise user_error(f"The render ZIP could not be read back ({error}): press Generate again.") from None

    def _outputs(self, zip_path, players, settings, index, info, session, folder=None) -> Outputs:
        names = settings["stem_names"]
        folder = folder or Path(players[MIX]).parent
        try:
            tracks = {name: read_audio(players[name])[0].mean(axis=0) for name in names + [MIX]}
            picture = plot_spectrograms(tracks, int(settings["sample_rate"]), Path(folder) / "spectrogram.png")
        finally:  # the event's folder is this one or the one above (a variation's sub-folder)
            self._active.difference_update({Path(folder), Path(folder).parent})
        labels = [variation_label(i, s) for i, s in enumerate(settings["seeds"])]
        return Outputs({n: Path(p) for n, p in players.items()}, picture, Path(zip_path), info, labels, index)

    def _describe(self, settings: dict) -> str:
        """One Markdown paragraph: what was generated around what, with which settings and seeds."""
        generated = ", ".join(settings["generated"])
        given = ", ".join(settings["given"]) or None
        what = f"Generated **{generated}**" + (f" around the uploaded **{given}**" if given else "")
        if settings.get("lora"):
            what += f" with the LoRA adapter **{settings['lora']}** at strength {settings['lora_scale']:g}"
        if settings.get("separated_from"):
            what = (f"Separated **{settings['separated_from']}** into **{generated}** ({settings.get('method')} "
                    "separation: the stems sum to the mixture)")
        if settings.get("silent"):
            what += f" (silent: {', '.join(settings['silent'])})"
        seeds = ", ".join(str(s) for s in settings["seeds"])
        windows = settings.get("windows", 1)
        text = (f"{what}. {round(settings['duration_s'], 1):g} s"
                + (f" in {windows} overlapping windows" if windows > 1 else "")
                + f", sampler {settings['sampler']}, {settings['steps']} steps "
                f"({settings['model_evaluations']} model evaluations), churn {settings['s_churn']:g}, "
                f"in {settings['seconds']:.1f} s. **Seed{'s' if len(settings['seeds']) > 1 else ''}: {seeds}**. "
                + _levels(settings))
        tempos = [t for t in settings.get("tempo_bpm", []) if t is not None]
        if tempos:
            shown = ", ".join("?" if t is None else f"{t:.0f}" for t in settings["tempo_bpm"])
            text += f" Tempo ({settings['tempo_of']}): {shown} BPM."
        return text + "".join(f"\n\nNote: {note}." for note in settings.get("notes", []))

    def _event_dir(self, session: str) -> Path:
        """A fresh folder for one event's files, after removing stale ones (see the class docstring)."""
        now = time.time()
        for session_dir in self.workdir.iterdir():
            mine = session_dir.name == _safe(session)
            for event_dir in session_dir.iterdir() if session_dir.is_dir() else []:
                # Gradio copies an event's outputs as soon as it returns; 60 s leaves room for a slow copy.
                if now - event_dir.stat().st_mtime > (60.0 if mine else self.ttl_s):
                    shutil.rmtree(event_dir, ignore_errors=True)
        folder = self.workdir / _safe(session) / uuid.uuid4().hex[:12]
        self._active.add(folder)  # until _outputs is done with it
        folder.mkdir(parents=True)
        return folder


def _number(value, field: str) -> float | None:
    """A number field's value (None stays None: the default), or a sentence naming the field."""
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise user_error(f"{field} must be a number, got {value!r}.") from None


def _same_file(a: str, b: str) -> bool:
    try:
        return Path(a).stat().st_size == Path(b).stat().st_size and sha256(a) == sha256(b)
    except OSError:
        return False


def _levels(settings: dict) -> str:
    """The files' format and gains, as the summary says them."""
    channels = {1: "mono", 2: "stereo"}.get(settings.get("channels", 1), f"{settings.get('channels')} channels")
    given = " (the uploads' format)" if settings.get("given") else ""
    stems_db = 20 * np.log10(settings["gain_applied"])
    mix_db = 20 * np.log10(settings.get("mix_gain_applied", settings["gain_applied"]))
    stems = "as made" + (", uploads untouched" if settings.get("given") else "") if stems_db == 0 else \
        f"all at {stems_db:+.1f} dB (one would clip)"
    mix = f"mix at {mix_db:+.1f} dB"
    if settings.get("normalise_mix") and settings.get("mix_loudness_lufs") is not None:
        mix = f"mix normalised to {settings['mix_loudness_lufs']:g} LUFS ({mix_db:+.1f} dB)"
    return f"Files: {settings['sample_rate']} Hz {channels}{given}; stems {stems}, {mix} (a re-mix changes only the mix)."


def _safe(session: str | None) -> str:
    return "".join(c for c in str(session or "api") if c.isalnum() or c in "-_")[:64] or "api"
