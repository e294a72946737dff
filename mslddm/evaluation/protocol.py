"""The paper's evaluation protocol, made reproducible: FAD per stem and on the mix for total generation, sub-FAD
for every non-empty proper subset of stems for partial generation, plus the coherence metrics.

Everything that moves a FAD number is fixed and recorded with the results (:meth:`ProtocolConfig.describe`):

- reference chunks: drawn by :mod:`.reference` (tracks in name order, non-overlapping chunks, silent ones
  dropped, ``numpy.random.default_rng(seed)`` without replacement); total generation needs a sounding mixture,
  partial generation every stem sounding;
- audio: libsndfile, channels averaged to mono, soxr (HQ) resampling; every mixture, reference or generated, is
  the plain sum of its stems (the generated mixture is formed that way, so the reference is too);
- generation: clip ``i`` (total) and chunk ``i`` (partial, every subset) use
  ``torch.Generator().manual_seed(seed + i)``, so each item is reproducible whatever the batch size;
- embeddings: the embedder resamples to its own rate with soxr (HQ); statistics in float64.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from ..audio import read_audio, rms_db, write_audio
from ..measures import si_sdr
from ..stems import SILENCE_DBFS
from .coherence import CoherenceConfig, ShuffledAcrossSongs, coherence_metrics
from .embedders.base import AudioEmbedder
from .distances import fad_interval, kad_interval
from .levels import level_statistics
from .spectral import spectral_statistics
from .fad import (
    EmbeddingStatistics,
    StatisticsAccumulator,
    fad,
    load_cached_embeddings,
    load_cached_statistics,
    save_cached_embeddings,
    save_cached_statistics,
)
from .reference import Chunk, ReferenceClips, list_tracks, select_chunks, split_fingerprint

MIX = "mix"  # the one signal of a mixture-only model

PROTOCOL_VERSION = 1
# floor: real training chunks against the test chunks (the best any model can score); reconstruction: the test
# stems encoded and decoded by the pipeline's VAE (the best its latent model can score); total, partial: the paper's.
# separation (not run by default): mixtures of the test chunks separated by a model that can (MSDM), SI-SDRi.
DEFAULT_TASKS = ("floor", "reconstruction", "total", "partial")
TASKS = (*DEFAULT_TASKS, "separation")
VAE_TASKS = ("floor", "reconstruction")


@dataclass(frozen=True)
class ProtocolConfig:
    """Parameters of one evaluation; the defaults are the paper's (200 x 12 s chunks, seeds per item). Unset
    sampler settings are the pipeline's own, resolved by :func:`resolve_sampling` from its scheduler config
    before anything runs, so results, manifests and resume checks record the values used."""

    split: str = "test"
    num_clips: int = 200  # total generation: generated clips, and reference chunks
    num_chunks: int = 200  # partial generation: reference chunks with every stem present
    clip_seconds: float = 12.0
    seed: int = 0
    num_inference_steps: int | None = None  # None: the pipeline's own (EDMScheduler.sampling_settings)
    sampler: str | None = None  # None: the pipeline's own
    s_churn: float | None = None  # None: the pipeline's own
    batch_size: int = 4
    tasks: tuple[str, ...] = DEFAULT_TASKS
    subsets: tuple[str, ...] | None = None  # partial generation: subset labels to run (default: all)
    silence_db: float = SILENCE_DBFS  # below this RMS (dBFS) a stem counts as silent
    # separation: its own sampler settings (the Dirac separator needs fine steps, docs/msdm.md); None: the
    # pipeline's own (EDMScheduler.separation_settings: Euler, MSDM's scheduler config)
    separation_method: str = "dirac"
    separation_steps: int | None = None
    separation_churn: float | None = None
    # seconds of one generation window; None: each pipeline's own (its UNet's ``window_frames``). A comparison of
    # models with different windows sets it to the clip length, so that every clip is one window (docs/baselines.md)
    window_s: float | None = None

    def __post_init__(self):
        from ..schedulers.sampling import SAMPLERS, SEPARATION_METHODS

        if self.sampler is not None and self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS} or None (the pipeline's own), got {self.sampler!r}.")
        if self.separation_method not in SEPARATION_METHODS:
            raise ValueError(f"separation_method must be one of {SEPARATION_METHODS}, got {self.separation_method!r}.")
        if self.window_s is not None and not (isinstance(self.window_s, (int, float)) and not isinstance(self.window_s, bool)
                                              and 0 < self.window_s < float("inf")):
            raise ValueError(f"window_s must be a positive number of seconds, got {self.window_s!r}.")

    def is_resolved(self) -> bool:
        """Whether every sampler setting is set (by the caller or by :func:`resolve_sampling`)."""
        return None not in (self.sampler, self.num_inference_steps, self.s_churn, self.separation_steps,
                            self.separation_churn)

    def resolved(self, scheduler) -> "ProtocolConfig":
        """This config with unset sampler settings resolved by a pipeline's scheduler, as its own calls would."""
        generation = scheduler.sampling_settings(self.sampler, self.num_inference_steps, self.s_churn)
        separation = scheduler.separation_settings(self.separation_steps, self.separation_churn)
        return replace(self, sampler=generation.sampler, num_inference_steps=generation.num_inference_steps,
                       s_churn=generation.s_churn, separation_steps=separation.num_inference_steps,
                       separation_churn=separation.s_churn)

    def generation(self) -> dict:
        """The settings generated audio depends on: a resumed run must match them."""
        settings = {
            k: getattr(self, k) for k in ("clip_seconds", "seed", "num_inference_steps", "sampler", "s_churn")
        }
        if self.window_s is not None:  # absent when unset, so that audio generated before the option stays valid
            settings["window_s"] = self.window_s
        return settings

    def separation(self) -> dict:
        """The settings separated audio depends on (checked on resume, in the separation audio's own folder)."""
        return {"clip_seconds": self.clip_seconds, "seed": self.seed, "method": self.separation_method,
                "num_inference_steps": self.separation_steps, "s_churn": self.separation_churn}

    def describe(self) -> dict:
        return {
            **asdict(self),
            "protocol_version": PROTOCOL_VERSION,
            "chunks": "non-overlapping from each track's start, silent ones dropped, drawn with "
            f"numpy.random.default_rng({self.seed}) without replacement",
            "audio": "libsndfile, mono = channel mean, soxr HQ resampling to the pipeline rate, missing stem = "
            "silence, mixture = sum of stems",
            "seeds": f"item i uses torch.Generator().manual_seed({self.seed} + i)",
        }


def resolve_sampling(config: ProtocolConfig, scheduler=None, out_dir=None) -> ProtocolConfig:
    """``config`` with unset sampler settings resolved from ``scheduler`` (the pipeline's own); without one, from
    what the audio already under ``out_dir`` was made with (a setting nothing records stays unset)."""
    if config.is_resolved():
        return config
    if scheduler is not None:
        return config.resolved(scheduler)
    audio = Path(out_dir) / "audio" if out_dir is not None else None
    found = {}
    if audio is not None and (audio / "manifest.json").is_file():
        generation = json.loads((audio / "manifest.json").read_text())["generation"]
        found.update({k: generation.get(k) for k in ("sampler", "num_inference_steps", "s_churn")})
    if audio is not None and (audio / "separation" / "settings.json").is_file():
        separation = json.loads((audio / "separation" / "settings.json").read_text())
        found.update(separation_steps=separation.get("num_inference_steps"), separation_churn=separation.get("s_churn"))
    return replace(config, **{k: v for k, v in found.items() if getattr(config, k) is None})


# ----------------------------------------------------------------------------------------------------------------
# Stem subsets
# ----------------------------------------------------------------------------------------------------------------
def stem_subsets(stem_names: Sequence[str]) -> list[tuple[str, ...]]:
    """Every non-empty proper subset of the stems, by size then in stem order (14 for four stems)."""
    names = list(stem_names)
    return [c for size in range(1, len(names)) for c in itertools.combinations(names, size)]


def subset_label(subset: Sequence[str], stem_names: Sequence[str]) -> str:
    """The paper's short label (``"BD"`` for bass + drums) when initials are unique, else names joined by ``+``."""
    initials = [n[0].upper() for n in stem_names]
    if len(set(initials)) == len(initials):
        return "".join(n[0].upper() for n in subset)
    return "+".join(subset)


# ----------------------------------------------------------------------------------------------------------------
# Reference chunks, drawn once and remembered
# ----------------------------------------------------------------------------------------------------------------
def reference_chunks(
    root,
    stem_names,
    sample_rate,
    config: ProtocolConfig,
    task: str,
    state_dir: Path,
    progress=lambda it, **kw: it,
) -> tuple[list[Chunk], dict]:
    """The task's chunks and what they depend on, from ``state_dir`` if an earlier run drew them from the same
    data with the same settings."""
    tracks = list_tracks(root, config.split, stem_names)
    count = config.num_clips if task == "total" else config.num_chunks
    spec = {
        "root": str(Path(root).resolve()),
        "split": config.split,
        "stems": list(stem_names),
        "sample_rate": sample_rate,
        "num": count,
        "length": round(config.clip_seconds * sample_rate),
        "seed": config.seed,
        "all_stems": task == "partial",
        "silence_db": config.silence_db,
        "data": split_fingerprint(tracks, stem_names),
        "version": PROTOCOL_VERSION,
    }
    path = state_dir / f"chunks-{task}.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved["spec"] == spec:
            return [Chunk(**c) for c in saved["chunks"]], spec
    chunks = select_chunks(
        root,
        stem_names,
        sample_rate,
        split=config.split,
        num_chunks=count,
        chunk_length=spec["length"],
        seed=config.seed,
        require_all_stems=task == "partial",
        silence_db=config.silence_db,
        progress=progress,
    )
    state_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"spec": spec, "chunks": [asdict(c) for c in chunks]}, indent=1))
    return chunks, spec


# ----------------------------------------------------------------------------------------------------------------
# Generated audio, cached on disk so that an interrupted run resumes
# ----------------------------------------------------------------------------------------------------------------
class GeneratedClips(Sequence):
    """Generated stems under ``folder/<index>/<stem>.wav`` (float WAV, exact); given stems come from ``given``."""

    def __init__(
        self,
        folder: Path,
        count: int,
        stem_names: Sequence[str],
        sample_rate: int,
        generated: Sequence[str],
        given: ReferenceClips | None = None,
    ):
        self.folder, self.count, self.sample_rate = Path(folder), count, sample_rate
        self.stem_names, self.generated, self.given = list(stem_names), list(generated), given

    def path(self, i: int, stem: str) -> Path:
        return self.folder / f"{i:05d}" / f"{stem}.wav"

    def missing(self) -> list[int]:
        return [i for i in range(self.count) if not all(self.path(i, s).is_file() for s in self.generated)]

    def save(self, i: int, stems: np.ndarray):
        for k, stem in enumerate(self.stem_names):
            if stem in self.generated:
                write_audio(self.path(i, stem), stems[k], self.sample_rate, subtype="FLOAT")

    def __len__(self):
        return self.count

    def __getitem__(self, i):
        """``(K, T)``: the generated stems from disk, the others from ``given`` (silence without it)."""
        loaded = {s: read_audio(self.path(i, s))[0][0] for s in self.generated}
        given = self.given[i] if self.given is not None else None
        length = given.shape[1] if given is not None else max(len(a) for a in loaded.values())
        clip = np.zeros((len(self.stem_names), length), np.float32) if given is None else given.copy()
        for s, audio in loaded.items():
            clip[self.stem_names.index(s)] = np.pad(audio[:length], (0, max(0, length - len(audio))))
        return clip


class MixedClips(Sequence):
    """The clips of ``clips`` mixed down: items ``(1, T)`` (what a MixtureVAE reconstructs)."""

    def __init__(self, clips):
        self.clips = clips

    def __len__(self):
        return len(self.clips)

    def __getitem__(self, i):
        return np.asarray(self.clips[i]).sum(axis=0, keepdims=True)


class MixtureClips(GeneratedClips):
    """Generated mixtures (a mixture-only model: MixLDM) under ``folder/<index>/mix.wav``; items are ``(1, T)``."""

    def __init__(self, folder: Path, count: int, sample_rate: int):
        super().__init__(folder, count, [MIX], sample_rate, [MIX])


def generate_missing(pipe, clips: GeneratedClips, config: ProtocolConfig, progress=lambda it, **kw: it):
    """Generate every clip of ``clips`` not on disk yet, ``config.batch_size`` at a time, seeded per item."""
    import torch

    todo = clips.missing()
    window = {} if config.window_s is None else {"window_s": config.window_s}  # unset: the pipeline's own
    batches = [todo[i : i + config.batch_size] for i in range(0, len(todo), config.batch_size)]
    if isinstance(clips, MixtureClips):  # a mixture-only model: no stems to give or to ask for
        for batch in progress(batches, desc="Generating mixtures", total=len(batches)):
            out = pipe(audio_length_in_s=config.clip_seconds, num_inference_steps=config.num_inference_steps,
                       sampler=config.sampler, s_churn=config.s_churn, num_samples=len(batch), **window,
                       generator=[torch.Generator().manual_seed(config.seed + i) for i in batch], output_type="np")
            for j, i in enumerate(batch):
                clips.save(i, np.asarray(out.mixture[j])[None])
        return
    given_names = [s for s in clips.stem_names if s not in clips.generated]
    for batch in progress(batches, desc=f"Generating {'+'.join(clips.generated)}", total=len(batches)):
        stems = None
        if given_names:
            given = np.stack([clips.given[i] for i in batch])  # (B, K, T)
            stems = {s: given[:, clips.stem_names.index(s)] for s in given_names}
            if len(batch) == 1:
                stems = {s: a[0] for s, a in stems.items()}
        out = pipe(
            stems=stems,
            generate=clips.generated,
            audio_length_in_s=config.clip_seconds,
            num_inference_steps=config.num_inference_steps,
            sampler=config.sampler,
            s_churn=config.s_churn,
            num_samples=len(batch),
            **window,
            generator=[torch.Generator().manual_seed(config.seed + i) for i in batch],
            output_type="np",
        )
        for j, i in enumerate(batch):
            clips.save(i, np.asarray(out.stems[j]))


# ----------------------------------------------------------------------------------------------------------------
# Embedding statistics and the two tasks
# ----------------------------------------------------------------------------------------------------------------
def clip_statistics(
    clips: Sequence[np.ndarray],
    embedder,
    sample_rate: int,
    parts: Sequence[int | None],
    progress=lambda it, **kw: it,
    desc: str = "Embedding",
) -> list[EmbeddingStatistics]:
    """Statistics of several views of the same clips in one pass; a part is a stem index, or ``None`` for the mix."""
    return [statistics_of(e) for e in clip_embeddings(clips, embedder, sample_rate, parts, progress, desc)]


def clip_embeddings(clips: Sequence[np.ndarray], embedder, sample_rate: int, parts: Sequence[int | None],
                    progress=lambda it, **kw: it, desc: str = "Embedding") -> list[list[np.ndarray]]:
    """Per part (a stem index, or ``None`` for the mix), the embeddings of each clip ``(frames, D)``."""
    out = [[] for _ in parts]
    for i in progress(range(len(clips)), desc=desc):
        clip = clips[i]
        for per_part, part in zip(out, parts):
            per_part.append(np.asarray(embedder.embed(clip.sum(axis=0) if part is None else clip[part],
                                                      sample_rate), np.float64))
    return out


def statistics_of(per_clip: Sequence[np.ndarray]) -> EmbeddingStatistics:
    accumulator = StatisticsAccumulator()
    for embeddings in per_clip:
        accumulator.add(embeddings)
    return accumulator.statistics()


def reference_statistics(
    reference: ReferenceClips,
    chunks_spec: dict,
    embedder,
    parts,
    labels,
    cache_dir,
    progress=lambda it, **kw: it,
) -> list[EmbeddingStatistics]:
    """Reference statistics of each part (stem index or ``None`` for the mix), cached per embedder and chunk set."""
    specs = [{"embedder": embedder.identity(), "chunks": chunks_spec, "part": label} for label in labels]
    cached = [load_cached_statistics(cache_dir, spec) for spec in specs]
    if all(s is not None for s in cached):
        return cached
    embeddings = reference_embeddings(reference, chunks_spec, embedder, parts, labels, cache_dir, progress)
    return [save_cached_statistics(cache_dir, spec, statistics_of(e)) for spec, e in zip(specs, embeddings)]


def reference_embeddings(reference: ReferenceClips, chunks_spec: dict, embedder, parts, labels, cache_dir,
                         progress=lambda it, **kw: it) -> list[list[np.ndarray]]:
    """Per-clip reference embeddings of each part (what the intervals resample), cached beside the statistics
    (which are saved from them too)."""
    specs = [{"embedder": embedder.identity(), "chunks": chunks_spec, "part": label} for label in labels]
    cached = [load_cached_embeddings(cache_dir, spec) for spec in specs]
    if all(c is not None for c in cached):
        return cached
    embeddings = clip_embeddings(reference, embedder, reference.sample_rate, parts, progress, "Embedding reference")
    for spec, per_clip in zip(specs, embeddings):
        save_cached_embeddings(cache_dir, spec, per_clip)
        save_cached_statistics(cache_dir, spec, statistics_of(per_clip))
    return embeddings


@dataclass
class EvaluationResult:
    protocol: dict
    floor: dict | None = None
    reconstruction: dict | None = None
    total: dict = field(default_factory=dict)
    partial: dict = field(default_factory=dict)
    separation: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


class _LazyPipeline:
    """The pipeline, loaded on first use when given as a loader function."""

    def __init__(self, pipe):
        self._source, self._pipe = pipe, None

    def get(self):
        if self._pipe is None and self._source is not None:
            p = self._source if hasattr(self._source, "stem_names") else self._source()
            if hasattr(p, "set_progress_bar_config"):
                p.set_progress_bar_config(disable=True)
            self._pipe = p
        return self._pipe


def _audio_manifest(
    out_dir: Path, pipeline: _LazyPipeline, config: ProtocolConfig, pipeline_name: str
) -> dict:
    """What the audio under ``out_dir`` was (or will be) generated with; refuses to mix two settings."""
    path = out_dir / "audio" / "manifest.json"
    if path.is_file():
        manifest = json.loads(path.read_text())
        if manifest["generation"] != config.generation():
            raise ValueError(
                f"The audio in {out_dir} was generated with {manifest['generation']}, not "
                f"{config.generation()}; use another output folder or the same settings."
            )
        if pipeline_name and manifest["pipeline"] and manifest["pipeline"] != pipeline_name:
            raise ValueError(
                f"The audio in {out_dir} comes from pipeline {manifest['pipeline']!r}, not {pipeline_name!r}; "
                "use another output folder."
            )
        return manifest
    pipe = pipeline.get()
    if pipe is None:
        raise ValueError(f"No pipeline given and no generated audio in {out_dir} ({path} is missing).")
    mixture_only = not getattr(pipe, "generates_stems", True)
    manifest = {
        "pipeline": pipeline_name,
        # A mixture-only model (MixLDM) is scored on the mixes of the stems it was trained on.
        "stem_names": list(pipe.mixture_of if mixture_only else pipe.stem_names),
        "mixture_only": mixture_only,
        "sample_rate": int(pipe.sample_rate),
        "generation": config.generation(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest, indent=1))
    return manifest


@dataclass
class _Run:
    """What both tasks share: data, output folder, embedder, settings, and the (lazy) pipeline."""

    data_root: Path
    out_dir: Path
    embedder: AudioEmbedder
    config: ProtocolConfig
    cache_dir: Path | None
    progress: Callable
    log: Callable[[str], None]
    pipeline: _LazyPipeline
    names: list[str]
    sample_rate: int
    mixture_only: bool = False
    _reference_stats: list | None = None
    _reference_embeddings: list | None = None

    def reference(self, task: str, split: str | None = None) -> tuple[ReferenceClips, dict]:
        """The task's reference chunks of the test split (or of ``split``: the floor draws training chunks the
        same way, into their own state file)."""
        config = self.config if split is None else replace(self.config, split=split)
        chunks, spec = reference_chunks(
            self.data_root,
            self.names,
            self.sample_rate,
            config,
            task,
            self.out_dir / "state" / ("" if split is None else split),
            self.progress,
        )
        wanted = self.config.num_clips if task == "total" else self.config.num_chunks
        if len(chunks) < wanted:
            what = "qualify" if task == "total" else "have every stem"
            self.log(f"Only {len(chunks)} {config.split} chunks {what} (asked for {wanted}); using them all.")
        return ReferenceClips(self.data_root, config.split, chunks, self.names, self.sample_rate), spec

    def mix_fad(self, clips, desc: str) -> dict:
        """FAD of the mixes of ``clips`` (any number of parts, summed) against the test reference's mixes."""
        (stats,) = clip_statistics(clips, self.embedder, self.sample_rate, [None], self.progress, desc)
        self.fad_against_reference([stats] * (len(self.names) + 1))  # reference statistics, cached
        return {"mix": fad(stats, self._reference_stats[-1])}

    def fad_parts(self, clips, desc: str) -> tuple[dict, list]:
        """FAD of ``clips`` against the test reference, per stem and on the mix (the total task's chunks), and the
        clips' embeddings per part."""
        parts = [*range(len(self.names)), None]
        embeddings = clip_embeddings(clips, self.embedder, self.sample_rate, parts, self.progress, desc)
        return self.fad_against_reference([statistics_of(e) for e in embeddings]), embeddings

    def distances(self, embeddings) -> dict:
        """FAD with its 95 % bootstrap interval over clips and KAD (x100, with its interval) of per-part clip
        embeddings (stems, then the mix) against the test reference's, per stem and mix."""
        labels = [*self.names, "mix"]
        if self._reference_embeddings is None:
            reference, spec = self.reference("total")
            self._reference_embeddings = reference_embeddings(reference, spec, self.embedder,
                                                              [*range(len(self.names)), None], labels,
                                                              self.cache_dir, self.progress)
        pairs = list(zip(labels, embeddings, self._reference_embeddings))
        return {"fad_interval": {label: fad_interval(g, r) for label, g, r in pairs},
                "kad": {label: kad_interval(g, r) for label, g, r in pairs}}

    def spectral(self, clips) -> dict:
        return spectral_statistics(clips, self.names, self.sample_rate)

    def fad_against_reference(self, stats) -> dict:
        """FAD of per-part statistics (stems, then the mix) against the test reference's, per stem and mix."""
        parts, labels = [*range(len(self.names)), None], [*self.names, "mix"]
        if self._reference_stats is None:
            reference, spec = self.reference("total")
            self._reference_stats = reference_statistics(reference, spec, self.embedder, parts, labels,
                                                         self.cache_dir, self.progress)
        return {label: fad(g, r) for label, g, r in zip(labels, stats, self._reference_stats)}

    def levels(self, clips) -> dict:
        return level_statistics(clips, self.names, self.sample_rate, self.config.silence_db)

    def generated(self, folder: str, count: int, stems, given=None) -> GeneratedClips:
        """The generated clips of a task, made first if some are not on disk yet."""
        if self.mixture_only:
            clips = MixtureClips(self.out_dir / "audio" / folder, count, self.sample_rate)
        else:
            clips = GeneratedClips(
                self.out_dir / "audio" / folder, count, self.names, self.sample_rate, stems, given
            )
        if clips.missing():
            if self.pipeline.get() is None:
                raise ValueError(
                    f"{len(clips.missing())} clips are missing under {clips.folder}; pass a pipeline."
                )
            generate_missing(self.pipeline.get(), clips, self.config, self.progress)
        return clips


def evaluate_floor(run: _Run) -> dict | None:
    """The real-data floor: as many real chunks of the training split as the test reference has, scored against it
    per stem and on the mix; two real sets differ by this much, so no model can be expected to score lower."""
    if not (run.data_root / "train").is_dir():
        run.log(f"No train split under {run.data_root}: the real-data floor is not measured.")
        return None
    test, _ = run.reference("total")
    train, train_spec = run.reference("total", split="train")
    train = ReferenceClips(run.data_root, "train", train.chunks[: len(test)], run.names, run.sample_rate)
    parts, labels = [*range(len(run.names)), None], [*run.names, "mix"]
    # Real audio, like the test reference: its statistics are cached too (keyed by the chunks used).
    train_embeddings = reference_embeddings(train, {**train_spec, "used": len(train)}, run.embedder, parts, labels,
                                            run.cache_dir, run.progress)
    fads = run.fad_against_reference([statistics_of(e) for e in train_embeddings])
    run.log("Real-data floor (train vs test) FAD: " + ", ".join(f"{k} {v:.3f}" for k, v in fads.items()))
    return {"num_train_chunks": len(train), "num_reference_chunks": len(test), "fad": fads,
            **run.distances(train_embeddings), "levels": run.levels(train), "spectral": run.spectral(train)}


class ReconstructedClips(GeneratedClips):
    """The test chunks encoded and decoded by the pipeline's VAE (posterior means), kept on disk like generations."""

    def make_missing(self, pipe, reference: ReferenceClips, batch_size: int, progress):
        import torch

        todo = self.missing()
        hop = pipe.vae.hop_length
        for start in progress(range(0, len(todo), batch_size), desc="Reconstructing",
                              total=-(-len(todo) // batch_size)):
            batch = todo[start : start + batch_size]
            audio = torch.from_numpy(np.stack([reference[i] for i in batch]))  # (B, K, T)
            t = audio.shape[-1]
            padded = torch.nn.functional.pad(audio, (0, -t % hop))
            device = next(pipe.vae.parameters()).device
            decoded = pipe.decode_latents(pipe.encode_stems(padded.to(device))).cpu()[..., :t]
            decoded = torch.nn.functional.pad(decoded, (0, t - decoded.shape[-1]))
            for j, i in enumerate(batch):
                self.save(i, decoded[j].numpy())


def evaluate_reconstruction(run: _Run) -> dict | None:
    """The VAE's ceiling: the test chunks' stems encoded and decoded, FAD per stem and on the mix of the decoded
    stems, and the level statistics of the reconstructions."""
    reference, _ = run.reference("total")
    if run.mixture_only:  # a MixtureVAE: the test mixes encoded and decoded
        clips = ReconstructedClips(run.out_dir / "audio" / "reconstruction", len(reference), [MIX],
                                   run.sample_rate, [MIX])
        source = MixedClips(reference)
    else:
        clips = ReconstructedClips(run.out_dir / "audio" / "reconstruction", len(reference), run.names,
                                   run.sample_rate, run.names)
        source = reference
    if clips.missing():
        pipe = run.pipeline.get()
        if pipe is None:
            run.log("No pipeline and no reconstructions on disk: the VAE's reconstruction is not measured.")
            return None
        if not hasattr(pipe.vae, "parameters"):  # MSDM's identity codec
            run.log("VAE reconstruction: not measured, a waveform model has no autoencoder (its ceiling is the "
                    "data).")
            return None
        clips.make_missing(pipe, source, run.config.batch_size, run.progress)
    if run.mixture_only:
        fads = run.mix_fad(clips, "Embedding reconstructions")
        run.log(f"MixtureVAE reconstruction FAD: mix {fads['mix']:.3f}")
        return {"num_reference_chunks": len(reference), "fad": fads,
                "levels": level_statistics(clips, [], run.sample_rate, run.config.silence_db),
                "levels_reference": run.levels(reference)}
    fads, embeddings = run.fad_parts(clips, "Embedding reconstructions")
    run.log("VAE reconstruction FAD: " + ", ".join(f"{k} {v:.3f}" for k, v in fads.items()))
    return {"num_reference_chunks": len(reference), "fad": fads, **run.distances(embeddings),
            "levels": run.levels(clips), "levels_reference": run.levels(reference),
            "spectral": run.spectral(clips), "spectral_reference": run.spectral(reference)}


def evaluate_total(run: _Run) -> dict:
    """Total generation: FAD per stem and on the mix, and the coherence metrics with their real and chance levels."""
    reference, _ = run.reference("total")
    names, sr = run.names, run.sample_rate
    generated = run.generated("total", run.config.num_clips, names)
    if run.mixture_only:  # MixLDM: the mix only, as in the paper; no stems, so no coherence
        fads = run.mix_fad(generated, "Embedding generated")
        run.log(f"Total generation FAD (mixtures only): mix {fads['mix']:.3f}")
        return {"num_reference_chunks": len(reference), "num_generated": len(generated), "fad": fads,
                "levels": level_statistics(generated, [], sr, run.config.silence_db),
                "levels_reference": run.levels(reference), "coherence": {},
                "note": "a mixture-only model: FAD of the mix only, no stems to score"}
    fads, embeddings = run.fad_parts(generated, "Embedding generated")
    coherence_config = CoherenceConfig(silence_db=run.config.silence_db)
    result = {
        "num_reference_chunks": len(reference),
        "num_generated": len(generated),
        "fad": fads,
        **run.distances(embeddings),
        "levels": run.levels(generated),
        "levels_reference": run.levels(reference),
        "spectral": run.spectral(generated),
        "spectral_reference": run.spectral(reference),
        "coherence": {
            "generated": coherence_metrics(generated, names, sr, coherence_config),
            "reference": coherence_metrics(reference, names, sr, coherence_config),
            "reference_shuffled": coherence_metrics(
                ShuffledAcrossSongs(reference), names, sr, coherence_config
            ),
        },
    }
    run.log("Total generation FAD: " + ", ".join(f"{k} {v:.3f}" for k, v in result["fad"].items()))
    return result


def evaluate_partial(run: _Run) -> dict:
    """Partial generation: sub-FAD of (generated subset + given other stems) mixes against the real mixes."""
    if run.mixture_only:
        run.log("Partial generation: not measured, a mixture-only model takes no stems.")
        return {}
    reference, spec = run.reference("partial")
    (ref_mix,) = reference_statistics(
        reference, spec, run.embedder, [None], ["mix"], run.cache_dir, run.progress
    )
    subsets = {subset_label(s, run.names): s for s in stem_subsets(run.names)}
    wanted = run.config.subsets or tuple(subsets)
    unknown = [w for w in wanted if w not in subsets]
    if unknown:
        raise ValueError(f"Unknown subset label(s) {unknown}; this pipeline's are {list(subsets)}.")
    sub_fad = {}
    for label in wanted:
        clips = run.generated(f"partial/{label}", len(reference), subsets[label], given=reference)
        (stats,) = clip_statistics(
            clips, run.embedder, run.sample_rate, [None], run.progress, f"Embedding {label}"
        )
        sub_fad[label] = fad(stats, ref_mix)
        run.log(f"sub-FAD {label}: {sub_fad[label]:.3f}")
    overall = float(np.mean(list(sub_fad.values())))
    run.log(f"sub-FAD overall: {overall:.3f}")
    return {"num_reference_chunks": len(reference), "sub_fad": sub_fad, "overall": overall}


def si_sdr_db(estimate: np.ndarray, reference: np.ndarray) -> float:
    """SI-SDR (dB) of one NumPy signal against its reference, in float64: :func:`mslddm.measures.si_sdr`."""
    import torch

    return float(si_sdr(*(torch.from_numpy(np.asarray(x, np.float64)) for x in (estimate, reference))))


def evaluate_separation(run: _Run) -> dict:
    """Source separation (MSDM's other task): each chunk's mixture separated by the pipeline; per stem the SI-SDR
    improvement over the mixture (SI-SDR of the separated stem minus that of the mixture, against the real stem),
    averaged over the chunks where that stem sounds."""
    import torch

    reference, _ = run.reference("partial")
    clips = GeneratedClips(run.out_dir / "audio" / "separation", len(reference), run.names, run.sample_rate,
                           run.names)
    settings = run.config.separation()
    settings_path = run.out_dir / "audio" / "separation" / "settings.json"
    made_with = json.loads(settings_path.read_text()) if settings_path.is_file() else settings
    if made_with != settings:
        raise ValueError(f"The separations in {settings_path.parent} were made with {made_with}, not {settings}; use "
                         "another output folder or the same settings.")
    todo = clips.missing()
    if todo:
        pipe = run.pipeline.get()
        if pipe is None or not hasattr(pipe, "separate"):
            run.log("Separation: not measured, the pipeline cannot separate (a waveform multi-source model can).")
            return {}
        settings_path.parent.mkdir(parents=True, exist_ok=True)
        settings_path.write_text(json.dumps(settings, indent=1))
        for i in run.progress(todo, desc="Separating", total=len(todo)):
            out = pipe.separate(reference[i].sum(axis=0), method=settings["method"],
                                num_inference_steps=settings["num_inference_steps"], s_churn=settings["s_churn"],
                                generator=torch.Generator().manual_seed(run.config.seed + i))
            clips.save(i, np.asarray(out.stems[0]))
    per_stem = {name: [] for name in run.names}
    for i in range(len(reference)):
        real, separated = reference[i], clips[i]
        mixture = real.sum(axis=0)
        for k, name in enumerate(run.names):
            if rms_db(real[k]) >= run.config.silence_db:
                per_stem[name].append((si_sdr_db(separated[k], real[k]), si_sdr_db(mixture, real[k])))
    result = {"num_chunks": len(reference), **{k: settings[k] for k in ("method", "num_inference_steps", "s_churn")},
              "si_sdr": {}, "si_sdr_mixture": {}, "si_sdri": {}, "chunks_used": {}}
    for name, pairs in per_stem.items():
        sdr = np.array(pairs, dtype=np.float64).reshape(-1, 2)
        result["si_sdr"][name] = float(sdr[:, 0].mean()) if len(sdr) else float("nan")
        result["si_sdr_mixture"][name] = float(sdr[:, 1].mean()) if len(sdr) else float("nan")
        result["si_sdri"][name] = float((sdr[:, 0] - sdr[:, 1]).mean()) if len(sdr) else float("nan")
        result["chunks_used"][name] = len(sdr)
    result["si_sdri_mean"] = float(np.nanmean(list(result["si_sdri"].values())))
    run.log("Separation SI-SDRi (dB): " + ", ".join(f"{k} {v:.2f}" for k, v in result["si_sdri"].items()))
    return result


def evaluate(
    pipe,
    data_root,
    out_dir,
    embedder: AudioEmbedder,
    config: ProtocolConfig = ProtocolConfig(),
    cache_dir=None,
    progress=lambda it, **kw: it,
    log: Callable[[str], None] = print,
    pipeline_name: str = "",
) -> EvaluationResult:
    """Run the protocol's tasks and return their results.

    ``pipe`` is a pipeline, a function without arguments that loads one (called only when audio must be
    generated or unset sampler settings resolved: pass a config from :func:`resolve_sampling` to avoid the
    latter), or ``None`` to evaluate audio already generated under ``out_dir``. Generated audio is kept under
    ``out_dir/audio`` with a manifest of the settings it was made with; a rerun with the same settings resumes
    and one with other settings is refused.
    """
    out_dir, pipeline = Path(out_dir), _LazyPipeline(pipe)
    if not config.is_resolved():  # unset sampler settings: the pipeline's own (recorded in the results)
        loaded = pipeline.get()
        if loaded is not None and not hasattr(loaded, "scheduler"):
            raise ValueError("The pipeline has no scheduler to resolve unset sampler settings from; set sampler, "
                             "num_inference_steps, s_churn, separation_steps and separation_churn.")
        config = resolve_sampling(config, None if loaded is None else loaded.scheduler, out_dir)
    manifest = _audio_manifest(out_dir, pipeline, config, pipeline_name)
    names, sr = list(manifest["stem_names"]), int(manifest["sample_rate"])
    protocol = {
        **config.describe(),
        "embedder": embedder.identity(),
        "stem_names": names,
        "sample_rate": sr,
        "pipeline": manifest["pipeline"],
        "mixture_only": bool(manifest.get("mixture_only")),
        "data": str(Path(data_root).resolve()),
    }
    log("Protocol: " + json.dumps(protocol, indent=1))
    run = _Run(Path(data_root), out_dir, embedder, config, cache_dir, progress, log, pipeline, names, sr,
               bool(manifest.get("mixture_only")))
    result = EvaluationResult(protocol=protocol)
    if "floor" in config.tasks:
        result.floor = evaluate_floor(run)
    if "reconstruction" in config.tasks:
        result.reconstruction = evaluate_reconstruction(run)
    if "total" in config.tasks:
        result.total = evaluate_total(run)
    if "partial" in config.tasks:
        result.partial = evaluate_partial(run)
    if "separation" in config.tasks:
        result.separation = evaluate_separation(run)
    return result
