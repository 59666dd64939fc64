"""Pure-PyTorch specification of the fused loss (math.md section 3).

This module is the reference every backend is tested against and that the benchmarks
time as "eager PyTorch". It works in any dtype, float64 included, and on any device.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Arithmetic dtype of the kernels: float64 for float64 inputs, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def fused_eps_loss_reference(
    pred: torch.Tensor,
    others: Sequence[torch.Tensor],
    coeffs: torch.Tensor,
    weights: torch.Tensor,
    *,
    reduction: str = "mean",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted squared distances between linear combinations of same-shaped tensors.

    ``r_m = coeffs[.., m, 0] * pred + sum_k coeffs[.., m, k] * others[k-1]``,
    ``dist[b, m] = mean_j r_m[b, j]^2`` (or ``sum_j``), ``loss = sum_{b,m} weights * dist``.
    Gradients flow into ``pred`` only (``others``, ``coeffs`` and ``weights`` are
    treated as constants), and ``dist`` is returned detached.
    """
    acc = acc_dtype(pred.dtype)
    B, D = pred.shape[0], math.prod(pred.shape[1:])
    xs = torch.stack([pred.reshape(B, D).to(acc)] + [o.detach().reshape(B, D).to(acc) for o in others], 1)
    c = coeffs.detach().to(acc)
    c = c.expand(B, *c.shape[-2:]) if c.dim() == 2 else c  # [B, M, K]
    r = torch.einsum("bmk,bkj->bmj", c, xs)  # [B, M, D]
    sq = r.square()
    dist = sq.sum(-1) if reduction == "sum" else sq.mean(-1)
    loss = (weights.detach().to(acc) * dist).sum()
    return loss, dist.detach()
