"""The accompaniment task: give the model one stem of a held-out song, and ask whether the band it generates plays
with it, as the song's real band does.

For each chunk of the split and each stem in turn, the stem (optionally through the augmentation chain of
:mod:`mslddm.data.augment`, and set to each level of ``levels_dbfs``) is given and the others are generated. Each
generated stem is scored against the given one by rhythmic agreement (:mod:`mslddm.evaluation.coherence`), beside
the real aligned stem's and chance (the generated stem shifted in time); the generated drums' beats (madmom)
against the song's exact beat grid (beat F-measure, tempo); and the band's level relative to the given stem
against the real band's relative to the song's own given stem. Sampling uses the pipeline's own scheduler
settings unless the config names others.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data.augment import draw_chain, set_level
from ..stems import SILENCE_DBFS, unknown_stems_message
from .beats import accompaniment_clip, beat_grid
from .reference import ReferenceClips, select_chunks


@dataclass(frozen=True)
class AccompanimentConfig:
    """Which chunks, which given stems, at which levels, with which sampler (``None``: the pipeline's own)."""

    split: str = "test"
    num_clips: int = 8
    seconds: float = 12.0
    seed: int = 0
    given: tuple[str, ...] | None = None  # the stems given in turn; None: every stem
    levels_dbfs: tuple[float | None, ...] = (None,)  # None: the level the stem has in the data
    augment: bool = False
    sampler: str | None = None
    num_inference_steps: int | None = None
    s_churn: float | None = None
    guidance_scale: float | None = None  # None: no guidance (the pipeline's call default)
    reconstruction_guidance: float | None = None
    silence_db: float = SILENCE_DBFS
    extra: dict = field(default_factory=dict)


def _song_beats(track: Path, offset_s: float, seconds: float) -> np.ndarray | None:
    meta = track / "metadata.json"
    if not meta.is_file():
        return None
    tempo = json.loads(meta.read_text()).get("tempo")
    return None if tempo is None else beat_grid(float(tempo), offset_s, seconds)


def _given_audio(real: np.ndarray, level: float | None, chain_seed: int | None, sample_rate: int) -> np.ndarray:
    given = real if chain_seed is None else draw_chain(chain_seed)(real, sample_rate)
    return given if level is None else set_level(given, level)


def _mean(values) -> float:
    values = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")


def summarise(records: Sequence[dict]) -> dict:
    """Means per (given stem, level) and overall: agreement of each generated stem (and of the drums alone) with
    the given one, generated / real / chance; beat F-measure generated / real; level error |generated - real| dB."""
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(f"{r['given']}@{r['level']}", []).append(r)
        groups.setdefault("all", []).append(r)
    out = {}
    for key, rows in groups.items():
        stems = [s for r in rows for s in r["stems"].values()]
        drums = [r["stems"]["drums"] for r in rows if "drums" in r["stems"]]
        beats = [r["beats"] for r in rows if "beats" in r]
        out[key] = {
            "runs": len(rows),
            "agreement": _mean(s["agreement"] for s in stems),
            "agreement_real": _mean(s["agreement_real"] for s in stems),
            "agreement_chance": _mean(s["agreement_chance"] for s in stems),
            "drums_agreement": _mean(s["agreement"] for s in drums),
            "drums_agreement_real": _mean(s["agreement_real"] for s in drums),
            "beat_f_measure": _mean(b["f_measure"] for b in beats),
            "beat_f_measure_real": _mean(b["f_measure_real"] for b in beats),
            "level_error_db": _mean(abs(s["level_db"] - s["level_db_real"]) for s in stems),
            "level_offset_db": _mean(s["level_db"] - s["level_db_real"] for s in stems),
        }
    return out


def chunk_intervals(records: Sequence[dict], draws: int = 1000, seed: int = 0, confidence: float = 0.95) -> dict:
    """95% bootstrap intervals of the overall means that decide the task, resampling whole chunks (the runs of one
    chunk, every given stem and level, share its music and are not independent): the generated drums' agreement, its
    ratio to the real drums' (the acceptance's 0.8x), the beat F-measure and the level error."""
    by_chunk: dict[tuple, list[dict]] = {}
    for r in records:
        by_chunk.setdefault((r["track"], r["start"]), []).append(r)
    chunks = list(by_chunk.values())

    def stats(rows: list[dict]) -> dict:
        drums = [r["stems"]["drums"] for r in rows if "drums" in r["stems"]]
        stems = [s for r in rows for s in r["stems"].values()]
        drums_gen, drums_real = _mean(s["agreement"] for s in drums), _mean(s["agreement_real"] for s in drums)
        return {"drums_agreement": drums_gen,
                "drums_agreement_ratio": drums_gen / drums_real if drums_real > 0 else float("nan"),
                "beat_f_measure": _mean(r["beats"]["f_measure"] for r in rows if "beats" in r),
                "level_error_db": _mean(abs(s["level_db"] - s["level_db_real"]) for s in stems)}

    value = stats([r for rows in chunks for r in rows])
    rng = np.random.default_rng(seed)
    draws_ = [stats([r for i in rng.integers(len(chunks), size=len(chunks)) for r in chunks[i]])
              for _ in range(draws)]
    tail = 100 * (1 - confidence) / 2
    out = {}
    for key, v in value.items():
        values = np.array([d[key] for d in draws_], dtype=float)
        values = values[np.isfinite(values)]
        low, high = np.percentile(values, [tail, 100 - tail]) if len(values) else (float("nan"),) * 2
        out[key] = {"value": v, "low": float(low), "high": float(high), "chunks": len(chunks)}
    return out


def evaluate_accompaniment(pipe, data_root, config: AccompanimentConfig = AccompanimentConfig(),
                           progress: Callable = lambda it, **kw: it) -> dict:
    """Runs the task on ``pipe`` (a pipeline generating stems): ``{"config", "records", "summary"}``."""
    names, sr = list(pipe.stem_names), pipe.sample_rate
    given_stems = list(config.given or names)
    message = unknown_stems_message(given_stems, names)
    if message:
        raise ValueError(message)
    length = int(round(config.seconds * sr))
    chunks = select_chunks(data_root, names, sr, split=config.split, num_chunks=config.num_clips,
                           chunk_length=length, seed=config.seed, require_all_stems=True,
                           silence_db=config.silence_db)
    clips = ReferenceClips(data_root, config.split, chunks, names, sr)
    records = []
    jobs = [(i, g, level) for i in range(len(chunks)) for g in given_stems for level in config.levels_dbfs]
    for n, (i, g, level) in enumerate(progress(jobs, desc="Accompaniment")):
        real, k = clips[i], names.index(g)
        chain_seed = config.seed * 100_003 + i * 17 + k if config.augment else None
        given = _given_audio(real[k], level, chain_seed, sr)
        out = pipe(stems={g: given}, audio_length_in_s=config.seconds, sampler=config.sampler,
                   num_inference_steps=config.num_inference_steps, s_churn=config.s_churn,
                   guidance_scale=config.guidance_scale, reconstruction_guidance=config.reconstruction_guidance,
                   generator=torch.Generator().manual_seed(config.seed + n))
        beats = _song_beats(Path(data_root) / config.split / chunks[i].track, chunks[i].start / sr, config.seconds)
        record = accompaniment_clip(given, out.stems[0], real, names, k, sr, reference_beats=beats,
                                    seed=config.seed + n, real_given=real[k])
        records.append({"track": chunks[i].track, "start": chunks[i].start, "given": g, "level": level, **record})
    return {"config": asdict(config), "sampling": getattr(out, "sampling", None), "records": records,
            "summary": summarise(records), "intervals": chunk_intervals(records)}
