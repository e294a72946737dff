"""EDM sampling as small functions (k-diffusion style): the denoiser wrapper, the samplers, their defaults.

- :class:`Denoiser` holds the EDM preconditioning (Karras et al., 2022, Table 1), the only place where the four
  coefficients are applied: ``D(x; sigma) = c_skip x + c_out F(c_in x, c_noise)``. Training and sampling both use it.
- ``sample_euler``, ``sample_heun``, ``sample_dpmpp_2m``, ``sample_consistency`` take ``(denoiser, x, sigmas, ...)``
  and know nothing of the network. ``x`` starts at ``sigmas[0]`` times unit noise; ``sigmas`` ends with 0.
- **Imputation** (partial generation) is one hook, ``impute(x, sigma, generator) -> x``, that every sampler calls
  right before every model evaluation with the noise level the sample is at (before churn): the pipeline replaces
  the given stems' channels by ``known + sigma * fresh noise`` there. Heun's correction evaluation is imputed at
  the next sigma. Every sampler's update is elementwise, so what the update writes into the known channels
  (including a multistep history) never reaches the generated channels except through the model, which always
  sees freshly imputed known channels; the caller sets the known channels to their clean values at the end.
- ``callback({"i", "x", "sigma", "sigma_hat", "denoised"})`` runs after every model evaluation (``i`` counts
  evaluations); a tensor it returns replaces ``x``.
- :data:`SAMPLER_DEFAULTS` is the one table of default steps and churn that the pipeline, CLI, web page, API,
  evaluation and training validation read (through :meth:`EDMScheduler.sampling_settings`, which puts a
  pipeline's own scheduler config first).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Optional

import torch
from diffusers.utils.torch_utils import randn_tensor

from ..randomness import Generator
from .sampler_table import SAMPLER_DEFAULTS, SAMPLERS, SEPARATION_METHODS, SamplerDefaults  # noqa: F401

Impute = Callable[[torch.Tensor, torch.Tensor, Generator], torch.Tensor]
Callback = Callable[[dict], Optional[torch.Tensor]]




@dataclass(frozen=True)
class SamplingSettings:
    """What one sampling run uses: sampler, steps, churn (resolved from the defaults and the user's values)."""

    sampler: str
    num_inference_steps: int
    s_churn: float

    @property
    def model_evaluations(self) -> int:
        return num_model_evaluations(self.sampler, self.num_inference_steps)

    def to_dict(self) -> dict:
        return {**asdict(self), "model_evaluations": self.model_evaluations}


def num_model_evaluations(sampler: str, num_inference_steps: int) -> int:
    """Model evaluations of a run: one per step, Heun two per step but the last (its step to sigma = 0 is Euler)."""
    return 2 * num_inference_steps - 1 if sampler == "heun" else num_inference_steps


def edm_scalings(sigma: torch.Tensor, sigma_data: float):
    """EDM preconditioning (Karras et al., 2022, Table 1): ``c_skip, c_out, c_in, c_noise`` in float32."""
    sigma = torch.as_tensor(sigma, dtype=torch.float32)
    c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
    c_out = sigma * sigma_data / (sigma**2 + sigma_data**2).sqrt()
    c_in = 1 / (sigma**2 + sigma_data**2).sqrt()
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


def _expand(coef: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcasts a scalar or per-item coefficient over the remaining dimensions of ``like``."""
    coef = torch.as_tensor(coef, device=like.device, dtype=like.dtype)
    return coef.reshape(-1, *([1] * (like.ndim - 1))) if coef.ndim else coef


def _parameter_dtype(model) -> torch.dtype:
    """The dtype of a model's weights, also through DDP and other wrappers that hide ``.dtype`` (float32 for a
    model without weights)."""
    parameters = model.parameters() if hasattr(model, "parameters") else iter(())
    return next(iter(parameters), torch.zeros(())).dtype


class Denoiser:
    """``D(x; sigma) = c_skip x + c_out F(c_in x, c_noise)`` around a network ``F(x, c_noise).sample``.

    ``x`` and the result are float32 whatever the network's dtype: the input is cast to the network's dtype after
    scaling, the noise conditioning is passed in float32 (the network's time embedding reads it in float32), and
    the output is read back as float32 before the skip connection. ``conditioning`` (given stems, for a UNet
    trained with them) passes through to the network unscaled. With ``clip``, the estimate is clamped to
    ``[-clip, clip]`` (MSDM's waveforms: 1.0).
    """

    def __init__(self, model, sigma_data: float, clip: Optional[float] = None):
        self.model, self.sigma_data, self.clip = model, float(sigma_data), clip

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, conditioning: Optional[torch.Tensor] = None
                 ) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
        if sigma.ndim == 0:
            sigma = sigma.expand(x.shape[0])
        c_skip, c_out, c_in, c_noise = edm_scalings(sigma, self.sigma_data)
        x = x.float()
        extra = {} if conditioning is None else {"conditioning": conditioning}  # only conditioned UNets take one
        out = self.model((x * _expand(c_in, x)).to(_parameter_dtype(self.model)), c_noise, **extra).sample
        denoised = _expand(c_skip, x) * x + _expand(c_out, x) * out.float()
        return denoised if self.clip is None else denoised.clamp(-self.clip, self.clip)


def guided(denoiser: Callable, conditioning: torch.Tensor, scale: float) -> Callable:
    """Classifier-free guidance on a conditioning input (Ho & Salimans, 2022): ``D_u + scale (D_c - D_u)``, where
    ``D_c`` reads ``conditioning`` and ``D_u`` reads zeros (what training gave its unconditioned items: for the given
    stems, total generation). Both in one batched evaluation; ``scale`` 1 is ``D_c`` alone, 0 is ``D_u``."""
    if scale == 1:
        return lambda x, sigma: denoiser(x, sigma, conditioning=conditioning)
    both_conditionings = torch.cat([conditioning, torch.zeros_like(conditioning)])

    def guided_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).expand(x.shape[0])
        with_given, without = denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]),
                                       conditioning=both_conditionings).chunk(2)
        return without + scale * (with_given - without)

    return guided_denoiser


def reconstruction_guided(denoiser: Callable, known: torch.Tensor, mask: torch.Tensor, weight: float) -> Callable:
    """Reconstruction guidance (Ho et al., 2022, "Video Diffusion Models", eq. 7) for imputation: the estimate of
    the free channels moves against the gradient of how far the estimate of the known ones is from them,
    ``D_free - weight / 2 * grad_{x_free} ||known - D_known(x)||^2``, so the generated stems are drawn towards
    what the given ones need of them rather than only seeing them as noisy input. One backward pass through the
    network per evaluation (about three times a plain evaluation's cost); ``weight`` 0 is plain imputation."""
    if weight == 0:
        return denoiser
    free = ~mask

    def guided_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            denoised = denoiser(x, sigma)
            error = torch.where(mask, denoised - known.float(), torch.zeros((), device=x.device)).square().sum()
            (gradient,) = torch.autograd.grad(error, x)
        return torch.where(free, denoised.detach() - weight / 2 * gradient, denoised.detach())

    return guided_denoiser


def churn_gamma(sigma: torch.Tensor, num_steps: int, s_churn: float, s_tmin: float = 0.0,
                s_tmax: Optional[float] = None) -> float:
    """Karras et al. (2022), Algorithm 2: ``gamma = min(s_churn / N, sqrt(2) - 1)`` where ``s_tmin <= sigma <=
    s_tmax``, else 0."""
    s_tmax = math.inf if s_tmax is None else s_tmax
    if s_churn <= 0 or not s_tmin <= float(sigma) <= s_tmax:
        return 0.0
    return min(s_churn / num_steps, math.sqrt(2) - 1)


def _start_step(x, sigma, num_steps, s_churn, s_tmin, s_tmax, s_noise, generator, impute):
    """What Euler and Heun do first in a step: impute the known channels at ``sigma``, then churn."""
    if impute is not None:
        x = impute(x, sigma, generator)
    return _churn(x, sigma, churn_gamma(sigma, num_steps, s_churn, s_tmin, s_tmax), s_noise, generator)


def _churn(x, sigma, gamma, s_noise, generator):
    """``sigma_hat = sigma (1 + gamma)``, ``x_hat = x + sqrt(sigma_hat^2 - sigma^2) s_noise eps``."""
    if gamma <= 0:
        return x, sigma
    sigma_hat = sigma * (1 + gamma)
    eps = randn_tensor(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x + (sigma_hat**2 - sigma**2).sqrt() * s_noise * eps, sigma_hat


def _after(callback, i, x, sigma, sigma_hat, denoised):
    if callback is None:
        return x
    replaced = callback({"i": i, "x": x, "sigma": sigma, "sigma_hat": sigma_hat, "denoised": denoised})
    return x if replaced is None else replaced


@torch.no_grad()
def sample_euler(denoiser, x, sigmas, *, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: Optional[float] = None,
                 s_noise: float = 1.0, generator: Generator = None, impute: Optional[Impute] = None,
                 callback: Optional[Callback] = None) -> torch.Tensor:
    """Implements Algorithm 2 (Euler steps) from Karras et al. (2022): MSLDM's sampler with churn 20 over 150 steps."""
    n = len(sigmas) - 1
    for i in range(n):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x, sigma_hat = _start_step(x, sigma, n, s_churn, s_tmin, s_tmax, s_noise, generator, impute)
        denoised = denoiser(x, sigma_hat)
        x = x + (x - denoised) / sigma_hat * (sigma_next - sigma_hat)
        x = _after(callback, i, x, sigma, sigma_hat, denoised)
    return x


@torch.no_grad()
def sample_heun(denoiser, x, sigmas, *, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: Optional[float] = None,
                s_noise: float = 1.0, generator: Generator = None, impute: Optional[Impute] = None,
                callback: Optional[Callback] = None) -> torch.Tensor:
    """Implements Algorithm 2 (Heun steps) from Karras et al. (2022); the step to sigma = 0 is Euler."""
    n, evaluation = len(sigmas) - 1, 0
    for i in range(n):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x, sigma_hat = _start_step(x, sigma, n, s_churn, s_tmin, s_tmax, s_noise, generator, impute)
        denoised = denoiser(x, sigma_hat)
        d = (x - denoised) / sigma_hat
        dt = sigma_next - sigma_hat
        if sigma_next == 0:
            x = x + d * dt
            x = _after(callback, evaluation, x, sigma, sigma_hat, denoised)
            evaluation += 1
            continue
        x_2 = x + d * dt
        # The Euler prediction is an evaluation too (callbacks see every one, and may replace it).
        x_2 = _after(callback, evaluation, x_2, sigma, sigma_hat, denoised)
        if impute is not None:
            x_2 = impute(x_2, sigma_next, generator)
        denoised_2 = denoiser(x_2, sigma_next)
        d_2 = (x_2 - denoised_2) / sigma_next
        x = x + (d + d_2) / 2 * dt
        x = _after(callback, evaluation + 1, x, sigma_next, sigma_next, denoised_2)
        evaluation += 2
    return x


@torch.no_grad()
def sample_dpmpp_2m(denoiser, x, sigmas, *, generator: Generator = None, impute: Optional[Impute] = None,
                    callback: Optional[Callback] = None, **unused) -> torch.Tensor:
    """Implements DPM-Solver++(2M) (Lu et al., 2022) on the EDM sigmas, as k-diffusion's ``sample_dpmpp_2m``."""
    old_denoised = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        if impute is not None:
            x = impute(x, sigma, generator)
        denoised = denoiser(x, sigma)
        if sigma_next == 0:
            x = denoised
        else:
            t, t_next = -sigma.log(), -sigma_next.log()
            h = t_next - t
            update = denoised
            if old_denoised is not None:
                r = (t - (-sigmas[i - 1].log())) / h
                update = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (sigma_next / sigma) * x - torch.expm1(-h) * update
        old_denoised = denoised
        x = _after(callback, i, x, sigma, sigma, denoised)
    return x


@torch.no_grad()
def sample_consistency(denoiser, x, sigmas, *, generator: Generator = None, impute: Optional[Impute] = None,
                       callback: Optional[Callback] = None, **unused) -> torch.Tensor:
    """Implements Algorithm 1 (multistep consistency sampling) from Song et al. (2023) on the EDM sigmas.

    The denoiser is read as a consistency function (a distilled student maps any point of an ODE trajectory to
    its end): each step jumps to ``denoised`` and re-noises it to the next sigma with fresh noise. The EDM
    preconditioning already makes ``D(x; 0) = x``, so the re-noising is ``denoised + sigma_next n`` (the paper's
    ``sqrt(sigma_next^2 - eps^2)`` with ``eps = 0``). One step is ``D(x; sigma_max)``.
    """
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        if impute is not None:
            x = impute(x, sigma, generator)
        denoised = denoiser(x, sigma)
        x = denoised
        if sigma_next > 0:
            x = denoised + sigma_next * randn_tensor(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x = _after(callback, i, x, sigma, sigma, denoised)
    return x


SAMPLER_FUNCTIONS = {"euler": sample_euler, "heun": sample_heun, "dpmpp_2m": sample_dpmpp_2m,
                     "consistency": sample_consistency}



def _constrain(x: torch.Tensor, mixture: torch.Tensor, index: int) -> torch.Tensor:
    """``x`` with source ``index`` replaced by the mixture minus the other sources (the Dirac constraint)."""
    x = x.clone()
    x[:, index] = mixture[:, 0] - (x.sum(dim=1) - x[:, index])
    return x


@torch.no_grad()
def sample_separation(denoiser, x, sigmas, mixture, *, method: str = "dirac", constrained_source: int = 0,
                      num_resamples: int = 1, s_churn: float = 0.0, s_tmin: float = 0.0,
                      s_tmax: Optional[float] = None, s_noise: float = 1.0, generator: Generator = None,
                      callback: Optional[Callback] = None) -> torch.Tensor:
    """Source separation with a multi-source prior (MSDM, Mariani et al. 2024): sources ``x`` ``(B, K, T)`` whose
    sum is ``mixture`` ``(B, 1, T)``, by Euler steps with churn on the posterior.

    ``method="dirac"`` (MSDM's Dirac separator): source ``constrained_source`` is always the mixture minus the
    others, and the other sources follow ``d_k - d_c`` (the prior's ODE derivatives, minus the constrained
    source's: the derivative of the joint density on the constraint's surface). ``method="gaussian"``: every
    source is free, with the likelihood ``y ~ N(sum x, K sigma^2)`` added to the score,
    ``d_k = (x_k - D_k) / sigma - (y - sum x) / (K sigma)``, and the final sources are moved by an equal share of
    what their sum misses. Either way the result sums to the mixture. ``num_resamples`` > 1 repeats every step
    from re-noised estimates (RePaint-style resampling), as MSDM's separator does.
    """
    if method not in SEPARATION_METHODS:
        raise ValueError(f"method must be one of {SEPARATION_METHODS}, got {method!r}.")
    if num_resamples < 1:
        raise ValueError(f"num_resamples must be at least 1, got {num_resamples}.")
    k = x.shape[1]
    if not -k <= constrained_source < k:
        raise ValueError(f"constrained_source {constrained_source} is not one of the {k} sources.")
    constrained_source %= k
    n = len(sigmas) - 1

    def derivative(x_hat, sigma_hat):
        if method == "dirac":
            x_hat = _constrain(x_hat, mixture, constrained_source)
        d = (x_hat - denoiser(x_hat, sigma_hat)) / sigma_hat
        if method == "dirac":
            d = d - d[:, constrained_source:constrained_source + 1]
        else:
            d = d - (mixture - x_hat.sum(dim=1, keepdim=True)) / (k * sigma_hat)
        return x_hat, d

    evaluation = 0
    for i in range(n):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        for r in range(num_resamples):
            x_hat, sigma_hat = _churn(x, sigma, churn_gamma(sigma, n, s_churn, s_tmin, s_tmax), s_noise, generator)
            x_hat, d = derivative(x_hat, sigma_hat)
            x = x_hat + d * (sigma_next - sigma_hat)
            if callback is not None:
                callback({"i": evaluation, "x": x, "sigma": sigma, "sigma_hat": sigma_hat, "denoised": None})
            evaluation += 1
            if r < num_resamples - 1 and sigma_next > 0:  # back to sigma, and the step again
                eps = randn_tensor(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                x = x + (sigma**2 - sigma_next**2).sqrt() * eps
    if method == "dirac":
        return _constrain(x, mixture, constrained_source)
    return x + (mixture - x.sum(dim=1, keepdim=True)) / k
