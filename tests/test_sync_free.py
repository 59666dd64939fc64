"""A training step makes no host synchronisation: every method, on the CPU and (when present) a GPU.

On the CPU a ``TorchDispatchMode`` records the operations that would make the host wait for
a GPU: tensors made from Python data (``lift_fresh``), ``nonzero``, reading a value back
(``_local_scalar_dense``: ``.item()``, ``int()``, a Python ``if`` on a tensor) and copies
between devices; except inside ``methods.base.host_side()``, which marks reads of tensors
that stay on the host whatever device trains (``check_all``'s CPU branch, which asserts
asynchronously on a GPU; ESD's loop length, drawn from a CPU generator). On a GPU the same step runs under ``torch.cuda.set_sync_debug_mode("error")``.
The step is the trainer's: a batch from ``SampleSource.sample`` (forget samples first, so
``Batch.n_forget`` is known on the host), ``UnlearningObjective.loss``, backward, the dual
update. One step runs first (constants and lookup tables move to the device once).
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from unlearn_fast.engine import UnlearningObjective
from unlearn_fast.methods import (
    ESD, FORGET, Batch, ConceptAblation, Finetune, ForwardKLUnlearning, LikelihoodUnlearning, NegGrad, ReverseKLUnlearning,
)
from unlearn_fast.methods import base
from unlearn_fast.methods.clacu import ConstrainedLACU
from unlearn_fast.methods.lacu import LocalityAwareContinualUnlearning
from unlearn_fast.training import SampleSource

from helpers import DT, N_COND, NULL, SHAPE, T, TinyModel  # noqa: E402

FORBIDDEN = {"aten::lift_fresh", "aten::nonzero", "aten::_local_scalar_dense", "aten::is_nonzero",
             "aten::masked_select"}


class HostSyncRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        if name in FORBIDDEN and not base.HOST_SIDE:
            self.seen.append(name)
        if name == "aten::_to_copy" and "device" in kwargs and isinstance(args[0], torch.Tensor) \
                and torch.device(kwargs["device"]) != args[0].device:
            self.seen.append(f"{name} {args[0].device} -> {kwargs['device']}")
        if name == "aten::index.Tensor" and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool
                                                 for i in args[1] if i is not None):
            self.seen.append("aten::index.Tensor with a bool mask")
        return func(*args, **kwargs)


METHODS = {
    "ru": lambda: ReverseKLUnlearning([0, 1], NULL, num_conditions=N_COND),
    "ru-nats": lambda: ReverseKLUnlearning([0, 1], NULL, num_conditions=N_COND, bound_units="nats"),
    "ru-hellinger": lambda: ReverseKLUnlearning([0, 1], NULL, num_conditions=N_COND, divergence="hellinger"),
    "esd": lambda: ESD([0, 1], NULL, num_conditions=N_COND),
    "lu": lambda: LikelihoodUnlearning([0, 1], NULL),
    "fu": lambda: ForwardKLUnlearning(4),
    "fu-data": lambda: ForwardKLUnlearning(4, retain="data"),
    "ablation": lambda: ConceptAblation(NULL),
    "neggrad": lambda: NegGrad(),
    "finetune": lambda: Finetune(),
    "lacu": lambda: LocalityAwareContinualUnlearning([0, 1], num_conditions=N_COND, targets=[3, 2]),
    "lacu-eta": lambda: LocalityAwareContinualUnlearning([0, 1], num_conditions=N_COND, targets=[3, 2], eta=0.5,
                                                         target_share=0.5),
    "clacu": lambda: ConstrainedLACU([0], num_conditions=N_COND, targets=[3], remapped=[1], remapped_targets=[2],
                                     eta=0.5, target_share=0.5, calibration_steps=1),
}


def source(device) -> SampleSource:
    g = torch.Generator().manual_seed(0)
    fx, rx = torch.randn(4, *SHAPE, generator=g, dtype=DT), torch.randn(6, *SHAPE, generator=g, dtype=DT)
    src = SampleSource.__new__(SampleSource)  # the trainer's sampler, over fixed tensors
    src.forget_x, src.forget_c = fx, torch.tensor([0, 1, 0, 1])
    src.retain_x, src.retain_c = rx, torch.tensor([2, 3, 4, 3, 2, 4])
    src.n_forget, src.n_retain = 3, 5
    return src.to(device)


def step(objective, src, gens, device):
    batch = src.sample(gens[0])
    loss, metrics = objective.loss(batch, gens[1])
    loss.backward()
    objective.model.module.zero_grad(set_to_none=True)
    return batch


def objective_for(name, device):
    method = METHODS[name]()
    if getattr(method, "duals", None) is not None:
        method.duals.to(device)
    student, teacher = TinyModel(1), TinyModel(2, frozen=True)
    for m in (student, teacher):
        m.module.to(device)
    objective = UnlearningObjective(student, _scheduler(), method, teacher=teacher, weighting="kl")
    objective.weight_table = objective.weight_table.to(device)
    return objective


def _scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=T)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_step_makes_no_host_sync_on_the_cpu(name):
    objective, src = objective_for(name, "cpu"), source("cpu")
    gens = (torch.Generator().manual_seed(1), torch.Generator().manual_seed(2))
    step(objective, src, gens, "cpu")  # first step: constants and tables are made here
    with HostSyncRecorder() as rec:
        batch = step(objective, src, gens, "cpu")
    assert batch.n_forget == 3
    assert rec.seen == [], f"{name}: {rec.seen}"


def test_recorder_catches_what_it_is_for():
    """The check itself: a batch without host-known roles falls back to nonzero."""
    objective, src = objective_for("ru", "cpu"), source("cpu")
    gen = torch.Generator().manual_seed(2)
    batch = src.sample(torch.Generator().manual_seed(1))
    batch = Batch(batch.x0, batch.cond, batch.role, batch.sample_id)  # n_forget unknown
    with HostSyncRecorder() as rec:
        objective.loss(batch, gen)[0].backward()
        torch.tensor([1.0])
    assert "aten::nonzero" in rec.seen and "aten::lift_fresh" in rec.seen


@pytest.mark.parametrize("name", ["ru", "lu", "fu", "ablation", "lacu-eta"])
def test_host_known_rows_give_the_same_loss_and_gradient(name):
    """The sliced teacher batch (Batch.n_forget) and the nonzero gather agree exactly."""
    src = source("cpu")
    batch = src.sample(torch.Generator().manual_seed(1))
    results = []
    for b in (batch, Batch(batch.x0, batch.cond, batch.role, batch.sample_id)):
        objective = objective_for(name, "cpu")
        loss, _ = objective.loss(b, torch.Generator().manual_seed(2))
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in objective.model.module.parameters()]))
    assert torch.equal(results[0][0], results[1][0])
    for a, b in zip(results[0][1], results[1][1]):
        assert torch.equal(a, b)


def test_wrong_host_rows_are_refused():
    objective, src = objective_for("ru", "cpu"), source("cpu")
    batch = src.sample(torch.Generator().manual_seed(1))
    batch.n_forget = 1  # claims 1 forget sample; 3 are
    with pytest.raises(ValueError, match="teacher_rows: a row outside its slot's range reads the teacher"):
        objective.loss(batch, torch.Generator().manual_seed(2))
    assert (batch.role == FORGET).sum() == 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", sorted(METHODS))
def test_step_makes_no_host_sync_on_a_gpu(name):
    objective, src = objective_for(name, "cuda"), source("cuda")
    gens = (torch.Generator().manual_seed(1), torch.Generator("cuda").manual_seed(2))
    step(objective, src, gens, "cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step(objective, src, gens, "cuda")
    finally:
        torch.cuda.set_sync_debug_mode("default")
