"""mslddm: multi-source music generation with latent diffusion (MSLDM), packaged diffusers-style.

Saved pipelines name their components by module path (``model_index.json``), so the modules named in
``_EXPORTS`` are part of the public format: keep them (or a re-exporting shim) where they are.
The top-level names are imported lazily, so ``import mslddm.audio`` does not pay for torch and diffusers.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "SourceVAE": "mslddm.models.autoencoder_source",
    "SpectralSourceVAE": "mslddm.models.autoencoder_spectral",
    "MultiSourceUNet1DModel": "mslddm.models.unet_1d_multisource",
    "IndependentSourceUNet1DModel": "mslddm.models.unet_1d_independent",
    "MultiSourceTransformer1DModel": "mslddm.models.transformer_1d_multisource",
    "EDMScheduler": "mslddm.schedulers.scheduling_edm",
    "MultiSourcePipelineBase": "mslddm.pipelines.pipeline_base",
    "MultiSourceLatentPipeline": "mslddm.pipelines.pipeline_multisource_latent",
    "MultiSourceAudioPipelineOutput": "mslddm.pipelines.pipeline_multisource_latent",
    "MixtureLatentPipeline": "mslddm.pipelines.pipeline_mixture_latent",
    "MultiSourceDiffusionPipeline": "mslddm.pipelines.pipeline_multisource_diffusion",
    "MixtureAudioPipelineOutput": "mslddm.pipelines.pipeline_mixture_latent",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mslddm' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
