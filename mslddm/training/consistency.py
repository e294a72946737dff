"""Consistency distillation (Song et al., 2023, "Consistency Models", Algorithm 2) in the EDM parameterisation: the
pieces of one training step as small functions; ``train/distill.py`` runs them (docs/distillation.md).

The student is a denoiser ``D_theta(x; sigma)`` with the EDM preconditioning of
:class:`~mslddm.schedulers.sampling.Denoiser`, read as a consistency function: every point of one probability-flow
ODE trajectory maps to the trajectory's end. On an N-step Karras discretisation ``sigma_0 = sigma_max > ... >
sigma_{N-1} = sigma_min``, a training pair is ``x = x0 + sigma_i n`` and the teacher's ODE step from it to
``sigma_{i+1}``; the loss is the distance between the student there and the student, without gradient, at the
teacher's point (the stop-gradient target of improved consistency training, Song & Dhariwal 2023: no EMA target
network). At ``sigma_min`` the target is the teacher's point itself: the boundary condition ``f(x, sigma_min) =
x``, which the EDM preconditioning holds only approximately (``c_out(0.01) = 0.01``).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from mslddm.schedulers.scheduling_edm import get_sigmas_karras

SOLVERS = ("heun", "euler")
DISTANCES = ("pseudo_huber", "l2")
WEIGHTINGS = ("uniform", "inverse_step")


def distillation_sigmas(num_scales: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """The N-step Karras discretisation of the ODE, ``sigma_max`` down to ``sigma_min`` (no final 0)."""
    if num_scales < 2:
        raise ValueError(f"num_scales must be at least 2 (one pair of adjacent noise levels), got {num_scales}.")
    return get_sigmas_karras(num_scales, sigma_min, sigma_max, rho)[:-1]


def draw_pairs(batch_size: int, num_scales: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One pair of adjacent noise levels per item, uniformly: indices ``i`` of ``(sigma_i, sigma_{i+1})``."""
    return torch.randint(num_scales - 1, (batch_size,), generator=generator)


def _per_item(sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return sigma.to(like).reshape(-1, *([1] * (like.ndim - 1)))


@torch.no_grad()
def teacher_ode_step(denoiser: Callable, x: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor,
                     solver: str = "heun") -> torch.Tensor:
    """One step of the probability-flow ODE ``dx/dsigma = (x - D(x; sigma)) / sigma`` from per-item ``sigma`` to
    ``sigma_next > 0``: Euler, or Heun (Karras et al., 2022, Algorithm 1)."""
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}.")
    s, s_next = _per_item(sigma, x), _per_item(sigma_next, x)
    d = (x - denoiser(x, sigma)) / s
    x_next = x + (s_next - s) * d
    if solver == "euler":
        return x_next
    d_next = (x_next - denoiser(x_next, sigma_next)) / s_next
    return x + (s_next - s) * (d + d_next) / 2


def consistency_distance(a: torch.Tensor, b: torch.Tensor, distance: str = "pseudo_huber", huber_c: float = 0.00054,
                         weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per item: ``m = mean((a - b)^2)`` over the weighted elements (all without ``weight``), then ``m`` (``l2``)
    or the pseudo-Huber ``sqrt(m + c^2) - c`` (``pseudo_huber``: improved consistency training's
    ``sqrt(|a - b|^2 + c^2 d) - c sqrt(d)`` divided by ``sqrt(d)``, ``c = 0.00054`` as there)."""
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}.")
    error = (a.float() - b.float()).pow(2)
    if weight is None:
        mean = error.flatten(1).mean(1)
    else:
        weight = weight.float().expand_as(error)
        mean = (error * weight).flatten(1).sum(1) / weight.flatten(1).sum(1).clamp_min(1.0)
    return mean if distance == "l2" else (mean + huber_c**2).sqrt() - huber_c


def pair_weights(sigmas: torch.Tensor, index: torch.Tensor, weighting: str = "uniform") -> torch.Tensor:
    """Each pair's loss weight: 1 (``uniform``, Song et al. 2023), or ``1 / (sigma_i - sigma_{i+1})``
    (``inverse_step``, improved consistency training), divided by its mean over all pairs."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}.")
    if weighting == "uniform":
        return torch.ones(index.shape, device=sigmas.device)
    inverse = 1 / (sigmas[:-1] - sigmas[1:])
    return (inverse / inverse.mean())[index]


def distillation_loss(student: Callable, teacher: Callable, x0: torch.Tensor, noise: torch.Tensor,
                      index: torch.Tensor, sigmas: torch.Tensor, *, solver: str = "heun",
                      distance: str = "pseudo_huber", huber_c: float = 0.00054, weighting: str = "uniform",
                      given: Optional[torch.Tensor] = None, target: Optional[Callable] = None) -> torch.Tensor:
    """The consistency distillation loss of one batch (a scalar with the student's gradient).

    ``student``, ``teacher`` (and ``target``, default: the student without gradient) are denoisers ``(x, sigma) ->
    D(x; sigma)`` with per-item sigmas; ``index`` picks each item's pair of ``sigmas``. ``given`` (bool, like
    ``x0``) marks known channels and frames: the teacher's point keeps them where imputation would put them
    (``x0 + sigma_{i+1} n``) and the distance leaves them out.
    """
    high, low = sigmas[index], sigmas[index + 1]
    x = x0 + _per_item(high, x0) * noise
    x_low = teacher_ode_step(teacher, x, high, low, solver)
    if given is not None:
        x_low = torch.where(given, x0 + _per_item(low, x0) * noise, x_low)
    online = student(x, high)
    with torch.no_grad():
        anchored = _per_item(index + 1 == len(sigmas) - 1, x_low)
        aim = torch.where(anchored.bool(), x_low, (target or student)(x_low, low))
    weight = None if given is None else ~given
    per_item = consistency_distance(online, aim.detach(), distance, huber_c, weight)
    return (per_item * pair_weights(sigmas, index, weighting)).mean()
