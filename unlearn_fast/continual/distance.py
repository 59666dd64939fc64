"""Score-prediction distances between conditions, and how often a detector confuses them (LACU's locality).

Score distance. ``d(a, b) = mean_k mean_j (eps(x_t^k, t_k, a) - eps(x_t^k, t_k, b))^2`` over
shared random draws ``(x_t^k, t_k)``: the predictions of every condition on the draws come
from one batched no-grad pass (``conditions x draws``) and are cached per model; the
distances of one condition to many candidates are one call of the fused op over a
``candidates x draws`` batch (``pred`` = the forgotten condition's predictions repeated per
candidate, ``others`` = the candidates' predictions, one head ``[1, -1]``, weights 0: only
the per-sample distances are read).
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..models import ConditionedModel
from ..ops import fused_eps_loss
from ..sampling import sample


class ScoreDistance:
    """Score-prediction distances between conditions of one model on shared random draws.

    Args:
        model: the adapter whose predictions are compared (not modified; no gradient).
        scheduler: its noise scheduler (forward noising of ``x0``).
        draws: number of shared ``(x_t, t)`` draws.
        x0: optional clean samples ``[N, C, H, W]``: ``x_t`` is then ``x0`` (drawn with
            replacement) forward-noised to ``t``; without, ``x_t ~ N(0, I)``.
        t_range: ``t`` is drawn uniformly from ``[low, high)`` (default: every timestep).
        seed: seed of the draws (the same seed gives the same draws for any model).
        batch_size: forward passes per model call.

    ``predictions(conds)`` fills the cache for the conditions not in it yet in one batched
    pass; ``distances(a, candidates)`` and ``matrix(conds)`` read it.
    """

    def __init__(self, model: ConditionedModel, scheduler, *, draws: int = 64, x0: torch.Tensor | None = None,
                 t_range: tuple[int, int] | None = None, seed: int = 0, batch_size: int = 256,
                 backend: str = "auto"):
        if draws < 1:
            raise ValueError(f"draws: expected at least one draw, got {draws}")
        self.model = model
        self.batch_size = batch_size
        self.backend = backend
        param = next(model.module.parameters())
        self.device, self.dtype = param.device, param.dtype
        cfg = model.module.config
        shape = (cfg.in_channels, cfg.sample_size, cfg.sample_size)
        T = scheduler.config.num_train_timesteps
        low, high = t_range or (0, T)
        g = torch.Generator().manual_seed(seed)
        self.t = torch.randint(low, high, (draws,), generator=g)
        noise = torch.randn((draws, *shape), generator=g)
        if x0 is None:
            x_t = noise
        else:
            pick = torch.randint(len(x0), (draws,), generator=g)
            x_t = scheduler.add_noise(x0[pick].float(), noise, self.t)
        self.x_t = x_t.to(self.device, self.dtype)
        self.t = self.t.to(self.device)
        self._eps: dict[int, torch.Tensor] = {}

    @property
    def draws(self) -> int:
        return len(self.t)

    @torch.no_grad()
    def predictions(self, conds: Sequence[int]) -> torch.Tensor:
        """``[len(conds), draws, ...]``: each condition's predictions on the shared draws."""
        conds = [int(c) for c in conds]
        missing = list(dict.fromkeys(c for c in conds if c not in self._eps))
        if missing:
            n = self.draws
            cond = torch.tensor(missing, device=self.device).repeat_interleave(n)  # condition-major
            x = self.x_t.repeat(len(missing), *([1] * (self.x_t.dim() - 1)))
            t = self.t.repeat(len(missing))
            module = self.model.module
            was_training = module.training
            module.eval()
            try:
                out = torch.cat([self.model.predict(x[i:i + self.batch_size], t[i:i + self.batch_size],
                                                    cond[i:i + self.batch_size])
                                 for i in range(0, len(cond), self.batch_size)])
            finally:
                module.train(was_training)
            for j, c in enumerate(missing):
                self._eps[c] = out[j * n:(j + 1) * n]
        return torch.stack([self._eps[c] for c in conds])

    @torch.no_grad()
    def distances(self, a: int, candidates: Sequence[int]) -> torch.Tensor:
        """``[len(candidates)]`` float64: ``d(a, c)`` for each candidate ``c`` (one fused call
        over the ``candidates x draws`` batch)."""
        candidates = [int(c) for c in candidates]
        if not candidates:
            return torch.zeros(0, dtype=torch.float64)
        eps = self.predictions([a] + candidates)
        C, n = len(candidates), self.draws
        pred = eps[0].repeat(C, *([1] * (eps.dim() - 2)))  # [C * n, ...]: a's predictions per candidate
        others = eps[1:].reshape(C * n, *eps.shape[2:])
        coeffs = torch.tensor([[1.0, -1.0]], device=pred.device)
        weights = torch.zeros(C * n, 1, device=pred.device)
        _, dist = fused_eps_loss(pred, [others], coeffs, weights, reduction="mean", backend=self.backend)
        return dist[:, 0].view(C, n).double().mean(1).cpu()

    def matrix(self, conds: Sequence[int]) -> torch.Tensor:
        """``[C, C]`` pairwise distances (symmetric, zero diagonal)."""
        conds = [int(c) for c in conds]
        self.predictions(conds)
        return torch.stack([self.distances(a, conds) for a in conds])


class LabelDistance:
    """Score distances between class labels, for a model whose condition id of label ``c`` is
    ``ids[c]`` (a text model's prompt ids); what ``select_target``/``select_replay`` read."""

    def __init__(self, distance: ScoreDistance, ids: Sequence[int]):
        self.distance = distance
        self.ids = [int(i) for i in ids]

    def distances(self, a: int, candidates: Sequence[int]) -> torch.Tensor:
        return self.distance.distances(self.ids[int(a)], [self.ids[int(c)] for c in candidates])


class TargetConfusion:
    """How often a concept detector reads a candidate target's own samples as the forgotten class.

    A mapping makes the forgotten condition generate what its target generates, so the
    target's own samples that look like the forgotten class carry over into the erased
    condition (measured cases: bench/results/continual/FINDINGS.md).
    ``rate(forget, candidate)``: the share of ``samples`` samples of ``candidate`` (the
    evaluation sampler, a fixed seed) that ``detector`` labels ``forget``. Each candidate is
    sampled once per model (cached), so re-checking it for another forgotten class is free.

    The detector is a classifier of the concepts (``eval.classifier.load_detector``: trained
    apart from the evaluator's classifier, on another seed and width, so UA is not measured
    by the model that chose the target). ``ids[c]``: the model's condition id of label ``c``.
    """

    def __init__(self, model: ConditionedModel, scheduler, detector: torch.nn.Module, ids: Sequence[int], *,
                 samples: int = 200, steps: int = 20, guidance: float = 1.0, seed: int = 0):
        if samples < 1:
            raise ValueError(f"samples: expected at least one sample per candidate, got {samples}")
        self.model, self.scheduler, self.detector = model, scheduler, detector
        self.ids = [int(i) for i in ids]
        self.samples, self.steps, self.guidance, self.seed = samples, steps, guidance, seed
        self._labels: dict[int, torch.Tensor] = {}

    @torch.no_grad()
    def labels(self, candidate: int) -> torch.Tensor:
        """The detector's label of each of the candidate's samples."""
        candidate = int(candidate)
        if candidate not in self._labels:
            g = torch.Generator().manual_seed(self.seed + candidate)
            cond = torch.full((self.samples,), self.ids[candidate])
            images = sample(self.model, self.scheduler, cond, steps=self.steps, guidance=self.guidance, generator=g)
            device = next(self.detector.parameters()).device
            self._labels[candidate] = self.detector(images.to(device)).argmax(1).cpu()
        return self._labels[candidate]

    def rate(self, forget: int, candidate: int) -> float:
        return float((self.labels(candidate) == int(forget)).double().mean())

    def rates(self, forget: int) -> dict[int, float]:
        """The rates with ``forget`` of every candidate sampled so far."""
        return {c: self.rate(forget, c) for c in self._labels}
