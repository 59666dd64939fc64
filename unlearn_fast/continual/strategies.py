"""The continual methods, one small strategy object each: what one request trains, given the sequence so far.

A strategy's ``run(ctx)`` returns the per-step records of one method over the sequence;
``PerRequest`` strategies only say how request ``n`` trains (``train``) and what the record
adds, and the shared loop applies them in order, each from the previous request's model:

- ``naive``: the single-shot method (RU at ``requests.NAIVE_RU``) per request;
- ``l2``: ``naive`` plus the L2 anchor to the previous parameters;
- ``lacu``: locality-aware continual unlearning (math.md section 8): the mapping target and
  replay chosen by score distance under the previous model (``selection``), the earlier
  erasures remapped with a fixed weight;
- ``constrained``: ``lacu`` whose earlier erasures are constraints with one dual each
  (``methods.clacu``); the duals and bounds carry from request to request;
- ``simultaneous``: every request at once (RU), the reference; evaluated once.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import torch

from ..eval.metrics import ClassEvaluator
from ..models import ConditionedModel
from .distance import LabelDistance, ScoreDistance, TargetConfusion
from .requests import ru_request, telemetry, train_request, train_summary
from .selection import select_replay, select_target
from .settings import ContinualSettings


@dataclass
class SequenceContext:
    """What every request of one method's run reads: settings, evaluator, models, detector."""

    settings: ContinualSettings
    evaluator: ClassEvaluator
    original: ConditionedModel
    scheduler: object
    root: str  # this method's folder
    detector: torch.nn.Module | None = None
    log: object = print
    space: object = None  # the request space (spaces.space_of(settings))
    erased: list = field(default_factory=list)
    model: ConditionedModel | None = None  # the previous request's model (the original before the first)
    path: str | None = None  # its folder (None: the embedded model)

    @property
    def candidates(self) -> list[int]:
        return list(range(self.evaluator.num_classes))


def original_path(settings: ContinualSettings) -> str:
    """The folder of the sequence's original model (the embedded one unless ``model_path``)."""
    if settings.model_path is not None:
        return settings.model_path
    from ..asset_files import require_embedded

    return require_embedded(f"{settings.model}_ddpm")


class Strategy:
    name = "strategy"
    #: whether it maps each erased condition onto a target (needs one on every model kind)
    maps_targets = False

    def __init__(self, settings: ContinualSettings):
        self.settings = settings

    def run(self, ctx: SequenceContext) -> list[dict]:
        raise NotImplementedError


class PerRequest(Strategy):
    """Requests in order, each trained from the previous request's model and scored after it."""

    def train(self, ctx: SequenceContext, n: int, request, out_dir: str, seed: int):
        """``(TrainResult, seconds, TrainConfig, extra record fields)`` of request ``n``."""
        raise NotImplementedError

    def run(self, ctx: SequenceContext) -> list[dict]:
        s = self.settings
        ctx.model, ctx.path = ctx.original, s.model_path
        steps_out = []
        for n, request in enumerate(ctx.space.requests(), start=1):
            out_dir = os.path.join(ctx.root, f"step{n:02d}")
            chosen = ctx.space.before_request(ctx.model, ctx.scheduler, [request], list(ctx.erased), s.seed + n - 1)
            result, seconds, config, extra = self.train(ctx, n, request, out_dir, s.seed + n - 1)
            extra = {**chosen, **extra}
            ctx.erased.append(request)
            ctx.model, ctx.path = result.model, result.final_dir
            t0 = time.perf_counter()
            rec = {"step": n, "request": request, **extra, "erased": list(ctx.erased),
                   **ctx.space.scores(ctx.evaluator, ctx.model, list(ctx.erased), ctx.original),
                   "train_seconds": round(seconds, 1), "eval_seconds": round(time.perf_counter() - t0, 1),
                   "train": train_summary(config), "model_dir": result.final_dir}
            steps_out.append(rec)
            ctx.log(line(self.name, rec))
        return steps_out


class Naive(PerRequest):
    name = "naive"

    def anchor(self) -> float:
        return 0.0

    def train(self, ctx, n, request, out_dir, seed):
        s = self.settings
        result, seconds, config = ru_request(s, ctx.path, [request], out_dir, steps=s.steps,
                                             l2_anchor=self.anchor(), seed=seed, erased=list(ctx.erased),
                                             space=ctx.space)
        return result, seconds, config, {}


class L2(Naive):
    name = "l2"

    def anchor(self) -> float:
        s = self.settings
        return s.l2_anchor if s.l2_anchor is not None else s.lacu.lam_reg


class Lacu(PerRequest):
    """Target and replay by score distance; earlier erasures remapped onto their targets."""

    name = "lacu"
    method = "lacu"
    maps_targets = True

    def __init__(self, settings: ContinualSettings):
        super().__init__(settings)
        self.target_of: dict[int, int] = {}  # each erased condition's mapping target
        self._train_x = self._train_y = None

    def _draws_x0(self, ctx: SequenceContext, request: int):
        if self.settings.lacu.draws_from != "forget":
            return None
        if self._train_x is None:
            from ..data import load_split

            self._train_x, self._train_y = load_split("train", size=int(ctx.model.module.config.sample_size))
        return self._train_x[self._train_y == request]

    def select(self, ctx: SequenceContext, n: int, request: int) -> dict:
        """Target, replay and remapping of request ``n`` (updates ``target_of``)."""
        s, lacu = self.settings, self.settings.lacu
        ids = ctx.evaluator.condition_ids(ctx.model)
        distance = LabelDistance(ScoreDistance(ctx.model, ctx.scheduler, draws=lacu.draws,
                                               x0=self._draws_x0(ctx, request), seed=s.seed + 7919 * n), ids)
        confusion = None
        if lacu.target_check == "detector":
            confusion = TargetConfusion(ctx.model, ctx.scheduler, ctx.detector, ids, samples=lacu.check_samples,
                                        steps=s.eval.steps, guidance=s.eval.guidance, seed=s.seed + 7919 * n)
        check = dict(confusion=confusion, max_confusion=lacu.max_confusion, checked=lacu.checked)
        erased, candidates = ctx.erased, ctx.candidates
        target, target_d = select_target(distance, request, candidates, erased=erased, current=[request], **check)
        retained = [c for c in candidates if c not in erased and c != request]
        replay = select_replay(distance, [request], retained, lacu.replay)
        replayed = replay + (list(erased) if lacu.replay_erased else [])
        remapped = list(erased) if lacu.replay_erased and lacu.remap_erased else []
        for e in remapped:  # an earlier target erased since (or now) gets the nearest admissible one
            if self.target_of[e] in erased or self.target_of[e] == request:
                self.target_of[e] = select_target(distance, e, candidates, erased=erased, current=[request],
                                                  **check)[0]
        self.target_of[request] = target
        rec = dict(target=target, target_distances={str(k): v for k, v in target_d.items()}, replay=replay,
                   replayed=replayed, remapped={str(e): self.target_of[e] for e in remapped})
        if confusion is not None:
            rec["target_confusion"] = {str(c): r for c, r in confusion.rates(request).items()}
        return rec

    def plan(self, ctx: SequenceContext, n: int, request) -> dict:
        """What request ``n`` trains (the digits' plan; ``spaces.DigitSpace.lacu_plan``): the record,
        the replayed conditions, the mapping targets, the remapped earlier erasures and their targets,
        the constraint labels (each earlier erasure, by its id)."""
        rec = self.select(ctx, n, request)
        remapped = [int(e) for e in rec["remapped"]]
        return dict(record=rec, retain=rec["replayed"], targets=[self.target_of[request]], remapped=remapped,
                    remapped_targets=[self.target_of[e] for e in remapped], labels=remapped)

    def method_kwargs(self, plan: dict) -> dict:
        lacu = self.settings.lacu
        return dict(targets=list(plan["targets"]), lam_unl=lacu.lam_unl, lam_pres=lacu.lam_pres,
                    target_share=lacu.target_share, eta=lacu.eta, remapped=list(plan["remapped"]),
                    remapped_targets=list(plan["remapped_targets"]))

    def overrides(self, ctx: SequenceContext) -> dict:
        s, lacu = self.settings, self.settings.lacu
        teacher = original_path(s) if lacu.teacher == "original" else None
        return dict(ctx.space.lacu_data(lacu, ctx.erased), teacher_path=teacher)

    def train(self, ctx, n, request, out_dir, seed):
        s, lacu = self.settings, self.settings.lacu
        t0 = time.perf_counter()
        plan = ctx.space.lacu_plan(self, ctx, n, request)
        rec = plan["record"]
        rec["select_seconds"] = round(time.perf_counter() - t0, 2)
        result, seconds, config = train_request(
            s, self.method, ctx.path, [request], out_dir, steps=s.steps, retain=plan["retain"],
            method_kwargs=self.method_kwargs(plan), l2_anchor=lacu.lam_reg, lr=lacu.lr, seed=seed,
            overrides=self.overrides(ctx), erased=list(ctx.erased), space=ctx.space)
        return result, seconds, config, rec


class Constrained(Lacu):
    """LACU with one dual per earlier erasure (``methods.clacu``): each erasure's bound is
    ``bound_factor`` times its mapping distance at the end of the request that erased it
    (calibrated in the next request only when that is unknown) and kept, also when its
    mapping target changes; with ``carry_duals`` each dual starts where the previous request
    left it. The dual trajectories go to the record (``duals``)."""

    name = "constrained"
    method = "clacu"

    def __init__(self, settings: ContinualSettings):
        super().__init__(settings)
        self.bounds: dict[str, float] = {}  # by the constraint's label: the erased digit or concept
        self.lambdas: dict[str, float] = {}

    def method_kwargs(self, plan: dict) -> dict:
        c = self.settings.constrained
        init = c.init_lambda
        labels = list(dict.fromkeys(plan["labels"]))  # one constraint per earlier erasure
        kw = dict(super().method_kwargs(plan), bounds=[self.bounds.get(str(e)) for e in labels],
                  bound_factor=c.bound_factor, calibration_steps=min(c.calibration_steps, self.settings.steps),
                  dual_lr=c.dual_lr, lambda_max=c.lambda_max, ema=c.ema,
                  init_lambdas=[self.lambdas.get(str(e), init) if c.carry_duals else init for e in labels])
        if plan.get("groups") is not None:  # a concept named by several prompts: one constraint for all
            kw.update(remapped_groups=list(plan["groups"]), forget_groups=list(plan["forget_groups"]))
        return kw

    def overrides(self, ctx: SequenceContext) -> dict:
        return dict(super().overrides(ctx), log_every=max(1, self.settings.steps // 25))

    def train(self, ctx, n, request, out_dir, seed):
        result, seconds, config, rec = super().train(ctx, n, request, out_dir, seed)
        series = telemetry(out_dir, "clacu/")
        last = {k: v[-1] for k, v in series.items() if k != "step" and v}
        mapped = last.get(f"clacu/mapping[{request}]")
        if mapped is not None and mapped == mapped and mapped > 0:  # not NaN: the erasure's own level
            self.bounds[str(request)] = self.settings.constrained.bound_factor * float(mapped)
        for e in map(str, rec["remapped"]):  # bounds and duals by the constraint's label
            bound = last.get(f"clacu/bound[{e}]")
            if e not in self.bounds and bound is not None and bound == bound:  # calibrated in this request
                self.bounds[e] = float(bound)
            if f"clacu/lambda[{e}]" in last:
                self.lambdas[e] = float(last[f"clacu/lambda[{e}]"])
        rec["duals"] = series
        rec["bounds"] = dict(self.bounds)
        return result, seconds, config, rec


class Simultaneous(Strategy):
    """Every request at once (RU, ``simultaneous_steps`` or ``steps x requests`` steps)."""

    name = "simultaneous"

    def run(self, ctx: SequenceContext) -> list[dict]:
        s = self.settings
        seq = ctx.space.requests()
        n_steps = s.simultaneous_steps or s.steps * len(seq)
        chosen = ctx.space.before_request(ctx.original, ctx.scheduler, seq, [], s.seed)
        result, seconds, config = ru_request(s, s.model_path, seq, os.path.join(ctx.root, "all"),
                                             steps=n_steps, seed=s.seed, space=ctx.space)
        t0 = time.perf_counter()
        rec = {"step": len(seq), "request": seq, "erased": seq, **chosen,
               **ctx.space.scores(ctx.evaluator, result.model, seq, ctx.original), "train_seconds": round(seconds, 1),
               "eval_seconds": round(time.perf_counter() - t0, 1), "train": train_summary(config),
               "model_dir": result.final_dir}
        ctx.log(line(self.name, rec))
        return [rec]


STRATEGIES: dict[str, type[Strategy]] = {cls.name: cls for cls in (Lacu, Constrained, Naive, L2, Simultaneous)}
#: the method ``unlearn-fast continual`` runs without ``--method``
DEFAULT_METHOD = "constrained"


def line(method: str, rec: dict) -> str:
    """One log line of a step record."""
    extra = f" target {rec['target']} replay {rec['replayed']}" if "target" in rec else ""
    near = "" if rec["neighbor_acc"] is None else f" neighbour {rec['neighbor_acc']:.3f}"
    domains = "".join(f" {k.upper()} {rec[k]:.3f}" for k in ("ira", "cra") if rec.get(k) is not None)
    return (f"[{method}] step {rec['step']} erased {rec['erased']}: UA {rec['ua']:.3f} (min {rec['ua_min']:.3f}) "
            f"retain {rec['retain_acc']:.3f}{near}{domains} FID {rec['fid']:.2f}{extra} "
            f"({rec['train_seconds']:.0f} s train, {rec['eval_seconds']:.0f} s eval)")
