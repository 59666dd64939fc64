"""Property tests: fused_eps_loss against the float64 reference on random shapes,
strides, coefficients and weights (hypothesis; 2,000 cases for the C++ kernel)."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import unlearn_fast as uf
from unlearn_fast import fused_eps_loss, fused_eps_loss_reference

KERNELS = [b for b in uf.backends() if b != "reference"]
HAS_CUDA = torch.cuda.is_available()
CASES = {"cpu": 2000, "cuda": 1000, "triton": 150}  # the Triton interpreter is slow


@st.composite
def problems(draw):
    B = draw(st.integers(0, 4))
    inner = draw(st.lists(st.integers(1, 6), min_size=0, max_size=4))
    K = draw(st.integers(1, 4))
    M = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**31 - 1))
    layouts = draw(st.lists(st.sampled_from(["contiguous", "batch_slice", "permuted", "inner_slice"]),
                            min_size=K, max_size=K))
    per_sample = draw(st.booleans())
    reduction = draw(st.sampled_from(["mean", "sum"]))
    weight_kind = draw(st.sampled_from(["positive", "signed", "zero"]))
    return B, inner, K, M, seed, layouts, per_sample, reduction, weight_kind


def build(shape, layout, g):
    """A float64 tensor of ``shape`` in the requested memory layout (same values either way)."""
    values = torch.randn(shape, generator=g, dtype=torch.float64)
    if layout == "batch_slice":
        big = torch.zeros((2 * shape[0], *shape[1:]), dtype=torch.float64)
        big[::2] = values
        return big[::2]
    if layout == "permuted" and len(shape) > 2:
        perm = [0] + list(range(2, len(shape))) + [1]  # channels-last-like
        inverse = [perm.index(d) for d in range(len(shape))]
        return values.permute(perm).contiguous().permute(inverse)
    if layout == "inner_slice" and len(shape) > 1:
        big = torch.zeros((*shape[:-1], 2 * shape[-1]), dtype=torch.float64)
        big[..., ::2] = values
        return big[..., ::2]
    return values


def check(backend, problem):
    B, inner, K, M, seed, layouts, per_sample, reduction, weight_kind = problem
    device = "cpu" if backend == "cpu" or (backend == "triton" and not HAS_CUDA) else "cuda"
    g = torch.Generator().manual_seed(seed)
    shape = (B, *inner)
    xs = [build(shape, layout, g) for layout in layouts]
    coeffs = torch.randn((B, M, K) if per_sample else (M, K), generator=g, dtype=torch.float64)
    weights = {"positive": torch.rand(B, M, generator=g, dtype=torch.float64),
               "signed": torch.randn(B, M, generator=g, dtype=torch.float64),
               "zero": torch.zeros(B, M, dtype=torch.float64)}[weight_kind]
    dev = [x.to(device) for x in xs]
    pred = dev[0].requires_grad_()
    loss, dist = fused_eps_loss(pred, dev[1:], coeffs.to(device), weights.to(device), reduction=reduction,
                                backend=backend)
    (grad,) = torch.autograd.grad(loss * 1.5, pred) if B and math.prod(inner) else (torch.zeros_like(pred),)
    ref_pred = xs[0].clone().requires_grad_()
    ref_loss, ref_dist = fused_eps_loss_reference(ref_pred, xs[1:], coeffs, weights, reduction=reduction)
    (ref_grad,) = torch.autograd.grad(ref_loss * 1.5, ref_pred) if B and math.prod(inner) else (torch.zeros_like(ref_pred),)
    tol = dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(loss.cpu(), ref_loss.detach(), **tol)
    torch.testing.assert_close(dist.cpu(), ref_dist, **tol)
    torch.testing.assert_close(grad.cpu(), ref_grad, **tol)


def make_test(backend):
    @settings(max_examples=CASES[backend], deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow])
    @given(problems())
    def test(problem):
        check(backend, problem)

    return test


@pytest.mark.parametrize("backend", KERNELS)
def test_random_problems_match_reference(backend):
    make_test(backend)()
