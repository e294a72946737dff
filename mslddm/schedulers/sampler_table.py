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


SAMPLER_DEFAULTS = {
    "euler": SamplerDefaults("Euler with churn (the paper's)", 150, 20.0, 1),
    "heun": SamplerDefaults("Heun, 2nd order", 50, 0.0, 2),
    "dpmpp_2m": SamplerDefaults("DPM-Solver++(2M), fast", 25, 0.0, 1),
}
SAMPLERS = tuple(SAMPLER_DEFAULTS)
SEPARATION_METHODS = ("dirac", "gaussian")  # steps and churn: EDMScheduler.separation_settings
