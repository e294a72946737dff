"""MixtureLatentPipeline: the MixLDM baseline of the MSLDM paper, latent diffusion of the mixture alone.

A MixtureVAE (the SourceVAE class trained on mixes, with ``num_stems x C`` latent channels, ``train_vae.py`` with
``vae.source: mix``) encodes the whole mix; one UNet models that latent. It generates mixtures, never stems: it has
no stems to take (no partial generation) or to give back.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch

from ..stems import DEFAULT_STEMS
from .codecs import LatentCodec
from .pipeline_base import MultiSourcePipelineBase, latent_component_classes
from .pipeline_output import MixtureAudioPipelineOutput

MIX = "mix"


def _no_stems_message(mixture_of: Sequence[str]) -> str:
    return (f"This is a MixLDM pipeline: it models the mixture of {', '.join(mixture_of)} as one signal, so it "
            "has no stems to take or to give back. Generate mixtures with pipe(audio_length_in_s=...); for stems "
            "(total or partial generation) use an MSLDM or ISLDM pipeline.")


class MixtureLatentPipeline(MultiSourcePipelineBase):
    r"""Pipeline for mixture-only latent diffusion (the MixLDM baseline).

    Args:
        vae: a MixtureVAE: a :class:`~mslddm.SourceVAE` or :class:`~mslddm.SpectralSourceVAE` trained on mixes.
        unet: a :class:`~mslddm.MultiSourceUNet1DModel` with ``in_channels`` = the VAE's latent channels.
        scheduler: the :class:`~mslddm.EDMScheduler`.
        mixture_of: the stems the training mixes were made of (default: bass, drums, guitar, piano).
        sample_rate: audio sample rate (default: the VAE's).
        stem_names: only ``["mix"]`` (accepted so that saved configs load); the one modelled signal.
    """

    model_cpu_offload_seq = "vae->unet->vae"
    model_kinds = {"MultiSourceUNet1DModel": "mixldm", "IndependentSourceUNet1DModel": "mixldm"}
    loads_every_kind = False

    def __init__(self, vae, unet, scheduler, mixture_of: Optional[Sequence[str]] = None,
                 sample_rate: Optional[int] = None, stem_names: Optional[Sequence[str]] = None):
        if stem_names is not None and list(stem_names) != [MIX]:
            raise ValueError(f"A MixtureLatentPipeline models one signal named {MIX!r}, got stem_names "
                             f"{list(stem_names)}; for stems use MultiSourceLatentPipeline.")
        super().__init__()
        self.register_pipeline([MIX], sample_rate or vae.config.sampling_rate, vae=vae, unet=unet,
                               scheduler=scheduler)
        self.register_to_config(mixture_of=list(mixture_of or DEFAULT_STEMS))

    @classmethod
    def component_classes(cls) -> Dict[str, set]:
        return latent_component_classes()

    @property
    def codec(self) -> LatentCodec:
        return LatentCodec(self.vae)

    @property
    def mixture_of(self) -> List[str]:
        return list(self.config.mixture_of)

    @property
    def model_card_stems(self) -> List[str]:
        return self.mixture_of

    @property
    def generates_stems(self) -> bool:
        return False

    @torch.no_grad()
    def __call__(
        self,
        audio_length_in_s: Optional[float] = None,
        num_inference_steps: Optional[int] = None,
        sampler: Optional[str] = None,
        s_churn: Optional[float] = None,
        num_samples: int = 1,
        generator=None,
        latents: Optional[torch.Tensor] = None,
        window_s: Optional[float] = None,
        overlap_s: Optional[float] = None,
        crossfade_s: Optional[float] = None,
        output_type: str = "np",
        return_dict: bool = True,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        stems=None,
        generate: Optional[Sequence[str]] = None,
        **kwargs,
    ):
        r"""Generates mixtures (total generation of the mix), with the call conventions of
        :meth:`MultiSourceLatentPipeline.__call__` (lengths, samplers, per-sample generators, windows).

        ``stems`` or ``generate`` (partial generation, stem choice) raise ``ValueError``: this model has no stems.

        Returns:
            :class:`MixtureAudioPipelineOutput` or ``(mixture,)``.
        """
        if stems or generate or kwargs.get("extend_s") is not None:
            raise ValueError(_no_stems_message(self.mixture_of))
        unknown = set(kwargs) - {"input_sample_rate", "extend_s"}
        if unknown:
            raise TypeError(f"MixtureLatentPipeline got unexpected arguments {sorted(unknown)}.")
        # The one signal "mix" sampled as a band of one stem: the band's stem is the mixture's latents or audio.
        band = super().__call__(
            audio_length_in_s=audio_length_in_s, num_inference_steps=num_inference_steps, sampler=sampler,
            s_churn=s_churn, num_samples=num_samples, generator=generator, latents=latents, window_s=window_s,
            overlap_s=overlap_s, crossfade_s=crossfade_s, output_type=output_type, return_dict=True,
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
        )
        mixture = band.stems[:, 0] if output_type == "latent" else band.mixture
        if not return_dict:
            return (mixture,)
        return MixtureAudioPipelineOutput(mixture, self.sample_rate, self.mixture_of, band.sampling)
