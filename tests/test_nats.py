"""RU's constraint in nats (methods/nats.py): the estimator's algebra, the probe, the wiring, the errors."""

from __future__ import annotations

import pytest
import torch

from unlearn_fast.engine import UnlearningObjective
from unlearn_fast.methods import ReverseKLUnlearning
from unlearn_fast.methods.base import FORGET, RETAIN, Batch
from unlearn_fast.schedules import timestep_weights

from helpers import DT, N_COND, NULL, SHAPE, T, TinyModel  # noqa: E402


def cosine():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2")


def objective(student_seed=1, t_range=None, reduction="mean", **kw):
    method = ReverseKLUnlearning([0, 1], NULL, num_conditions=N_COND, bound_units="nats", **kw)
    return UnlearningObjective(TinyModel(student_seed), cosine(), method, teacher=TinyModel(2, frozen=True),
                               t_range=t_range, reduction=reduction)


def batch(n_forget=3, n_retain=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n_forget + n_retain, *SHAPE, generator=g, dtype=DT)
    cond = torch.tensor([i % 2 for i in range(n_forget)] + [3 + i % 2 for i in range(n_retain)])
    role = torch.tensor([FORGET] * n_forget + [RETAIN] * n_retain)
    return Batch(x0, cond, role, n_forget=n_forget)


@pytest.mark.parametrize("t_range", [None, (100, 1000), (0, 400)])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_probe_plus_uniform_draws_sum_to_the_chain_kl(t_range, reduction):
    """Every timestep of the range drawn once, the probed ones read from the probe state:
    the mean of the per-sample values is exactly sum_t w_t d_t over the range."""
    obj = objective(t_range=t_range, reduction=reduction)
    nats = obj.method.nats
    nats.probe(obj, batch(), obj.method.concept_of)  # binds, and reads the element count of a sample
    lo, hi = t_range or (0, T)
    w = timestep_weights(obj.scheduler, "kl").double()
    t = torch.arange(lo, hi)
    d = 1.0 + torch.sin(t.double()) ** 2  # a summed squared distance per timestep
    numel = 18  # SHAPE (2, 3, 3)
    for i, h in enumerate(nats.timesteps):
        nats.last[0, i] = d[h - lo]
    dist = d / numel if reduction == "mean" else d
    values = nats.values(dist, t, torch.zeros_like(t))
    truth = float((w[lo:hi] * d).sum())
    assert float(values.mean()) == pytest.approx(truth, rel=1e-10)


def test_the_heaviest_timesteps_of_the_range_are_probed():
    obj = objective()
    obj.method.nats.bind(obj)
    w = timestep_weights(obj.scheduler, "kl").double()
    assert T - 1 in obj.method.nats.timesteps  # the capped last step: most of the weight
    assert sorted(obj.method.nats.timesteps) == sorted(torch.topk(w, 4).indices.tolist())
    inside = objective(t_range=(0, 400))
    inside.method.nats.bind(inside)
    assert all(0 <= h < 400 for h in inside.method.nats.timesteps)
    assert sorted(inside.method.nats.timesteps) == sorted(torch.topk(w[:400], 4).indices.tolist())


def test_a_student_equal_to_its_teacher_is_zero_nats_away_and_a_different_one_is_not():
    same = objective(student_seed=2)  # the teacher's own weights
    loss, _ = same.loss(batch(), torch.Generator().manual_seed(0))
    assert torch.equal(same.method.nats.last, torch.zeros_like(same.method.nats.last))
    assert torch.allclose(same.method.duals.estimate, torch.zeros(2, dtype=torch.float64))
    other = objective(student_seed=1)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):  # 4 probed timesteps, 3 forget rows: every (concept, timestep) within 3 steps
        other.loss(batch(), gen)
    assert bool((other.method.nats.last > 0).all())
    assert bool(torch.isfinite(other.method.duals.estimate).all()) and bool((other.method.duals.estimate > 0).all())


def test_probe_rows_are_forget_rows_and_cycle():
    obj = objective()
    obj.method.nats.bind(obj)
    student = obj.model
    student.seen.clear()
    obj.loss(batch(n_forget=3), torch.Generator().manual_seed(0))
    probe_call = student.seen[0]  # the probe runs before the step's student pass
    assert sorted(probe_call[1].tolist()) == obj.method.nats.timesteps
    assert probe_call[2].tolist() == [0, 1, 0, 0]  # forget rows 0, 1, 2, 0 (conditions 0, 1, 0)
    # the next step starts where this one stopped
    student.seen.clear()
    obj.loss(batch(n_forget=3), torch.Generator().manual_seed(1))
    assert student.seen[0][2].tolist() == [1, 0, 0, 1]  # rows 1, 2, 0, 1


def test_state_round_trips_and_an_older_checkpoint_loads():
    obj = objective()
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):
        obj.loss(batch(), gen)
    state = obj.method.state_dict()
    fresh = objective()
    fresh.method.load_state_dict(state)
    assert torch.equal(fresh.method.nats.last, obj.method.nats.last)
    assert fresh.method.nats.step == obj.method.nats.step
    older = {k: v for k, v in state.items() if k != "nats"}
    again = objective()
    again.method.load_state_dict(older)  # no probe state: starts from zero
    assert torch.equal(again.method.nats.last, torch.zeros_like(again.method.nats.last))
    from unlearn_fast.methods.nats import NatsConstraint

    with pytest.raises(ValueError, match=r"state\['nats'\].*1 concepts"):
        NatsConstraint(1).load_state_dict(state["nats"])


def test_the_dual_step_is_per_unit_of_relative_error():
    ru = ReverseKLUnlearning([0], NULL, num_conditions=N_COND, bound_units="nats", bound=20.0, dual_lr=0.1, dual_kp=0.4)
    assert ru.duals.lr == pytest.approx(0.005) and ru.duals.kp == pytest.approx(0.02)
    plain = ReverseKLUnlearning([0], NULL, num_conditions=N_COND, bound=20.0, dual_lr=0.1, dual_kp=0.4)
    assert plain.duals.lr == pytest.approx(0.1) and plain.duals.kp == pytest.approx(0.4)


def test_bad_settings_get_clear_errors():
    with pytest.raises(ValueError, match="bound.*positive"):
        ReverseKLUnlearning([0], NULL, num_conditions=N_COND, bound_units="nats", bound=0.0)
    with pytest.raises(ValueError, match="bound_units"):
        ReverseKLUnlearning([0], NULL, num_conditions=N_COND, bound_units="bits")
    with pytest.raises(ValueError, match="bound_units.*hellinger"):
        ReverseKLUnlearning([0], NULL, num_conditions=N_COND, bound_units="nats", divergence="hellinger")
    with pytest.raises(ValueError, match="nats_probe"):
        ReverseKLUnlearning([0], NULL, num_conditions=N_COND, bound_units="nats", nats_probe=-1)
    from diffusers import FlowMatchEulerDiscreteScheduler

    method = ReverseKLUnlearning([0, 1], NULL, num_conditions=N_COND, bound_units="nats")
    flow = UnlearningObjective(TinyModel(1), FlowMatchEulerDiscreteScheduler(num_train_timesteps=T), method,
                               teacher=TinyModel(2, frozen=True))
    with pytest.raises(ValueError, match="bound_units.*flow"):
        flow.loss(batch(), torch.Generator().manual_seed(0))


def test_the_default_dual_step_follows_the_bound_units():
    from unlearn_fast.methods.ru import NATS_DUAL_LR, WEIGHTED_DUAL_LR

    nats = ReverseKLUnlearning([0], NULL, num_conditions=N_COND, bound_units="nats", bound=40.0)
    weighted = ReverseKLUnlearning([0], NULL, num_conditions=N_COND, bound=0.05)
    assert nats.duals.lr == pytest.approx(NATS_DUAL_LR / 40.0)  # per unit of relative error
    assert weighted.duals.lr == pytest.approx(WEIGHTED_DUAL_LR)
    given = ReverseKLUnlearning([0], NULL, num_conditions=N_COND, bound_units="nats", bound=40.0, dual_lr=0.1)
    assert given.duals.lr == pytest.approx(0.1 / 40.0)
