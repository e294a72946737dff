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

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .clips import (  # noqa: F401  (re-exported: protocol.py was the one module of the evaluation)
    MIX,
    GeneratedClips,
    MixedClips,
    MixtureClips,
    ReconstructedClips,
    _audio_manifest,
    _LazyPipeline,
    clip_embeddings,
    clip_statistics,
    generate_missing,
    reference_chunks,
    reference_embeddings,
    reference_statistics,
    statistics_of,
)
from .config import DEFAULT_TASKS, PROTOCOL_VERSION, VAE_TASKS, ProtocolConfig, resolve_sampling  # noqa: F401
from .embedders.base import AudioEmbedder
from .tasks import (  # noqa: F401
    TASK_FUNCTIONS,
    TASKS,
    Run,
    _Run,
    evaluate_floor,
    evaluate_partial,
    evaluate_reconstruction,
    evaluate_separation,
    evaluate_total,
    si_sdr_db,
    stem_subsets,
    subset_label,
)


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
        if loaded is None or hasattr(loaded, "scheduler"):
            config = resolve_sampling(config, None if loaded is None else loaded.scheduler, out_dir)
        elif set(config.tasks) - set(VAE_TASKS):  # a codec alone (floor, reconstruction) samples nothing
            raise ValueError("The pipeline has no scheduler to resolve unset sampler settings from; set sampler, "
                             "num_inference_steps, s_churn, separation_steps and separation_churn.")
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
    run = Run(Path(data_root), out_dir, embedder, config, cache_dir, progress, log, pipeline, names, sr,
              bool(manifest.get("mixture_only")))
    result = EvaluationResult(protocol=protocol)
    for name, task in TASK_FUNCTIONS.items():
        if name in config.tasks:
            setattr(result, name, task(run))
    return result
