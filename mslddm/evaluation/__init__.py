"""Evaluation: Fréchet audio distance (FAD) and sub-FAD as in the MSLDM paper, offline embedders, and metrics of
how well generated stems play together. See ``docs/evaluation.md``.

- :mod:`.fad`: Fréchet distance and cached embedding statistics;
- :mod:`.embedders`: musicnn (offline default), VGGish (the paper's), CLAP;
- :mod:`.coherence`: rhythmic and harmonic agreement between stems, silence rates;
- :mod:`.protocol`: reference chunks, generation, FAD per stem and mix, sub-FAD per stem subset;
- :mod:`.report`: JSON, Markdown and bar charts.
"""

from .fad import EmbeddingStatistics, StatisticsAccumulator, fad, frechet_distance

__all__ = ["EmbeddingStatistics", "StatisticsAccumulator", "fad", "frechet_distance"]
