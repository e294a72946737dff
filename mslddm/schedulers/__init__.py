"""EDM scheduling and sampling. Names are imported lazily (as in :mod:`mslddm`), so that the torch-free table of
samplers (:mod:`.sampler_table`) can be read without importing torch and diffusers."""

import importlib

_EXPORTS = {
    **dict.fromkeys(("SAMPLERS", "SAMPLER_DEFAULTS", "SEPARATION_METHODS", "SamplerDefaults"), ".sampler_table"),
    **dict.fromkeys(("EDMScheduler", "SamplingPlan", "edm_loss_weight", "edm_scalings", "get_sigmas_karras",
                     "sample_training_sigmas"), ".scheduling_edm"),
    **dict.fromkeys(("SAMPLER_FUNCTIONS", "Denoiser", "SamplingSettings", "sample_consistency", "sample_dpmpp_2m",
                     "sample_euler", "sample_heun"), ".sampling"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module 'mslddm.schedulers' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
