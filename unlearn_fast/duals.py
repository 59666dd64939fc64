"""Dual variables of the constrained methods: state, projected ascent, distributed sync.

Each dual variable ``lambda_i`` guards one constraint ``g_i(theta) >= b_i`` (RU: a KL to
the forget concept; FU: a forget sample's denoising loss) or ``g_i <= b_i`` (LU). The
update is projected gradient ascent on the Lagrangian's dual, optionally with a
proportional term (a PI controller, Stooke et al. 2020; Sohrabi et al. 2024's nuPI):

    e_i      = sign * (b_i - ghat_i)                       (> 0 while violated)
    lambda_i <- clip(lambda_i + lr * e_i + kp * (e_i - e_i_prev), 0, lambda_max)

with ``ghat_i`` a running mean of the per-step constraint estimates (single-timestep
estimates are noisy: docs/math.md section 9). ``kp = 0`` is plain projected ascent, whose
lambda integrates the error and so overshoots and swings around the bound; the
proportional term answers the error's change at once, which damps that swing. ``max_total`` optionally caps ``sum lambda``
(RU needs ``sum lambda < 1``: the tilted target divides by ``1 - sum lambda``).

Under ``torch.distributed`` the per-step estimates (sums and counts per constraint) are
all-reduced before the update, so every rank holds the same lambdas.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


class DualVariables:
    """``n`` dual variables with running-mean constraint estimates.

    Args:
        n: number of constraints.
        bound: ``b_i`` (a float for all, or a sequence of ``n``).
        lr: dual step size.
        lambda_max: upper clip of each ``lambda_i``.
        max_total: if set, ``sum lambda`` is scaled down to at most this value.
        init: initial ``lambda_i``.
        ema: weight of the newest estimate in the running mean (1 = no averaging).
        direction: ``"geq"`` for ``g >= b`` (raise lambda while g < b) or ``"leq"``.
        kp: proportional gain of the PI update (0: projected ascent).
    """

    def __init__(self, n: int, bound, *, lr: float, lambda_max: float, max_total: float | None = None,
                 init: float = 0.0, ema: float = 0.2, direction: str = "geq", kp: float = 0.0):
        if n < 1:
            raise ValueError(f"n: expected at least one constraint, got {n}")
        if direction not in ("geq", "leq"):
            raise ValueError(f"direction: expected 'geq' or 'leq', got {direction!r}")
        if not 0 < ema <= 1:
            raise ValueError(f"ema: expected a weight in (0, 1], got {ema}")
        if lambda_max <= 0 or lr < 0:
            raise ValueError(f"lambda_max/lr: expected lambda_max > 0 and lr >= 0, got {lambda_max}, {lr}")
        if not kp >= 0:
            raise ValueError(f"kp: expected a proportional gain >= 0, got {kp}")
        self.n = n
        self.lr = lr
        self.lambda_max = lambda_max
        self.max_total = max_total
        self.ema = ema
        self.kp = float(kp)
        self.sign = 1.0 if direction == "geq" else -1.0
        self.bound = torch.as_tensor(bound, dtype=torch.float64).expand(n).clone()
        self.lambdas = torch.full((n,), float(init), dtype=torch.float64).clamp(0, lambda_max)
        self.estimate = torch.full((n,), float("nan"), dtype=torch.float64)  # running mean of g_i
        self.error = torch.full((n,), float("nan"), dtype=torch.float64)  # the last update's e_i (PI)
        self._project()

    def _project(self) -> None:
        self.lambdas.clamp_(0, self.lambda_max)
        if self.max_total is not None:  # scale down to the cap, without a Python `if` on a tensor
            total = self.lambdas.sum()
            self.lambdas.mul_(torch.clamp(self.max_total / total, max=1.0))

    def to(self, device) -> "DualVariables":
        for name in ("bound", "lambdas", "estimate", "error"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    @torch.no_grad()
    def update(self, index: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """One dual step from per-sample constraint values ``values[j]`` of constraint ``index[j]``;
        samples where ``mask`` is False are left out (a mask, not boolean indexing: no host sync).

        Constraints without a sample in this step keep their lambda and estimate. Every rank
        must call this at every step (it all-reduces), with or without samples."""
        device = self.lambdas.device
        index = index.to(device).long()
        values = values.to(device, torch.float64)
        keep = torch.ones_like(values) if mask is None else mask.to(device, torch.float64)
        index = torch.where(keep > 0, index, torch.zeros_like(index))  # masked rows add 0 anywhere
        sums = torch.zeros(self.n, dtype=torch.float64, device=device).index_add_(0, index, values * keep)
        counts = torch.zeros_like(sums).index_add_(0, index, keep)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(sums)
            dist.all_reduce(counts)
        seen = counts > 0
        step_mean = sums / counts.clamp(min=1)
        fresh = seen & self.estimate.isnan()
        self.estimate = torch.where(fresh, step_mean, self.estimate)
        self.estimate = torch.where(seen & ~fresh, (1 - self.ema) * self.estimate + self.ema * step_mean,
                                    self.estimate)
        error = self.sign * (self.bound - self.estimate)
        change = torch.where(self.error.isnan(), torch.zeros_like(error), error - self.error)
        step = self.lr * error + self.kp * change
        self.lambdas = torch.where(seen, self.lambdas + step, self.lambdas)
        self.error = torch.where(seen, error, self.error)
        self._project()

    def slack(self) -> torch.Tensor:
        """``estimate - bound`` for ``geq`` (``bound - estimate`` for ``leq``): >= 0 when satisfied."""
        return self.sign * (self.estimate - self.bound)

    def is_finite(self) -> bool:
        return bool(torch.isfinite(self.lambdas).all())

    def metrics(self, prefix: str = "dual", names=None) -> dict[str, float]:
        """Each lambda, running constraint estimate and slack, for logging (few constraints only)."""
        out = {}
        if self.n > 8:  # per-sample duals (FU): summaries
            lam = self.lambdas
            return {f"{prefix}/lambda_mean": float(lam.mean()), f"{prefix}/lambda_max": float(lam.max()),
                    f"{prefix}/satisfied": float((self.slack() >= 0).double().mean())}
        names = names or [str(i) for i in range(self.n)]
        for i, name in enumerate(names):
            out[f"{prefix}/lambda[{name}]"] = float(self.lambdas[i])
            out[f"{prefix}/constraint[{name}]"] = float(self.estimate[i])
            out[f"{prefix}/slack[{name}]"] = float(self.slack()[i])
        return out

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"lambdas": self.lambdas.cpu().clone(), "estimate": self.estimate.cpu().clone(),
                "bound": self.bound.cpu().clone(), "error": self.error.cpu().clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name in ("lambdas", "estimate", "bound", "error"):
            if name == "error" and name not in state:  # a checkpoint of before the PI update: no last error
                self.error = torch.full_like(self.lambdas, float("nan"))
                continue
            value = state[name]
            if value.shape != (self.n,):
                raise ValueError(f"state[{name!r}]: expected shape ({self.n},), got {tuple(value.shape)}")
            setattr(self, name, value.to(self.lambdas.device, torch.float64).clone())
