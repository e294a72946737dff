"""Models: the VAEs shared by all stems, the multi-source UNet and the ISLDM baseline's per-stem UNets.

``VAE_CLASSES`` / ``UNET_CLASSES`` name every class a pipeline's ``vae`` / ``unet`` slot may hold; :func:`vae_class`
and :func:`unet_class` look one up by the ``_class_name`` of its ``config.json``. Their module paths are part of
the saved-pipeline format.
"""

from __future__ import annotations

import importlib

VAE_CLASSES = {
    "SourceVAE": "mslddm.models.autoencoder_source",
    "SpectralSourceVAE": "mslddm.models.autoencoder_spectral",
}

UNET_CLASSES = {
    "MultiSourceUNet1DModel": "mslddm.models.unet_1d_multisource",
    "IndependentSourceUNet1DModel": "mslddm.models.unet_1d_independent",
    "MultiSourceTransformer1DModel": "mslddm.models.transformer_1d_multisource",
}


def unet_class(name: str):
    """The UNet class called ``name`` (one of :data:`UNET_CLASSES`)."""
    if name not in UNET_CLASSES:
        raise ValueError(f"Unknown UNet class {name!r}; mslddm has {sorted(UNET_CLASSES)}.")
    return getattr(importlib.import_module(UNET_CLASSES[name]), name)


def load_unet_folder(path, dtype=None, **kwargs):
    """A UNet of whichever class its ``config.json`` names, from a local folder or a Hub repo (``subfolder=``)."""
    from mslddm.models.unet_1d_multisource import MultiSourceUNet1DModel

    config = MultiSourceUNet1DModel.load_config(path, **kwargs)
    cls = unet_class(config.get("_class_name", "MultiSourceUNet1DModel"))
    return cls.from_pretrained(path, dtype=dtype, **kwargs)


def vae_class(name: str):
    """The VAE class called ``name`` (one of :data:`VAE_CLASSES`)."""
    if name not in VAE_CLASSES:
        raise ValueError(f"Unknown VAE class {name!r}; mslddm has {sorted(VAE_CLASSES)}.")
    return getattr(importlib.import_module(VAE_CLASSES[name]), name)


def load_vae_folder(path, dtype=None, **kwargs):
    """A VAE of whichever class its ``config.json`` names, from a local folder or a Hub repo (``subfolder=``)."""
    from mslddm.models.autoencoder_source import SourceVAE

    config = SourceVAE.load_config(path, **kwargs)
    cls = vae_class(config.get("_class_name", "SourceVAE"))
    return cls.from_pretrained(path, dtype=dtype, **kwargs)
