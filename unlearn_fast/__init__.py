"""unlearn_fast: fused-kernel engine for unlearning in diffusion models.

The core op is ``fused_eps_loss`` (math.md section 3); ``mse_loss`` is the drop-in for
the MSE line of the diffusers training scripts; ``timestep_weights`` builds the
per-timestep weight tables (simple, KL in nats, ELBO, SNR, min-SNR).
"""

from ._version import __version__
from .losses import FusedEpsLoss, FusedMSELoss, mse_loss
from .ops import backends, fused_eps_loss
from .reference import fused_eps_loss_reference
from .schedules import timestep_weights

__all__ = [
    "__version__",
    "FusedEpsLoss",
    "FusedMSELoss",
    "backends",
    "fused_eps_loss",
    "fused_eps_loss_reference",
    "mse_loss",
    "timestep_weights",
]
