"""What every method shares: the batch it reads, the recipe it writes, its interface.

A method is a small recipe of heads (docs/design.md). For a batch of B samples it says

- which condition the student sees for each sample (``student_cond``),
- which K-1 tensors each head reads beside the student's prediction (``teacher_conds``:
  a condition id for a frozen-teacher prediction at the same ``(x_t, t)``, or ``NOISE`` for
  the true target of the forward process: the noise for an epsilon model, ``v`` for a
  v-prediction model, the velocity ``noise - x_0`` for flow matching; every target is
  linear in the predictions, so a recipe means the same for each, docs/math.md section 10),
- the per-sample coefficients ``coeffs[B, M, K]`` and weights ``weights[B, M]`` of the
  fused loss (math.md section 3).

The engine (``unlearn_fast.engine``) runs the teacher once for every slot, the student
once, the fused op once, then hands the per-sample distances ``dist[B, M]`` back to the
method for its dual update. Nothing else in the engine depends on the method.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Sequence

import torch

NOISE = -1  # a slot that reads the true target (the noise, v or velocity) rather than a teacher prediction

FORGET, RETAIN = 0, 1  # sample roles


@dataclass
class Batch:
    """One step's samples. ``x0`` are clean images (data or a teacher-sample pool);
    ``cond`` the condition id each sample shows; ``role`` FORGET or RETAIN;
    ``sample_id`` a stable id per forget-set sample (FU's per-sample duals), else -1."""

    x0: torch.Tensor
    cond: torch.Tensor
    role: torch.Tensor
    sample_id: torch.Tensor | None = None
    #: host-side knowledge of the roles, when the sampler has it: the first ``n_forget``
    #: samples are the FORGET ones, the rest RETAIN. Lets a method say on the host which rows
    #: read the teacher (``Recipe.teacher_rows``), so a step needs no host synchronisation.
    n_forget: int | None = None

    def to(self, device) -> "Batch":
        sid = None if self.sample_id is None else self.sample_id.to(device)
        return Batch(self.x0.to(device), self.cond.to(device), self.role.to(device), sid, self.n_forget)

    def __len__(self) -> int:
        return self.x0.shape[0]


@dataclass
class Recipe:
    student_cond: torch.Tensor  # [B] long
    teacher_conds: torch.Tensor  # [B, K-1] long, NOISE for the true noise
    coeffs: torch.Tensor  # [B, M, K] float
    weights: torch.Tensor  # [B, M] float
    #: per teacher slot, the rows ``(start, stop)`` of the batch that may read the teacher
    #: (host ints; rows outside read the noise). With it the engine builds the teacher's
    #: batch by slicing; without it (None) by ``nonzero``, a host synchronisation on a GPU.
    teacher_rows: tuple[tuple[int, int], ...] | None = None


class Method:
    """Base class. ``recipe`` builds the heads; ``update`` reads the distances back.

    ``w`` given to both is the per-sample timestep weight ``T * table[t]`` (the
    one-sample estimate of a whole-chain KL/ELBO term, math.md section 2), so
    ``w[b] * dist[b, m]`` is sample b's estimate of head m's divergence."""

    name = "method"
    #: where x_t comes from by default: "data" (forward-noised data or pool samples) or
    #: "student" (partial sampling of the trained model, ESD style)
    default_source = "data"
    #: which parameters train by default (see models.trainable_parameters)
    default_train_params = "all"
    #: constructor arguments that list conditions: the trainer turns the names given in
    #: ``TrainConfig.method_kwargs`` (class names/ids or prompts) into the model's condition ids
    condition_args: tuple[str, ...] = ()

    def recipe(self, batch: Batch, w: torch.Tensor) -> Recipe:
        raise NotImplementedError

    def update(self, batch: Batch, recipe: Recipe, dist: torch.Tensor, w: torch.Tensor,
               t: torch.Tensor | None = None) -> None:
        """Dual update from this step's distances at the samples' timesteps ``t`` (methods
        without duals do nothing)."""

    def prepare_step(self, objective, batch: Batch, generator) -> "object":
        """The model the step's student pass uses (``objective.model``; ``Adversarial``
        returns the student with an attack's conditioning added)."""
        return objective.model

    def metrics(self) -> dict[str, float]:
        return {}

    #: the method's ``duals.DualVariables``, if it has any: checkpointed and checked below
    duals = None

    def state_dict(self) -> dict:
        return {} if self.duals is None else {"duals": self.duals.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if self.duals is not None:
            self.duals.load_state_dict(state["duals"])

    def is_finite(self) -> bool:
        return self.duals is None or self.duals.is_finite()


HOST_SIDE = 0  # > 0 inside host_side(): tests/test_sync_free.py does not count these reads


@contextlib.contextmanager
def host_side():
    """Marks reads of tensors that stay on the host whatever device trains (a loop length
    drawn from a CPU generator, the CPU branch of ``check_all``): they never wait for a GPU."""
    global HOST_SIDE
    HOST_SIDE += 1
    try:
        yield
    finally:
        HOST_SIDE -= 1


def check_all(condition: torch.Tensor, message: str) -> None:
    """Raise ValueError(message) unless every element holds: eagerly on the CPU, without a
    host synchronisation on a GPU (an asynchronous device assertion)."""
    if condition.device.type == "cpu":
        with host_side():
            ok = bool(condition.all())
        if not ok:
            raise ValueError(message)
    else:
        torch._assert_async(condition.all(), message)


def per_role_mean(weights_per_sample: torch.Tensor, role: torch.Tensor) -> torch.Tensor:
    """Divide each sample's weight by the number of samples of its role in the batch, so
    each role's term is a mean over its samples whatever the batch's mix."""
    counts = torch.zeros(2, device=role.device).index_add_(0, role, torch.ones_like(role, dtype=torch.float32))
    return weights_per_sample / counts.clamp(min=1)[role]


def stack_coeffs(rows: list[torch.Tensor]) -> torch.Tensor:
    """[B, M, K] from M per-sample coefficient rows, each [B, K]."""
    return torch.stack(rows, dim=1)


def role_rows(batch: Batch, *slots: str) -> tuple[tuple[int, int], ...] | None:
    """``Recipe.teacher_rows`` from the roles whose rows each slot reads from the teacher:
    ``"all"``, ``"forget"``, ``"retain"`` or ``"none"``; None when the batch's roles are not
    known on the host (``batch.n_forget`` is None)."""
    if batch.n_forget is None:
        return None
    B, f = len(batch), batch.n_forget
    spans = {"all": (0, B), "forget": (0, f), "retain": (f, B), "none": (0, 0)}
    return tuple(spans[s] for s in slots)


_CONSTANTS: dict = {}


def constant(values, device, dtype=torch.float32) -> torch.Tensor:
    """A small constant tensor (e.g. head coefficients) made once per device and dtype and
    reused by every step, instead of a copy from host memory per step. Do not modify it."""
    key = (repr(values), str(device), dtype)
    out = _CONSTANTS.get(key)
    if out is None:
        out = _CONSTANTS[key] = torch.tensor(values, dtype=dtype).to(device)
    return out


def check_anchor(anchor, forget: Sequence[int]):
    """``anchor`` as a method keeps it: one condition id for every forget condition, or a
    per-condition table (``TrainConfig.anchor_map``: ``table[c]`` is forget condition ``c``'s anchor).
    ``ValueError`` if a forget condition would be anchored on a forget condition."""
    if isinstance(anchor, torch.Tensor):
        if anchor.dim() != 1 or anchor.dtype != torch.long:
            raise ValueError(f"anchor: expected a condition id or a 1-D long table of them, got {anchor.dtype} "
                             f"of shape {tuple(anchor.shape)}")
        bad = [c for c in forget if int(anchor[c]) in forget]
        if bad:
            raise ValueError(f"anchor: forget conditions {bad} are anchored on forget conditions")
        return anchor
    if anchor in forget:
        raise ValueError(f"anchor: the anchor condition {anchor} is also in forget {list(forget)}")
    return anchor


def anchor_of(owner, cond: torch.Tensor) -> torch.Tensor:
    """The anchor condition of each row's condition (``owner.anchor``: an id or a table)."""
    if isinstance(owner.anchor, torch.Tensor):
        return on_device(owner, "anchor", cond.device)[cond]
    return torch.full_like(cond, owner.anchor)


def on_device(owner, name: str, device) -> torch.Tensor:
    """``getattr(owner, name)`` on ``device``, copied once and reused while the tensor is
    unchanged (same object, same version counter), not copied at every step."""
    src = getattr(owner, name)
    if src.device == torch.device(device):
        return src
    cache = owner.__dict__.setdefault("_device_copies", {})
    key = (name, str(device))
    hit = cache.get(key)
    if hit is None or hit[0] is not src or hit[1] != src._version:
        hit = cache[key] = (src, src._version, src.to(device))
    return hit[2]
