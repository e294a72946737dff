"""What the evaluation keeps on disk so that a run resumes: the reference chunks drawn (``state/chunks-*.json``),
generated and reconstructed clips (``audio/<task>/<index>/<stem>.wav``) with the manifest of the settings they were
made with (``audio/manifest.json``), and the reference's embeddings and statistics (the cache folder)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..audio import read_audio, write_audio
from ..kinds import kind_of
from .config import PROTOCOL_VERSION, ProtocolConfig
from .fad import (
    EmbeddingStatistics,
    StatisticsAccumulator,
    load_cached_embeddings,
    load_cached_statistics,
    save_cached_embeddings,
    save_cached_statistics,
)
from .reference import Chunk, ReferenceClips, list_tracks, select_chunks, split_fingerprint

MIX = "mix"  # the one signal of a mixture-only model


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



def _given_stems(clips: GeneratedClips, batch: Sequence[int]) -> dict | None:
    """The stems ``clips`` gives (the reference's, for partial generation) for the items of ``batch``: arrays
    ``(B, T)`` by name, ``(T,)`` for a batch of one; None when every stem is generated."""
    given_names = [s for s in clips.stem_names if s not in clips.generated]
    if not given_names:
        return None
    given = np.stack([clips.given[i] for i in batch])  # (B, K, T)
    stems = {s: given[:, clips.stem_names.index(s)] for s in given_names}
    return {s: a[0] for s, a in stems.items()} if len(batch) == 1 else stems


def generate_missing(pipe, clips: GeneratedClips, config: ProtocolConfig, progress=lambda it, **kw: it):
    """Generate every clip of ``clips`` not on disk yet, ``config.batch_size`` at a time, seeded per item. A
    mixture-only model (its kind generates no stems) is given no stems and asked for none; its mix is saved."""
    import torch

    kind = kind_of(pipe)
    todo = clips.missing()
    window = {} if config.window_s is None else {"window_s": config.window_s}  # unset: the pipeline's own
    batches = [todo[i : i + config.batch_size] for i in range(0, len(todo), config.batch_size)]
    desc = f"Generating {'+'.join(clips.generated)}" if kind.generates_stems else "Generating mixtures"
    for batch in progress(batches, desc=desc, total=len(batches)):
        stems = {"stems": _given_stems(clips, batch), "generate": clips.generated} if kind.generates_stems else {}
        out = pipe(
            **stems,
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
            clips.save(i, kind.generated_audio(out, j))



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



# ----------------------------------------------------------------------------------------------------------------
# The pipeline, loaded when first needed, and the manifest of what the audio was made with
# ----------------------------------------------------------------------------------------------------------------
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
    mixture_only = not kind_of(pipe).generates_stems
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

