"""Post-hoc EMA (EDM2): the power-function profiles' algebra, and a reconstruction that matches an average run
with the target length from the start."""

import numpy as np
import pytest
import torch

from mslddm.training.posthoc_ema import (PowerEMA, list_snapshots, posthoc_coefficients, profile_products,
                                         reconstruct, sigma_rel_to_gamma)


def test_sigma_rel_to_gamma_inverts_the_profile_width():
    for sigma_rel in (0.03, 0.05, 0.1, 0.2):
        gamma = sigma_rel_to_gamma(sigma_rel)
        assert gamma > 0
        assert np.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3))) == pytest.approx(sigma_rel, rel=1e-9)
    assert sigma_rel_to_gamma(0.05) > sigma_rel_to_gamma(0.1)  # a narrower profile: a larger exponent
    with pytest.raises(ValueError, match="sigma_rel must lie in"):
        sigma_rel_to_gamma(0.3)


def test_profile_products_match_numerical_integration():
    tau = np.linspace(0, 700, 700_001)[1:]
    def profile(t, g):
        return np.where(tau <= t, (g + 1) * tau ** g / t ** (g + 1), 0.0)
    for (ta, ga), (tb, gb) in [((500, 3.0), (700, 7.0)), ((700, 16.9), (300, 2.0)), ((400, 5.0), (400, 5.0))]:
        y = profile(ta, ga) * profile(tb, gb)
        numeric = float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(tau)))  # the trapezoid rule (numpy 1.x has no trapezoid)
        assert profile_products(ta, ga, tb, gb) == pytest.approx(numeric, rel=2e-3)


def test_a_snapshot_profile_is_reconstructed_by_itself():
    x = posthoc_coefficients([100, 200, 200], [sigma_rel_to_gamma(0.05)] * 2 + [sigma_rel_to_gamma(0.1)], 200,
                             sigma_rel_to_gamma(0.1))
    assert x == pytest.approx([0, 0, 1], abs=1e-6)
    mixed = posthoc_coefficients([500, 1000, 1500, 2000] * 2, [sigma_rel_to_gamma(0.05)] * 4
                                 + [sigma_rel_to_gamma(0.1)] * 4, 2000, sigma_rel_to_gamma(0.25))
    assert mixed.sum() == pytest.approx(1.0)  # an average, even where the profiles fit the target loosely


def test_reconstruction_matches_an_average_kept_from_the_start(tmp_path):
    """Weights drifting along a random walk: the average of sigma_rel 0.07 and 0.15 rebuilt from snapshots of 0.05
    and 0.10 every 200 steps lies within 1.5 % of the drift of the average kept with that length all along."""
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.zeros(50))
    kept, target = PowerEMA([("w", weight)], [0.05, 0.10]), PowerEMA([("w", weight)], [0.07, 0.15])
    walk = torch.randn(2000, 50).cumsum(0) * 0.1 + torch.linspace(0, 5, 2000)[:, None]
    for t in range(1, 2001):
        with torch.no_grad():
            weight.copy_(walk[t - 1])
        kept.step(t)
        target.step(t)
        if t % 200 == 0:
            kept.save_snapshots(tmp_path, t)
    assert len(list_snapshots(tmp_path)) == 20 and len(list_snapshots(tmp_path, up_to_step=1000)) == 10
    for average, sigma_rel in zip(target.averages, (0.07, 0.15)):
        rebuilt, report = reconstruct(tmp_path, sigma_rel)
        drift = (average["w"] - walk[-1]).abs().max()
        assert (rebuilt["w"] - average["w"]).abs().max() < 0.015 * drift
        assert report["step"] == 2000 and len(report["coefficients"]) == 20
    early, _ = reconstruct(tmp_path, 0.10, step=1000)  # an earlier step: that step's snapshot of 0.10 itself
    assert torch.allclose(early["w"], _load(tmp_path, 1000, 0.10), atol=1e-4)


def _load(folder, step, sigma_rel):
    from safetensors.torch import load_file

    return load_file(str(folder / f"step-{step:08d}-sigma_rel-{sigma_rel:.4f}.safetensors"))["w"]


def test_state_dict_round_trip_and_a_changed_recipe_is_named():
    weight = torch.nn.Parameter(torch.ones(3))
    ema = PowerEMA([("w", weight)], [0.05, 0.1])
    ema.step(1)
    other = PowerEMA([("w", weight)], [0.05, 0.1])
    other.load_state_dict(ema.state_dict())
    assert torch.equal(other.averages[0]["w"], ema.averages[0]["w"])
    with pytest.raises(ValueError, match="resume with the recipe it was trained with"):
        PowerEMA([("w", weight)], [0.07]).load_state_dict(ema.state_dict())
    with pytest.raises(ValueError, match="1-based"):
        ema.step(0)


def test_later_snapshots_go_and_the_exact_gamma_is_read_back(tmp_path):
    weight = torch.nn.Parameter(torch.ones(3))
    ema = PowerEMA([("w", weight)], [0.05123])
    for t in (1, 2, 3):
        ema.step(t)
        ema.save_snapshots(tmp_path, t)
    from mslddm.training.posthoc_ema import remove_later_snapshots, snapshot_gamma

    assert [p.name for p in remove_later_snapshots(tmp_path, 1)] == [
        "step-00000002-sigma_rel-0.0512.safetensors", "step-00000003-sigma_rel-0.0512.safetensors"]
    (_, _, path), = list_snapshots(tmp_path)
    assert snapshot_gamma(path) == sigma_rel_to_gamma(0.05123) != sigma_rel_to_gamma(0.0512)


def test_no_snapshots_is_one_sentence(tmp_path):
    with pytest.raises(ValueError, match="holds no post-hoc EMA snapshots"):
        reconstruct(tmp_path, 0.1)
