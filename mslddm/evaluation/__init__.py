"""Evaluation: Fréchet audio distance (FAD) and sub-FAD as in the MSLDM paper, offline embedders, and metrics of
how well generated stems play together. See ``docs/evaluation.md``.

- :mod:`.fad`: Fréchet distance and cached embedding statistics;
- :mod:`.embedders`: musicnn (offline default), VGGish (the paper's), CLAP;
- :mod:`.coherence`: rhythmic and harmonic agreement between stems, silence rates;
- :mod:`.protocol`: the entry point, :func:`~.protocol.evaluate` (and every name below, re-exported);
- :mod:`.config`: the protocol's settings and their resolution to the pipeline's own;
- :mod:`.clips`: what a run keeps on disk to resume: reference chunks, generated clips, manifest, embeddings;
- :mod:`.tasks`: the tasks as a table (floor, reconstruction, total, partial, separation) over one shared run;
- :mod:`.report`: JSON, Markdown and bar charts.
"""

from .fad import EmbeddingStatistics, StatisticsAccumulator, fad, frechet_distance

__all__ = ["EmbeddingStatistics", "StatisticsAccumulator", "fad", "frechet_distance"]
