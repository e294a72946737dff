"""mslddm: multi-source music generation with latent diffusion (MSLDM), packaged diffusers-style."""

__version__ = "0.1.0"
