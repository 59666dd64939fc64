"""The fused loss as an operator: input checks, backend choice, torch.library registration.

One dispatcher for every backend. It validates the arguments once (errors name the
argument), brings the tensors into the layout the kernels read, then calls

- ``reference``: the pure-PyTorch specification (``unlearn_fast.reference``);
- ``cpu`` / ``cuda``: the C++ op ``unlearn_fast::fused_eps_loss`` from ``unlearn_fast._C``,
  whose CPU and CUDA kernels are registered with the PyTorch dispatcher;
- ``triton``: ``unlearn_fast::fused_eps_loss_triton``, a ``torch.library.triton_op``.

The kernel ops return ``(loss, dist, grad_pred)``: the gradient is computed in the same
pass as the loss and kept in the arithmetic dtype (float32, float64 for float64 inputs);
the backward scales it by ``grad_output`` and rounds it to ``pred``'s dtype once. (Rounded
before the scaling, a float16 gradient of a mean over an SD latent, about ``2/D``, would
fall below float16's normal range before a ``GradScaler`` could lift it.)

Layout. The kernels read each sample as one dense block of memory, the same way for
every tensor. A tensor whose per-sample block is dense (a contiguous or channels-last
tensor, or a batch slice of one such as ``x[::2]`` or a ``chunk`` of a batched teacher
output) is read in place. Any other tensor (a transposed or spatially sliced view, or a
frame laid out differently from ``pred``) is copied once into ``pred``'s layout before
the kernel runs: that copy is unavoidable for a one-pass kernel and is the only one.
``coeffs`` and ``weights`` (a few scalars per sample) are converted to the arithmetic
dtype, float32 (float64 for float64 inputs).
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import torch

from .reference import acc_dtype, fused_eps_loss_reference

BACKENDS = ("reference", "cpu", "cuda", "triton")
BACKEND_ENV = "UNLEARN_FAST_BACKEND"  # overrides what backend="auto" picks
MAX_TENSORS = 8  # K = 1 + len(others) that the kernels take
MAX_HEADS = 8  # M that the kernels take
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# ---------------------------------------------------------------------------------------
# What this process can run. Filled on first use, not at import (no CUDA call at import).

_extension_error: str | None = None
try:
    from . import _C  # noqa: F401  (loading it registers the C++ op and its kernels)
except ImportError as exc:  # a checkout without a build: the reference still works
    _extension_error = str(exc)

_triton_error: str | None = None
try:
    from .kernels.fused_eps_loss import fused_eps_loss_triton as _triton_launcher
except ImportError as exc:
    _triton_launcher = None
    _triton_error = str(exc)

_availability: dict[str, str | None] = {}  # backend -> None if usable, else why not


def _has_kernel(dispatch_key: str) -> bool:
    return _extension_error is None and torch._C._dispatch_has_kernel_for_dispatch_key(
        "unlearn_fast::fused_eps_loss", dispatch_key
    )


def _why_unavailable(name: str) -> str | None:
    if not _availability:
        cuda = torch.cuda.is_available()
        _availability["reference"] = None
        _availability["cpu"] = None if _has_kernel("CPU") else (
            f"the C++ extension unlearn_fast._C is not built ({_extension_error}); "
            "run `pip install --no-build-isolation -e .`"
        )
        if not _has_kernel("CUDA"):
            _availability["cuda"] = (
                "the CUDA kernel was not built (torch CPU-only or nvcc missing at build time)"
            )
        else:
            _availability["cuda"] = None if cuda else "no CUDA device is available"
        if _triton_launcher is None:
            _availability["triton"] = f"triton is not importable ({_triton_error})"
        elif not cuda and not _triton_interpreted():
            _availability["triton"] = "no CUDA device (set TRITON_INTERPRET=1 before importing triton to run on CPU)"
        else:
            _availability["triton"] = None
    return _availability[name]


def _triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def backends() -> list[str]:
    """Names of the backends usable in this process, for ``fused_eps_loss(backend=...)``."""
    return [name for name in BACKENDS if _why_unavailable(name) is None]


def _resolve_backend(backend: str, device: torch.device) -> str:
    if not isinstance(backend, str) or backend not in BACKENDS + ("auto",):
        raise ValueError(f"backend: expected one of {('auto',) + BACKENDS}, got {backend!r}")
    if backend == "auto":
        override = os.environ.get(BACKEND_ENV)
        if override:
            if override not in BACKENDS:
                raise ValueError(f"{BACKEND_ENV}: expected one of {BACKENDS}, got {override!r}")
            backend = override
        elif device.type == "cuda":
            backend = next(b for b in ("cuda", "triton", "reference") if _why_unavailable(b) is None)
        else:
            backend = "cpu" if _why_unavailable("cpu") is None else "reference"
    why = _why_unavailable(backend)
    if why is not None:
        raise RuntimeError(f"backend: {backend!r} is not available: {why}")
    kernel_device = {"cpu": "cpu", "cuda": "cuda"}.get(backend)
    if kernel_device is not None and device.type != kernel_device:
        raise ValueError(f"backend: {backend!r} runs on {kernel_device} tensors, but pred is on {device}")
    if backend == "triton" and device.type != "cuda" and not _triton_interpreted():
        raise ValueError(f"backend: 'triton' needs CUDA tensors (or TRITON_INTERPRET=1), pred is on {device}")
    return backend


# ---------------------------------------------------------------------------------------
# Validation and layout.


def _check_inputs(pred, others, coeffs, weights, reduction) -> None:
    if not isinstance(pred, torch.Tensor):
        raise TypeError(f"pred: expected a torch.Tensor, got {type(pred).__name__}")
    if pred.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"pred: expected float16, bfloat16, float32 or float64, got {pred.dtype}")
    if pred.dim() < 1:
        raise ValueError("pred: expected a tensor [B, ...] with a batch dimension, got a 0-dim tensor")
    if not isinstance(others, (list, tuple)):
        raise TypeError(f"others: expected a list or tuple of tensors, got {type(others).__name__}")
    for i, other in enumerate(others):
        if not isinstance(other, torch.Tensor):
            raise TypeError(f"others[{i}]: expected a torch.Tensor, got {type(other).__name__}")
        if other.shape != pred.shape:
            raise ValueError(f"others[{i}]: shape {tuple(other.shape)} differs from pred's {tuple(pred.shape)}")
        if other.dtype != pred.dtype:
            raise TypeError(f"others[{i}]: dtype {other.dtype} differs from pred's {pred.dtype}")
        if other.device != pred.device:
            raise ValueError(f"others[{i}]: device {other.device} differs from pred's {pred.device}")
    B, K = pred.shape[0], len(others) + 1
    if not isinstance(coeffs, torch.Tensor) or not coeffs.is_floating_point():
        raise TypeError(f"coeffs: expected a float tensor [M, K] or [B, M, K], got {_describe(coeffs)}")
    if coeffs.dim() not in (2, 3) or coeffs.shape[-1] != K or (coeffs.dim() == 3 and coeffs.shape[0] != B):
        raise ValueError(
            f"coeffs: expected [M, K={K}] or [B={B}, M, K={K}] (K = 1 + len(others)), got {tuple(coeffs.shape)}"
        )
    M = coeffs.shape[-2]
    if M < 1:
        raise ValueError("coeffs: expected at least one head (M >= 1), got M = 0")
    if coeffs.device != pred.device:
        raise ValueError(f"coeffs: device {coeffs.device} differs from pred's {pred.device}")
    if not isinstance(weights, torch.Tensor) or not weights.is_floating_point():
        raise TypeError(f"weights: expected a float tensor [B, M], got {_describe(weights)}")
    if tuple(weights.shape) != (B, M):
        raise ValueError(f"weights: expected shape [B={B}, M={M}], got {tuple(weights.shape)}")
    if weights.device != pred.device:
        raise ValueError(f"weights: device {weights.device} differs from pred's {pred.device}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction: expected 'mean' or 'sum', got {reduction!r}")


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__


def _sample_block_dense(t: torch.Tensor) -> bool:
    """True when each sample (dims 1..) occupies one dense run of memory."""
    if t.numel() == 0:
        return True  # nothing to read: any strides will do
    dims = sorted((t.stride(d), t.shape[d]) for d in range(1, t.dim()) if t.shape[d] != 1)
    expected = 1
    for stride, size in dims:
        if stride != expected:
            return False
        expected *= size
    return True


def _same_inner_layout(t: torch.Tensor, ref: torch.Tensor) -> bool:
    return all(t.stride(d) == ref.stride(d) for d in range(1, t.dim()) if t.shape[d] != 1)


def _in_layout_of(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``t`` itself when the kernels can read it alongside ``ref``, else a copy in ref's layout."""
    if _sample_block_dense(t) and _same_inner_layout(t, ref):
        return t
    D = math.prod(ref.shape[1:])
    out = torch.empty_strided(ref.shape, (D, *ref.stride()[1:]), dtype=t.dtype, device=t.device)
    return out.copy_(t)


# ---------------------------------------------------------------------------------------
# The kernel ops: fake (shape) functions for both; autograd in Python for the Triton op
# (the C++ op registers the same backward in C++).


def _fake_outputs(pred, coeffs, compute_grad):
    acc = acc_dtype(pred.dtype)
    loss = pred.new_empty((), dtype=acc)
    dist = pred.new_empty((pred.shape[0], coeffs.shape[1]), dtype=acc)
    if compute_grad:
        D = math.prod(pred.shape[1:])
        grad = torch.empty_strided(pred.shape, (D, *pred.stride()[1:]), dtype=acc, device=pred.device)
    else:
        grad = pred.new_empty(0, dtype=acc)
    return loss, dist, grad


def _setup_context(ctx, inputs, output):
    ctx.compute_grad = inputs[5]
    ctx.num_others = len(inputs[1])
    ctx.pred_dtype = inputs[0].dtype
    ctx.save_for_backward(output[2])
    ctx.set_materialize_grads(False)  # no zero-filled grad_output for dist and the gradient buffer


def _backward(ctx, grad_loss, grad_dist, grad_buffer):
    # dist and the gradient buffer are not differentiable outputs: only the loss is.
    grad_pred = None
    if ctx.compute_grad and grad_loss is not None:
        (saved_grad,) = ctx.saved_tensors
        # scaled in the acc dtype, rounded once into pred's dtype; a fresh tensor, so a
        # second backward stays correct (the C++ op's scale_saved_grad does the same)
        grad_pred = torch.empty_like(saved_grad, dtype=ctx.pred_dtype)
        torch.mul(saved_grad, grad_loss, out=grad_pred)
    return grad_pred, [None] * ctx.num_others, None, None, None, None


_CPP_OP = None  # torch.ops.unlearn_fast.fused_eps_loss.default (the overload: no packet lookup per call)

if _extension_error is None:
    _CPP_OP = torch.ops.unlearn_fast.fused_eps_loss.default

    @torch.library.register_fake("unlearn_fast::fused_eps_loss")
    def _fused_eps_loss_fake(pred, others, coeffs, weights, sum_reduction, compute_grad):
        return _fake_outputs(pred, coeffs, compute_grad)

    # its autograd is registered in C++ (csrc/autograd.cpp): no Python in the training step

if _triton_launcher is not None:

    @torch.library.triton_op("unlearn_fast::fused_eps_loss_triton", mutates_args=())
    def _fused_eps_loss_triton(
        pred: torch.Tensor,
        others: list[torch.Tensor],
        coeffs: torch.Tensor,
        weights: torch.Tensor,
        sum_reduction: bool,
        compute_grad: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return _triton_launcher(pred, others, coeffs, weights, sum_reduction, compute_grad)

    @_fused_eps_loss_triton.register_fake
    def _fused_eps_loss_triton_fake(pred, others, coeffs, weights, sum_reduction, compute_grad):
        return _fake_outputs(pred, coeffs, compute_grad)

    _fused_eps_loss_triton.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------------------------------
# The public entry point.

_CPP_DEVICE_TYPES: frozenset[str] | None = None  # device types whose C++ kernel is usable here


def _fast_call(pred, others, coeffs, weights, reduction, backend):
    """The C++ op called directly when the inputs are already in its layout and dtypes.

    That is the training step's common case (contiguous inputs in the kernels' dtypes,
    ``backend="auto"``, or ``"cpu"``/``"cuda"`` naming pred's device): the op re-checks
    everything itself, so the Python validation and layout work is skipped. Anything else,
    or anything the op rejects, returns ``None`` and takes the full path, which names the
    bad argument or copies the tensor into the kernels' layout.
    """
    global _CPP_DEVICE_TYPES
    if type(pred) is not torch.Tensor:
        return None
    device = pred.device
    if backend == "auto":
        if os.environ.get(BACKEND_ENV):
            return None
    elif backend != device.type:  # "cpu" on CPU tensors, "cuda" on CUDA tensors: this same op
        return None
    if _CPP_DEVICE_TYPES is None:
        _CPP_DEVICE_TYPES = frozenset(t for t in ("cpu", "cuda") if _why_unavailable(t) is None)
    if device.type not in _CPP_DEVICE_TYPES or torch.compiler.is_compiling():
        return None
    if reduction == "mean":
        sum_reduction = False
    elif reduction == "sum":
        sum_reduction = True
    else:
        return None
    if type(others) not in (list, tuple) or not pred.is_contiguous():
        return None
    for other in others:  # (a tensor on another device would dispatch elsewhere, e.g. to meta)
        if type(other) is not torch.Tensor or not other.is_contiguous() or other.device != device:
            return None
    if type(coeffs) is not torch.Tensor or type(weights) is not torch.Tensor:
        return None
    if coeffs.device != device or weights.device != device:
        return None
    if coeffs.dim() == 2:
        coeffs = coeffs.unsqueeze(0)
    compute_grad = pred.requires_grad and torch.is_grad_enabled()
    try:
        loss, dist, _ = _CPP_OP(pred, others, coeffs, weights, sum_reduction, compute_grad)
    except (RuntimeError, NotImplementedError):
        return None  # e.g. float64 coefficients, too many heads: the full path converts or explains
    return loss, dist


def fused_eps_loss(
    pred: torch.Tensor,
    others: Sequence[torch.Tensor],
    coeffs: torch.Tensor,
    weights: torch.Tensor,
    *,
    reduction: str = "mean",
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused weighted squared distances between noise predictions (math.md section 3).

    Args:
        pred: ``[B, ...]`` float16/bfloat16/float32/float64, the trainable model's output:
            the only input that receives a gradient.
        others: K-1 tensors shaped like ``pred`` (same dtype and device): frozen
            predictions, the true noise, targets. No gradient flows into them. May be empty.
        coeffs: ``[M, K]`` (shared by all samples) or ``[B, M, K]`` (per sample). Head ``m``'s
            residual is ``r_m = coeffs[.., m, 0] * pred + sum_k coeffs[.., m, k] * others[k-1]``.
        weights: ``[B, M]``: the weight of each sample's head in the loss.
        reduction: ``"mean"``: ``dist[b, m] = mean_j r_m[b, j]^2``; ``"sum"``: ``sum_j``.
        backend: ``"auto"`` (the fastest available for pred's device; the environment
            variable ``UNLEARN_FAST_BACKEND`` overrides it), ``"reference"``, ``"cpu"``,
            ``"cuda"`` or ``"triton"``; ``backends()`` lists those usable here.

    Returns:
        ``(loss, dist)``: ``loss = sum_{b,m} weights[b, m] * dist[b, m]``, a float32 scalar
        (float64 for float64 inputs); ``dist``, ``[B, M]`` in the same dtype, detached.
        NaN and Inf propagate as in ``F.mse_loss``; ``B = 0`` gives a zero loss.

    The kernels compute in float32 (float64 for float64 inputs) whatever the input dtype;
    the gradient reaching ``pred`` is scaled by ``grad_output`` in that dtype and rounded
    to ``pred``'s dtype once (so a loss scale keeps float16 gradients accurate). See the
    module docstring for the one layout copy they may make.
    """
    fast = _fast_call(pred, others, coeffs, weights, reduction, backend)
    if fast is not None:
        return fast
    _check_inputs(pred, others, coeffs, weights, reduction)
    name = _resolve_backend(backend, pred.device)
    if name == "reference":
        return fused_eps_loss_reference(pred, others, coeffs, weights, reduction=reduction)
    if len(others) + 1 > MAX_TENSORS or coeffs.shape[-2] > MAX_HEADS:
        raise ValueError(
            f"others/coeffs: the {name!r} kernel takes at most {MAX_TENSORS - 1} others and "
            f"{MAX_HEADS} heads, got {len(others)} and {coeffs.shape[-2]}; use backend='reference'"
        )
    acc = acc_dtype(pred.dtype)
    if not _sample_block_dense(pred):
        pred = pred.contiguous()  # the one documented copy (see module docstring)
    others = [_in_layout_of(o.detach(), pred) for o in others]
    coeffs = coeffs.detach().to(acc)
    coeffs = (coeffs.unsqueeze(0) if coeffs.dim() == 2 else coeffs).contiguous()
    weights = weights.detach().to(acc).contiguous()
    compute_grad = pred.requires_grad and torch.is_grad_enabled()
    op = torch.ops.unlearn_fast.fused_eps_loss_triton if name == "triton" else torch.ops.unlearn_fast.fused_eps_loss
    loss, dist, _ = op(pred, others, coeffs, weights, reduction == "sum", compute_grad)
    return loss, dist.detach()
