"""The evaluation's tasks as a table: each is a function of the run (:class:`Run`) returning its results, and
:data:`TASKS` maps the names ``mslddm evaluate --tasks`` takes to them, in the order they run."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import numpy as np

from ..audio import rms_db
from ..kinds import kind_of
from ..measures import si_sdr
from .clips import (
    MIX,
    GeneratedClips,
    MixedClips,
    MixtureClips,
    ReconstructedClips,
    _LazyPipeline,
    clip_embeddings,
    clip_statistics,
    generate_missing,
    reference_chunks,
    reference_embeddings,
    reference_statistics,
    statistics_of,
)
from .coherence import CoherenceConfig, ShuffledAcrossSongs, coherence_metrics
from .config import DEFAULT_TASKS, TASKS, VAE_TASKS, ProtocolConfig
from .distances import fad_interval, kad_interval
from .embedders.base import AudioEmbedder
from .fad import fad
from .levels import level_statistics
from .reference import ReferenceClips
from .spectral import spectral_statistics


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



@dataclass
class Run:
    """What the tasks share: data, output folder, embedder, settings, the (lazy) pipeline, and the test
    reference's embeddings and statistics (computed, or read from the cache, once: :attr:`reference_stats`,
    :attr:`reference_per_clip`)."""

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

    @property
    def parts(self) -> tuple[list, list[str]]:
        """``(parts, labels)`` of the per-part views: each stem (by index), then the mix (``None``)."""
        return [*range(len(self.names)), None], [*self.names, "mix"]

    @cached_property
    def reference_stats(self) -> list:
        """Embedding statistics of the test reference (the total task's chunks) per part: stems, then the mix."""
        reference, spec = self.reference("total")
        return reference_statistics(reference, spec, self.embedder, *self.parts, self.cache_dir, self.progress)

    @cached_property
    def reference_per_clip(self) -> list:
        """Per-clip embeddings of the test reference per part (what the intervals resample): stems, then the mix."""
        reference, spec = self.reference("total")
        return reference_embeddings(reference, spec, self.embedder, *self.parts, self.cache_dir, self.progress)

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
        return {"mix": fad(stats, self.reference_stats[-1])}

    def fad_parts(self, clips, desc: str) -> tuple[dict, list]:
        """FAD of ``clips`` against the test reference, per stem and on the mix (the total task's chunks), and the
        clips' embeddings per part."""
        embeddings = clip_embeddings(clips, self.embedder, self.sample_rate, self.parts[0], self.progress, desc)
        return self.fad_against_reference([statistics_of(e) for e in embeddings]), embeddings

    def distances(self, embeddings) -> dict:
        """FAD with its 95 % bootstrap interval over clips and KAD (x100, with its interval) of per-part clip
        embeddings (stems, then the mix) against the test reference's, per stem and mix."""
        pairs = list(zip(self.parts[1], embeddings, self.reference_per_clip))
        return {"fad_interval": {label: fad_interval(g, r) for label, g, r in pairs},
                "kad": {label: kad_interval(g, r) for label, g, r in pairs}}

    def spectral(self, clips) -> dict:
        return spectral_statistics(clips, self.names, self.sample_rate)

    def fad_against_reference(self, stats) -> dict:
        """FAD of per-part statistics (stems, then the mix) against the test reference's, per stem and mix."""
        return {label: fad(g, r) for label, g, r in zip(self.parts[1], stats, self.reference_stats)}

    def levels(self, clips) -> dict:
        return level_statistics(clips, self.names, self.sample_rate, self.config.silence_db)

    def generated(self, folder: str, count: int, stems, given=None) -> GeneratedClips:
        """The generated clips of a task, made first if some are not on disk yet."""
        if self.mixture_only:
            clips = MixtureClips(self.out_dir / "audio" / folder, count, self.sample_rate)
        else:
            clips = GeneratedClips(self.out_dir / "audio" / folder, count, self.names, self.sample_rate, stems, given)
        if clips.missing():
            if self.pipeline.get() is None:
                raise ValueError(
                    f"{len(clips.missing())} clips are missing under {clips.folder}; pass a pipeline."
                )
            generate_missing(self.pipeline.get(), clips, self.config, self.progress)
        return clips


def evaluate_floor(run: Run) -> dict | None:
    """The real-data floor: as many real chunks of the training split as the test reference has, scored against it
    per stem and on the mix; two real sets differ by this much, so no model can be expected to score lower."""
    if not (run.data_root / "train").is_dir():
        run.log(f"No train split under {run.data_root}: the real-data floor is not measured.")
        return None
    test, _ = run.reference("total")
    train, train_spec = run.reference("total", split="train")
    train = ReferenceClips(run.data_root, "train", train.chunks[: len(test)], run.names, run.sample_rate)
    # Real audio, like the test reference: its statistics are cached too (keyed by the chunks used).
    train_embeddings = reference_embeddings(train, {**train_spec, "used": len(train)}, run.embedder, *run.parts,
                                            run.cache_dir, run.progress)
    fads = run.fad_against_reference([statistics_of(e) for e in train_embeddings])
    run.log("Real-data floor (train vs test) FAD: " + ", ".join(f"{k} {v:.3f}" for k, v in fads.items()))
    return {"num_train_chunks": len(train), "num_reference_chunks": len(test), "fad": fads,
            **run.distances(train_embeddings), "levels": run.levels(train), "spectral": run.spectral(train)}


def reconstructions(run: Run, reference: ReferenceClips) -> ReconstructedClips | None:
    """The test chunks encoded and decoded by the pipeline's VAE (a MixtureVAE: their mixes), made first where
    missing; None when they cannot be made (no pipeline, or a waveform model, whose ceiling is the data)."""
    folder = run.out_dir / "audio" / "reconstruction"
    if run.mixture_only:  # a MixtureVAE: the test mixes encoded and decoded
        clips = ReconstructedClips(folder, len(reference), [MIX], run.sample_rate, [MIX])
        source = MixedClips(reference)
    else:
        clips = ReconstructedClips(folder, len(reference), run.names, run.sample_rate, run.names)
        source = reference
    if clips.missing():
        pipe = run.pipeline.get()
        if pipe is None:
            run.log("No pipeline and no reconstructions on disk: the VAE's reconstruction is not measured.")
            return None
        if not kind_of(pipe).uses_vae:  # MSDM's identity codec
            run.log("VAE reconstruction: not measured, a waveform model has no autoencoder (its ceiling is the "
                    "data).")
            return None
        clips.make_missing(pipe, source, run.config.batch_size, run.progress)
    return clips


def evaluate_reconstruction(run: Run) -> dict | None:
    """The VAE's ceiling: the test chunks' stems encoded and decoded, FAD per stem and on the mix of the decoded
    stems, and the level statistics of the reconstructions."""
    reference, _ = run.reference("total")
    clips = reconstructions(run, reference)
    if clips is None:
        return None
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


def _total_of_mixtures(run: Run, reference: ReferenceClips, generated) -> dict:
    """MixLDM's total generation: the mix only, as in the paper; no stems, so no coherence."""
    fads = run.mix_fad(generated, "Embedding generated")
    run.log(f"Total generation FAD (mixtures only): mix {fads['mix']:.3f}")
    return {"num_reference_chunks": len(reference), "num_generated": len(generated), "fad": fads,
            "levels": level_statistics(generated, [], run.sample_rate, run.config.silence_db),
            "levels_reference": run.levels(reference), "coherence": {},
            "note": "a mixture-only model: FAD of the mix only, no stems to score"}


def evaluate_total(run: Run) -> dict:
    """Total generation: FAD per stem and on the mix, and the coherence metrics with their real and chance levels."""
    reference, _ = run.reference("total")
    names, sr = run.names, run.sample_rate
    generated = run.generated("total", run.config.num_clips, names)
    if run.mixture_only:
        return _total_of_mixtures(run, reference, generated)
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


def evaluate_partial(run: Run) -> dict:
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


def separations(run: Run, reference: ReferenceClips) -> GeneratedClips | None:
    """Each chunk's mixture separated by the pipeline, made first where missing (with the settings recorded
    beside them, which a resumed run must match); None when the pipeline cannot separate."""
    import torch

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
            return None
        settings_path.parent.mkdir(parents=True, exist_ok=True)
        settings_path.write_text(json.dumps(settings, indent=1))
        for i in run.progress(todo, desc="Separating", total=len(todo)):
            out = pipe.separate(reference[i].sum(axis=0), method=settings["method"],
                                num_inference_steps=settings["num_inference_steps"], s_churn=settings["s_churn"],
                                generator=torch.Generator().manual_seed(run.config.seed + i))
            clips.save(i, np.asarray(out.stems[0]))
    return clips


def evaluate_separation(run: Run) -> dict:
    """Source separation (MSDM's other task): each chunk's mixture separated by the pipeline; per stem the SI-SDR
    improvement over the mixture (SI-SDR of the separated stem minus that of the mixture, against the real stem),
    averaged over the chunks where that stem sounds."""
    reference, _ = run.reference("partial")
    clips = separations(run, reference)
    if clips is None:
        return {}
    settings = run.config.separation()
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


# The tasks, by the name ``ProtocolConfig.tasks`` and ``mslddm evaluate --tasks`` use, in the order they run (each
# result goes to the field of EvaluationResult of the same name). floor: real training chunks against the test
# chunks (the best any model can score); reconstruction: the test stems encoded and decoded by the pipeline's VAE
# (the best its latent model can score); total, partial: the paper's; separation (not run by default): mixtures of
# the test chunks separated by a model that can (MSDM), SI-SDRi.
TASK_FUNCTIONS: dict[str, Callable[[Run], dict | None]] = {
    "floor": evaluate_floor,
    "reconstruction": evaluate_reconstruction,
    "total": evaluate_total,
    "partial": evaluate_partial,
    "separation": evaluate_separation,
}
assert tuple(TASK_FUNCTIONS) == TASKS and set(DEFAULT_TASKS) <= set(TASKS) and set(VAE_TASKS) <= set(TASKS)

_Run = Run  # the name before the tasks had their own module
