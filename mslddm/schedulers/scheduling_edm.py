"""EDM (Karras et al., 2022) noise schedule, preconditioning and samplers for latent multi-source diffusion.

The math is kept in small functions (k-diffusion style): :func:`get_sigmas_karras`, :func:`edm_scalings`,
:func:`sample_training_sigmas`. :class:`EDMScheduler` wraps them in the diffusers scheduler shape
(``set_timesteps`` / ``step``) so that a pipeline's denoising loop reads as numbered steps.

One model evaluation per loop iteration::

    scheduler.set_timesteps(num_inference_steps)
    x = noise * scheduler.init_noise_sigma
    for _ in scheduler.timesteps:
        x_hat, sigma = scheduler.begin_step(x, generator)      # churn (Euler/Heun) at the start of a step
        out = model(scheduler.precondition_inputs(x_hat, sigma), scheduler.precondition_noise(sigma))
        denoised = scheduler.precondition_outputs(x_hat, out, sigma)
        x = scheduler.step(denoised, x_hat).prev_sample

With ``sampler="euler"`` and ``s_churn=20`` over 150 steps this is exactly the sampler the MSLDM paper used:
Karras sigmas (0.01, 3, rho 7) plus a final 0, churn ``gamma = min(s_churn / N, sqrt(2) - 1)`` at every step,
first-order Euler, no Heun correction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Tuple, Union

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

SAMPLERS = ("euler", "heun", "dpmpp_2m")
Generator = Optional[Union[torch.Generator, List[torch.Generator]]]


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


def edm_scalings(sigma: torch.Tensor, sigma_data: float) -> Tuple[torch.Tensor, ...]:
    """EDM preconditioning (Karras et al., 2022, Table 1): ``c_skip, c_out, c_in, c_noise``."""
    sigma = torch.as_tensor(sigma, dtype=torch.float32)
    c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
    c_out = sigma * sigma_data / (sigma**2 + sigma_data**2).sqrt()
    c_in = 1 / (sigma**2 + sigma_data**2).sqrt()
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


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


@dataclass
class EDMSchedulerOutput(BaseOutput):
    """``prev_sample``: the sample after this evaluation; ``denoised``: the model's clean estimate."""

    prev_sample: torch.Tensor
    denoised: torch.Tensor


class EDMScheduler(SchedulerMixin, ConfigMixin):
    """EDM sampling for MSLDM: Karras sigmas, churned Euler (the paper's sampler), Heun and DPM-Solver++(2M).

    Args:
        sigma_min, sigma_max, rho: the Karras schedule (paper: 0.01, 3.0, 7).
        sigma_data: the data standard deviation used by the preconditioning (paper: 0.4).
        sampler: default sampler, one of ``"euler"`` (paper), ``"heun"``, ``"dpmpp_2m"``.
        s_churn: default churn for ``"euler"`` (paper: 20). Heun defaults to no churn; DPM-Solver++ has none.
        s_tmin, s_tmax, s_noise: churn only where ``s_tmin <= sigma <= s_tmax`` (``s_tmax=None``: no upper bound),
            with noise scaled by ``s_noise``.
        training_sigma_distribution: ``"uniform"`` (MSLDM code) or ``"log_normal"`` (EDM paper).
        training_sigma_min, training_sigma_max: bounds of the uniform training distribution (paper: [0, 3)).
        training_log_normal_mean, training_log_normal_std: parameters of the log-normal option (EDM: -1.2, 1.2).
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
        s_churn: float = 20.0,
        s_tmin: float = 0.0,
        s_tmax: Optional[float] = None,
        s_noise: float = 1.0,
        training_sigma_distribution: str = "uniform",
        training_sigma_min: float = 0.0,
        training_sigma_max: float = 3.0,
        training_log_normal_mean: float = -1.2,
        training_log_normal_std: float = 1.2,
    ):
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}.")
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"Need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}.")
        self.sigmas: Optional[torch.Tensor] = None
        self.timesteps: Optional[torch.Tensor] = None
        self.num_inference_steps: Optional[int] = None
        self._reset_state()

    # ----------------------------------------------------------------------------------------------------------
    # Schedule
    # ----------------------------------------------------------------------------------------------------------
    def set_timesteps(
        self,
        num_inference_steps: int,
        device: Union[str, torch.device] = None,
        *,
        sampler: Optional[str] = None,
        s_churn: Optional[float] = None,
    ):
        """Sets the sigmas for ``num_inference_steps`` steps, and the sampler and churn for this run."""
        sampler = sampler or self.config.sampler
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}.")
        if s_churn is None:
            s_churn = self.config.s_churn if sampler == "euler" else 0.0
        if s_churn < 0 or not math.isfinite(s_churn):
            raise ValueError(f"s_churn must be a finite number >= 0, got {s_churn}.")
        if sampler == "dpmpp_2m" and s_churn > 0:
            raise ValueError("sampler='dpmpp_2m' is deterministic and takes no churn; pass s_churn=0.")
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}.")
        self.num_inference_steps = num_inference_steps
        self.sampler = sampler
        self.s_churn = float(s_churn)
        self.sigmas = get_sigmas_karras(
            num_inference_steps, self.config.sigma_min, self.config.sigma_max, self.config.rho, device=device or "cpu"
        )
        # The sigmas the model is evaluated at (before churn), one per loop iteration. Heun adds a correction
        # evaluation at every next sigma except the final 0.
        if sampler == "heun":
            evals = [s for i in range(num_inference_steps) for s in (self.sigmas[i], self.sigmas[i + 1])]
            evals = torch.stack([s for s in evals if s > 0])
        else:
            evals = self.sigmas[:-1]
        self.timesteps = edm_scalings(evals, self.config.sigma_data)[3]
        self._reset_state()

    def _reset_state(self):
        self._index = 0  # index of the current full step in self.sigmas
        self._in_correction = False  # Heun: the next evaluation is the correction at sigmas[index + 1]
        self._sigma_eval: Optional[torch.Tensor] = None
        self._heun_start: Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None
        self._prev_denoised: Optional[torch.Tensor] = None

    @property
    def init_noise_sigma(self) -> float:
        """Initial noise scale: ``sigma_max`` (the first Karras sigma)."""
        return float(self.config.sigma_max)

    @property
    def step_index(self) -> int:
        """Index of the current full step (0 .. num_inference_steps - 1)."""
        return self._index

    @property
    def is_step_start(self) -> bool:
        """True when the next evaluation begins a new step (where imputation and churn happen)."""
        return not self._in_correction

    @property
    def current_sigma(self) -> torch.Tensor:
        """Noise level at the start of the current step, ``sigmas[step_index]``."""
        self._check_ready()
        return self.sigmas[self._index]

    def _check_ready(self):
        if self.sigmas is None:
            raise RuntimeError("Call set_timesteps(num_inference_steps) before sampling.")
        if self._index >= self.num_inference_steps:
            raise RuntimeError("All steps have been taken; call set_timesteps again to sample anew.")

    # ----------------------------------------------------------------------------------------------------------
    # Preconditioning: the only place where the EDM coefficients are applied
    # ----------------------------------------------------------------------------------------------------------
    def precondition_inputs(self, sample: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """``c_in(sigma) * x``: the network's input."""
        return sample * _expand(edm_scalings(sigma, self.config.sigma_data)[2], sample)

    def precondition_noise(self, sigma: torch.Tensor) -> torch.Tensor:
        """``c_noise(sigma) = log(sigma) / 4``: the network's noise conditioning."""
        return edm_scalings(sigma, self.config.sigma_data)[3]

    def precondition_outputs(self, sample: torch.Tensor, model_output: torch.Tensor, sigma) -> torch.Tensor:
        """``D(x; sigma) = c_skip * x + c_out * F(c_in * x, c_noise)``: the denoised estimate (not clamped)."""
        c_skip, c_out, _, _ = edm_scalings(sigma, self.config.sigma_data)
        return _expand(c_skip, sample) * sample + _expand(c_out, sample) * model_output.to(sample.dtype)

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
        return original_samples + _expand(sigmas.to(original_samples), original_samples) * noise

    # ----------------------------------------------------------------------------------------------------------
    # Sampling
    # ----------------------------------------------------------------------------------------------------------
    def begin_step(self, sample: torch.Tensor, generator: Generator = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Returns the sample to evaluate and its noise level.

        At the start of a step of the Euler or Heun sampler this adds churn (Karras et al. 2022, Algorithm 2):
        ``sigma_hat = sigma * (1 + gamma)``, ``x_hat = x + sqrt(sigma_hat^2 - sigma^2) * s_noise * eps``.
        """
        self._check_ready()
        if self._in_correction:
            self._sigma_eval = self.sigmas[self._index + 1]
            return sample, self._sigma_eval
        sigma = self.sigmas[self._index]
        gamma = self._gamma(sigma)
        if gamma > 0:
            sigma_hat = sigma * (1 + gamma)
            eps = randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)
            sample = sample + (sigma_hat**2 - sigma**2).sqrt() * self.config.s_noise * eps
            sigma = sigma_hat
        self._sigma_eval = sigma
        return sample, sigma

    def _gamma(self, sigma: torch.Tensor) -> float:
        c = self.config
        s_tmax = math.inf if c.s_tmax is None else c.s_tmax
        if self.s_churn <= 0 or not (c.s_tmin <= float(sigma) <= s_tmax):
            return 0.0
        return min(self.s_churn / self.num_inference_steps, math.sqrt(2) - 1)

    def step(
        self, denoised: torch.Tensor, sample: torch.Tensor, return_dict: bool = True
    ) -> Union[EDMSchedulerOutput, Tuple[torch.Tensor, torch.Tensor]]:
        """Advances ``sample`` (as returned by :meth:`begin_step`) given the model's ``denoised`` estimate."""
        if self._sigma_eval is None:
            raise RuntimeError("Call begin_step(sample) before step(...).")
        sigma, sigma_next = self._sigma_eval, self.sigmas[self._index + 1]
        if self.sampler == "euler":
            prev = _euler(sample, denoised, sigma, sigma_next)
            self._index += 1
        elif self.sampler == "heun":
            prev = self._heun(sample, denoised, sigma, sigma_next)
        else:
            prev = self._dpmpp_2m(sample, denoised, sigma, sigma_next)
            self._index += 1
        self._sigma_eval = None
        if not return_dict:
            return prev, denoised
        return EDMSchedulerOutput(prev_sample=prev, denoised=denoised)

    def _heun(self, x, denoised, sigma, sigma_next):
        """Implements Algorithm 2 (Heun steps) from Karras et al. (2022); the step to sigma = 0 is Euler."""
        if not self._in_correction:
            x_next = _euler(x, denoised, sigma, sigma_next)
            if sigma_next == 0:
                self._index += 1
                return x_next
            self._heun_start = (x, (x - denoised) / sigma, sigma)
            self._in_correction = True
            return x_next
        x_hat, d, sigma_hat = self._heun_start
        d_next = (x - denoised) / sigma_next
        self._in_correction, self._heun_start = False, None
        self._index += 1
        return x_hat + (sigma_next - sigma_hat) * (d + d_next) / 2

    def _dpmpp_2m(self, x, denoised, sigma, sigma_next):
        """Implements DPM-Solver++(2M) (Lu et al., 2022) on the EDM sigmas, as k-diffusion's ``sample_dpmpp_2m``."""
        prev_denoised, self._prev_denoised = self._prev_denoised, denoised
        if sigma_next == 0:
            return denoised
        t, t_next = -sigma.log(), -sigma_next.log()
        h = t_next - t
        if prev_denoised is not None:
            h_last = t - (-self.sigmas[self._index - 1].log())
            r = h_last / h
            denoised = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * prev_denoised
        return (sigma_next / sigma) * x - torch.expm1(-h) * denoised

    def __len__(self):
        return self.num_inference_steps or 0


def _euler(x, denoised, sigma, sigma_next):
    """One Euler step of the probability-flow ODE from ``sigma`` to ``sigma_next``."""
    d = (x - denoised) / sigma
    return x + d * (sigma_next - sigma)


def _expand(coef: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcasts a scalar or per-item coefficient over the remaining dimensions of ``like``."""
    coef = torch.as_tensor(coef, device=like.device, dtype=like.dtype)
    return coef.reshape(-1, *([1] * (like.ndim - 1))) if coef.ndim else coef
