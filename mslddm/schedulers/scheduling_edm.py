"""EDM (Karras et al., 2022) noise schedule and training noise for latent multi-source diffusion, and
:class:`EDMScheduler`, the diffusers-style facade over the samplers of :mod:`.sampling`.

The math is kept in small functions (k-diffusion style): :func:`get_sigmas_karras`, :func:`edm_scalings` (in
:mod:`.sampling`, with the :class:`~.sampling.Denoiser` that applies them), :func:`sample_training_sigmas`, and the
samplers ``sample_euler``, ``sample_heun``, ``sample_dpmpp_2m``, ``sample_consistency``. The scheduler remembers nothing of a run: it
resolves the settings and returns what sampling needs, and a pipeline's denoising loop is::

    plan = scheduler.sampling_plan(scheduler.sampling_settings(sampler, num_inference_steps, s_churn), device)
    x = noise * scheduler.init_noise_sigma
    x = scheduler.sample(scheduler.denoiser(unet), x, plan, generator=generator, impute=impute, callback=callback)

With ``sampler="euler"`` and ``s_churn=20`` over 150 steps this is exactly the sampler the MSLDM paper used:
Karras sigmas (0.01, 3, rho 7) plus a final 0, churn ``gamma = min(s_churn / N, sqrt(2) - 1)`` at every step,
first-order Euler, no Heun correction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from .sampling import (
    SAMPLER_DEFAULTS,
    SAMPLER_FUNCTIONS,
    SAMPLERS,
    Denoiser,
    SamplingSettings,
    edm_scalings,
)

__all__ = ["SAMPLERS", "EDMScheduler", "SamplingPlan", "edm_loss_weight", "edm_scalings", "get_sigmas_karras",
           "sample_training_sigmas"]


def get_sigmas_karras(
    n: int, sigma_min: float, sigma_max: float, rho: float = 7.0, device: Union[str, torch.device] = "cpu"
) -> torch.Tensor:
    """Constructs the noise schedule of Karras et al. (2022), eq. 5: ``n`` sigmas from max to min, then 0."""
    if n < 1:
        raise ValueError(f"num_inference_steps must be at least 1, got {n}.")
    ramp = torch.arange(n, dtype=torch.float32, device=device) / max(n - 1, 1)
    max_inv_rho, min_inv_rho = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def edm_loss_weight(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """EDM loss weight ``lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma * sigma_data)^2``."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def sample_training_sigmas(
    batch_size: int,
    distribution: str = "uniform",
    *,
    sigma_min: float = 0.0,
    sigma_max: float = 3.0,
    log_normal_mean: float = -1.2,
    log_normal_std: float = 1.2,
    generator: Optional[torch.Generator] = None,
    device: Union[str, torch.device] = "cpu",
) -> torch.Tensor:
    """Draws training noise levels: ``uniform`` on [sigma_min, sigma_max) as the MSLDM code, or ``log_normal``."""
    if distribution == "uniform":
        u = torch.rand(batch_size, generator=generator, device=generator.device if generator else "cpu")
        sigma = sigma_min + (sigma_max - sigma_min) * u
        # torch.rand can return exactly 0 (p = 2^-24 per draw: a few times in a paper-length run), which would
        # give log(0) and an infinite loss weight; the smallest sampling sigma is far above this floor.
        sigma = sigma.clamp_min(1e-6)
    elif distribution == "log_normal":
        n = torch.randn(batch_size, generator=generator, device=generator.device if generator else "cpu")
        sigma = (log_normal_mean + log_normal_std * n).exp()
    else:
        raise ValueError(f"distribution must be 'uniform' or 'log_normal', got {distribution!r}.")
    return sigma.to(device)


@dataclass(frozen=True)
class SamplingPlan:
    """Everything one sampling run reads: its resolved ``settings``, the Karras ``sigmas`` (ending with 0), the
    noise conditioning ``timesteps`` (``c_noise`` of every model evaluation, before churn) and the churn bounds."""

    settings: SamplingSettings
    sigmas: torch.Tensor
    timesteps: torch.Tensor
    s_tmin: float = 0.0
    s_tmax: Optional[float] = None
    s_noise: float = 1.0

    def __len__(self) -> int:
        return len(self.timesteps)


class EDMScheduler(SchedulerMixin, ConfigMixin):
    """EDM sampling for MSLDM: Karras sigmas, and the samplers of :mod:`.sampling` with their defaults.

    Args:
        sigma_min, sigma_max, rho: the Karras schedule (paper: 0.01, 3.0, 7).
        sigma_data: the data standard deviation used by the preconditioning (paper: 0.4).
        sampler: this pipeline's default sampler, one of ``"euler"`` (paper), ``"heun"``, ``"dpmpp_2m"``,
            ``"consistency"`` (a consistency-distilled student's, docs/distillation.md).
        num_inference_steps, s_churn: this pipeline's defaults for its default ``sampler``; None means the
            sampler's own from ``SAMPLER_DEFAULTS`` (euler 150 steps churn 20, heun 50 / 0, dpmpp_2m 25 / 0,
            consistency 4 / 0).
            Another sampler asked for by name always gets its own defaults.
        s_tmin, s_tmax, s_noise: churn only where ``s_tmin <= sigma <= s_tmax`` (``s_tmax=None``: no upper bound),
            with noise scaled by ``s_noise``.
        initial_noise: ``"sigma_max"`` (the paper: ``x = sigma_max n``) or ``"marginal"`` (``x = sqrt(sigma_max^2 +
            sigma_data^2) n``, the total standard deviation of the noised data at ``sigma_max``; matters when
            ``sigma_max`` is only a few times ``sigma_data``: the paper-style start then lacks the data's energy).
        training_sigma_distribution: ``"uniform"`` (MSLDM code) or ``"log_normal"`` (EDM paper).
        training_sigma_min, training_sigma_max: bounds of the uniform training distribution (paper: [0, 3)).
        training_log_normal_mean, training_log_normal_std: parameters of the log-normal option (EDM: -1.2, 1.2).
        reconstruction_guidance: this pipeline's default weight of reconstruction guidance in partial generation,
            continuation and later windows (``MultiSourcePipelineBase.__call__``); 0: plain imputation.
        clip_denoised: clamp the denoised estimate to ``[-clip_denoised, clip_denoised]`` in sampling and training
            (MSDM on waveforms: 1.0); None (MSLDM on latents): no clamp.
    """

    order = 1

    @register_to_config
    def __init__(
        self,
        sigma_min: float = 0.01,
        sigma_max: float = 3.0,
        sigma_data: float = 0.4,
        rho: float = 7.0,
        sampler: str = "euler",
        s_churn: Optional[float] = None,
        s_tmin: float = 0.0,
        s_tmax: Optional[float] = None,
        s_noise: float = 1.0,
        num_inference_steps: Optional[int] = None,
        initial_noise: str = "sigma_max",
        training_sigma_distribution: str = "uniform",
        training_sigma_min: float = 0.0,
        training_sigma_max: float = 3.0,
        training_log_normal_mean: float = -1.2,
        training_log_normal_std: float = 1.2,
        clip_denoised: Optional[float] = None,
        reconstruction_guidance: float = 0.0,
    ):
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}.")
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"Need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}.")
        if initial_noise not in ("sigma_max", "marginal"):
            raise ValueError(f"initial_noise must be 'sigma_max' or 'marginal', got {initial_noise!r}.")
        if sigma_data is None or not sigma_data > 0:
            raise ValueError(f"sigma_data must be a positive number, got {sigma_data!r}.")
        if clip_denoised is not None and not clip_denoised > 0:
            raise ValueError(f"clip_denoised must be a positive number or None, got {clip_denoised!r}.")
        # Set only by set_timesteps, for outside code written against diffusers; sampling never reads them.
        self.sigmas: Optional[torch.Tensor] = None
        self.timesteps: Optional[torch.Tensor] = None
        self.settings: Optional[SamplingSettings] = None
        self.num_inference_steps: Optional[int] = None

    # ----------------------------------------------------------------------------------------------------------
    # Settings: the one place where defaults are resolved
    # ----------------------------------------------------------------------------------------------------------
    def sampling_settings(self, sampler: Optional[str] = None, num_inference_steps: Optional[int] = None,
                          s_churn: Optional[float] = None) -> SamplingSettings:
        """The sampler, steps and churn a run uses: explicit values win, then this pipeline's defaults for its
        own sampler (``config.num_inference_steps``, ``config.s_churn``), then the sampler's own."""
        sampler = sampler or self.config.sampler
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}.")
        own = sampler == self.config.sampler
        defaults = SAMPLER_DEFAULTS[sampler]
        if num_inference_steps is None:
            num_inference_steps = (self.config.num_inference_steps if own else None) or defaults.num_inference_steps
        if s_churn is None:
            s_churn = self.config.s_churn if own and self.config.s_churn is not None else defaults.s_churn
        if not isinstance(num_inference_steps, int) or isinstance(num_inference_steps, bool) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}.")
        s_churn = float(s_churn)
        if s_churn < 0 or not math.isfinite(s_churn):
            raise ValueError(f"s_churn must be a finite number >= 0, got {s_churn}.")
        if s_churn > 0 and not defaults.takes_churn:
            raise ValueError(f"sampler={sampler!r} takes no churn; pass s_churn=0.")
        return SamplingSettings(sampler, num_inference_steps, s_churn)

    def separation_settings(self, num_inference_steps: Optional[int] = None,
                            s_churn: Optional[float] = None) -> SamplingSettings:
        """Separation's settings: always churned Euler (MSDM's separator), unset steps and churn resolved as for
        generation with ``sampler="euler"`` (this pipeline's own when its sampler is Euler, else Euler's)."""
        return self.sampling_settings("euler", num_inference_steps, s_churn)

    def sampling_plan(self, settings: SamplingSettings, device: Union[str, torch.device, None] = None) -> SamplingPlan:
        """The sigmas and noise conditioning of a run with ``settings`` (from :meth:`sampling_settings`)."""
        c, n = self.config, settings.num_inference_steps
        sigmas = get_sigmas_karras(n, c.sigma_min, c.sigma_max, c.rho, device=device or "cpu")
        if settings.sampler == "heun":  # a correction evaluation at every next sigma except the final 0
            evals = torch.stack([s for i in range(n) for s in (sigmas[i], sigmas[i + 1]) if s > 0])
        else:
            evals = sigmas[:-1]
        return SamplingPlan(settings, sigmas, edm_scalings(evals, c.sigma_data)[3], c.s_tmin, c.s_tmax, c.s_noise)

    def set_timesteps(
        self,
        num_inference_steps: Optional[int] = None,
        device: Union[str, torch.device] = None,
        *,
        sampler: Optional[str] = None,
        s_churn: Optional[float] = None,
    ) -> SamplingSettings:
        """diffusers' entry point, for outside code only: sets ``sigmas``, ``timesteps`` and ``settings`` from
        :meth:`sampling_plan` and returns the settings. Nothing in mslddm reads these attributes."""
        plan = self.sampling_plan(self.sampling_settings(sampler, num_inference_steps, s_churn), device)
        self.sigmas, self.timesteps, self.settings = plan.sigmas, plan.timesteps, plan.settings
        self.num_inference_steps = plan.settings.num_inference_steps
        return plan.settings

    @property
    def init_noise_sigma(self) -> float:
        """Initial noise scale: ``sigma_max`` (the first Karras sigma, the paper's), or with
        ``initial_noise="marginal"`` the total std ``sqrt(sigma_max^2 + sigma_data^2)`` of noised data there."""
        c = self.config
        if c.initial_noise == "marginal":
            return float((c.sigma_max**2 + c.sigma_data**2) ** 0.5)
        return float(c.sigma_max)

    # ----------------------------------------------------------------------------------------------------------
    # Sampling
    # ----------------------------------------------------------------------------------------------------------
    def denoiser(self, model) -> Denoiser:
        """The preconditioned denoiser ``D(x; sigma)`` around ``model`` with this scheduler's ``sigma_data``."""
        return Denoiser(model, self.config.sigma_data, clip=self.config.clip_denoised)

    @staticmethod
    def sample(denoiser, sample: torch.Tensor, plan: SamplingPlan, generator=None, impute=None,
               callback=None) -> torch.Tensor:
        """Runs the sampler of ``plan`` from ``sample`` (noise at ``init_noise_sigma``); reads only its arguments."""
        return SAMPLER_FUNCTIONS[plan.settings.sampler](
            denoiser, sample, plan.sigmas, s_churn=plan.settings.s_churn, s_tmin=plan.s_tmin, s_tmax=plan.s_tmax,
            s_noise=plan.s_noise, generator=generator, impute=impute, callback=callback)

    # ----------------------------------------------------------------------------------------------------------
    # Training
    # ----------------------------------------------------------------------------------------------------------
    def sample_training_sigmas(
        self, batch_size: int, generator: Optional[torch.Generator] = None, device="cpu"
    ) -> torch.Tensor:
        """Draws one training noise level per item from the configured distribution."""
        c = self.config
        return sample_training_sigmas(
            batch_size,
            c.training_sigma_distribution,
            sigma_min=c.training_sigma_min,
            sigma_max=c.training_sigma_max,
            log_normal_mean=c.training_log_normal_mean,
            log_normal_std=c.training_log_normal_std,
            generator=generator,
            device=device,
        )

    def loss_weight(self, sigma: torch.Tensor) -> torch.Tensor:
        """EDM loss weight for noise levels ``sigma``."""
        return edm_loss_weight(sigma, self.config.sigma_data)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
        """``x + sigma * n`` with one sigma per batch item (or one for all)."""
        sigmas = torch.as_tensor(sigmas).to(original_samples)
        return original_samples + sigmas.reshape(-1, *([1] * (original_samples.ndim - 1))) * noise

    def __len__(self):
        return self.num_inference_steps or 0
