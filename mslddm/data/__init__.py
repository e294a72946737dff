"""Training data: the synthetic Slakh-like dataset and the loaders.

- ``grooves``, ``songs``, ``render``, ``synth``: ``mslddm make-dataset`` (MMA charts -> per-class FluidSynth
  renders -> stems and mix on disk); ``system`` finds its system dependencies.
- ``tracks``, ``slakh``: multi-stem tracks on disk (stem folders, original Slakh2100) and reading them.
- ``datasets``: PyTorch datasets (diffusion segments, SourceVAE clips, pre-encoded latents).
- ``latents``: ``mslddm encode-latents``.

See docs/data.md.
"""
