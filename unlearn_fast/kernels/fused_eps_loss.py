"""Triton backend of the fused loss: the contract of csrc/fused_eps_loss.h (math.md section 3).

One pass over memory: every program reads one chunk of one sample from each of the K
inputs once, forms all M heads' residuals ``r[m, j] = sum_k c[b, m, k] * X_k[b, j]``,
accumulates their squared norms and writes the gradient for ``pred``. The per-chunk sums
go to a small ``partial[b, chunk, m]`` buffer that torch ops reduce in a fixed order, so
results are bit-identical from run to run (no atomics).

The launcher only uses torch ops and ``torch.library.wrap_triton`` (no host syncs), so
it can run inside a ``torch.library.triton_op`` traced by ``torch.compile(fullgraph=True)``.
"""

from __future__ import annotations

import contextlib
import math
from typing import Sequence

import torch
import triton
import triton.language as tl

MAX_TENSORS = 8  # K <= 8, as kMaxTensors in csrc/fused_eps_loss.h
MAX_HEADS = 8  # M <= 8, as kMaxHeads
# Programs to aim for in all, as the CUDA kernel's kTargetBlocks: a fixed number, not read
# from the device, so the chunking (and the summation order) depends on B and D only.
TARGET_PROGRAMS = 1024
CHUNK_MIN = 1024  # elements per program at least: each program still streams whole tiles
MAX_CHUNKS = 65535  # CUDA's limit on grid axis 1 (the chunk axis)
TILE = 8192  # M_PAD * BLOCK: bounds the residual tile kept in registers
BLOCK_MIN, BLOCK_MAX = 1024, 4096  # elements per tile: wide loads, a few tiles per chunk


@triton.jit
def _fused_eps_loss_kernel(
    X0, X1, X2, X3, X4, X5, X6, X7,  # the K inputs (X0 = pred); unused ones are dummies
    s0, s1, s2, s3, s4, s5, s6, s7,  # their batch strides, in elements
    coeff_ptr, coeff_stride,  # coeffs [Bc, M, K]; coeff_stride = 0 when shared (Bc == 1)
    weight_ptr,  # weights [B, M]
    grad_ptr,  # grad [B, D] (batch stride D), acc dtype, only touched when COMPUTE_GRAD
    partial_ptr,  # partial [B, n_chunks, M], acc dtype
    D, n_chunks,
    K: tl.constexpr, M: tl.constexpr, M_PAD: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK: tl.constexpr,
    SUM_REDUCTION: tl.constexpr, COMPUTE_GRAD: tl.constexpr,
):
    ACC = coeff_ptr.dtype.element_ty  # coeffs are stored in the acc dtype (fp32 or fp64)
    b = tl.program_id(0).to(tl.int64)  # int64: b * stride can exceed 2^31
    chunk = tl.program_id(1).to(tl.int64)
    start = chunk * CHUNK

    heads = tl.arange(0, M_PAD)
    head_mask = heads < M
    c_row = coeff_ptr + b * coeff_stride + heads * K  # c[b, m, :] for every head
    # Gradient coefficient 2 * scale * w[b, m] * c[b, m, 0]; padded heads get 0.
    if SUM_REDUCTION:
        two_scale = 2.0
    else:
        two_scale = 2.0 / tl.cast(D, ACC)  # cast: D == 1 arrives as a constexpr
    w = tl.load(weight_ptr + b * M + heads, mask=head_mask, other=0.0)
    gcoef = two_scale * w * tl.load(c_row, mask=head_mask, other=0.0)

    sq = tl.zeros([M_PAD, BLOCK], dtype=ACC)  # elementwise sums of squares, reduced at the end
    for i in range(0, CHUNK, BLOCK):
        offs = start + i + tl.arange(0, BLOCK)
        mask = offs < D
        r = tl.zeros([M_PAD, BLOCK], dtype=ACC)
        for k in tl.static_range(K):
            # Pick the k-th input at compile time (K and k are constexpr).
            if k == 0:
                ptr = X0 + b * s0
            elif k == 1:
                ptr = X1 + b * s1
            elif k == 2:
                ptr = X2 + b * s2
            elif k == 3:
                ptr = X3 + b * s3
            elif k == 4:
                ptr = X4 + b * s4
            elif k == 5:
                ptr = X5 + b * s5
            elif k == 6:
                ptr = X6 + b * s6
            else:
                ptr = X7 + b * s7
            x = tl.load(ptr + offs, mask=mask, other=0.0).to(ACC)  # masked lanes give r = 0
            ck = tl.load(c_row + k, mask=head_mask, other=0.0)  # padded heads give r = 0
            r += ck[:, None] * x[None, :]
        sq += r * r
        if COMPUTE_GRAD:
            g = tl.sum(gcoef[:, None] * r, axis=0)  # sum over heads
            tl.store(grad_ptr + b * D + offs, g, mask=mask)

    sums = tl.sum(sq, axis=1)  # [M_PAD]
    tl.store(partial_ptr + (b * n_chunks + chunk) * M + heads, sums, mask=head_mask)


def _launch_config(B: int, D: int, M: int) -> tuple[int, int, int, int]:
    """(M_PAD, CHUNK, BLOCK, num_warps) for B samples of D elements and M heads.

    The chunk is a power of two (few compiled variants) sized so that B x D / CHUNK comes
    to about ``TARGET_PROGRAMS`` (between half and all of it), at least ``CHUNK_MIN``
    elements, and large enough that the chunk axis stays within CUDA's grid limit.
    """
    m_pad = triton.next_power_of_2(M)
    per_sample = max(1, triton.cdiv(TARGET_PROGRAMS, max(B, 1)))
    chunk = max(CHUNK_MIN, triton.next_power_of_2(triton.cdiv(D, per_sample)))
    chunk = max(chunk, triton.next_power_of_2(triton.cdiv(D, MAX_CHUNKS)))
    chunk = min(chunk, triton.next_power_of_2(D))  # small samples: one short chunk
    # The [M_PAD, BLOCK] residual tile lives in registers: fewer elements per tile for more heads.
    block = min(max(TILE // m_pad, BLOCK_MIN), BLOCK_MAX, chunk)
    num_warps = 8 if block * m_pad >= TILE else 4
    return m_pad, chunk, block, num_warps


def device_guard(device: torch.device):
    """``torch.cuda.device(device)`` for a CUDA device (tensors on cuda:1 while cuda:0 is
    current must launch on cuda:1), a no-op context otherwise (the CPU interpreter)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def fused_eps_loss_triton(
    pred: torch.Tensor,
    others: Sequence[torch.Tensor],
    coeffs: torch.Tensor,
    weights: torch.Tensor,
    sum_reduction: bool,
    compute_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, dist, grad_pred) as in csrc/fused_eps_loss.h; inputs already prepared.

    pred and others: same shape and dtype, each sample's block dense with pred's inner
    strides (element j of sample b at data_ptr + b * stride(0) + j); coeffs [1 or B, M, K]
    and weights [B, M] contiguous in the acc dtype (float64 for float64 inputs, else float32).
    """
    B = pred.shape[0]
    D = math.prod(pred.shape[1:])
    M, K = coeffs.shape[1], coeffs.shape[2]
    xs = [pred, *others]
    assert len(xs) == K and 1 <= K <= MAX_TENSORS and 1 <= M <= MAX_HEADS
    # Mean over zero elements is 0/0, as in F.mse_loss.
    scale = 1.0 if sum_reduction else (1.0 / D if D > 0 else math.nan)

    # The gradient stays in the acc dtype: the backward rounds it after scaling (see ops.py).
    if compute_grad:
        grad = torch.empty_strided(pred.shape, (D, *pred.stride()[1:]), dtype=weights.dtype, device=pred.device)
    else:
        grad = pred.new_empty(0, dtype=weights.dtype)

    m_pad, chunk, block, num_warps = _launch_config(B, max(D, 1), M)
    n_chunks = triton.cdiv(D, chunk)
    partial = torch.empty((B, n_chunks, M), dtype=weights.dtype, device=pred.device)
    if B > 0 and n_chunks > 0:
        ptrs = xs + [pred] * (MAX_TENSORS - K)  # pred as a dummy for the unused slots
        strides = [x.stride(0) for x in ptrs]
        with device_guard(pred.device):  # launch in pred's context, not the current device's
            torch.library.wrap_triton(_fused_eps_loss_kernel)[(B, n_chunks)](
                *ptrs, *strides,
                coeffs, 0 if coeffs.shape[0] == 1 else M * K,
                weights, grad, partial, D, n_chunks,
                K=K, M=M, M_PAD=m_pad, CHUNK=chunk, BLOCK=block,
                SUM_REDUCTION=sum_reduction, COMPUTE_GRAD=compute_grad,
                num_warps=num_warps,
            )

    # Fixed-order reduction over chunks, in float64 like the CPU kernel. With D == 0 the
    # sum is over an empty axis: 0 * scale, NaN for the mean.
    dist = (partial.sum(1, dtype=torch.float64) * scale).to(weights.dtype)
    loss = (weights * dist).sum()
    return loss, dist, grad
