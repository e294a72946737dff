"""The table of samplers and their default steps and churn, as data: what the command line's options and the page's
choices are built from without importing torch (``mslddm --help`` stays fast). :mod:`.sampling` holds the samplers
themselves and re-exports these names."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SamplerDefaults:
    label: str
    num_inference_steps: int
    s_churn: float
    evaluations_per_step: int  # model evaluations per step (Heun: 2, except the last)
    takes_churn: bool = True  # whether s_churn applies (deterministic solvers and consistency sampling: no)


SAMPLER_DEFAULTS = {
    "euler": SamplerDefaults("Euler with churn (the paper's)", 150, 20.0, 1),
    "heun": SamplerDefaults("Heun, 2nd order", 50, 0.0, 2),
    "dpmpp_2m": SamplerDefaults("DPM-Solver++(2M), fast", 25, 0.0, 1, takes_churn=False),
    # For a consistency-distilled student (train/distill.py, docs/distillation.md); a teacher gives blurred results.
    "consistency": SamplerDefaults("Consistency, for a distilled student (1-8 steps)", 4, 0.0, 1, takes_churn=False),
}
SAMPLERS = tuple(SAMPLER_DEFAULTS)
CHURN_SAMPLERS = tuple(name for name, d in SAMPLER_DEFAULTS.items() if d.takes_churn)
SAMPLER_HELP = "; ".join(f"{name}: {d.label}" for name, d in SAMPLER_DEFAULTS.items())  # --sampler's help
SEPARATION_METHODS = ("dirac", "gaussian")  # steps and churn: EDMScheduler.separation_settings
