"""Drop-in losses built on the fused op: functional forms and their nn.Module wrappers."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .ops import fused_eps_loss
from .schedules import lookup, timestep_weights


def _difference_coeffs(device: torch.device) -> torch.Tensor:
    """One head comparing pred with one target, r = pred - target: [[1, -1]].

    Made on the device (no host-to-device copy, which would synchronise on a GPU)."""
    return (1.0 - 2.0 * torch.arange(2, device=device, dtype=torch.float32)).view(1, 2)


def mse_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    timesteps: torch.Tensor | None = None,
    weight_table: torch.Tensor | None = None,
    reduction: str = "mean",
    backend: str = "auto",
) -> torch.Tensor:
    """Drop-in for ``F.mse_loss(pred.float(), target.float(), reduction=...)``.

    Without weights it gives the same value and gradient (within float32 rounding), in
    one fused pass. With ``timesteps`` ([B]) and a ``weight_table`` (from
    ``timestep_weights``) each sample's squared error is weighted by
    ``weight_table[timesteps[b]]``: the value is ``mean_b w_b * mean_j (pred - target)^2``
    (``reduction="mean"``, as the diffusers scripts compute min-SNR weighting) or
    ``sum_b w_b * sum_j (...)^2`` (``"sum"``). Gradients flow into ``pred`` only: the
    target is the noise, a frozen prediction or a detached tensor.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(
            f"reduction: expected 'mean' or 'sum', got {reduction!r} "
            "(for per-sample values use fused_eps_loss, whose dist is per sample)"
        )
    if isinstance(target, torch.Tensor) and target.requires_grad and torch.is_grad_enabled():
        raise ValueError("target: must not require grad (the fused loss differentiates pred only); pass target.detach()")
    if (timesteps is None) != (weight_table is None):
        raise ValueError("timesteps and weight_table: give both (per-timestep weights) or neither")
    if not isinstance(pred, torch.Tensor) or pred.dim() < 1:
        raise ValueError(f"pred: expected a tensor [B, ...], got {type(pred).__name__ if not isinstance(pred, torch.Tensor) else '0-dim tensor'}")
    B = pred.shape[0]
    if weight_table is None:
        weights = torch.ones(B, 1, device=pred.device)
    else:
        if timesteps.shape != (B,):
            raise ValueError(f"timesteps: expected shape [B={B}], got {tuple(timesteps.shape)}")
        weights = lookup(weight_table, timesteps).float().unsqueeze(1)
    if reduction == "mean":
        # the mean over all B * D elements is the mean over samples of per-sample means
        weights = weights / max(B, 1)
    coeffs = _difference_coeffs(pred.device)
    loss, _ = fused_eps_loss(pred, [target], coeffs, weights, reduction=reduction, backend=backend)
    return loss


class FusedMSELoss(nn.Module):
    """``nn.MSELoss`` replacement with optional per-timestep weights.

    ``FusedMSELoss(scheduler, weighting="min_snr", snr_gamma=5.0)`` builds the weight
    table once; ``loss_fn(model_pred, target, timesteps)`` then weights each sample.
    """

    def __init__(
        self,
        scheduler=None,
        weighting: str = "simple",
        *,
        prediction_type: str | None = None,
        snr_gamma: float | None = None,
        reduction: str = "mean",
        backend: str = "auto",
    ):
        super().__init__()
        self.reduction = reduction
        self.backend = backend
        table = None
        if scheduler is not None:
            table = timestep_weights(scheduler, weighting, prediction_type=prediction_type, snr_gamma=snr_gamma)
        elif weighting != "simple":
            raise ValueError(f"scheduler: weighting {weighting!r} needs the noise scheduler")
        self.register_buffer("weight_table", table, persistent=False)

    def forward(self, pred: torch.Tensor, target: torch.Tensor, timesteps: torch.Tensor | None = None) -> torch.Tensor:
        table = self.weight_table if timesteps is not None else None
        if timesteps is not None and table is None:
            raise ValueError("timesteps: this loss has no weight table (construct it with a scheduler)")
        return mse_loss(
            pred, target, timesteps=timesteps, weight_table=table, reduction=self.reduction, backend=self.backend
        )


class FusedEpsLoss(nn.Module):
    """Module form of ``fused_eps_loss``: ``forward(pred, others, coeffs, weights) -> (loss, dist)``."""

    def __init__(self, reduction: str = "mean", backend: str = "auto"):
        super().__init__()
        self.reduction = reduction
        self.backend = backend

    def forward(
        self, pred: torch.Tensor, others: Sequence[torch.Tensor], coeffs: torch.Tensor, weights: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return fused_eps_loss(pred, others, coeffs, weights, reduction=self.reduction, backend=self.backend)
