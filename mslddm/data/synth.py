"""The synthetic Slakh-like dataset: MMA grooves on random chord charts, each GM instrument class rendered on
its own with FluidSynth, written as ``OUT/{train,validation,test}/TrackNNNNN/{bass,drums,guitar,piano,mix}.wav``.

Same options, same bytes: a track depends only on ``(seed, index)``, the SoundFonts and the generator version.
Resumable: a track is finished when its ``metadata.json`` exists (written last); every file is written under a
temporary name and renamed, so a killed run leaves no half file and the next run redoes only unfinished tracks.
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from mslddm.audio import common_gain, resample, rms_db, write_audio
from mslddm.data.render import FluidSynthRenderer, run_mma, split_midi_by_stem
from mslddm.data.songs import STEMS, GeneratorOptions, SongPlan, iter_splits, mma_chart, plan_song
from mslddm.data.system import check_generator_dependencies

logger = logging.getLogger(__name__)

# Bump when the same options would give different audio (the value is stored in dataset.json and checked).
GENERATOR_VERSION = 1
VELOCITY_JITTER = 4.0  # standard deviation of per-note velocity noise, in MIDI velocity units
FADE_SECONDS = 0.1  # the song is cut after its tail; a short fade keeps the cut silent
STEM_LEVEL = 0.1  # playing RMS of every stem before its random level offset (-20 dBFS; the mix is scaled later)


# --------------------------------------------------------------------------------------------------------------
# One track
# --------------------------------------------------------------------------------------------------------------
def render_stems(plan: SongPlan, midi: bytes, options: GeneratorOptions, renderer: FluidSynthRenderer):
    """Float stems at ``options.sample_rate`` (before levels), and per-stem render facts for the metadata."""
    parts = split_midi_by_stem(midi)
    num_render = math.ceil(plan.duration_seconds * options.render_sample_rate)
    num_samples = round(plan.duration_seconds * options.sample_rate)
    stems, facts = {}, {}
    for k, stem in enumerate(STEMS):
        part = parts.get(stem)
        program = plan.programs[stem]
        bank = 128 if stem == "drums" else 0
        if part is None or not part.notes:
            audio = np.zeros(num_samples, dtype=np.float32)
        else:
            rng = np.random.default_rng([*plan.seed, k])
            audio = renderer.render(
                part, plan.soundfont, program, num_render, plan.velocity_scale[stem], VELOCITY_JITTER, rng
            )
            audio = _fit(resample(audio, options.render_sample_rate, options.sample_rate), num_samples)
        stems[stem] = audio
        facts[stem] = {
            "program": program,
            "bank": bank,
            "preset": renderer.preset_name(plan.soundfont, bank, program),
            "midi_channels": sorted(part.channels) if part else [],
            "num_notes": len(part.notes) if part else 0,
        }
    return stems, facts


def _fit(audio: np.ndarray, length: int) -> np.ndarray:
    return audio[:length] if audio.shape[-1] >= length else np.pad(audio, (0, length - audio.shape[-1]))


def active_rms(audio: np.ndarray, frame: int = 2048, floor_db: float = -40.0) -> float:
    """RMS over the frames that sound (within ``floor_db`` of the loudest frame): a stem's playing level,
    not lowered by the bars where it rests."""
    n = len(audio) // frame * frame
    if n == 0:
        return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if audio.size else 0.0
    power = np.mean(np.square(audio[:n].reshape(-1, frame), dtype=np.float64), axis=1)
    top = float(power.max())
    if top <= 0:
        return 0.0
    return float(np.sqrt(power[power >= top * 10.0 ** (floor_db / 10.0)].mean()))


def mix_down(stems: dict[str, np.ndarray], plan: SongPlan, sample_rate: int) -> dict[str, np.ndarray]:
    """Levels, fade and 16-bit quantisation; returns int32 arrays of the stems and ``mix`` = their exact sum.

    Each stem is brought to the same playing level (SoundFonts and programs differ by 20 dB and more), then
    offset by its plan's ``level_db``; one gain brings the mix peak to ``plan.mix_peak_db`` (never letting any
    file exceed 0.99). Stems are quantised first and the mix is the sum of the quantised stems, so the files
    satisfy ``mix == sum(stems)`` sample for sample.
    """
    fade = min(int(FADE_SECONDS * sample_rate), len(next(iter(stems.values()))))
    ramp = (0.5 + 0.5 * np.cos(np.linspace(0.0, np.pi, fade))).astype(np.float32)
    leveled = {}
    for stem, audio in stems.items():
        rms = active_rms(audio)
        gain = 10.0 ** (plan.level_db[stem] / 20.0) * (STEM_LEVEL / rms if rms > 0 else 1.0)
        audio = audio * np.float32(gain)
        audio[len(audio) - fade:] *= ramp
        leveled[stem] = audio
    mix = sum(leveled.values())
    peak = float(np.max(np.abs(mix))) if mix.size else 0.0
    gain = 10.0 ** (plan.mix_peak_db / 20.0) / peak if peak > 0 else 1.0
    gain *= common_gain(*(a * gain for a in leveled.values()), mix * gain, peak=0.99)
    out = {stem: np.round(audio * (gain * 32768.0)).astype(np.int32) for stem, audio in leveled.items()}
    out["mix"] = np.clip(sum(out.values()), -32768, 32767)
    return out


def write_track(track_dir: Path, plan: SongPlan, midi: bytes, chart: str, pcm: dict, facts: dict, options):
    """Writes the audio, MIDI, chart and (last) ``metadata.json`` of one track, each atomically."""
    track_dir.mkdir(parents=True, exist_ok=True)
    for name, samples in pcm.items():
        # int16 / 32768 is exact in float32 and libsndfile writes it back as the same integers.
        write_audio(track_dir / f"{name}.wav", samples.astype(np.float32) / 32768.0, options.sample_rate)
    _write_atomic(track_dir / "song.mid", midi)
    _write_atomic(track_dir / "song.mma", chart.encode())
    stems = {}
    for stem in STEMS:
        level = rms_db(pcm[stem] / 32768.0)
        stems[stem] = {**facts[stem], "silent": not np.any(pcm[stem]),
                       "rms_db": round(level, 2) if np.isfinite(level) else None}
    metadata = {
        **plan.to_dict(),
        "soundfont": os.path.basename(plan.soundfont),
        "sample_rate": options.sample_rate,
        "num_samples": len(pcm["mix"]),
        "stems": stems,
        "generator_version": GENERATOR_VERSION,
    }
    _write_atomic(track_dir / "metadata.json", (json.dumps(metadata, indent=1) + "\n").encode())
    return metadata


def _write_atomic(path: Path, data: bytes) -> None:
    from mslddm.files import durable_replace

    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_bytes(data)
    durable_replace(tmp, path)


def make_track(plan: SongPlan, out: Path, options: GeneratorOptions, renderer: FluidSynthRenderer) -> dict:
    """Makes one track under ``out/<split>/<name>`` and returns its metadata."""
    chart = mma_chart(plan)
    midi = run_mma(chart)
    stems, facts = render_stems(plan, midi, options, renderer)
    pcm = mix_down(stems, plan, options.sample_rate)
    return write_track(Path(out) / plan.split / plan.name, plan, midi, chart, pcm, facts, options)


# --------------------------------------------------------------------------------------------------------------
# A dataset
# --------------------------------------------------------------------------------------------------------------
@dataclass
class DatasetReport:
    made: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # audio seconds per split, made + skipped
    made_seconds: float = 0.0
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0

    @property
    def stem_seconds_per_cpu_second(self) -> float:
        return len(STEMS) * self.made_seconds / self.cpu_seconds if self.cpu_seconds else float("nan")


def plan_dataset(hours: float, options: GeneratorOptions) -> list[SongPlan]:
    """The tracks of a dataset of at least ``hours`` hours of music (a prefix of every longer one)."""
    if not hours > 0:
        raise ValueError(f"hours must be positive, got {hours}.")
    plans, total = [], 0.0
    for index, split in enumerate(iter_splits()):
        if total >= hours * 3600.0:
            break
        plans.append(plan_song(index, split, options))
        total += plans[-1].duration_seconds
    return plans


def dataset_header(options: GeneratorOptions) -> dict:
    return {"generator": "mslddm make-dataset", "generator_version": GENERATOR_VERSION,
            "stems": list(STEMS), "options": asdict(options)}


def check_or_write_header(out: Path, options: GeneratorOptions) -> None:
    """Writes ``OUT/dataset.json``, or checks that an existing one was made with the same options."""
    header = json.loads(json.dumps(dataset_header(options)))  # tuples -> lists, as read back
    path = out / "dataset.json"
    if path.exists():
        found = json.loads(path.read_text())
        if found != header:
            diff = {k: (found.get("options", {}).get(k), v) for k, v in header["options"].items()
                    if found.get("options", {}).get(k) != v}
            if found.get("generator_version") != GENERATOR_VERSION:
                diff["generator_version"] = (found.get("generator_version"), GENERATOR_VERSION)
            raise ValueError(
                f"{out} already holds a dataset made with other options ({', '.join(f'{k}: {a!r} there, {b!r} now' for k, (a, b) in diff.items())}); "
                "resume it with the same options or write to another folder."
            )
        return
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, (json.dumps(header, indent=1) + "\n").encode())


_RENDERER: FluidSynthRenderer | None = None


def _track_job(plan: SongPlan, out: str, options: GeneratorOptions):
    """Runs in a worker: makes one track; returns (name, audio seconds, CPU seconds, error or None)."""
    global _RENDERER
    cpu = time.process_time() + _children_cpu()
    try:
        if _RENDERER is None or _RENDERER.sample_rate != options.render_sample_rate:
            _RENDERER = FluidSynthRenderer(options.render_sample_rate)
        make_track(plan, Path(out), options, _RENDERER)
        error = None
    except Exception as exc:  # noqa: BLE001 - one bad track must not stop a long run; reported, retried next run
        error = f"{type(exc).__name__}: {exc}"
    return plan.name, plan.duration_seconds, time.process_time() + _children_cpu() - cpu, error


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # the MMA subprocesses
    return usage.ru_utime + usage.ru_stime


def make_dataset(
    out,
    hours: float,
    options: GeneratorOptions,
    workers: int = 1,
    progress: bool = True,
) -> DatasetReport:
    """Makes (or finishes) the dataset of ``hours`` hours in ``out`` with ``workers`` processes."""
    from tqdm.auto import tqdm

    options = replace(options, soundfonts=check_generator_dependencies(options.soundfonts))
    out = Path(out)
    check_or_write_header(out, options)
    report = DatasetReport()
    todo = []
    for plan in plan_dataset(hours, options):
        report.seconds[plan.split] = report.seconds.get(plan.split, 0.0) + plan.duration_seconds
        if (out / plan.split / plan.name / "metadata.json").exists():
            report.skipped.append(plan.name)
        else:
            todo.append(plan)
    start = time.perf_counter()
    bar = tqdm(total=len(todo), unit="track", desc="make-dataset", disable=not progress)

    def collect(result):
        name, seconds, cpu, error = result
        report.cpu_seconds += cpu
        if error is None:
            report.made.append(name)
            report.made_seconds += seconds
        else:
            report.failed[name] = error
            logger.error("%s failed: %s", name, error)
        bar.update(1)
        bar.set_postfix(hours=f"{report.made_seconds / 3600:.2f}", failed=len(report.failed))

    try:
        if workers <= 1 or len(todo) <= 1:
            for plan in todo:
                collect(_track_job(plan, str(out), options))
        else:
            with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
                futures = [pool.submit(_track_job, plan, str(out), options) for plan in todo]
                try:
                    for future in as_completed(futures):
                        collect(future.result())
                except BaseException:
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise
    finally:
        bar.close()
        report.wall_seconds = time.perf_counter() - start
    return report
