"""Continual unlearning (math.md section 8): the score distance against plain PyTorch, target
selection and replay, the LACU recipe's loss and gradient against its formula, the trainer's
L2 anchor, and a 2-request continual run on a tiny class UNet.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from unlearn_fast.cli import SUBCOMMANDS, main as cli_main
from unlearn_fast.config import ConfigError, TrainConfig
from unlearn_fast.continual import (
    ConstrainedSettings, ContinualSettings, LacuSettings, ScoreDistance, TargetConfusion, markdown_table, run_continual, select_replay,
    NAIVE_RU, select_target,
)
from unlearn_fast.engine import UnlearningObjective
from unlearn_fast.eval.classifier import DigitClassifier
from unlearn_fast.eval.metrics import ClassEvaluator, EvalSettings
from unlearn_fast.methods import FORGET, METHODS, RETAIN, Batch, LocalityAwareContinualUnlearning
from unlearn_fast.models import ClassConditionalUNet
from unlearn_fast.training import l2_anchor_penalty, train

from helpers import DT, N_COND, SHAPE, T, TinyModel, tiny_class_unet as tiny_unet  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=T)


class Counting(ClassConditionalUNet):
    """Counts the model calls (to check the batched pass and the cache)."""

    calls = 0

    def predict(self, x_t, t, cond_ids):
        self.calls += 1
        return super().predict(x_t, t, cond_ids)


def plain_distance(model, x_t, t, a, b) -> float:
    """d(a, b) = mean_k mean_j (eps(x_t^k, t_k, a) - eps(x_t^k, t_k, b))^2, one draw at a time."""
    total = 0.0
    with torch.no_grad():
        for k in range(len(t)):
            x, tk = x_t[k:k + 1].double(), t[k:k + 1]
            ea = model.module.double()(x, tk, class_labels=torch.tensor([a])).sample
            eb = model.module(x, tk, class_labels=torch.tensor([b])).sample
            total += float((ea - eb).square().mean())
    model.module.float()
    return total / len(t)


# --- score distance ------------------------------------------------------------------------------


@pytest.mark.parametrize("with_x0", [False, True])
def test_score_distance_matches_plain_pytorch(scheduler, with_x0):
    model = Counting(tiny_unet(1), null_class=10)
    x0 = torch.rand(5, 1, 8, 8) * 2 - 1 if with_x0 else None
    d = ScoreDistance(model, scheduler, draws=6, x0=x0, seed=3, batch_size=1000)
    candidates = [0, 2, 5, 9]
    got = d.distances(7, candidates)
    assert model.calls == 1  # one batched pass over (1 + candidates) x draws
    want = torch.tensor([plain_distance(model, d.x_t, d.t, 7, c) for c in candidates], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-9)
    # cached per model: asking again, or for a subset, calls the model no more
    torch.testing.assert_close(d.distances(7, [2, 9]), want[[1, 3]])
    assert model.calls == 1
    # the matrix is symmetric with a zero diagonal
    m = d.matrix([0, 2, 7])
    torch.testing.assert_close(m, m.T)
    assert torch.all(m.diagonal() == 0)
    if with_x0:  # x_t is x0 forward-noised: the draws differ from pure noise of the same seed
        assert not torch.allclose(d.x_t, ScoreDistance(model, scheduler, draws=6, seed=3).x_t)


class FixedDistance:
    """A stand-in distance with a given matrix (to test the selection rules alone)."""

    def __init__(self, matrix):
        self.m = torch.as_tensor(matrix, dtype=torch.float64)

    def distances(self, a, candidates):
        return self.m[a, list(candidates)]


def test_target_selection_picks_the_nearest_admissible():
    #           0    1    2    3    4
    m = [[0.0, 0.5, 0.1, 0.3, 0.2],
         [0.5, 0.0, 0.4, 0.6, 0.7],
         [0.1, 0.4, 0.0, 0.2, 0.9],
         [0.3, 0.6, 0.2, 0.0, 0.8],
         [0.2, 0.7, 0.9, 0.8, 0.0]]
    d = FixedDistance(m)
    assert select_target(d, 0, range(5))[0] == 2
    assert select_target(d, 0, range(5), erased=[2])[0] == 4  # erased before: not admissible
    target, dist = select_target(d, 0, range(5), erased=[2], current=[0, 4])  # erased now: neither
    assert target == 3 and set(dist) == {1, 3}
    with pytest.raises(ValueError, match="no admissible mapping target"):
        select_target(d, 0, [0, 2, 4], erased=[2], current=[4])


class FixedConfusion:
    """A stand-in detector check with given rates; records which candidates were checked."""

    def __init__(self, rates):
        self.r = rates
        self.asked = []

    def rate(self, forget, candidate):
        self.asked.append(candidate)
        return self.r[candidate]


def test_target_check_skips_a_near_candidate_the_detector_confuses():
    # distances from 0: 2 (0.1) < 4 (0.2) < 3 (0.3) < 1 (0.5)
    m = [[0.0, 0.5, 0.1, 0.3, 0.2]] + [[0.0] * 5] * 4
    d = FixedDistance(m)
    check = FixedConfusion({1: 0.0, 2: 0.06, 3: 0.0, 4: 0.01})
    assert select_target(d, 0, range(5), confusion=check, max_confusion=0.02)[0] == 4  # 2 is read as 0 too often
    assert check.asked == [2, 4]  # nearest first, stops at the first that passes
    check = FixedConfusion({1: 0.0, 2: 0.06, 3: 0.0, 4: 0.01})
    assert select_target(d, 0, range(5), confusion=check, max_confusion=0.1)[0] == 2 and check.asked == [2]
    # none of the `checked` nearest passes: the least confused of them, never a farther one
    check = FixedConfusion({1: 0.0, 2: 0.06, 3: 0.05, 4: 0.08})
    assert select_target(d, 0, range(5), confusion=check, max_confusion=0.02, checked=3)[0] == 3
    assert check.asked == [2, 4, 3]
    check = FixedConfusion({1: 0.0, 2: 0.05, 3: 0.0, 4: 0.05})
    assert select_target(d, 0, range(5), confusion=check, max_confusion=0.02, checked=2)[0] == 2  # tie: the nearer
    # without a check: the nearest, whatever a detector would say
    assert select_target(d, 0, range(5))[0] == 2
    with pytest.raises(ValueError, match="checked: expected at least one"):
        select_target(d, 0, range(5), confusion=check, checked=0)


class ByClassDetector(torch.nn.Module):
    """Labels every image of condition ``c`` (recognised by a constant the stub model writes) as
    ``label_of[c]``: a detector whose confusion rates are known exactly."""

    def __init__(self, label_of):
        super().__init__()
        self.label_of = label_of
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, images):
        cond = images.flatten(1)[:, 0].round().long()
        return torch.nn.functional.one_hot(torch.tensor([self.label_of[int(c)] for c in cond]), 10).float()


def test_target_confusion_is_the_detectors_share_of_forget_labels(scheduler, monkeypatch):
    import unlearn_fast.continual.distance as continual

    calls = []

    def fake_sample(model, scheduler, cond, *, steps, guidance, generator):
        calls.append(int(cond[0]))
        images = torch.zeros(len(cond), 1, 8, 8)
        images[:, 0, 0, 0] = cond.float()  # the condition id, for the stub detector
        images[1::4, 0, 0, 0] = -1  # every 4th image: "looks like" the id -1 class
        return images

    monkeypatch.setattr(continual, "sample", fake_sample)
    ids = [9 - c for c in range(10)]  # label c is condition id 9 - c
    detector = ByClassDetector({-1: 7, **{ids[c]: c for c in range(10)}})
    check = TargetConfusion(object(), scheduler, detector, ids, samples=8, steps=2, guidance=1.0)
    assert check.rate(7, 3) == 0.25  # 2 of 8 samples of label 3 are read as 7
    assert check.rate(3, 3) == 0.75 and check.rate(6, 3) == 0.0 and check.rate(7, 2) == 0.25
    assert calls == [ids[3], ids[2]]  # sampled once per candidate, by its condition id
    assert check.rates(7) == {3: 0.25, 2: 0.25}
    with pytest.raises(ValueError, match="samples: expected at least one"):
        TargetConfusion(object(), scheduler, detector, ids, samples=0)


def test_the_shipped_detector_reads_held_out_digits():
    from unlearn_fast.data import load_split
    from unlearn_fast.eval.classifier import load_detector

    images, labels = load_split("heldout", size=16)
    det = load_detector()
    assert float((det.predict(images) == labels).double().mean()) > 0.97
    assert tuple(det.config["channels"]) == (16, 32)  # not the evaluator's


def test_target_selection_with_score_distance(scheduler):
    model = ClassConditionalUNet(tiny_unet(2), null_class=10)
    d = ScoreDistance(model, scheduler, draws=4, seed=0)
    row = d.distances(3, range(10))
    erased = [int(c) for c in row.argsort()[1:3]]  # the two nearest are erased already
    target, _ = select_target(d, 3, range(10), erased=erased, current=[3])
    admissible = [c for c in range(10) if c not in erased + [3]]
    assert target == min(admissible, key=lambda c: row[c])


def test_replay_picks_the_nearest_retained():
    m = torch.tensor([[0.0, 0.5, 0.1, 0.3, 0.2],
                      [0.5, 0.0, 0.4, 0.6, 0.7],
                      [0.1, 0.4, 0.0, 0.2, 0.9],
                      [0.3, 0.6, 0.2, 0.0, 0.8],
                      [0.2, 0.7, 0.9, 0.8, 0.0]])
    d = FixedDistance(m)
    assert select_replay(d, [0], [1, 2, 3, 4], 2) == [2, 4]
    assert select_replay(d, [0], [1, 3, 4], 2) == [4, 3]
    assert select_replay(d, [0], [1, 2, 3, 4], 0) == []
    assert select_replay(d, [0, 1], [2, 3, 4], 1) == [2]  # the union over forgotten conditions, no repeats
    assert select_replay(d, [4, 1], [2, 3, 0], 1) == [0, 2]


# --- the LACU recipe -------------------------------------------------------------------------------

def draw(batch, scheduler, seed):
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, T, (len(batch),), generator=g)
    noise = torch.randn(batch.x0.shape, dtype=DT, generator=g)
    abar = scheduler.alphas_cumprod.to(DT)[t].view(-1, *([1] * len(SHAPE)))
    return abar.sqrt() * batch.x0 + (1 - abar).sqrt() * noise, t


def msq(r):
    return r.square().flatten(1).mean(1)


@pytest.mark.parametrize("lam_unl, lam_pres, share, eta, remap", [
    (1.0, 1.0, 0.0, 0.0, False), (5.0, 25.0, 0.0, 0.0, False), (2.0, 0.5, 0.5, 0.0, False),
    (1.0, 2.0, 0.5, 0.7, False), (1.0, 2.0, 0.0, 0.0, True), (1.5, 0.5, 0.5, 0.7, True)])
def test_lacu_loss_and_gradient_equal_the_formula(scheduler, lam_unl, lam_pres, share, eta, remap):
    # forget 0 -> target 3, forget 1 -> target 2; replay 2, 3, 4; with remap, 4 was erased earlier (-> 2)
    conds = [0, 1, 0, 2, 3, 4, 3, 2, 3]
    roles = [FORGET] * 3 + [RETAIN] * 6
    g = torch.Generator().manual_seed(0)
    batch = Batch(torch.randn(len(conds), *SHAPE, generator=g, dtype=DT), torch.tensor(conds), torch.tensor(roles))
    method = LocalityAwareContinualUnlearning([0, 1], num_conditions=N_COND, targets=[3, 2], lam_unl=lam_unl,
                                              lam_pres=lam_pres, target_share=share, eta=eta,
                                              remapped=[4] if remap else [], remapped_targets=[2] if remap else [])
    student, teacher = TinyModel(1), TinyModel(2, frozen=True)
    objective = UnlearningObjective(student, scheduler, method, teacher=teacher, weighting="simple")
    loss, _ = objective.loss(batch, torch.Generator().manual_seed(7))
    loss.backward()

    ref = TinyModel(1)
    x_t, t = draw(batch, scheduler, 7)
    target = {0: 3, 1: 2}
    mapped, replayed = [], []
    seen = {2: 0, 3: 0}
    for b, (c, r) in enumerate(zip(conds, roles)):
        if r == FORGET:
            mapped.append((b, c, target[c]))
            continue
        if remap and c == 4:  # an earlier erasure: its replay samples train the mapping to 2
            mapped.append((b, 4, 2))
            continue
        if c in seen:  # a mapping target's replay sample: every 1/share-th one maps its source instead
            seen[c] += 1
            source = {3: 0, 2: 1}[c]
            if share > 0 and seen[c] % round(1 / share) == 0:
                mapped.append((b, source, c))
                continue
        replayed.append((b, c))
    idx = torch.tensor([b for b, _, _ in mapped])
    src = torch.tensor([s for _, s, _ in mapped])
    to = teacher.predict(x_t[idx], t[idx], torch.tensor([m for _, _, m in mapped]))
    away = teacher.predict(x_t[idx], t[idx], src)
    unl = msq(ref.predict(x_t[idx], t[idx], src) - (to - eta * (away - to))).mean()
    idx = torch.tensor([b for b, _ in replayed])
    cr = torch.tensor([c for _, c in replayed])
    pres = msq(ref.predict(x_t[idx], t[idx], cr) - teacher.predict(x_t[idx], t[idx], cr)).mean()
    ref_loss = lam_unl * unl + lam_pres * pres
    ref_loss.backward()
    torch.testing.assert_close(loss.to(DT), ref_loss.detach(), rtol=1e-5, atol=1e-9)
    for name, p in ref.module.named_parameters():
        torch.testing.assert_close(student.module.get_parameter(name).grad, p.grad, rtol=1e-5, atol=1e-9,
                                   msg=f"gradient of {name}")
    if share > 0:
        assert len(mapped) == 3 + 2 + remap  # one of the three 3-samples and one of the two 2-samples


def _clacu_batch():
    # forget 0 -> 3; replay 2, 3; earlier erasures 4 and 5 (both -> 2) replayed
    conds = [0, 0, 2, 3, 4, 4, 5, 2, 4]
    roles = [FORGET] * 2 + [RETAIN] * 7
    g = torch.Generator().manual_seed(1)
    return Batch(torch.randn(len(conds), *SHAPE, generator=g, dtype=DT), torch.tensor(conds), torch.tensor(roles))


def _clacu_loss(scheduler, method_cls, **kw):
    method = method_cls([0], num_conditions=N_COND, targets=[3], remapped=[4, 5], remapped_targets=[2, 2],
                        lam_unl=1.0, lam_pres=2.0, **kw)
    objective = UnlearningObjective(TinyModel(1), scheduler, method, teacher=TinyModel(2, frozen=True),
                                    weighting="simple")
    loss, _ = objective.loss(_clacu_batch(), torch.Generator().manual_seed(3))
    return float(loss.detach())


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_constrained_lacu_weights_each_earlier_erasure_by_its_dual(scheduler, eta):
    from unlearn_fast.methods import ConstrainedLACU

    lacu = _clacu_loss(scheduler, LocalityAwareContinualUnlearning, eta=eta)
    at = lambda a, b: _clacu_loss(scheduler, ConstrainedLACU, eta=eta, bounds=[1.0, 1.0], init_lambdas=[a, b])
    assert at(1.0, 1.0) == pytest.approx(lacu, rel=1e-6)  # duals at lam_unl: LACU's loss
    # the loss is linear in each dual: lambda_4 = 3 adds twice what lambda_4 = 1 adds over 0
    assert at(3.0, 1.0) - at(1.0, 1.0) == pytest.approx(2 * (at(1.0, 1.0) - at(0.0, 1.0)), rel=1e-5)
    assert at(0.0, 1.0) < at(1.0, 1.0) and at(1.0, 0.0) < at(1.0, 1.0)


def _clacu_update(method, values_by_cond):
    batch = _clacu_batch()
    w = torch.ones(len(batch))
    recipe = method.recipe(batch, w)
    m = torch.tensor([values_by_cond.get(int(c), 0.0) for c in recipe.student_cond])
    dist = m[:, None].expand(len(batch), recipe.coeffs.shape[1])
    method.update(batch, recipe, dist, w)


def test_constrained_lacu_duals_rise_on_violation_and_fall_when_satisfied():
    from unlearn_fast.methods import ConstrainedLACU

    method = ConstrainedLACU([0], num_conditions=N_COND, targets=[3], remapped=[4, 5], remapped_targets=[2, 2],
                             bounds=[1.0, 2.0], dual_lr=0.5, ema=1.0, init_lambdas=1.0, calibration_steps=1)
    _clacu_update(method, {4: 3.0, 5: 0.4, 0: 0.7})  # 4: m = 3 > bound 1; 5: m = 0.4 < bound 2
    lam = method.duals.lambdas
    assert float(lam[0]) == pytest.approx(1.0 + 0.5 * (3.0 / 1.0 - 1))
    assert float(lam[1]) == pytest.approx(1.0 + 0.5 * (0.4 / 2.0 - 1))
    m = method.metrics()
    assert m["clacu/constraint[4]"] == pytest.approx(3.0) and m["clacu/bound[5]"] == 2.0
    assert m["clacu/mapping[0]"] == pytest.approx(0.7)  # this request's own forget rows
    for _ in range(10):
        _clacu_update(method, {4: 0.1, 5: 0.1})
    assert float(method.duals.lambdas[1]) == 0.0 and 0 <= float(method.duals.lambdas[0]) < 2.0  # projected at 0


def test_constrained_lacu_calibrates_unknown_bounds_then_keeps_them():
    from unlearn_fast.methods import ConstrainedLACU

    method = ConstrainedLACU([0], num_conditions=N_COND, targets=[3], remapped=[4, 5], remapped_targets=[2, 2],
                             bounds=[None, 5.0], bound_factor=1.5, calibration_steps=2, dual_lr=0.5, ema=1.0,
                             init_lambdas=[2.0, 2.0])
    _clacu_update(method, {4: 1.0, 5: 10.0})
    _clacu_update(method, {4: 3.0, 5: 10.0})
    assert float(method.bounds[0]) == pytest.approx(1.5 * 2.0)  # bound_factor x the calibration mean
    assert float(method.bounds[1]) == 5.0  # a known bound is kept
    assert float(method.duals.lambdas[0]) == 2.0  # no dual step while its bound was unknown
    assert float(method.duals.lambdas[1]) == pytest.approx(2.0 + 2 * 0.5 * (10.0 / 5.0 - 1))
    state = method.state_dict()
    again = ConstrainedLACU([0], num_conditions=N_COND, targets=[3], remapped=[4, 5], remapped_targets=[2, 2])
    again.load_state_dict(state)
    assert torch.equal(again.bounds, method.bounds) and torch.equal(again.duals.lambdas, method.duals.lambdas)
    assert again.steps_seen == 2
    with pytest.raises(ValueError, match="bounds: expected one bound"):
        ConstrainedLACU([0], num_conditions=N_COND, targets=[3], remapped=[4], remapped_targets=[2], bounds=[1, 2])
    with pytest.raises(ValueError, match="init_lambdas: expected a float >= 0"):
        ConstrainedLACU([0], num_conditions=N_COND, targets=[3], remapped=[4], remapped_targets=[2], init_lambdas=-1)


def test_constrained_lacu_groups_several_conditions_into_one_constraint():
    """A concept named by several prompts (the shapes model): its conditions share one dual and
    one bound, their rows pooled in one estimate; metrics and bounds go by label."""
    from unlearn_fast.methods import ConstrainedLACU

    method = ConstrainedLACU([0], num_conditions=N_COND, targets=[3], remapped=[4, 5], remapped_targets=[2, 2],
                             remapped_groups=["striped", "striped"], forget_groups=["star"], bounds=[1.0],
                             dual_lr=0.5, ema=1.0, init_lambdas=1.0, calibration_steps=1)
    assert method.duals.n == 1 and method.group_labels == ["striped"]
    # the batch has three rows of 4 and one of 5: the pooled estimate is their mean
    _clacu_update(method, {4: 3.0, 5: 1.0, 0: 0.7})
    assert float(method.duals.lambdas[0]) == pytest.approx(1.0 + 0.5 * ((3 * 3.0 + 1.0) / 4 - 1))
    m = method.metrics()
    assert m["clacu/bound[striped]"] == 1.0 and m["clacu/mapping[star]"] == pytest.approx(0.7)
    assert "clacu/lambda[4]" not in m
    with pytest.raises(ValueError, match=r"^remapped_groups: expected one label per condition \(2\), got 1"):
        ConstrainedLACU([0], num_conditions=N_COND, targets=[3], remapped=[4, 5], remapped_targets=[2, 2],
                        remapped_groups=["striped"])
    with pytest.raises(ValueError, match=r"^bounds: expected one bound \(or null\) per constraint \(1: \['s'\]\)"):
        ConstrainedLACU([0], num_conditions=N_COND, targets=[3], remapped=[4, 5], remapped_targets=[2, 2],
                        remapped_groups=["s", "s"], bounds=[1.0, 2.0])


def test_lacu_is_registered_and_checks_its_arguments():
    assert METHODS["lacu"] is LocalityAwareContinualUnlearning
    with pytest.raises(ValueError, match="one mapping target per forget"):
        LocalityAwareContinualUnlearning([0, 1], num_conditions=6, targets=[2])
    with pytest.raises(ValueError, match="itself being erased"):
        LocalityAwareContinualUnlearning([0, 1], num_conditions=6, targets=[1, 2])
    with pytest.raises(ValueError, match="remapped_targets: expected one mapping target per remapped"):
        LocalityAwareContinualUnlearning([0], num_conditions=6, targets=[2], remapped=[3, 4], remapped_targets=[2])
    with pytest.raises(ValueError, match="was erased earlier"):
        LocalityAwareContinualUnlearning([0], num_conditions=6, targets=[3], remapped=[3], remapped_targets=[2])
    with pytest.raises(ValueError, match="also being erased now"):
        LocalityAwareContinualUnlearning([0], num_conditions=6, targets=[2], remapped=[0], remapped_targets=[2])
    with pytest.raises(ConfigError, match="method_kwargs.lam_unl: expected float"):
        TrainConfig(method="lacu", forget=["3"], method_kwargs={"targets": [5], "lam_unl": "big"})


# --- the L2 anchor ------------------------------------------------------------------------------------


def test_l2_anchor_penalty_value_and_gradient():
    g = torch.Generator().manual_seed(0)
    p = [torch.randn(3, 4, generator=g, requires_grad=True), torch.randn(5, generator=g, requires_grad=True)]
    p0 = [torch.randn(3, 4, generator=g), torch.randn(5, generator=g)]
    lam = 0.37
    reg = l2_anchor_penalty(p, p0, lam)
    want = lam * sum(float(((a.detach() - b) ** 2).sum()) for a, b in zip(p, p0))
    assert float(reg.detach()) == pytest.approx(want, rel=1e-6)
    reg.backward()
    for a, b in zip(p, p0):
        torch.testing.assert_close(a.grad, 2 * lam * (a.detach() - b))


def test_trainer_adds_exactly_the_l2_anchor(tmp_path, class_dir):
    """The loss logged at step 2 is the method's loss plus lam * ||theta_1 - theta_0||^2, with
    theta_1 the weights after step 1 (its checkpoint) and theta_0 the starting weights."""
    from safetensors.torch import load_file

    lam = 0.5
    common = dict(method="neggrad", forget=["3"], retain=["1"], model_path=class_dir, batch_size=4, max_steps=2,
                  log_every=1, progress=False, checkpoint_every=1, keep_checkpoints=0)
    with_anchor = train(TrainConfig(output_dir=str(tmp_path / "a"), l2_anchor=lam, **common))
    without = train(TrainConfig(output_dir=str(tmp_path / "b"), **common))
    logs = [json.loads(line) for line in open(tmp_path / "a" / "metrics.jsonl")]
    plain = [json.loads(line) for line in open(tmp_path / "b" / "metrics.jsonl")]
    theta0 = load_file(os.path.join(class_dir, "diffusion_pytorch_model.safetensors"))
    theta1 = load_file(str(tmp_path / "a" / "checkpoint-00000001" / "model.safetensors"))
    expected = lam * sum(float((theta1[k].double() - theta0[k].double()).square().sum()) for k in theta0)
    assert logs[0]["l2_anchor"] == 0.0  # step 1 starts at theta_0
    assert logs[0]["loss"] == pytest.approx(plain[0]["loss"], rel=1e-6)
    assert logs[1]["l2_anchor"] == pytest.approx(expected, rel=1e-4)
    assert "l2_anchor" not in plain[1]
    assert logs[1]["loss"] > logs[1]["l2_anchor"] > 0
    assert with_anchor.step == without.step == 2
    with pytest.raises(ConfigError, match="l2_anchor: expected a float >= 0"):
        TrainConfig(forget=["3"], l2_anchor=-1.0)


# --- a continual run ----------------------------------------------------------------------------------


def tiny_evaluator(scheduler) -> ClassEvaluator:
    from unlearn_fast.data import load_split
    from unlearn_fast.eval.classifier import DigitClassifier

    torch.manual_seed(0)
    images, labels = load_split("heldout", size=8)
    keep = torch.cat([(labels == c).nonzero().squeeze(1)[:12] for c in range(10)])
    return ClassEvaluator(scheduler, DigitClassifier(image_size=8), images[keep], labels[keep],
                          EvalSettings(per_class=2, steps=2, guidance=1.0, kl_draws=2))


def test_two_request_continual_run_writes_a_per_step_report(tmp_path, class_dir, scheduler):
    settings = ContinualSettings(sequence=[3, 8], methods=["lacu", "constrained", "naive", "simultaneous"],
                                 model_path=class_dir,
                                 steps=2, batch_size=4, out=str(tmp_path / "out"),
                                 lacu=LacuSettings(draws=4, replay=2, pool_size=2, target_check="detector",
                                                   check_samples=4))
    detector = DigitClassifier(image_size=8).eval()
    report = run_continual(settings, evaluator=tiny_evaluator(scheduler), log=lambda line: None, detector=detector)
    on_disk = json.load(open(tmp_path / "out" / "report.json"))
    assert on_disk["sequence"] == [3, 8] and set(on_disk["methods"]) == {"lacu", "constrained", "naive", "simultaneous"}
    for method in ("lacu", "constrained", "naive"):
        steps = on_disk["methods"][method]["steps"]
        assert [s["step"] for s in steps] == [1, 2]
        assert [s["erased"] for s in steps] == [[3], [3, 8]]
        for s in steps:
            for key in ("ua", "ua_min", "retain_acc", "neighbor_acc", "fid", "kl_to_original"):
                assert isinstance(s[key], float), (method, key)
            assert set(s["ua_per_class"]) == {str(c) for c in s["erased"]}
    lacu = on_disk["methods"]["lacu"]["steps"]
    assert lacu[0]["target"] not in (3,) and lacu[1]["target"] not in (3, 8)  # admissible targets only
    assert 3 in lacu[1]["replayed"] and 8 not in lacu[1]["replayed"]  # the erased class is replayed
    for s in lacu:  # the target was checked by the detector: its rate is in the report
        assert str(s["target"]) in s["target_confusion"]
        assert all(0.0 <= r <= 1.0 and r in (0, 0.25, 0.5, 0.75, 1) for r in s["target_confusion"].values())
    expected_target = lacu[0]["target"] if lacu[0]["target"] != 8 else lacu[1]["remapped"]["3"]
    assert lacu[1]["remapped"] == {"3": expected_target} and expected_target not in (3, 8)  # its mapping is retrained
    assert lacu[1]["train"]["mnist_conditions"] == ["3"]  # the erased class replays its real images
    # step 2 started from step 1's model
    cfg = json.load(open(tmp_path / "out" / "lacu" / "step02" / "config.json"))
    assert cfg["model_path"] == lacu[0]["model_dir"] and cfg["l2_anchor"] == settings.lacu.lam_reg
    assert [s["step"] for s in on_disk["methods"]["simultaneous"]["steps"]] == [2]
    for method in ("naive", "simultaneous"):  # RU at NAIVE_RU's constants, whatever the method's name
        train_rec = on_disk["methods"][method]["steps"][-1]["train"]
        assert train_rec["method"] == "ru" and train_rec["method_kwargs"] == NAIVE_RU["method_kwargs"]
    constrained = on_disk["methods"]["constrained"]["steps"]
    assert constrained[1]["train"]["method"] == "clacu" and constrained[1]["remapped"] == {"3": constrained[1]["remapped"]["3"]}
    duals = constrained[1]["duals"]  # per logged step: the dual and constraint of the earlier erasure 3
    assert duals["step"] == [1, 2] and len(duals["clacu/lambda[3]"]) == 2
    # 3's bound: bound_factor x its own mapping distance at the end of the request that erased it
    own = constrained[0]["duals"]["clacu/mapping[3]"][-1]
    assert constrained[0]["bounds"]["3"] == pytest.approx(settings.constrained.bound_factor * own) and own > 0
    assert constrained[1]["bounds"]["3"] == constrained[0]["bounds"]["3"]  # kept by later requests
    assert "clacu/lambda[3]" not in constrained[0]["duals"]  # nothing erased before the first request
    assert on_disk["settings"]["eval"]["per_class"] == 2
    assert (tmp_path / "out" / "continual.png").stat().st_size > 0
    table = (tmp_path / "out" / "table.md").read_text()
    assert "| lacu | 2 | 3,8 |" in table and "| naive | 1 | 3 |" in table
    assert markdown_table(report) in table


def test_continual_on_the_text_model_erases_prompts(tmp_path):
    from unlearn_fast.models_zoo import digit_prompt

    settings = ContinualSettings(sequence=[3, 8], methods=["lacu", "naive"], model="text", steps=2, batch_size=4,
                                 out=str(tmp_path / "out"), pool_size=2,
                                 lacu=LacuSettings(draws=4, replay=2, pool_size=2, target_check="none"),
                                 eval=EvalSettings(per_class=2, steps=2, guidance=1.0, kl_draws=2))
    report = run_continual(settings, log=lambda line: None)
    assert report["settings"]["model_kind"] == "text"
    lacu = report["methods"]["lacu"]["steps"]
    train = lacu[1]["train"]
    assert train["forget"] == [digit_prompt(8)]
    assert digit_prompt(3) in train["retain"]  # the earlier erasure is replayed (as its prompt)
    assert train["method_kwargs"]["targets"] == [digit_prompt(lacu[1]["target"])]
    assert train["method_kwargs"]["remapped"] == [digit_prompt(3)]
    naive = report["methods"]["naive"]["steps"][1]["train"]
    assert naive["forget"] == [digit_prompt(8)] and len(naive["retain"]) == 9  # every other digit's prompt
    assert all(isinstance(s["ua"], float) for s in lacu)
    assert "target_confusion" not in lacu[0]  # target_check "none": the nearest, no detector
    cfg = json.load(open(tmp_path / "out" / "lacu" / "step02" / "config.json"))
    assert cfg["model"] == "text" and cfg["model_path"] == lacu[0]["model_dir"]


def test_continual_settings_check_model_and_erased_data():
    with pytest.raises(ValueError, match=r"^model: expected one of 'class', 'text', 'shapes', got str \('video'\)"):
        ContinualSettings(model="video")
    with pytest.raises(ValueError, match=r"^lacu.erased_data: expected one of 'mnist', 'pool'"):
        ContinualSettings(lacu=LacuSettings(erased_data="real"))
    with pytest.raises(ValueError, match=r"^lacu.target_check: expected one of 'detector', 'none'"):
        ContinualSettings(lacu=LacuSettings(target_check="oracle"))
    with pytest.raises(ValueError, match=r"^lacu.max_confusion: expected a share in \[0, 1\], got 5"):
        ContinualSettings(lacu=LacuSettings(max_confusion=5))
    with pytest.raises(ValueError, match=r"^lacu.check_samples: expected an int >= 1"):
        ContinualSettings(lacu=LacuSettings(check_samples=0))
    with pytest.raises(ValueError, match=r"^constrained.ema: expected a weight in \(0, 1\]"):
        ContinualSettings(constrained=ConstrainedSettings(ema=0))
    with pytest.raises(ValueError, match=r"^eval.per_class: expected an int >= 1"):
        EvalSettings(per_class=0)
    with pytest.raises(ValueError, match=r"^steps: expected int, got str"):
        ContinualSettings(steps="many")


def test_cli_has_the_continual_command(capsys):
    assert "continual" in SUBCOMMANDS
    with pytest.raises(SystemExit) as err:
        cli_main(["continual", "--sequence", "3,8", "--method", "magic", "--out", "unused"])
    assert err.value.code == 2
    assert "method: expected some of" in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:
        cli_main(["continual", "--sequence", "3,8", "--lacu-max-confusion", "-0.1", "--out", "unused"])
    assert err.value.code == 2
    assert "lacu.max_confusion: expected a share in [0, 1]" in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:
        cli_main(["continual", "--sequence", "3,x", "--out", "unused"])
    assert err.value.code == 2
    assert "sequence: the class model's requests are digits (class ids), got [3, 'x']" in capsys.readouterr().err


def test_continual_help_shows_the_defaults_a_run_uses(capsys):
    """Nested settings' flags show the enclosing settings' defaults (ContinualSettings
    evaluates 100 samples per class, EvalSettings alone 20)."""
    with pytest.raises(SystemExit):
        cli_main(["continual", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"(default: {ContinualSettings().eval.per_class})" in text.split("--eval-per-class PER_CLASS", 2)[2][:120]
    assert ContinualSettings().eval.per_class != EvalSettings().per_class
    assert f"(default: {LacuSettings().lam_pres})" in text.split("--lacu-lam-pres LAM_PRES", 2)[2][:120]


def test_last_request_probe_checks_its_arguments(tmp_path):
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "bench", "continual_last_request.py")
    spec = importlib.util.spec_from_file_location("continual_last_request", path)
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    assert probe.parse_set(["pool_size=256", "eta=0.25", "data=mnist"]) == {"pool_size": 256, "eta": 0.25, "data": "mnist"}
    with pytest.raises(SystemExit, match="--set: expected KEY=VALUE with KEY one of"):
        probe.parse_set(["pool=256"])
    with pytest.raises(SystemExit, match="--set: expected KEY=VALUE"):
        probe.parse_set(["eta"])
    steps = [{"model_dir": str(tmp_path / "gone")}, {"model_dir": str(tmp_path / "gone2")}]
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"settings": {"model_kind": "class"}, "methods": {"lacu": {"steps": steps}}}))
    with pytest.raises(SystemExit, match="previous step's model .*gone is not on disk"):
        probe.main([str(report)])
    report.write_text(json.dumps({"settings": {"model_kind": "text"}, "methods": {"lacu": {"steps": steps}}}))
    with pytest.raises(SystemExit, match="expected a class-model report with a lacu run"):
        probe.main([str(report)])


def test_bench_merges_baselines_into_a_reused_report(tmp_path):
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "bench", "continual.py")
    spec = importlib.util.spec_from_file_location("bench_continual", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    shipped = bench.load_report(os.path.join(bench.ROOT, "bench", "results", "continual", "5-7-3-1-2", "report.json"))
    lacu_only = {**shipped, "command": "run lacu", "methods": {"lacu": shipped["methods"]["lacu"]}}
    both = {**shipped, "command": "run both",
            "methods": {m: {k: v for k, v in res.items() if k != "merged_from"} for m, res in shipped["methods"].items()}}
    both["methods"]["lacu"] = {"steps": shipped["methods"]["lacu"]["steps"][:1]}  # not the one to keep
    new, old = tmp_path / "new.json", tmp_path / "old.json"
    new.write_text(json.dumps(lacu_only))
    old.write_text(json.dumps(both))
    out = tmp_path / "results"
    assert bench.main(["--reuse", str(new), "--merge", str(old), "--results", str(out)]) == 0
    report = json.load(open(out / "report.json"))
    assert list(report["methods"]) == ["lacu", "naive"]  # CONTINUAL_METHODS order
    assert report["command"] == "run lacu"  # the reused run's own command, not the merge's
    assert report["methods"]["lacu"] == shipped["methods"]["lacu"]  # the reused run's lacu, not the merged one's
    assert report["methods"]["naive"]["merged_from"] == "run both"
    assert report["methods"]["naive"]["steps"] == shipped["methods"]["naive"]["steps"]
    assert report["acceptance"] == bench.acceptance(shipped)
    assert "| naive | 5 | 5,7,3,1,2 |" in (out / "table.md").read_text()
    both["sequence"] = [5, 7, 3, 1, 9]
    old.write_text(json.dumps(both))
    with pytest.raises(SystemExit, match="--merge: .* has another sequence, evaluation or original model"):
        bench.main(["--reuse", str(new), "--merge", str(old), "--results", str(out)])


def test_acceptance_checks_every_request_and_the_final_fid():
    """Issue 16's reading: every request passes (UA, retain) and the final FID is at most 2x the original's."""
    from unlearn_fast.continual import acceptance

    def report(fid_end, ua=(1.0, 0.96), retain=(0.95, 0.9)):
        steps = [{"step": i + 1, "ua_min": u, "retain_acc": r, "fid": fid_end if i == 1 else 3.0}
                 for i, (u, r) in enumerate(zip(ua, retain))]
        return {"original": {"fid": 4.0, "per_step": [{"step": 1, "retain_acc": 0.96}, {"step": 2, "retain_acc": 0.96}]},
                "methods": {"constrained": {"steps": steps}}, "sequence": [3, 8]}

    ok = acceptance(report(8.0))
    assert ok["passed"] and ok["fid_ratio"] == 2.0 and ok["fid_ok"]
    assert not acceptance(report(8.1))["passed"] and acceptance(report(8.1))["failed_steps"] == []
    bad = acceptance(report(4.0, ua=(0.94, 1.0)))
    assert not bad["passed"] and bad["failed_steps"] == [1]
    assert acceptance(report(4.0, retain=(0.95, 0.86)))["failed_steps"] == [2]  # 0.86 < 0.9 x 0.96

    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "bench", "continual_summary.py")
    spec = importlib.util.spec_from_file_location("bench_continual_summary", path)
    summary = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(summary)
    grid = summary.request_grid([report(8.1, ua=(0.94, 1.0))])
    assert "| 3,8 | constrained | **fail** (UA) | pass | 0.94 | 93.8% | 2.02x | no |" in grid
