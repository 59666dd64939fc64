"""Per-timestep loss weights read from a diffusers noise scheduler (math.md sections 1-2).

``timestep_weights(scheduler, weighting)`` returns a float32 table ``w[t]``, ``t`` in
``[0, num_train_timesteps)``, to be indexed on the device by each sample's timestep and
passed as per-sample weights to ``fused_eps_loss`` or ``mse_loss``. Build it once per
scheduler; nothing in a training step needs the host.

Weightings:

- ``simple``: ``w_t = 1``, the plain MSE of the diffusers training scripts and of ESD.
- ``kl``: the exact per-timestep KL between two reverse steps that share the schedule,
  ``KL_t = w_t * ||eps_a - eps_b||^2`` with ``w_t = beta_t^2 / (2 sigma_t^2 alpha_t (1 - abar_t))``
  and ``sigma_t^2`` from the scheduler's ``variance_type``. In **nats** when the squared
  norm is a sum over elements (``reduction="sum"``); with ``reduction="mean"`` it is nats
  per element. It is the KL of one step: the whole-chain KL with ``t ~ Uniform`` is
  estimated by ``num_train_timesteps * w_t * ||.||^2`` (the caller multiplies).
- ``elbo``: the same weights; used against the true noise they give the ELBO's
  denoising terms (a bound on ``-log p(x_0)``, up to a constant), also in nats.
- ``snr``: ``w_t = SNR_t = abar_t / (1 - abar_t)``.
- ``min_snr``: Hang et al. 2023 as the diffusers training scripts compute it:
  ``min(SNR_t, gamma) / SNR_t`` (epsilon), ``/ (SNR_t + 1)`` (v_prediction), unchanged
  (sample); needs ``snr_gamma``.

For ``kl`` and ``elbo`` the prediction type converts the distance into epsilon space:
``v_prediction`` multiplies by ``abar_t`` and ``sample`` by ``SNR_t``. Flow-matching
schedulers (``FlowMatchEulerDiscreteScheduler``: ``x_t = (1 - t) x_0 + t eps``) have no
Gaussian reverse step; there ``kl``/``elbo`` give the epsilon-space factor
``(1 - t)^2`` with ``t = timestep / num_train_timesteps``, and ``simple`` gives 1.

At ``t = 0`` the posterior variance is 0; we use the clipped convention of the DDPM
reference code, ``sigma_0^2 = sigma_1^2`` (for ``fixed_large`` as well, as that code
does).
"""

from __future__ import annotations

import torch

WEIGHTINGS = ("simple", "kl", "elbo", "snr", "min_snr")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def timestep_weights(
    scheduler,
    weighting: str = "simple",
    *,
    prediction_type: str | None = None,
    snr_gamma: float | None = None,
) -> torch.Tensor:
    """Float32 table of per-timestep weights (see the module docstring for each weighting)."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting: expected one of {WEIGHTINGS}, got {weighting!r}")
    if weighting == "min_snr" and (snr_gamma is None or not snr_gamma > 0):
        raise ValueError(f"snr_gamma: 'min_snr' needs a positive snr_gamma, got {snr_gamma!r}")
    config = getattr(scheduler, "config", None)
    if _is_flow_matching(scheduler):
        return _flow_weights(scheduler, weighting)
    betas = getattr(scheduler, "betas", None)
    abar = getattr(scheduler, "alphas_cumprod", None)
    if not isinstance(betas, torch.Tensor) or not isinstance(abar, torch.Tensor):
        raise TypeError(
            f"scheduler: expected a diffusers scheduler with `betas` and `alphas_cumprod` tensors "
            f"(DDPM, DDIM, ...) or a flow-matching scheduler, got {type(scheduler).__name__}"
        )
    if prediction_type is None:
        prediction_type = getattr(config, "prediction_type", None) or "epsilon"
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type: expected one of {PREDICTION_TYPES}, got {prediction_type!r}")

    betas = betas.double()
    abar = abar.double()
    T = betas.shape[0]
    snr = abar / (1 - abar)
    if weighting == "simple":
        w = torch.ones(T, dtype=torch.float64)
    elif weighting == "snr":
        w = snr
    elif weighting == "min_snr":
        clipped = snr.clamp(max=float(snr_gamma))
        w = {"epsilon": clipped / snr, "v_prediction": clipped / (snr + 1), "sample": clipped}[prediction_type]
    else:  # kl, elbo
        sigma2 = _reverse_variance(betas, abar, getattr(config, "variance_type", None) or "fixed_small")
        w = betas.square() / (2 * sigma2 * (1 - betas) * (1 - abar))
        w = w * {"epsilon": torch.ones_like(abar), "v_prediction": abar, "sample": snr}[prediction_type]
    return w.float()


def _reverse_variance(betas: torch.Tensor, abar: torch.Tensor, variance_type: str) -> torch.Tensor:
    abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
    posterior = betas * (1 - abar_prev) / (1 - abar)
    if variance_type in ("fixed_small", "fixed_small_log"):
        sigma2 = posterior.clone()
    elif variance_type in ("fixed_large", "fixed_large_log"):
        sigma2 = betas.clone()
    else:
        raise ValueError(
            f"scheduler.config.variance_type: the kl/elbo weights need a fixed variance "
            f"('fixed_small' or 'fixed_large'), got {variance_type!r}"
        )
    sigma2[0] = posterior[1]  # clipped convention at t = 0
    return sigma2


def _is_flow_matching(scheduler) -> bool:
    return "FlowMatch" in type(scheduler).__name__


def _flow_weights(scheduler, weighting: str) -> torch.Tensor:
    if weighting in ("snr", "min_snr"):
        raise ValueError(f"weighting: {weighting!r} is not defined for a flow-matching scheduler; use simple, kl or elbo")
    T = int(scheduler.config.num_train_timesteps)
    if weighting == "simple":
        return torch.ones(T, dtype=torch.float32)
    t = torch.arange(T, dtype=torch.float64) / T
    return (1 - t).square().float()


def lookup(table: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """``table[timesteps]`` on ``timesteps``' device, with a clear error for a bad timestep.

    On the CPU the range is checked eagerly; on a GPU the check is asynchronous (no host
    synchronisation), so a bad timestep stops the process at the next synchronisation.
    """
    if not isinstance(timesteps, torch.Tensor) or timesteps.dim() != 1:
        raise ValueError(f"timesteps: expected a 1-D tensor [B], got {_shape_of(timesteps)}")
    if timesteps.is_floating_point():
        # flow-matching scripts pass float timesteps sigma * T in (0, T]: index by their integer
        # part (the table's rows are sigma = row / T), sigma = 1 taking the last row
        T = table.shape[0]
        if timesteps.device.type == "cpu" and timesteps.numel() and not (
                float(timesteps.min()) >= 0 and float(timesteps.max()) <= T):
            raise ValueError(f"timesteps: expected float timesteps in [0, {T}], got min {float(timesteps.min())}, "
                             f"max {float(timesteps.max())}")
        timesteps = timesteps.floor().long().clamp_(max=T - 1)
    elif timesteps.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError(f"timesteps: expected an integer or float tensor, got {timesteps.dtype}")
    T = table.shape[0]
    if timesteps.device.type == "cpu":
        if timesteps.numel() and (int(timesteps.min()) < 0 or int(timesteps.max()) >= T):
            raise ValueError(
                f"timesteps: expected values in [0, {T}) (the weight table's length), "
                f"got min {int(timesteps.min())}, max {int(timesteps.max())}"
            )
    else:
        torch._assert_async(
            ((timesteps >= 0) & (timesteps < T)).all(), f"timesteps: values must lie in [0, {T})"
        )
    return table.to(timesteps.device)[timesteps.long()]


def _shape_of(x) -> str:
    return f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
