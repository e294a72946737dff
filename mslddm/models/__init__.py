"""Models: the VAEs shared by all stems and the multi-source UNet.

``VAE_CLASSES`` names every VAE class a pipeline's ``vae`` slot may hold; :func:`vae_class` looks one up by the
``_class_name`` of its ``config.json``. Their module paths are part of the saved-pipeline format.
"""

from __future__ import annotations

import importlib

VAE_CLASSES = {
    "SourceVAE": "mslddm.models.autoencoder_source",
    "SpectralSourceVAE": "mslddm.models.autoencoder_spectral",
}


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
