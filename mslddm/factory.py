"""Randomly initialised models and pipelines of a named size: where the data of :mod:`mslddm.presets` become objects.

The one way to build "a ``small`` pipeline" or "the paper's UNet" from scratch (training from scratch, benchmarks,
tests, the converters' paper configurations). It sits above models, schedulers and pipelines, which know no named
sizes; loading trained weights is ``from_pretrained``'s job, not this module's.
"""

from __future__ import annotations

import inspect
from typing import Any, Optional, Sequence

from .presets import PRESETS


def preset(name: str) -> dict[str, Any]:
    """The preset called ``name``; an unknown name is refused with the list of known ones."""
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; choose one of {sorted(PRESETS)}.")
    return PRESETS[name]


def unet_arguments(name: str, in_channels: int, entry: str = "unet") -> dict[str, Any]:
    """The constructor arguments a preset states for a UNet, with ``in_channels``; arguments it leaves out take the
    constructor's defaults (the paper's model). ``entry``: ``"unet"`` (on latents) or ``"waveform_unet"`` (MSDM's,
    on waveforms), a kind's ``preset_key`` in :mod:`mslddm.kinds`."""
    if entry not in preset(name):
        raise ValueError(f"Preset {name!r} has no {entry}; presets with one: "
                         f"{sorted(n for n, p in PRESETS.items() if entry in p)}.")
    return {**PRESETS[name][entry], "in_channels": in_channels}


def unet_config(name: str, in_channels: int, entry: str = "unet") -> dict[str, Any]:
    """Every constructor argument of the preset's UNet, defaults filled in and sequences as lists, as the model's
    ``config.json`` holds them (what a converter compares a checkpoint's shapes against)."""
    from .models.unet_1d_multisource import MultiSourceUNet1DModel

    parameters = inspect.signature(MultiSourceUNet1DModel.__init__).parameters
    defaults = {k: p.default for k, p in parameters.items() if p.default is not inspect.Parameter.empty}
    config = {**defaults, **unet_arguments(name, in_channels, entry)}
    return {k: list(v) if isinstance(v, (tuple, list)) else v for k, v in config.items()}


def build_vae(name: str, **overrides: Any):
    """A randomly initialised VAE of the named preset (its ``vae_class``), with ``overrides`` on its arguments."""
    from .models import vae_class

    cls = vae_class(preset(name).get("vae_class", "SourceVAE"))
    return cls(**{**PRESETS[name]["vae"], **overrides})


def build_unet(name: str, in_channels: int, entry: str = "unet", **overrides: Any):
    """A randomly initialised ``MultiSourceUNet1DModel`` of the named preset, with ``overrides`` on its arguments."""
    from .models.unet_1d_multisource import MultiSourceUNet1DModel

    return MultiSourceUNet1DModel(**{**unet_arguments(name, in_channels, entry), **overrides})


def build_pipeline(name: str, stem_names: Optional[Sequence[str]] = None, seed: int = 0, scheduler_kwargs=None):
    """A randomly initialised ``MultiSourceLatentPipeline`` of the named size (training from scratch, benchmarks):
    the preset's VAE and a UNet on ``len(stem_names)`` x its latent channels, seeded with ``seed``."""
    import torch

    from .pipelines.pipeline_multisource_latent import MultiSourceLatentPipeline
    from .schedulers.scheduling_edm import EDMScheduler
    from .stems import DEFAULT_STEMS

    preset(name)
    stem_names = list(stem_names or DEFAULT_STEMS)
    torch.manual_seed(seed)
    vae = build_vae(name)
    unet = build_unet(name, in_channels=len(stem_names) * vae.config.latent_channels)
    return MultiSourceLatentPipeline(vae=vae, unet=unet, scheduler=EDMScheduler(**(scheduler_kwargs or {})),
                                     stem_names=stem_names)
