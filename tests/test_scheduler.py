import math

import pytest
import torch

from mslddm.schedulers import (
    SAMPLER_DEFAULTS,
    Denoiser,
    EDMScheduler,
    edm_scalings,
    get_sigmas_karras,
    sample_consistency,
    sample_euler,
    sample_training_sigmas,
)

SD = 0.4


def gaussian_denoiser(x, sigma):
    """The exact denoiser D(x; sigma) for data ~ N(0, SD^2)."""
    return x * SD**2 / (sigma**2 + SD**2)


def run(scheduler, plan, x, generator=None, denoiser=gaussian_denoiser):
    evaluations = []

    def counting(x, sigma):
        evaluations.append(float(sigma))
        return denoiser(x, sigma)

    return scheduler.sample(counting, x, plan, generator=generator), len(evaluations)


def plan(scheduler, *args, **kwargs):
    return scheduler.sampling_plan(scheduler.sampling_settings(*args, **kwargs))


def test_karras_sigmas_match_eq5():
    sigmas = get_sigmas_karras(150, 0.01, 3.0, 7.0)
    assert sigmas.shape == (151,) and sigmas[-1] == 0
    assert sigmas[0].item() == pytest.approx(3.0) and sigmas[-2].item() == pytest.approx(0.01)
    i = torch.arange(150, dtype=torch.float64)
    expected = (3.0 ** (1 / 7) + i / 149 * (0.01 ** (1 / 7) - 3.0 ** (1 / 7))) ** 7
    torch.testing.assert_close(sigmas[:-1].double(), expected, rtol=1e-5, atol=0)
    assert (sigmas[:-1].diff() < 0).all()


def test_scalings_are_edm_table1():
    sigma = torch.tensor([0.01, 0.4, 3.0])
    c_skip, c_out, c_in, c_noise = edm_scalings(sigma, SD)
    torch.testing.assert_close(c_skip, SD**2 / (sigma**2 + SD**2))
    torch.testing.assert_close(c_out, sigma * SD / (sigma**2 + SD**2).sqrt())
    torch.testing.assert_close(c_in, 1 / (sigma**2 + SD**2).sqrt())
    torch.testing.assert_close(c_noise, sigma.log() / 4)
    # The Denoiser applies them: the network sees c_in x and c_noise, and D = c_skip x + c_out F.
    seen = {}

    class Net(torch.nn.Module):
        def forward(self, x, c_noise):
            seen.update(x=x, c_noise=c_noise)
            return type("Out", (), {"sample": torch.ones_like(x)})()

    x = torch.randn(3, 2, 4)
    out = Denoiser(Net(), SD)(x, sigma)
    torch.testing.assert_close(seen["x"], x * c_in[:, None, None])
    torch.testing.assert_close(seen["c_noise"], c_noise)
    torch.testing.assert_close(out, x * c_skip[:, None, None] + c_out[:, None, None])


def ode_error(sampler, steps):
    """Relative error of a deterministic sampler against the closed-form solution for Gaussian data.

    For data ~ N(0, SD^2) the probability-flow ODE gives x(sigma) proportional to sqrt(SD^2 + sigma^2); the
    last step (sigma_min -> 0) maps x(sigma_min) to D(x(sigma_min)).
    """
    s = EDMScheduler()
    out, _ = run(s, plan(s, sampler, steps, 0.0), torch.full((1, 1, 1), 3.0, dtype=torch.float64))
    x_min = 3.0 * math.sqrt(SD**2 + 0.01**2) / math.sqrt(SD**2 + 9.0)
    exact = x_min * SD**2 / (SD**2 + 0.01**2)
    return abs(out.item() - exact) / exact


@pytest.mark.parametrize("sampler,order", [("euler", 1), ("heun", 2), ("dpmpp_2m", 2)])
def test_samplers_solve_the_probability_flow_ode_with_their_order(sampler, order):
    e32, e64 = ode_error(sampler, 32), ode_error(sampler, 64)
    assert e64 < 0.03
    # Doubling the steps divides the error by about 2^order (measured: 2.0, 4.2, 4.3).
    assert 2**order * 0.8 < e32 / e64 < 2**order * 1.3


def test_higher_order_samplers_beat_euler_at_few_steps():
    assert ode_error("heun", 16) < ode_error("euler", 16) / 4
    assert ode_error("dpmpp_2m", 16) < ode_error("euler", 16) / 4


def test_evaluation_counts():
    s = EDMScheduler()
    for sampler, n, expected in (("euler", 150, 150), ("heun", 10, 19), ("dpmpp_2m", 10, 10), ("consistency", 4, 4)):
        p = plan(s, sampler, n)
        _, evaluations = run(s, p, torch.randn(1, 2, 4) * 3)
        assert evaluations == len(p.timesteps) == len(p) == p.settings.model_evaluations == expected


def first_evaluation(s_churn, seed=3):
    """The sample and sigma the model sees first in a 150-step Euler run from x = 0."""
    seen = []

    def denoiser(x, sigma):
        seen.append((x.clone(), float(sigma)))
        return x

    sigmas = get_sigmas_karras(150, 0.01, 3.0)
    sample_euler(denoiser, torch.zeros(1, 1, 20000), sigmas, s_churn=s_churn, generator=torch.Generator().manual_seed(seed))
    return seen[0]


def test_churn_matches_algorithm2_and_is_seeded():
    gamma = min(20 / 150, math.sqrt(2) - 1)
    x_hat, sigma_hat = first_evaluation(20.0)  # the paper's churn
    assert sigma_hat == pytest.approx(3.0 * (1 + gamma), rel=1e-6)
    assert x_hat.std().item() == pytest.approx(math.sqrt(sigma_hat**2 - 9.0), rel=0.03)
    torch.testing.assert_close(first_evaluation(20.0)[0], x_hat)
    unchanged, sigma = first_evaluation(0.0)
    assert torch.equal(unchanged, torch.zeros_like(unchanged)) and sigma == pytest.approx(3.0)


def test_training_sigmas():
    g = torch.Generator().manual_seed(0)
    u = sample_training_sigmas(100_000, "uniform", generator=g)
    assert u.min() > 0 and u.max() < 3.0 and u.mean().item() == pytest.approx(1.5, abs=0.02)
    ln = sample_training_sigmas(100_000, "log_normal", generator=g)
    assert ln.log().mean().item() == pytest.approx(-1.2, abs=0.02)
    s = EDMScheduler(training_sigma_distribution="log_normal")
    assert s.sample_training_sigmas(8, torch.Generator().manual_seed(1)).shape == (8,)
    torch.testing.assert_close(s.loss_weight(torch.tensor(0.4)), torch.tensor(2 / 0.16))


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="sampler"):
        EDMScheduler(sampler="ddim")
    s = EDMScheduler()
    with pytest.raises(ValueError, match="num_inference_steps"):
        s.sampling_settings(num_inference_steps=0)
    with pytest.raises(ValueError, match="churn"):
        s.sampling_settings("dpmpp_2m", 10, 5.0)
    with pytest.raises(ValueError, match="sampler='consistency' takes no churn"):
        s.sampling_settings("consistency", 4, 1.0)
    with pytest.raises(ValueError, match="s_churn"):
        s.set_timesteps(10, s_churn=float("nan"))


def test_defaults_come_from_one_table_and_explicit_values_win():
    s = EDMScheduler()
    for name, d in SAMPLER_DEFAULTS.items():
        got = s.sampling_settings(name)
        assert (got.num_inference_steps, got.s_churn) == (d.num_inference_steps, d.s_churn)
    assert s.sampling_settings().sampler == "euler" and s.sampling_settings().s_churn == 20.0
    assert s.sampling_settings("heun", 7, 3.0).to_dict() == {"sampler": "heun", "num_inference_steps": 7,
                                                             "s_churn": 3.0, "model_evaluations": 13}
    # a pipeline's own defaults apply to its own sampler only
    own = EDMScheduler(sampler="dpmpp_2m", num_inference_steps=12)
    assert own.sampling_settings().num_inference_steps == 12
    assert own.sampling_settings("euler").num_inference_steps == 150
    assert EDMScheduler(s_churn=5.0).sampling_settings("heun").s_churn == 0.0
    assert own.separation_settings() == own.sampling_settings("euler")  # separation is Euler, resolved the same way
    assert EDMScheduler(num_inference_steps=40, s_churn=3.0).separation_settings().to_dict()["s_churn"] == 3.0


def test_sampling_leaves_the_scheduler_as_it_was_and_set_timesteps_still_serves_outside_code():
    s = EDMScheduler(sampler="heun", num_inference_steps=6)
    before = dict(vars(s))
    p = plan(s)
    out, _ = run(s, p, torch.full((1, 1, 3), 3.0))
    assert {k: v for k, v in vars(s).items() if k != "_internal_dict"} == {
        k: v for k, v in before.items() if k != "_internal_dict"}
    assert s.sigmas is None and s.timesteps is None and s.settings is None
    # diffusers' set_timesteps sets the attributes (outside code may read them) from the same plan
    assert s.set_timesteps() == s.settings == p.settings and len(s) == 6
    torch.testing.assert_close(s.sigmas, p.sigmas) and torch.testing.assert_close(s.timesteps, p.timesteps)
    torch.testing.assert_close(run(s, p, torch.full((1, 1, 3), 3.0))[0], out)  # the attributes change nothing


def test_config_round_trip(tmp_path):
    s = EDMScheduler(sampler="heun", s_churn=5.0, training_sigma_distribution="log_normal")
    s.save_pretrained(tmp_path)
    loaded = EDMScheduler.from_pretrained(tmp_path)
    drop = lambda c: {k: v for k, v in c.items() if not k.startswith("_")}  # noqa: E731
    assert drop(loaded.config) == drop(s.config)


def test_initial_noise_paper_or_marginal():
    assert EDMScheduler().init_noise_sigma == 3.0  # the paper: x = sigma_max n
    assert EDMScheduler(sigma_data=0.9, initial_noise="marginal").init_noise_sigma == pytest.approx(
        math.sqrt(9 + 0.81))
    with pytest.raises(ValueError, match="initial_noise"):
        EDMScheduler(initial_noise="zeros")


# ------------------------------------------------------------------------------------------------------------------
# Multistep consistency sampling (Song et al. 2023, Algorithm 1)
# ------------------------------------------------------------------------------------------------------------------
def spy(denoiser=gaussian_denoiser):
    """A denoiser that records the sample and sigma of every evaluation."""
    seen = []

    def recording(x, sigma):
        seen.append((x.clone(), float(sigma)))
        return denoiser(x, sigma)

    return recording, seen


def test_consistency_one_step_is_the_denoiser_at_sigma_max():
    s = EDMScheduler()
    p = plan(s, "consistency", 1)
    assert p.settings == s.sampling_settings("consistency", 1) and p.sigmas.tolist() == [3.0, 0.0]
    x = torch.randn(2, 3, 8, generator=torch.Generator().manual_seed(0)) * 3.0
    out = s.sample(gaussian_denoiser, x, p, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out, gaussian_denoiser(x, p.sigmas[0]), rtol=0, atol=0)


def test_consistency_steps_renoise_the_estimate_to_each_next_sigma_of_the_plan():
    s = EDMScheduler()
    p = plan(s, "consistency")  # the table's default: 4 steps, no churn
    assert (p.settings.num_inference_steps, p.settings.s_churn) == (4, 0.0)
    denoiser, seen = spy(lambda x, sigma: torch.zeros_like(x))  # every estimate 0: x_i is sigma_i times fresh noise
    x = torch.randn(1, 1, 50_000, generator=torch.Generator().manual_seed(0)) * 3.0
    out = sample_consistency(denoiser, x, p.sigmas, generator=torch.Generator().manual_seed(1))
    assert [sigma for _, sigma in seen] == pytest.approx(p.sigmas[:-1].tolist())
    for (sample, sigma), (later, _) in zip(seen[1:], seen[2:]):
        assert sample.std().item() == pytest.approx(sigma, rel=0.02)
        assert abs(torch.corrcoef(torch.stack([sample.flatten(), later.flatten()]))[0, 1]) < 0.02  # fresh noise
    assert torch.equal(out, torch.zeros_like(out))  # the last step ends on the estimate


def test_consistency_imputes_before_every_evaluation_and_calls_back_after_it():
    known = torch.full((1, 2, 6), 0.5)
    mask = torch.tensor([True, False])[None, :, None].expand(1, 2, 6)
    imputed_at, called = [], []

    def impute(x, sigma, generator):
        imputed_at.append(float(sigma))
        return torch.where(mask, known + sigma * torch.randn(x.shape, generator=generator), x)

    denoiser, seen = spy()
    sigmas = get_sigmas_karras(4, 0.01, 3.0)
    sample_consistency(denoiser, torch.randn(1, 2, 6) * 3, sigmas, generator=torch.Generator().manual_seed(0),
                       impute=impute, callback=lambda info: called.append(info["i"]))
    assert imputed_at == [sigma for _, sigma in seen] == pytest.approx(sigmas[:-1].tolist()) and called == [0, 1, 2, 3]
    # the model always saw the known channel at its own noise level around the known value
    assert all(abs(float(x[0, 0].mean()) - 0.5) < 3 * sigma for x, sigma in seen)


def test_consistency_draws_each_items_noise_from_its_own_generator():
    sigmas = get_sigmas_karras(4, 0.01, 3.0)
    x = torch.randn(3, 2, 16, generator=torch.Generator().manual_seed(0)) * 3
    gens = lambda *seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    batch = sample_consistency(gaussian_denoiser, x, sigmas, generator=gens(5, 6, 7))
    alone = sample_consistency(gaussian_denoiser, x[1:2], sigmas, generator=gens(6))
    torch.testing.assert_close(batch[1:2], alone, rtol=0, atol=1e-6)
    assert torch.isfinite(batch).all()


@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_consistency_sampling_with_the_exact_consistency_function_draws_the_data_at_any_step_count(steps):
    """Data ~ N(0, SD^2): f(x, sigma) = x SD / sqrt(SD^2 + sigma^2) maps the ODE's marginal at every sigma to the
    data, so from the marginal start every step count samples std SD (a plain denoiser shrinks it)."""
    s = EDMScheduler(initial_noise="marginal")
    p = plan(s, "consistency", steps)
    x = torch.randn(1, 1, 200_000, generator=torch.Generator().manual_seed(steps)) * s.init_noise_sigma
    exact = lambda x, sigma: x * SD / math.sqrt(SD**2 + float(sigma) ** 2)  # noqa: E731
    out = s.sample(exact, x, p, generator=torch.Generator().manual_seed(0))
    assert out.std().item() == pytest.approx(SD, rel=0.01)
    assert s.sample(gaussian_denoiser, x, p, generator=torch.Generator().manual_seed(0)).std().item() < 0.8 * SD
