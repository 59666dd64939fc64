"""The settings of a continual run: dataclasses validated once, from which the CLI flags are generated.

``ContinualSettings`` holds the run (sequence, methods, model, steps, evaluation, output);
``LacuSettings`` the locality settings shared by ``lacu`` and ``constrained`` (targets,
replay, data); ``ConstrainedSettings`` the duals of ``constrained``. Every field's
``metadata["help"]`` is its ``--help`` text; nested settings get a flag prefix
(``lacu.lam_pres`` -> ``--lacu-lam-pres``, ``eval.per_class`` -> ``--eval-per-class``).
Errors are ``ConfigError`` naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from ..config import Condition, ConfigError, check_field_types
from ..eval.metrics import EvalSettings
from ..eval.shapes_metrics import ShapesEvalSettings

#: the embedded model kinds a continual run accepts (requests: digits; shapes: concepts)
CONTINUAL_MODELS = ("class", "text", "shapes")


def _help(text: str, **kw):
    return field(metadata={"help": text}, **kw)


@dataclass
class LacuSettings:
    """Locality-aware continual unlearning (math.md section 8): target, replay, data."""

    lam_unl: float = _help("weight of the mapping (unlearning) term", default=1.0)
    lam_pres: float = _help("weight of the replay (preservation) term", default=8.0)
    lam_reg: float = _help("L2 anchor to the previous parameters (TrainConfig.l2_anchor)", default=1e-3)
    target_share: float = _help("share of a mapping target's replay samples that train the mapping term",
                                default=0.5)
    eta: float = _help("push-away weight of the mapping target (0: the plain LACU term)", default=0.5)
    replay: int = _help("nearest retained conditions replayed per forgotten one", default=5)
    replay_erased: bool = _help("also replay the conditions erased by earlier requests", default=True)
    remap_erased: bool = _help("earlier erasures' replay samples train their mapping again (instead of "
                               "distilling the previous model)", default=True)
    erased_data: Literal["mnist", "pool"] = _help(
        "x0 of the earlier erasures' replay on the class model: their real train images (mnist) or the "
        "previous model's samples (pool)", default="mnist")
    draws: int = _help("shared (x_t, t) draws of the score distance", default=64)
    target_check: Literal["detector", "none"] = _help(
        "skip a near mapping target whose own samples the concept detector reads as the forgotten class "
        "(detector) or take the nearest admissible one (none)", default="detector")
    max_confusion: float = _help("largest share of a target's samples the detector may read as the forgotten "
                                 "class", default=0.025)
    check_samples: int = _help("samples of each checked candidate target", default=200)
    checked: int = _help("nearest admissible candidates checked at most", default=3)
    draws_from: Literal["forget", "noise"] = _help(
        "x0 of the distance draws: images of the forgotten class (forget) or pure noise", default="forget")
    lr: Optional[float] = _help("learning rate of a request (none: the run's lr)", default=2e-4)
    data: Literal["pool", "mnist"] = _help(
        "x0 of the training samples: the previous model's samples (pool) or real images (mnist)", default="pool")
    pool_size: int = _help("previous-model samples per condition in the pool", default=64)
    pool_guidance: float = _help("guidance of the pool's sampler", default=1.0)
    teacher: Literal["previous", "original"] = _help(
        "the frozen teacher of a request's replay and mapping targets: the previous request's model "
        "(previous) or the original model (original: drift does not compound over requests)", default="original")

    def __post_init__(self):
        check_field_types(self, "lacu.")
        if not 0.0 <= self.max_confusion <= 1.0:
            raise ConfigError(f"lacu.max_confusion: expected a share in [0, 1], got {self.max_confusion}")
        if not 0.0 <= self.target_share <= 1.0:
            raise ConfigError(f"lacu.target_share: expected a share in [0, 1], got {self.target_share}")
        for name in ("checked", "check_samples", "draws", "pool_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"lacu.{name}: expected an int >= 1, got {getattr(self, name)}")
        for name in ("lam_unl", "lam_pres", "lam_reg", "eta"):
            if getattr(self, name) < 0:
                raise ConfigError(f"lacu.{name}: expected a weight >= 0, got {getattr(self, name)}")
        if self.replay < 0:
            raise ConfigError(f"lacu.replay: expected an int >= 0, got {self.replay}")
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"lacu.lr: expected a float > 0 or none, got {self.lr}")


@dataclass
class ConstrainedSettings:
    """The duals of ``constrained``: one per earlier erasure (docs/continual.md).

    Earlier erasure ``i`` is the constraint ``m_i(theta) <= bound_factor * m_i^0``: ``m_i``
    is the distance of the student's prediction for concept ``i`` to the previous model's
    prediction for its mapping target (the per-sample distances of the fused op), ``m_i^0``
    the same distance on its forget rows at the end of the request that erased ``i``."""

    bound_factor: float = _help("each earlier erasure's bound: this times its mapping distance at the end of "
                                "the request that erased it", default=1.0)
    calibration_steps: int = _help("steps whose estimates calibrate a new erasure's bound (at most the "
                                   "request's steps)", default=5)
    dual_lr: float = _help("dual step on the normalised slack (m_i / bound_i - 1)", default=0.5)
    init_lambda: float = _help("each earlier erasure's dual at the start of a request", default=1.0)
    lambda_max: float = _help("upper clip of each dual", default=10.0)
    ema: float = _help("weight of the newest estimate in the constraint's running mean", default=0.2)
    carry_duals: bool = _help("start a request from the duals the previous request ended with (new "
                              "erasures start at init_lambda)", default=True)

    def __post_init__(self):
        check_field_types(self, "constrained.")
        if not self.bound_factor > 0:
            raise ConfigError(f"constrained.bound_factor: expected a float > 0, got {self.bound_factor}")
        if self.calibration_steps < 1:
            raise ConfigError(f"constrained.calibration_steps: expected an int >= 1, got {self.calibration_steps}")
        if self.dual_lr < 0 or self.init_lambda < 0:
            raise ConfigError(f"constrained.dual_lr/init_lambda: expected floats >= 0, got {self.dual_lr}, "
                              f"{self.init_lambda}")
        if not self.lambda_max > 0:
            raise ConfigError(f"constrained.lambda_max: expected a float > 0, got {self.lambda_max}")
        if not 0 < self.ema <= 1:
            raise ConfigError(f"constrained.ema: expected a weight in (0, 1], got {self.ema}")


@dataclass
class ShapesRequestSettings:
    """What a request trains on the shapes model (the MNIST models' requests use ``lacu``'s data)."""

    data: Literal["pool", "images"] = _help(
        "x0 of the training samples: the previous model's samples of every forget and retain prompt (pool) "
        "or the benchmark's generated images (images: the demo's folders)", default="pool")
    pool_size: int = _help("data = pool: previous-model samples per prompt", default=16)
    pool_guidance: float = _help("data = pool: guidance of the pool's sampler (the evaluator's)", default=2.0)
    forget_per_combo: int = _help("data = images: images per combination that shows the concept", default=32)
    retain_per_combo: int = _help("data = images: images per retained combination", default=8)
    source: Literal["data", "student"] = _help(
        "x_t of the forget terms: noised training samples (data) or sampled from the model being trained "
        "(student, as ESD)", default="data")
    map_to: Literal["nearest", "none"] = _help(
        "anchor each forgotten prompt on a mapping target of the concept's kind, chosen as the demo chooses it "
        "('a striped star' -> 'a checkered star'; shapes_mapping.choose_target), or on itself without the "
        "erased part (none: 'a star')", default="nearest")
    target_check: Literal["detector", "none"] = _help(
        "read every candidate target's samples with the shapes detector (skip one it confuses with the "
        "concept, take the most reliably drawn) or take the nearest in score distance (none)", default="detector")
    check_samples: int = _help("samples of each candidate target the detector reads", default=16)

    def __post_init__(self):
        check_field_types(self, "shapes.")
        for name in ("pool_size", "forget_per_combo", "retain_per_combo", "check_samples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"shapes.{name}: expected an int >= 1, got {getattr(self, name)}")
        if self.pool_guidance < 0:
            raise ConfigError(f"shapes.pool_guidance: expected a float >= 0, got {self.pool_guidance}")


@dataclass
class ContinualSettings:
    """A continual run: each request of ``sequence`` applied to the previous request's model."""

    sequence: list[Condition] = _help(
        "the requests, in order: classes (digits) to erase, e.g. 3,8,5,1,9; --model shapes: concepts, e.g. "
        "'striped star,heart,dotted'", default_factory=lambda: [3, 8, 5, 1, 9])
    methods: list[str] = _help("continual methods to run on the sequence, comma separated", default_factory=list)
    model: Literal["class", "text", "shapes"] = _help(
        "the embedded model: class (class-conditional), text (each request erases the digit's prompt) or "
        "shapes (each request erases an object, a style or a 'style object' combination)", default="class")
    model_path: Optional[str] = _help("a model folder of that kind (none: the embedded one)", default=None)
    steps: int = _help("optimizer steps per request", default=100)
    batch_size: int = _help("samples per optimizer step", default=32)
    lr: float = _help("learning rate of naive/l2/simultaneous (lacu, constrained: lacu.lr)", default=1e-4)
    seed: int = _help("seed of request n is seed + n - 1", default=0)
    out: str = _help("folder for the per-request runs, table.md and continual.png", default="continual_out")
    report: Optional[str] = _help("JSON report path (none: OUT/report.json)", default=None)
    eval: EvalSettings = field(default_factory=lambda: EvalSettings(per_class=100, steps=20, guidance=1.0))
    shapes_eval: ShapesEvalSettings = field(default_factory=lambda: ShapesEvalSettings(paraphrase_samples=0))
    shapes: ShapesRequestSettings = field(default_factory=ShapesRequestSettings)
    lacu: LacuSettings = field(default_factory=LacuSettings)
    constrained: ConstrainedSettings = field(default_factory=ConstrainedSettings)
    l2_anchor: Optional[float] = _help("the l2 method's anchor weight (none: lacu.lam_reg)", default=None)
    simultaneous_steps: Optional[int] = _help("steps of simultaneous (none: steps x requests)", default=None)
    pool_size: int = _help("text model, naive/l2/simultaneous: teacher samples per prompt", default=32)
    threads: Optional[int] = _help("torch CPU threads (none: torch's default)", default=None)
    progress: bool = _help("progress bars of every request's training", default=False)

    def __post_init__(self):
        from .strategies import DEFAULT_METHOD, STRATEGIES

        if not self.methods:
            self.methods = [DEFAULT_METHOD]
        check_field_types(self)
        bad = [m for m in self.methods if m not in STRATEGIES]
        if bad:
            raise ConfigError(f"method: expected some of {tuple(STRATEGIES)}, got {self.methods}")
        if len(set(self.methods)) != len(self.methods):
            raise ConfigError(f"method: a method is listed twice: {self.methods}")
        if not self.sequence:
            raise ConfigError("sequence: expected at least one request")
        from .spaces import space_of

        try:
            requests = space_of(self).requests()
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if len(set(requests)) != len(requests):
            raise ConfigError(f"sequence: a condition is requested twice: {self.sequence}")
        if self.model == "shapes" and self.shapes.map_to == "none":
            mapped = [m for m in self.methods if STRATEGIES[m].maps_targets]
            if mapped:
                raise ConfigError(f"shapes.map_to: {', '.join(mapped)} map every erased concept onto a target; "
                                  f"'none' leaves them without one (use 'nearest')")
        for name in ("steps", "batch_size", "pool_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: expected an int >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"lr: expected a float > 0, got {self.lr}")
        if self.simultaneous_steps is not None and self.simultaneous_steps < 1:
            raise ConfigError(f"simultaneous_steps: expected an int >= 1 or none, got {self.simultaneous_steps}")
        if self.l2_anchor is not None and self.l2_anchor < 0:
            raise ConfigError(f"l2_anchor: expected a float >= 0 or none, got {self.l2_anchor}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads: expected an int >= 1 or none, got {self.threads}")
