"""timestep_weights against independent computations (math.md sections 1-2)."""

import math

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, FlowMatchEulerDiscreteScheduler
from diffusers.training_utils import compute_snr

import unlearn_fast as uf


def gaussian_step_kl(scheduler, t, eps_a, eps_b, x_t):
    """KL of two reverse steps N(mu_a, s^2), N(mu_b, s^2) from the means, in nats."""
    beta = scheduler.betas[t].double()
    abar = scheduler.alphas_cumprod[t].double()
    alpha = 1 - beta

    def mu(eps):
        return (x_t - beta / torch.sqrt(1 - abar) * eps) / torch.sqrt(alpha)

    abar_prev = scheduler.alphas_cumprod[t - 1].double() if t > 0 else torch.tensor(1.0, dtype=torch.float64)
    if scheduler.config.variance_type == "fixed_large":
        var = beta
    else:
        var = beta * (1 - abar_prev) / (1 - abar)
    return (mu(eps_a) - mu(eps_b)).square().sum() / (2 * var)


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("schedule", ["linear", "squaredcos_cap_v2"])
def test_kl_weights_equal_gaussian_kl(variance_type, schedule):
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule=schedule, variance_type=variance_type)
    table = uf.timestep_weights(scheduler, "kl")
    assert table.dtype == torch.float32 and table.shape == (1000,)
    g = torch.Generator().manual_seed(0)
    x_t, eps_a, eps_b = (torch.randn(3, 8, 8, generator=g, dtype=torch.float64) for _ in range(3))
    for t in (1, 2, 10, 500, 999):
        expected = gaussian_step_kl(scheduler, t, eps_a, eps_b, x_t)
        ours = table[t].double() * (eps_a - eps_b).square().sum()
        torch.testing.assert_close(ours, expected, rtol=1e-5, atol=0)


def test_kl_weight_at_t0_uses_clipped_variance():
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    table = uf.timestep_weights(scheduler, "kl").double()
    b, abar = scheduler.betas.double(), scheduler.alphas_cumprod.double()
    sigma1 = b[1] * (1 - abar[0]) / (1 - abar[1])
    expected = b[0] ** 2 / (2 * sigma1 * (1 - b[0]) * (1 - abar[0]))
    torch.testing.assert_close(table[0], expected, rtol=1e-6, atol=0)
    assert torch.isfinite(table).all()


def test_kl_variance_matches_diffusers_step_variance():
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    b, abar = scheduler.betas.double(), scheduler.alphas_cumprod.double()
    table = uf.timestep_weights(scheduler, "kl").double()
    for t in (1, 100, 999):
        var = float(scheduler._get_variance(t))  # diffusers computes it in float32
        expected = b[t] ** 2 / (2 * var * (1 - b[t]) * (1 - abar[t]))
        torch.testing.assert_close(table[t], expected, rtol=1e-4, atol=0)


def test_elbo_equals_kl_and_ddim_defaults_to_posterior_variance():
    ddpm = DDPMScheduler(num_train_timesteps=1000)
    ddim = DDIMScheduler(num_train_timesteps=1000)
    torch.testing.assert_close(uf.timestep_weights(ddpm, "elbo"), uf.timestep_weights(ddpm, "kl"))
    torch.testing.assert_close(uf.timestep_weights(ddim, "kl"), uf.timestep_weights(ddpm, "kl"))


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
def test_prediction_type_conversion_to_epsilon_space(prediction_type):
    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type)
    eps_table = uf.timestep_weights(scheduler, "kl", prediction_type="epsilon").double()
    table = uf.timestep_weights(scheduler, "kl").double()  # the scheduler's own type
    g = torch.Generator().manual_seed(1)
    x0_a, x0_b, eps = (torch.randn(2, 4, 4, generator=g, dtype=torch.float64) for _ in range(3))
    for t in (3, 400, 900):
        a = scheduler.alphas_cumprod[t].double().sqrt()
        s = (1 - scheduler.alphas_cumprod[t].double()).sqrt()
        x_t = a * x0_a + s * eps
        if prediction_type == "v_prediction":
            v_a, v_b = a * eps - s * x0_a, a * eps - s * x0_b  # two models' v predictions
            eps_a, eps_b = a * v_a + s * x_t, a * v_b + s * x_t
            pred_a, pred_b = v_a, v_b
        else:
            eps_a, eps_b = (x_t - a * x0_a) / s, (x_t - a * x0_b) / s
            pred_a, pred_b = x0_a, x0_b
        expected = eps_table[t] * (eps_a - eps_b).square().sum()
        torch.testing.assert_close(table[t] * (pred_a - pred_b).square().sum(), expected, rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_min_snr_matches_diffusers_recipe(prediction_type):
    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type)
    table = uf.timestep_weights(scheduler, "min_snr", snr_gamma=5.0)
    t = torch.arange(1000)
    snr = compute_snr(scheduler, t)
    w = torch.stack([snr, 5.0 * torch.ones_like(t)], dim=1).min(dim=1)[0]
    if prediction_type == "epsilon":
        w = w / snr
    elif prediction_type == "v_prediction":
        w = w / (snr + 1)
    torch.testing.assert_close(table, w.float(), rtol=1e-5, atol=1e-6)


def test_simple_and_snr():
    scheduler = DDPMScheduler(num_train_timesteps=50)
    assert torch.equal(uf.timestep_weights(scheduler), torch.ones(50))
    abar = scheduler.alphas_cumprod.double()
    torch.testing.assert_close(uf.timestep_weights(scheduler, "snr"), (abar / (1 - abar)).float())


def test_flow_matching_factor():
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000)
    table = uf.timestep_weights(scheduler, "kl")
    t = torch.arange(1000, dtype=torch.float64) / 1000
    torch.testing.assert_close(table, ((1 - t) ** 2).float())
    assert torch.equal(uf.timestep_weights(scheduler, "simple"), torch.ones(1000))
    # flow: eps = x_t + (1 - t) u, so ||d eps||^2 = (1 - t)^2 ||d u||^2
    g = torch.Generator().manual_seed(2)
    x_t, u_a, u_b = (torch.randn(5, generator=g, dtype=torch.float64) for _ in range(3))
    tt = 0.3
    d_eps = (x_t + (1 - tt) * u_a) - (x_t + (1 - tt) * u_b)
    assert math.isclose(float(table[300]) * float((u_a - u_b).square().sum()), float(d_eps.square().sum()), rel_tol=1e-6)
    with pytest.raises(ValueError, match="flow-matching"):
        uf.timestep_weights(scheduler, "min_snr", snr_gamma=5.0)


def test_bad_arguments():
    scheduler = DDPMScheduler(num_train_timesteps=10)
    with pytest.raises(ValueError, match="weighting"):
        uf.timestep_weights(scheduler, "lpips")
    with pytest.raises(ValueError, match="snr_gamma"):
        uf.timestep_weights(scheduler, "min_snr")
    with pytest.raises(ValueError, match="prediction_type"):
        uf.timestep_weights(scheduler, "kl", prediction_type="score")
    with pytest.raises(TypeError, match="scheduler: expected a diffusers scheduler with `betas`"):
        uf.timestep_weights(object(), "kl")
    learned = DDPMScheduler(num_train_timesteps=10, variance_type="learned_range")
    with pytest.raises(ValueError, match="variance_type"):
        uf.timestep_weights(learned, "kl")


def test_true_targets_of_each_prediction_type():
    """The NOISE slots' target: eps, v = a eps - s x_0, x_0, or the flow velocity eps - x_0."""
    from unlearn_fast.noising import noising_for

    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 2, 4, generator=g), torch.randn(3, 2, 4, generator=g)
    t = torch.tensor([10, 500, 990])
    for kind in ("epsilon", "v_prediction", "sample"):
        sched = DDPMScheduler(num_train_timesteps=1000, prediction_type=kind)
        a = sched.alphas_cumprod[t].sqrt().view(-1, 1, 1)
        s = (1 - sched.alphas_cumprod[t]).sqrt().view(-1, 1, 1)
        expected = {"epsilon": noise, "v_prediction": a * noise - s * x0, "sample": x0}[kind]
        torch.testing.assert_close(noising_for(sched).target(x0, noise, t), expected)
    flow = noising_for(FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0))
    tf = flow.draw(3, "cpu", torch.Generator().manual_seed(1))
    assert tf.dtype == torch.float32 and bool(((tf > 0) & (tf <= 1000)).all())
    sigma = (tf / 1000).view(-1, 1, 1)
    torch.testing.assert_close(flow.add_noise(x0, noise, tf), (1 - sigma) * x0 + sigma * noise)
    torch.testing.assert_close(flow.target(x0, noise, tf), noise - x0)
    assert flow.weight_index(torch.tensor([1000.0, 0.4])).tolist() == [999, 0]


class _TimeModel:
    """A stand-in ConditionedModel whose prediction is ``f(t)`` everywhere (``f = None``: zero)."""

    def __init__(self, f=None):
        self.module = torch.nn.Linear(1, 1)
        self.f = f

    def predict(self, x, t, cond):
        if self.f is None:
            return torch.zeros_like(x)
        return self.f(t.double()).float()[:, None, None, None].expand_as(x)


def _cosine_scheduler():
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")


def test_weight_stratified_timesteps_follow_the_weights():
    from unlearn_fast.eval.metrics import weight_stratified_timesteps

    w = torch.tensor([1.0, 0.0, 3.0, 6.0])
    t = weight_stratified_timesteps(w, 1000, torch.Generator().manual_seed(0))
    counts = torch.bincount(t, minlength=4)
    assert counts.tolist() == [100, 0, 300, 600]  # one draw per stratum: exact shares


def test_kl_on_draws_is_the_weighted_sum_over_all_timesteps():
    from unlearn_fast.eval.metrics import kl_on_draws

    sched = _cosine_scheduler()
    w = uf.timestep_weights(sched, "kl").double()
    x0 = torch.zeros(144, 1, 2, 3)
    cond = torch.zeros(144, dtype=torch.long)
    # a constant error: the estimate is exact whatever t is drawn
    const = kl_on_draws(sched, _TimeModel(), _TimeModel(lambda t: torch.full_like(t, 0.5)), x0, cond, cond, seed=0)
    assert const == pytest.approx(float(w.sum()) * 0.25 * 6, rel=1e-5)
    # an error that grows with t: the estimate is unbiased and within a few percent on 144 draws
    f = lambda t: 0.1 + t / 1000  # noqa: E731
    exact = float((w * f(torch.arange(1000, dtype=torch.float64)).square()).sum() * 6)
    est = [kl_on_draws(sched, _TimeModel(), _TimeModel(f), x0, cond, cond, seed=s) for s in range(5)]
    assert all(abs(e / exact - 1) < 0.03 for e in est), (est, exact)
    # the old estimator (uniform t, weight T w_t) on the same draws counts would miss it by far
    g = torch.Generator().manual_seed(0)
    uniform = [float((1000 * w * f(torch.arange(1000.0, dtype=torch.float64)).square() * 6)[
        torch.randint(0, 1000, (144,), generator=g)].mean()) for _ in range(5)]
    assert max(abs(u / exact - 1) for u in uniform) > 0.3
