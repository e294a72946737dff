"""MultiSourceDiffusionPipeline: MSDM, multi-source diffusion on the stems' waveforms (the paper's main baseline).

MSDM (Mariani et al., 2024) models the stems' raw audio jointly: one 1-D UNet of the MSLDM family on
``num_stems`` waveform channels at 22050 Hz, EDM with ``sigma_data`` 0.2 and the denoised estimate clamped to
[-1, 1]. It does total and partial generation with the conventions of :class:`MultiSourceLatentPipeline` (the
waveform is its own "latent": one channel per stem, one frame per sample), and what a latent model cannot do
exactly: **source separation**, sampling stems whose sum is a given mixture (:meth:`separate`).
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

import torch
from diffusers.utils.torch_utils import randn_tensor

from ..models.unet_1d_multisource import MultiSourceUNet1DModel
from ..schedulers.sampling import SEPARATION_METHODS, sample_separation
from ..schedulers.scheduling_edm import EDMScheduler
from ..stems import DEFAULT_STEMS, load_stem
from .codecs import WaveformCodec
from ..randomness import Generator
from .pipeline_base import EDM_SCHEDULER, MultiSourcePipelineBase
from .pipeline_output import MultiSourceAudioPipelineOutput


class MultiSourceDiffusionPipeline(MultiSourcePipelineBase):
    r"""Pipeline for multi-source diffusion on waveforms (MSDM): total and partial generation, and separation.

    Args:
        unet: a :class:`MultiSourceUNet1DModel` with ``in_channels = len(stem_names)`` (one waveform per stem).
        scheduler: the :class:`EDMScheduler` (MSDM: ``sigma_data`` 0.2, ``clip_denoised`` 1.0, Karras sigmas from
            1e-4 to 20).
        stem_names: names of the stems (default: bass, drums, guitar, piano).
        sample_rate: audio sample rate (default 22050).
    """

    model_cpu_offload_seq = "unet"
    model_kinds = {"MultiSourceUNet1DModel": "msdm"}
    loads_every_kind = False
    vae = None  # no autoencoder (its codec is the identity): `pipe.vae` says so to evaluation and compare

    def __init__(self, unet: MultiSourceUNet1DModel, scheduler: EDMScheduler,
                 stem_names: Optional[Sequence[str]] = None, sample_rate: Optional[int] = 22050):
        super().__init__()
        self.register_pipeline(list(stem_names or DEFAULT_STEMS), sample_rate or 22050, unet=unet,
                               scheduler=scheduler)

    @classmethod
    def component_classes(cls) -> Dict[str, set]:
        return {"unet": {("mslddm.models.unet_1d_multisource", "MultiSourceUNet1DModel")},
                "scheduler": {EDM_SCHEDULER}}

    @property
    def codec(self) -> WaveformCodec:
        return WaveformCodec(self.sample_rate)

    # ----------------------------------------------------------------------------------------------------------
    # Separation
    # ----------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def separate(
        self,
        mixture,
        method: str = "dirac",
        num_inference_steps: Optional[int] = None,
        s_churn: Optional[float] = None,
        num_resamples: int = 1,
        constrained_stem: Optional[str] = None,
        num_samples: int = 1,
        generator: Generator = None,
        input_sample_rate: Optional[int] = None,
        window_s: Optional[float] = None,
        output_type: str = "np",
        return_dict: bool = True,
    ):
        r"""Separates a mixture into the pipeline's stems: samples stems whose sum is the mixture.

        Args:
            mixture: a file path, encoded bytes, an ``(array, sample_rate)`` tuple, or an array / tensor of shape
                ``(samples,)`` or ``(channels, samples)`` (mixed to mono, resampled to :attr:`sample_rate`).
            method: ``"dirac"`` (MSDM's Dirac separator: one stem is the mixture minus the others throughout) or
                ``"gaussian"`` (a Gaussian likelihood on the sum, then the residual shared equally).
            num_inference_steps, s_churn: the churned Euler sampler's steps and churn (default: the pipeline's
                scheduler config, see ``EDMScheduler.separation_settings``).
            num_resamples: repeats of every step from re-noised estimates (1: none).
            constrained_stem: the stem set to the mixture minus the others (Dirac; default the first stem).
            num_samples: separations of the same mixture (each with its own generator when a list is given).
            generator: a ``torch.Generator`` or one per sample.
            input_sample_rate: the sample rate of a bare array ``mixture`` (default: the pipeline's).
            window_s: mixtures longer than this are separated in consecutive windows of it (default: the UNet's
                ``window_frames``); every window sums to its part of the mixture.
            output_type: ``"np"`` or ``"pt"``.

        Returns:
            :class:`MultiSourceAudioPipelineOutput` with ``stems`` ``(num_samples, num_stems, samples)``, whose
            sum over stems is ``mixture`` ``(num_samples, samples)`` (to float32 rounding), or ``(stems, mixture)``.
        """
        # 1. Check inputs and load the mixture
        if method not in SEPARATION_METHODS:
            raise ValueError(f"method must be one of {SEPARATION_METHODS}, got {method!r}.")
        names = self.stem_names
        if constrained_stem is not None and constrained_stem not in names:
            raise ValueError(f"constrained_stem {constrained_stem!r} is not one of this pipeline's stems {names}.")
        self.check_batch_arguments(num_samples, generator, output_type, output_types=("np", "pt"))
        if not isinstance(num_resamples, int) or num_resamples < 1:
            raise ValueError(f"num_resamples must be a positive integer, got {num_resamples!r}.")
        if isinstance(mixture, torch.Tensor):
            mixture = mixture.detach().cpu().float().numpy()
        audio = load_stem("mixture", mixture, self.sample_rate, source_sample_rate=input_sample_rate)
        length = len(audio)
        device = self._execution_device
        settings = self.scheduler.separation_settings(num_inference_steps, s_churn)
        plan = self.scheduler.sampling_plan(settings, device)

        # 2. Windows: whole multiples of the UNet's stride, the last one padded with silence
        multiple = self.unet.length_multiple
        window = self.window_settings(window_s)["window"]
        frames = math.ceil(length / multiple) * multiple
        starts = list(range(0, frames, window))
        y = torch.zeros(1, 1, frames)
        y[0, 0, :length] = torch.from_numpy(audio)
        y = y.to(device).expand(num_samples, 1, frames)
        self._num_timesteps = len(plan) * num_resamples * len(starts)

        # 3. Sample each window from noise at sigma_max, constrained by its part of the mixture
        denoiser = self.scheduler.denoiser(self.unet)
        k = len(names)
        noise = randn_tensor((num_samples, k, frames), generator=generator, device=device, dtype=torch.float32)
        out = torch.zeros(num_samples, k, frames, device=device)
        with self.progress_bar(total=self._num_timesteps) as progress_bar:
            for start in starts:
                span = slice(start, min(start + window, frames))
                x = noise[..., span] * self.scheduler.init_noise_sigma
                out[..., span] = sample_separation(
                    denoiser, x, plan.sigmas, y[..., span], method=method,
                    constrained_source=names.index(constrained_stem) if constrained_stem else 0,
                    num_resamples=num_resamples, s_churn=settings.s_churn, s_tmin=plan.s_tmin, s_tmax=plan.s_tmax,
                    s_noise=plan.s_noise, generator=generator, callback=lambda info: progress_bar.update())
        if not torch.isfinite(out).all():
            raise FloatingPointError("Separation produced NaN or infinite audio; try float32 or fewer churn.")
        stems, mix = out[..., :length], y[:, 0, :length]
        sampling = {**settings.to_dict(), "method": method, "num_resamples": num_resamples,
                    "model_evaluations": self._num_timesteps, "windows": len(starts)}
        self.maybe_free_model_hooks()
        if output_type == "np":
            stems, mix = stems.cpu().numpy(), mix.cpu().numpy()
        if not return_dict:
            return stems, mix
        return MultiSourceAudioPipelineOutput(stems, mix, names, self.sample_rate, list(names), sampling)


def msdm_scheduler(**overrides) -> EDMScheduler:
    """The EDM scheduler with MSDM's settings: sigma_data 0.2, log-normal training sigmas (mean -3, std 1), the
    denoised estimate clamped to [-1, 1], Karras sigmas from 1e-4 to 20, churned Euler (150 steps, churn 20)."""
    return EDMScheduler(**{"sigma_min": 1e-4, "sigma_max": 20.0, "sigma_data": 0.2, "rho": 7.0,
                           "sampler": "euler", "num_inference_steps": 150, "s_churn": 20.0,
                           "training_sigma_distribution": "log_normal", "training_log_normal_mean": -3.0,
                           "training_log_normal_std": 1.0, "clip_denoised": 1.0, **overrides})


__all__ = ["MultiSourceDiffusionPipeline", "WaveformCodec", "msdm_scheduler"]  # WaveformCodec: train_msldm.py
