"""The CUDA kernel's own paths, on a GPU (every test here is skipped without one).

tests/test_fused_eps_loss.py checks the CUDA backend like every other one; this file adds
the cases only the CUDA kernel has: the K or M > 4 instantiation, the 8-wide fp16/bf16
vector loads, the ragged tail after the last vector, the narrower vector fallback when one
tensor is only 8- or 4-byte aligned, and element offsets past 2^31.
"""

import pytest
import torch

from unlearn_fast import backends, fused_eps_loss, fused_eps_loss_reference

pytestmark = pytest.mark.skipif("cuda" not in backends(), reason="needs a CUDA device and the CUDA kernel")


def inputs(shape, K, M, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(shape, generator=g, dtype=torch.float64).to(dtype).cuda() for _ in range(K)]
    coeffs = torch.randn(shape[0], M, K, generator=g, dtype=torch.float64).float().cuda()
    weights = torch.rand(shape[0], M, generator=g, dtype=torch.float64).float().cuda()
    return xs[0], xs[1:], coeffs, weights


def check(pred, others, coeffs, weights, reduction="mean", grad_scale=3.0):
    p = pred.detach().clone().requires_grad_()
    loss, dist = fused_eps_loss(p, others, coeffs, weights, reduction=reduction, backend="cuda")
    (loss * grad_scale).backward()
    p64 = pred.detach().double().cpu().requires_grad_()
    ref, ref_dist = fused_eps_loss_reference(p64, [o.double().cpu() for o in others], coeffs.double().cpu(),
                                             weights.double().cpu(), reduction=reduction)
    (ref * grad_scale).backward()
    tol = dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dist.double().cpu(), ref_dist, **tol)
    torch.testing.assert_close(loss.double().cpu(), ref.detach(), **tol)
    gtol = {torch.float16: dict(rtol=2e-3, atol=1e-5), torch.bfloat16: dict(rtol=1.6e-2, atol=1e-4)}.get(pred.dtype, tol)
    torch.testing.assert_close(p.grad.double().cpu(), p64.grad, **gtol)


@pytest.mark.parametrize("K, M", [(5, 2), (3, 5), (8, 8), (6, 7)])
def test_more_than_four_tensors_or_heads(K, M):
    check(*inputs((3, 4, 33, 17), K, M, torch.float32))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_eight_wide_half_loads(dtype):
    check(*inputs((4, 4, 64, 64), 3, 2, dtype))  # D % 8 == 0: every load is 8 elements


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_tail_after_the_last_vector(dtype):
    check(*inputs((3, 8 * 256 * 3 + 5), 3, 2, dtype))  # the last chunk ends in a ragged tail


@pytest.mark.parametrize("offset", [1, 2])
def test_one_misaligned_tensor_keeps_narrower_vectors(offset):
    pred, others, coeffs, weights = inputs((3, 4, 32, 32), 3, 2, torch.float32)
    flat = torch.empty(pred.numel() + offset, device="cuda")
    shifted = flat[offset:].view_as(pred).copy_(others[0])  # 4- or 8-byte aligned only
    check(pred, [shifted, others[1]], coeffs, weights)


def test_offsets_past_two_to_the_31():
    """Three samples of 2^30 + 8 fp16 elements: the last sample starts past 2^31 elements."""
    B, D = 3, 2**30 + 8
    values = torch.tensor([0.5, 1.0, 1.5], device="cuda")
    pred = values.half().view(B, 1).expand(B, D).contiguous().requires_grad_()
    zero = torch.zeros(B, D, device="cuda", dtype=torch.float16)
    coeffs = torch.tensor([[1.0, -1.0]], device="cuda")
    weights = torch.tensor([[0.25], [0.5], [1.0]], device="cuda")
    loss, dist = fused_eps_loss(pred, [zero], coeffs, weights, backend="cuda")  # r = pred
    torch.testing.assert_close(dist.squeeze(1), values.square(), rtol=1e-6, atol=0)
    torch.testing.assert_close(loss, (weights.squeeze(1) * values.square()).sum(), rtol=1e-6, atol=0)
    (loss * 2.0**16).backward()
    tail = pred.grad[2, -5:].float()  # the very last elements: offsets near 3 * 2^30
    expected = 2.0**16 * 2 / D * 1.0 * 1.5
    torch.testing.assert_close(tail, torch.full_like(tail, expected), rtol=2e-3, atol=0)
