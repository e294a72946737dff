"""The evaluation protocol's settings (:class:`ProtocolConfig`), everything that moves a number, and the rule that
resolves unset sampler settings to the pipeline's own (:func:`resolve_sampling`)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ..stems import SILENCE_DBFS

PROTOCOL_VERSION = 1
# The tasks run when none are named, and those of --vae-only (every task: mslddm.evaluation.tasks.TASK_FUNCTIONS).
TASKS = ("floor", "reconstruction", "total", "partial", "separation")  # tasks.TASK_FUNCTIONS' keys, in order
DEFAULT_TASKS = ("floor", "reconstruction", "total", "partial")
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
        from ..schedulers.sampler_table import SAMPLERS, SEPARATION_METHODS

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

