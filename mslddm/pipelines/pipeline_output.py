"""What the pipelines return: stems (with their mixture), or mixtures alone (the MixLDM baseline)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Union

import numpy as np
import torch
from diffusers.utils import BaseOutput


@dataclass
class MultiSourceAudioPipelineOutput(BaseOutput):
    """Output of the pipelines that generate stems (:class:`~mslddm.MultiSourceLatentPipeline`,
    :class:`~mslddm.MultiSourceDiffusionPipeline`).

    Args:
        stems: ``(batch, num_stems, samples)`` audio in ``stem_names`` order (for ``output_type="latent"``:
            ``(batch, num_stems, latent_channels, frames)`` latents).
        mixture: ``(batch, samples)``, the sum of the stems (``None`` for latents).
        stem_names: names of the stems, in order.
        sample_rate: sample rate of the audio.
        generated: names of the stems the model generated (the others were given or held silent).
        sampling: the sampler, steps, churn and number of model evaluations used (defaults resolved).
    """

    stems: Union[np.ndarray, torch.Tensor]
    mixture: Optional[Union[np.ndarray, torch.Tensor]]
    stem_names: List[str]
    sample_rate: int
    generated: List[str]
    sampling: Optional[Dict[str, Any]] = None


@dataclass
class MixtureAudioPipelineOutput(BaseOutput):
    """Output of :class:`~mslddm.MixtureLatentPipeline`: mixtures, and no stems (the model has none).

    Args:
        mixture: ``(batch, samples)`` audio (for ``output_type="latent"``: ``(batch, latent_channels, frames)``).
        sample_rate: sample rate of the audio.
        mixture_of: the instruments the mixtures were trained on (informative: they are not separable here).
        sampling: the sampler, steps, churn and number of model evaluations used.
    """

    mixture: Union[np.ndarray, torch.Tensor]
    sample_rate: int
    mixture_of: List[str]
    sampling: Optional[Dict[str, Any]] = None
