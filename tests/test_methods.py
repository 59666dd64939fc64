"""Each method's loss and gradient against its math.md formula (sections 4-6, baselines),
written out independently in plain PyTorch, and the dual updates' directions and projections.

The "model" is a tiny differentiable function of ``(x_t, t, cond)`` with per-condition
parameters; the frozen teacher is the same function with other parameters. The engine
draws ``t`` and the noise from the generator it is given; the tests draw them again from a
generator seeded alike and check that the student saw the same ``x_t``.
"""

from __future__ import annotations

import pytest
import torch

from unlearn_fast.duals import DualVariables
from unlearn_fast.engine import UnlearningObjective
from unlearn_fast.methods import (
    ESD, FORGET, METHODS, RETAIN, Batch, ConceptAblation, Finetune, ForwardKLUnlearning, LikelihoodUnlearning, NegGrad,
    ReverseKLUnlearning,
)

from helpers import DT, N_COND, NULL, SHAPE, T, TinyModel  # noqa: E402


@pytest.fixture(scope="module")
def scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=T)


def kl_weights(scheduler, t):
    """T * beta_t^2 / (2 sigma_t^2 alpha_t (1 - abar_t)), sigma_t^2 the posterior variance (math.md 2)."""
    beta = scheduler.betas.to(DT)
    abar = scheduler.alphas_cumprod.to(DT)
    abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
    sigma2 = beta * (1 - abar_prev) / (1 - abar)
    return T * (beta.square() / (2 * sigma2 * (1 - beta) * (1 - abar)))[t]


def make_batch(conds, roles, sample_ids=None, seed=0):
    g = torch.Generator().manual_seed(100 + seed)
    x0 = torch.randn(len(conds), *SHAPE, generator=g, dtype=DT)
    sid = torch.tensor(sample_ids) if sample_ids is not None else torch.full((len(conds),), -1)
    return Batch(x0, torch.tensor(conds), torch.tensor(roles), sid)


def draw(batch, scheduler, seed, t_range):
    """The engine's x_t, t and noise, drawn again from an identically seeded generator."""
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(*t_range, (len(batch),), generator=g)
    noise = torch.randn(batch.x0.shape, dtype=DT, generator=g)
    abar = scheduler.alphas_cumprod.to(DT)[t].view(-1, *([1] * len(SHAPE)))
    return abar.sqrt() * batch.x0 + (1 - abar).sqrt() * noise, t, noise


def msq(r):
    """Per-sample mean of squares (reduction='mean')."""
    return r.square().flatten(1).mean(1)


def run(method, batch, scheduler, *, weighting="kl", seed=7, t_range=(1, T), source="data", student_seed=1):
    """Engine loss and gradients, and the replicated (x_t, t, noise)."""
    student, teacher = TinyModel(student_seed), TinyModel(2, frozen=True)
    objective = UnlearningObjective(student, scheduler, method, teacher=teacher, weighting=weighting,
                                    source=source, t_range=t_range, backend="auto")
    loss, metrics = objective.loss(batch, torch.Generator().manual_seed(seed))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in student.module.named_parameters()}
    x_t, t, noise = draw(batch, scheduler, seed, t_range)
    if source == "data":
        seen_x, seen_t, seen_c = student.seen[-1]
        torch.testing.assert_close(seen_x, x_t, rtol=1e-12, atol=1e-12)
        assert torch.equal(seen_t, t) and torch.equal(seen_c, batch.cond)
    ref_student = TinyModel(student_seed)
    return loss, metrics, grads, (x_t, t, noise), ref_student, teacher


def check(loss, grads, ref_loss, ref_student):
    ref_loss.backward()
    torch.testing.assert_close(loss.to(DT), ref_loss.detach(), rtol=1e-5, atol=1e-9)
    for name, p in ref_student.module.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-5, atol=1e-9, msg=f"gradient of {name}")


def role_mean(values, mask):
    return values[mask].sum() / mask.sum().clamp(min=1)


# --- RU --------------------------------------------------------------------------------------


@pytest.mark.parametrize("retain_weight", [1.0, 0.5])
def test_ru_loss_gradient_and_dual_step(scheduler, retain_weight):
    lam = torch.tensor([0.2, 0.35], dtype=DT)
    method = ReverseKLUnlearning([0, 1], NULL, num_conditions=N_COND, bound=0.5, dual_lr=0.3, lambda_max=0.45,
                                 retain_weight=retain_weight)
    method.duals.lambdas = lam.clone()
    batch = make_batch([0, 1, 0, 3, 4], [FORGET, FORGET, FORGET, RETAIN, RETAIN])
    loss, _, grads, (x_t, t, noise), student, teacher = run(method, batch, scheduler)

    w = kl_weights(scheduler, t)
    forget = batch.role == FORGET
    concept = torch.tensor([0, 1, 0, -1, -1])
    Lam = lam.sum()
    alpha = lam / (1 - Lam)  # alpha_i = lambda_i / (1 - sum lambda)
    eps_theta = student.eps(x_t, t, batch.cond)
    eps_a = teacher.eps(x_t, t, torch.full_like(batch.cond, NULL))
    eps_f = teacher.eps(x_t, t, batch.cond)  # the forget concept / the retain prompt itself
    a = torch.where(forget, alpha[concept.clamp(min=0)], torch.zeros(()))
    target = eps_a - a.view(-1, 1, 1, 1) * (eps_f - eps_a)  # eps* = eps_a - alpha_i (eps_f^i - eps_a)
    forget_term = (1 - Lam) * role_mean(w * msq(eps_theta - target), forget)
    retain_term = retain_weight * role_mean(w * msq(eps_theta - eps_f), ~forget)  # distillation
    check(loss, grads, forget_term + retain_term, student)

    # dual step: KLhat_i = mean over concept i's samples of w ||eps_theta - eps_f^i||^2
    kl = (w * msq(eps_theta - eps_f)).detach()
    khat = torch.stack([kl[concept == i].mean() for i in range(2)])
    expected = (lam + 0.3 * (0.5 - khat)).clamp(0, 0.45)
    if expected.sum() > 0.95:
        expected = expected * 0.95 / expected.sum()
    torch.testing.assert_close(method.duals.lambdas, expected, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(method.duals.estimate, khat, rtol=1e-6, atol=1e-12)


def test_ru_shared_dual_is_one_concept(scheduler):
    """shared_dual: conditions 0 and 1 are one concept's prompts: one lambda, alpha = lambda / (1 - lambda)
    on both, its estimate the mean over both conditions' forget rows."""
    lam = torch.tensor([0.6], dtype=DT)
    method = ReverseKLUnlearning([0, 1], NULL, num_conditions=N_COND, bound=0.5, dual_lr=0.3, lambda_max=0.75,
                                 shared_dual=True)
    assert method.duals.lambdas.shape == (1,)
    method.duals.lambdas = lam.clone()
    batch = make_batch([0, 1, 0, 3, 4], [FORGET, FORGET, FORGET, RETAIN, RETAIN])
    loss, _, grads, (x_t, t, noise), student, teacher = run(method, batch, scheduler)

    w = kl_weights(scheduler, t)
    forget = batch.role == FORGET
    alpha = lam / (1 - lam)
    eps_theta = student.eps(x_t, t, batch.cond)
    eps_a = teacher.eps(x_t, t, torch.full_like(batch.cond, NULL))
    eps_f = teacher.eps(x_t, t, batch.cond)
    a = torch.where(forget, alpha, torch.zeros(()))
    target = eps_a - a.view(-1, 1, 1, 1) * (eps_f - eps_a)
    forget_term = (1 - lam[0]) * role_mean(w * msq(eps_theta - target), forget)
    retain_term = role_mean(w * msq(eps_theta - eps_f), ~forget)
    check(loss, grads, forget_term + retain_term, student)
    khat = (w * msq(eps_theta - eps_f)).detach()[forget].mean().view(1)
    torch.testing.assert_close(method.duals.lambdas, (lam + 0.3 * (0.5 - khat)).clamp(0, 0.75), rtol=1e-6, atol=1e-9)
    assert method.metrics()["ru/lambda[shared]"] == pytest.approx(float(method.duals.lambdas[0]))
    with pytest.raises(ValueError, match=r"^shared_dual: expected true or false, got 'no'$"):
        ReverseKLUnlearning([0, 1], NULL, num_conditions=N_COND, shared_dual="no")


def test_ru_hellinger_gradient(scheduler):
    """Hellinger (math.md 7): the gradient is that of (1 - sum lambda) * mean_F (1 - exp(-w d / 4))."""
    lam = torch.tensor([0.3], dtype=DT)
    method = ReverseKLUnlearning([0], NULL, num_conditions=N_COND, divergence="hellinger", bound=0.5, dual_lr=0.1)
    method.duals.lambdas = lam.clone()
    batch = make_batch([0, 0, 3], [FORGET, FORGET, RETAIN], seed=1)
    loss, _, grads, (x_t, t, _), student, teacher = run(method, batch, scheduler, t_range=(400, 1000))
    w = kl_weights(scheduler, t)
    forget = batch.role == FORGET
    eps_theta = student.eps(x_t, t, batch.cond)
    eps_a = teacher.eps(x_t, t, torch.full_like(batch.cond, NULL))
    eps_f = teacher.eps(x_t, t, batch.cond)
    alpha = lam / (1 - lam.sum())
    target = eps_a - torch.where(forget, alpha[0], 0.0).view(-1, 1, 1, 1) * (eps_f - eps_a)
    hell = 1 - torch.exp(-w * msq(eps_theta - target) / 4)
    ref = (1 - lam.sum()) * role_mean(hell, forget) + role_mean(w * msq(eps_theta - eps_f), ~forget)
    ref.backward()
    for name, p in student.module.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-5, atol=1e-10, msg=f"gradient of {name}")
    # the constraint read by the dual is the Hellinger distance to the forget concept
    h_f = (1 - torch.exp(-w * msq(eps_theta - eps_f) / 4)).detach()[forget].mean()
    torch.testing.assert_close(method.duals.estimate, h_f.view(1), rtol=1e-6, atol=1e-12)


# --- FU --------------------------------------------------------------------------------------


@pytest.mark.parametrize("retain", ["distill", "data"])
def test_fu_signed_weights_and_per_sample_duals(scheduler, retain):
    lam = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=DT)
    method = ForwardKLUnlearning(4, bound=30.0, dual_lr=0.01, lambda_max=0.45, retain=retain)
    method.duals.lambdas = lam.clone()
    # forget sample 2 appears twice: its dual reads the mean of its two losses
    batch = make_batch([0, 0, 0, 3, 4], [FORGET, FORGET, FORGET, RETAIN, RETAIN], [2, 0, 2, -1, -1], seed=2)
    loss, _, grads, (x_t, t, noise), student, teacher = run(method, batch, scheduler)

    w = kl_weights(scheduler, t)
    forget = batch.role == FORGET
    eps_theta = student.eps(x_t, t, batch.cond)
    retain_target = noise if retain == "data" else teacher.eps(x_t, t, batch.cond)
    forget_loss = w * msq(noise - eps_theta)  # ELBO term of each forget sample
    lam_b = lam[batch.sample_id.clamp(min=0)]
    ref = role_mean(w * msq(eps_theta - retain_target), ~forget) - role_mean(lam_b * forget_loss, forget)
    check(loss, grads, ref, student)

    fl = forget_loss.detach()
    expected = lam.clone()
    expected[0] = lam[0] + 0.01 * (30.0 - fl[1])
    expected[2] = lam[2] + 0.01 * (30.0 - (fl[0] + fl[2]) / 2)
    expected = expected.clamp(0, 0.45)  # samples 1 and 3 were not seen: unchanged
    torch.testing.assert_close(method.duals.lambdas, expected, rtol=1e-6, atol=1e-9)


# --- LU --------------------------------------------------------------------------------------


@pytest.mark.parametrize("clip", [50.0, 0.05])
def test_lu_per_sample_guidance_from_elbo_ratio(scheduler, clip):
    lam0 = 1.3
    method = LikelihoodUnlearning([0, 1], NULL, bound=0.5, dual_lr=0.2, lambda_max=5.0, init_lambda=lam0,
                                  retain_weight=0.7, log_ratio_clip=clip)
    batch = make_batch([0, 1, 1, 3, 4, 3], [FORGET, FORGET, FORGET, RETAIN, RETAIN, RETAIN], seed=3)
    loss, _, grads, (x_t, t, noise), student, teacher = run(method, batch, scheduler, weighting="simple")

    w = torch.ones(len(batch), dtype=DT)
    forget = batch.role == FORGET
    eps_theta = student.eps(x_t, t, batch.cond)
    eps_q = teacher.eps(x_t, t, torch.full_like(batch.cond, NULL))
    eps_u = teacher.eps(x_t, t, batch.cond)
    # log r = w (||eps - eps_q||^2 - ||eps - eps_u||^2), the ELBO difference with the same noise
    log_r = (w * (msq(noise - eps_q) - msq(noise - eps_u))).clamp(-clip, clip)
    r = log_r.exp()
    g = lam0 * r
    target = eps_q - g.view(-1, 1, 1, 1) * (eps_u - eps_q)  # eps* = eps_q - lambda r(x) (eps_u - eps_q)
    # retain samples: distillation onto the teacher at their own condition (eps_u's slot holds it)
    ref = role_mean(w * msq(eps_theta - target), forget) + 0.7 * role_mean(w * msq(eps_theta - eps_u), ~forget)
    check(loss, grads, ref, student)
    if clip < 1:
        assert bool((log_r[forget].abs() <= clip + 1e-12).all())

    # dual (constraint E[r] <= bound): lambda <- clip(lambda + lr (mean r - bound), 0, lambda_max)
    expected = min(max(lam0 + 0.2 * (float(r[forget].mean()) - 0.5), 0.0), 5.0)
    assert method.duals.lambdas.item() == pytest.approx(expected, rel=1e-9)


# --- baselines -------------------------------------------------------------------------------


def test_esd_fixed_guidance_target(scheduler):
    eta = 2.0
    method = ESD([0], NULL, num_conditions=N_COND, eta=eta)
    assert method.default_source == "student" and method.duals is None
    batch = make_batch([0, 0, 3], [FORGET, FORGET, RETAIN], seed=4)
    loss, _, grads, (x_t, t, _), student, teacher = run(method, batch, scheduler, source="data")
    w = kl_weights(scheduler, t)
    forget = batch.role == FORGET
    eps_theta = student.eps(x_t, t, batch.cond)
    eps_a = teacher.eps(x_t, t, torch.full_like(batch.cond, NULL))
    eps_c = teacher.eps(x_t, t, batch.cond)
    target = eps_a - eta * (eps_c - eps_a)  # ESD: eps(anchor) - eta (eps(c) - eps(anchor))
    ref = role_mean(w * msq(eps_theta - target), forget)  # retain_weight 0 by default
    check(loss, grads, ref, student)


def test_esd_is_ru_with_fixed_lambda(scheduler):
    """math.md 4: ESD with eta = lambda / (1 - lambda) has RU's gradient up to the factor 1 - lambda."""
    lam = 0.4
    ru = ReverseKLUnlearning([0], NULL, num_conditions=N_COND, retain_weight=0.0, dual_lr=0.0, init_lambda=lam,
                             lambda_max=0.9)
    esd = ESD([0], NULL, num_conditions=N_COND, eta=lam / (1 - lam))
    batch = make_batch([0, 0, 0], [FORGET] * 3, seed=5)
    _, _, g_ru, *_ = run(ru, batch, scheduler)
    _, _, g_esd, *_ = run(esd, batch, scheduler, source="data")
    for name in g_ru:
        torch.testing.assert_close(g_ru[name], (1 - lam) * g_esd[name], rtol=1e-5, atol=1e-10)


def test_esd_student_source_samples_x_t(scheduler):
    method = ESD([0], NULL, num_conditions=N_COND, eta=1.0)
    batch = make_batch([0, 0], [FORGET, FORGET], seed=6)
    student, teacher = TinyModel(1), TinyModel(2, frozen=True)
    objective = UnlearningObjective(student, scheduler, method, teacher=teacher, sampler_steps=4)
    assert objective.source == "student"
    loss, _ = objective.loss(batch, torch.Generator().manual_seed(0))
    loss.backward()
    # the student ran its sampler (no gradient) before the training call, on noise, not on x0
    assert len(student.seen) > 2
    x_train = student.seen[-1][0]
    assert not torch.allclose(x_train, batch.x0)
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in student.module.parameters())


def test_esd_variants_choose_parameters():
    assert ESD([0], NULL, num_conditions=N_COND, variant="u").default_train_params == "no_cross_attn"
    assert ESD([0], NULL, num_conditions=N_COND, variant="x").default_train_params == "cross_attn"


def test_ablation_regresses_onto_anchor(scheduler):
    method = ConceptAblation(anchor=4, retain_weight=0.6)
    batch = make_batch([0, 1, 3, 3], [FORGET, FORGET, RETAIN, RETAIN], seed=7)
    loss, _, grads, (x_t, t, _), student, teacher = run(method, batch, scheduler)
    w = kl_weights(scheduler, t)
    forget = batch.role == FORGET
    eps_theta = student.eps(x_t, t, batch.cond)
    eps_anchor = teacher.eps(x_t, t, torch.full_like(batch.cond, 4))
    eps_same = teacher.eps(x_t, t, batch.cond)
    ref = role_mean(w * msq(eps_theta - eps_anchor), forget) + 0.6 * role_mean(w * msq(eps_theta - eps_same), ~forget)
    check(loss, grads, ref, student)


# --- per-condition anchors (TrainConfig.anchor_map) -----------------------------------------


def test_esd_anchor_table_gives_each_forget_condition_its_anchor(scheduler):
    """With a table, forget condition 0 regresses onto eps(anchor 3) and condition 1 onto eps(anchor 4)."""
    eta = 1.5
    table = torch.full((N_COND,), NULL, dtype=torch.long)
    table[0], table[1] = 3, 4
    method = ESD([0, 1], table, num_conditions=N_COND, eta=eta)
    batch = make_batch([0, 1, 1, 0], [FORGET] * 4, seed=11)
    loss, _, grads, (x_t, t, _), student, teacher = run(method, batch, scheduler, source="data")
    w = kl_weights(scheduler, t)
    eps_theta = student.eps(x_t, t, batch.cond)
    eps_a = teacher.eps(x_t, t, torch.tensor([3, 4, 4, 3]))
    target = eps_a - eta * (teacher.eps(x_t, t, batch.cond) - eps_a)
    check(loss, grads, role_mean(w * msq(eps_theta - target), batch.role == FORGET), student)


def test_ablation_anchor_table(scheduler):
    table = torch.full((N_COND,), 4, dtype=torch.long)
    table[1] = 3
    method = ConceptAblation(anchor=table, retain_weight=0.0)
    batch = make_batch([0, 1], [FORGET, FORGET], seed=12)
    loss, _, grads, (x_t, t, _), student, teacher = run(method, batch, scheduler)
    w = kl_weights(scheduler, t)
    eps_anchor = teacher.eps(x_t, t, torch.tensor([4, 3]))
    check(loss, grads, role_mean(w * msq(student.eps(x_t, t, batch.cond) - eps_anchor), batch.role == FORGET), student)


@pytest.mark.parametrize("build", [
    lambda a: ReverseKLUnlearning([0, 1], a, num_conditions=N_COND),
    lambda a: LikelihoodUnlearning([0, 1], a),
])
def test_anchor_on_a_forget_condition_is_refused(build):
    table = torch.full((N_COND,), NULL, dtype=torch.long)
    table[0] = 1
    with pytest.raises(ValueError, match=r"anchor: forget conditions \[0\] are anchored on forget conditions"):
        build(table)
    with pytest.raises(ValueError, match="anchor: expected a condition id or a 1-D long table"):
        build(table.float())


@pytest.mark.parametrize("alpha", [0.3, 0.0])
def test_neggrad_and_finetune(scheduler, alpha):
    method = NegGrad(alpha=alpha) if alpha else Finetune()
    batch = make_batch([0, 3, 4, 0], [FORGET, RETAIN, RETAIN, FORGET], seed=8)
    loss, _, grads, (x_t, t, noise), student, _ = run(method, batch, scheduler)
    w = kl_weights(scheduler, t)
    forget = batch.role == FORGET
    den = w * msq(student.eps(x_t, t, batch.cond) - noise)
    ref = role_mean(den, ~forget) - alpha * role_mean(den, forget)
    check(loss, grads, ref, student)


def test_every_registered_method_is_covered():
    # lacu's formula is checked in tests/test_continual.py
    assert set(METHODS) == {"ru", "fu", "lu", "esd", "ablation", "neggrad", "finetune", "lacu", "clacu"}


# --- dual variables ----------------------------------------------------------------------------


def test_dual_direction_projection_and_running_mean():
    d = DualVariables(3, [1.0, 1.0, 1.0], lr=0.5, lambda_max=0.8, init=0.3, ema=0.5)
    d.update(torch.tensor([0, 1]), torch.tensor([0.2, 1.6]))  # 0 violated (g < b), 1 satisfied, 2 unseen
    torch.testing.assert_close(d.lambdas, torch.tensor([0.3 + 0.5 * 0.8, 0.3 - 0.5 * 0.6, 0.3], dtype=DT))
    assert d.lambdas[0] > 0.3 > d.lambdas[1] and d.lambdas[2] == 0.3
    # running mean: est <- 0.5 est + 0.5 new; a violated constraint keeps rising up to the clip
    d.update(torch.tensor([0, 0]), torch.tensor([0.0, 0.4]))
    assert d.estimate[0].item() == pytest.approx(0.5 * 0.2 + 0.5 * 0.2)
    assert d.lambdas[0].item() == pytest.approx(0.8)  # 0.7 + 0.5 * 0.8 = 1.1, clipped to lambda_max
    # a satisfied constraint falls to 0, not below
    for _ in range(5):
        d.update(torch.tensor([1]), torch.tensor([10.0]))
    assert d.lambdas[1].item() == 0.0
    assert d.slack()[1] > 0 and d.slack()[0] < 0


def test_dual_leq_direction():
    d = DualVariables(1, 0.5, lr=1.0, lambda_max=5.0, init=1.0, ema=1.0, direction="leq")
    d.update(torch.tensor([0]), torch.tensor([0.9]))  # violated (g > b): lambda rises
    assert d.lambdas.item() == pytest.approx(1.4)
    d.update(torch.tensor([0]), torch.tensor([0.1]))  # satisfied: lambda falls
    assert d.lambdas.item() == pytest.approx(1.0)


def test_dual_total_cap_keeps_tilted_target_finite():
    d = DualVariables(2, 10.0, lr=1.0, lambda_max=0.9, max_total=0.95, init=0.0)
    d.update(torch.tensor([0, 1]), torch.tensor([0.0, 0.0]))
    assert d.lambdas.sum().item() == pytest.approx(0.95) and bool((d.lambdas <= 0.9).all())


def test_dual_pi_update_adds_the_error_change():
    # e = b - ghat (geq); first update has no previous error: plain ascent; then + kp * (e - e_prev)
    d = DualVariables(2, 1.0, lr=0.5, lambda_max=10.0, init=1.0, ema=1.0, kp=2.0)
    d.update(torch.tensor([0, 1]), torch.tensor([0.2, 0.6]))  # e = 0.8, 0.4
    torch.testing.assert_close(d.lambdas, torch.tensor([1.4, 1.2], dtype=DT))
    d.update(torch.tensor([0]), torch.tensor([0.7]))  # e0 = 0.3: 1.4 + 0.5 * 0.3 + 2 * (0.3 - 0.8)
    assert d.lambdas[0].item() == pytest.approx(1.4 + 0.15 - 1.0)
    assert d.lambdas[1].item() == pytest.approx(1.2)  # unseen: lambda and last error kept
    d.update(torch.tensor([1]), torch.tensor([0.6]))  # e1 unchanged (0.4): no proportional step
    assert d.lambdas[1].item() == pytest.approx(1.4)
    # the last error is part of the state: a round trip resumes the same update
    e = DualVariables(2, 1.0, lr=0.5, lambda_max=10.0, ema=1.0, kp=2.0)
    e.load_state_dict(d.state_dict())
    for x in (d, e):
        x.update(torch.tensor([0, 1]), torch.tensor([0.0, 1.5]))
    torch.testing.assert_close(d.lambdas, e.lambdas)
    # a state of before the PI update (no "error") loads: the next step is plain ascent
    old = {k: v for k, v in d.state_dict().items() if k != "error"}
    f = DualVariables(2, 1.0, lr=0.5, lambda_max=10.0, ema=1.0, kp=2.0)
    f.load_state_dict(old)
    f.update(torch.tensor([0]), torch.tensor([0.0]))
    assert f.lambdas[0].item() == pytest.approx(d.lambdas[0].item() + 0.5)
    with pytest.raises(ValueError, match="kp"):
        DualVariables(1, 1.0, lr=0.5, lambda_max=1.0, kp=-1.0)


def test_dual_pi_damps_the_swing_of_ascent_on_a_lagged_constraint():
    # a toy plant: the constraint follows lambda with a lag (g <- g + 0.2 (4 lambda - g)), bound 1;
    # plain ascent overshoots (lambda 0.64) and swings for tens of steps, the PI update settles
    # near lambda = 0.25 within a few
    def trace(kp):
        d = DualVariables(1, 1.0, lr=0.3, lambda_max=5.0, init=0.0, ema=1.0, kp=kp)
        g, lams = 0.0, []
        for _ in range(100):
            g += 0.2 * (4 * d.lambdas.item() - g)
            d.update(torch.tensor([0]), torch.tensor([g]))
            lams.append(d.lambdas.item())
        lams = torch.tensor(lams, dtype=DT)
        far = ((lams - 0.25).abs() > 0.02).nonzero()
        return lams, g, int(far[-1]) + 1 if len(far) else 0

    plain, g_plain, settle_plain = trace(0.0)
    pi, g_pi, settle_pi = trace(1.0)
    assert pi.std() < 0.2 * plain.std() and pi.max() < 0.35 < plain.max()
    assert settle_pi < 10 < settle_plain
    assert abs(g_pi - 1.0) < 0.01


def test_ru_duals_move_the_right_way(scheduler):
    batch = make_batch([0, 1, 0, 3], [FORGET, FORGET, FORGET, RETAIN], seed=9)
    # an unreachable bound: both constraints violated, both lambdas rise, and the sum stays < 1
    up = ReverseKLUnlearning([0, 1], NULL, num_conditions=N_COND, bound=1e6, dual_lr=1.0, lambda_max=0.9,
                             init_lambda=0.3)
    run(up, batch, scheduler)
    assert bool((up.duals.lambdas > 0.3).all())
    assert up.duals.lambdas.sum().item() <= 0.95 + 1e-12 and bool((up.duals.lambdas <= 0.9).all())
    alpha, rest = up.alphas("cpu")
    assert torch.isfinite(alpha).all() and rest > 0
    # a bound of 0: both satisfied, both lambdas fall, never below 0
    down = ReverseKLUnlearning([0, 1], NULL, num_conditions=N_COND, bound=0.0, dual_lr=1e6, init_lambda=0.3)
    run(down, batch, scheduler)
    assert bool((down.duals.lambdas == 0).all())


def test_method_state_round_trip(scheduler):
    a = ForwardKLUnlearning(5, dual_lr=0.1)
    a.duals.lambdas = torch.linspace(0, 0.5, 5, dtype=DT)
    b = ForwardKLUnlearning(5)
    b.load_state_dict(a.state_dict())
    assert torch.equal(b.duals.lambdas, a.duals.lambdas)
    assert b.is_finite()
    b.duals.lambdas[0] = float("nan")
    assert not b.is_finite()
