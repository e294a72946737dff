"""Post-hoc EMA (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion Models", EDM2):
choose the EMA's length after training instead of fixing one decay in advance.

While training, :class:`PowerEMA` keeps a few power-function averages of the weights (each a ``sigma_rel``, the
averaging profile's width relative to the training time) and writes them as snapshots every ``snapshot_steps``.
A power-function average at step ``t`` with exponent ``gamma`` weighs the weights of step ``tau`` by
``(gamma + 1) tau^gamma / t^(gamma + 1)``; any other such profile (another ``sigma_rel``, an earlier step) is close
to a linear combination of the snapshots' profiles, whose coefficients are a small least-squares problem
(:func:`posthoc_coefficients`). :func:`reconstruct` applies them to the snapshots' weights; ``mslddm export
CHECKPOINT --posthoc-ema SIGMA_REL`` exports a pipeline with the result.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

SNAPSHOT_FOLDER = "posthoc_ema"
_SNAPSHOT = re.compile(r"^step-(\d+)-sigma_rel-([0-9.]+)\.safetensors$")


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """The power-function exponent whose profile has relative width ``sigma_rel``: the real root of
    ``(gamma + 1) / ((gamma + 2)^2 (gamma + 3)) = sigma_rel^2`` (EDM2, eq. 3); ``sigma_rel`` in (0, 0.28)."""
    if not 0.0 < sigma_rel < 0.28:  # gamma > 0 needs sigma_rel < sqrt(1/12) = 0.289; 0.28 keeps it away from 0
        raise ValueError(f"sigma_rel must lie in (0, 0.28), got {sigma_rel}.")
    t = sigma_rel ** -2
    roots = np.roots([1.0, 7.0, 16.0 - t, 12.0 - t])
    return float(max(r.real for r in roots if abs(r.imag) < 1e-9))


def profile_products(t_a: np.ndarray, gamma_a: np.ndarray, t_b: np.ndarray, gamma_b: np.ndarray) -> np.ndarray:
    """Inner products of power-function profiles ``(t_a, gamma_a)`` and ``(t_b, gamma_b)`` (broadcast), in the
    ratio form that stays finite for large steps and exponents."""
    t_a, gamma_a, t_b, gamma_b = (np.asarray(v, dtype=np.float64) for v in (t_a, gamma_a, t_b, gamma_b))
    first = t_a < t_b  # the integral runs to the earlier of the two steps
    ratio = np.where(first, (t_a / t_b) ** gamma_b, (t_b / t_a) ** gamma_a)
    return (gamma_a + 1) * (gamma_b + 1) * ratio / ((gamma_a + gamma_b + 1) * np.maximum(t_a, t_b))


def posthoc_coefficients(steps: Sequence[int], gammas: Sequence[float], target_step: int,
                         target_gamma: float) -> np.ndarray:
    """Coefficients ``x`` such that ``sum_i x_i profile(steps[i], gammas[i])`` is the least-squares closest to
    ``profile(target_step, target_gamma)``, scaled to sum to 1 (as EDM2 does: the result is an average of
    weights, whose scale a least-squares residual would otherwise change by up to a few percent)."""
    steps, gammas = np.asarray(steps, dtype=np.float64), np.asarray(gammas, dtype=np.float64)
    gram = profile_products(steps[:, None], gammas[:, None], steps[None, :], gammas[None, :])
    rhs = profile_products(steps, gammas, float(target_step), float(target_gamma))
    coefficients = np.linalg.lstsq(gram, rhs, rcond=None)[0]
    return coefficients / coefficients.sum()  # an average: the weights keep their scale


class PowerEMA:
    """Power-function averages of ``named_parameters`` for each of ``sigma_rels`` (EDM2's ``PowerFunctionEMA``),
    stepped once per optimizer step with the global step ``t`` (1-based). Checkpointed through
    ``accelerator.register_for_checkpointing`` (``state_dict`` / ``load_state_dict``)."""

    def __init__(self, named_parameters: Iterable[tuple[str, torch.Tensor]], sigma_rels: Sequence[float]):
        if not sigma_rels:
            raise ValueError("posthoc_ema needs at least one sigma_rel.")
        self.parameters = [(name, p) for name, p in named_parameters if p.requires_grad]
        self.sigma_rels = [float(s) for s in sigma_rels]
        self.gammas = [sigma_rel_to_gamma(s) for s in self.sigma_rels]
        self.averages = [{name: p.detach().float().clone() for name, p in self.parameters} for _ in self.gammas]

    @torch.no_grad()
    def step(self, t: int) -> None:
        """Moves every average towards the current weights: ``beta = (1 - 1/t)^(gamma + 1)`` (``t`` = 1 copies)."""
        if t < 1:
            raise ValueError(f"PowerEMA steps are 1-based, got {t}.")
        current = [p.detach().float() for _, p in self.parameters]
        for gamma, average in zip(self.gammas, self.averages):
            beta = (1.0 - 1.0 / t) ** (gamma + 1.0)
            # one fused kernel over every tensor (a Python loop per parameter was most of the step's cost)
            torch._foreach_lerp_([average[name] for name, _ in self.parameters], current, 1.0 - beta)

    def state_dict(self) -> dict:
        return {"sigma_rels": self.sigma_rels, "averages": self.averages}

    def load_state_dict(self, state: dict) -> None:
        """The checkpoint's averages, on the device of the parameters they follow (accelerate loads them on the
        CPU)."""
        if [float(s) for s in state["sigma_rels"]] != self.sigma_rels:
            raise ValueError(f"The checkpoint's post-hoc EMA kept sigma_rel {state['sigma_rels']}, the recipe asks "
                             f"for {self.sigma_rels}: resume with the recipe it was trained with.")
        devices = {name: p.device for name, p in self.parameters}
        for average in state["averages"]:
            if set(average) != set(devices):
                raise ValueError("The checkpoint's post-hoc EMA averages other parameters than this model's: "
                                 "resume with the recipe it was trained with.")
        self.averages = [{name: tensor.to(devices[name], torch.float32).clone() for name, tensor in average.items()}
                         for average in state["averages"]]

    def save_snapshots(self, folder, t: int) -> list[Path]:
        """One float32 safetensors file per ``sigma_rel`` at step ``t`` (written whole, then renamed)."""
        from safetensors.torch import save_file

        from mslddm.files import durable_replace

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for sigma_rel, gamma, average in zip(self.sigma_rels, self.gammas, self.averages):
            path = folder / f"step-{t:08d}-sigma_rel-{sigma_rel:.4f}.safetensors"
            partial = path.with_name(path.name + ".partial")
            save_file({k: v.detach().cpu().contiguous() for k, v in average.items()}, str(partial),
                      metadata={"step": str(t), "sigma_rel": repr(sigma_rel), "gamma": repr(gamma)})
            durable_replace(partial, path)
            paths.append(path)
        return paths


def remove_later_snapshots(folder, step: int) -> list[Path]:
    """Deletes the snapshots after ``step`` (a run resumed from an earlier checkpoint writes them again, from
    the trajectory it now follows); returns what was removed."""
    removed = [path for s, _, path in list_snapshots(folder) if s > step]
    for path in removed:
        path.unlink()
    return removed


def snapshot_gamma(path: Path) -> float:
    """The exponent a snapshot was averaged with (its metadata; the file name's sigma_rel is rounded)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        gamma = (f.metadata() or {}).get("gamma")
    return float(gamma) if gamma is not None else sigma_rel_to_gamma(float(_SNAPSHOT.match(path.name)[2]))


def list_snapshots(folder, up_to_step: int | None = None) -> list[tuple[int, float, Path]]:
    """``(step, sigma_rel, path)`` of the snapshots in ``folder`` (at or before ``up_to_step``), by step."""
    found = []
    for path in Path(folder).glob("step-*.safetensors"):
        match = _SNAPSHOT.match(path.name)
        if match and (up_to_step is None or int(match[1]) <= up_to_step):
            found.append((int(match[1]), float(match[2]), path))
    return sorted(found)


def reconstruct(folder, sigma_rel: float, step: int | None = None) -> tuple[dict, dict]:
    """The weights of the power-function average ``sigma_rel`` at ``step`` (default: the last snapshot's), from the
    snapshots in ``folder``: ``(state_dict, report)``; the report says which snapshots and coefficients."""
    snapshots = list_snapshots(folder, step)
    if not snapshots:
        raise ValueError(f"{folder} holds no post-hoc EMA snapshots{'' if step is None else f' up to step {step}'}: "
                         "train with the recipe's msldm.posthoc_ema set.")
    step = snapshots[-1][0] if step is None else step
    target_gamma = sigma_rel_to_gamma(sigma_rel)
    coefficients = posthoc_coefficients([s for s, _, _ in snapshots], [snapshot_gamma(p) for _, _, p in snapshots],
                                        step, target_gamma)
    from safetensors.torch import load_file

    weights: dict = {}
    for (_, _, path), x in zip(snapshots, coefficients):
        for name, tensor in load_file(str(path)).items():
            weights[name] = weights.get(name, 0.0) + float(x) * tensor.double()
    state = {name: tensor.float() for name, tensor in weights.items()}
    report = {"sigma_rel": sigma_rel, "step": step, "snapshots": [p.name for _, _, p in snapshots],
              "coefficients": [round(float(x), 6) for x in coefficients]}
    return state, report


def write_report(folder, report: dict) -> None:
    (Path(folder) / "posthoc_ema.json").write_text(json.dumps(report, indent=1) + "\n")
