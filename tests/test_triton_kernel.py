"""The Triton kernel of the fused loss, run under the Triton interpreter on the CPU.

Checks the launcher of unlearn_fast/kernels/fused_eps_loss.py directly (its chunking, layouts and
buffers) against a float64 PyTorch reference of the contract in csrc/fused_eps_loss.h;
tests/test_fused_eps_loss.py checks it through the public API like every backend. Grids stay small: the interpreter costs 1-2 ms per program.
bf16 is not tested here (bf16 loads are wrong in the interpreter).
"""

import math

import pytest
import torch

import triton

from unlearn_fast.kernels import fused_eps_loss as fk

# conftest.py sets TRITON_INTERPRET=1 without a GPU; with one, the kernel runs natively.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def acc_of(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def reference(xs, coeffs, weights, sum_reduction):
    """(loss, dist, grad) in float64, straight from the formulas of the header."""
    B, D = xs[0].shape[0], math.prod(xs[0].shape[1:])
    X = torch.stack([x.reshape(B, D).double().cpu() for x in xs], 1)  # [B, K, D]
    c = coeffs.double().cpu().expand(B, -1, -1)  # [B, M, K]
    w = weights.double().cpu()
    scale = 1.0 if sum_reduction else (1.0 / D if D else math.nan)
    r = torch.einsum("bmk,bkj->bmj", c, X)
    dist = scale * r.square().sum(-1)
    loss = (w * dist).sum()
    grad = torch.einsum("bm,bmj->bj", 2 * scale * w * c[:, :, 0], r)
    return loss, dist, grad.reshape(xs[0].shape)


def make_inputs(shape, K, M, dtype, shared, seed=0):
    g = torch.Generator().manual_seed(seed)
    acc = acc_of(dtype)
    xs = [torch.randn(shape, generator=g, dtype=torch.float64).to(dtype) for _ in range(K)]
    coeffs = torch.randn(1 if shared else shape[0], M, K, generator=g, dtype=torch.float64).to(acc)
    weights = torch.rand(shape[0], M, generator=g, dtype=torch.float64).to(acc)
    return [x.to(DEVICE) for x in xs], coeffs.to(DEVICE), weights.to(DEVICE)


def check(xs, coeffs, weights, sum_reduction, compute_grad=True):
    pred, others = xs[0], xs[1:]
    loss, dist, grad = fk.fused_eps_loss_triton(pred, others, coeffs, weights, sum_reduction, compute_grad)
    ref_loss, ref_dist, ref_grad = reference(xs, coeffs, weights, sum_reduction)
    acc = acc_of(pred.dtype)
    B, M = pred.shape[0], coeffs.shape[1]
    D = math.prod(pred.shape[1:])
    assert loss.dtype == acc and loss.dim() == 0
    assert dist.dtype == acc and dist.shape == (B, M) and dist.is_contiguous()
    tol = dict(rtol=1e-12, atol=1e-12) if acc == torch.float64 else dict(rtol=2e-5, atol=1e-5)
    torch.testing.assert_close(dist.double().cpu(), ref_dist, equal_nan=True, **tol)
    torch.testing.assert_close(loss.double().cpu(), ref_loss, equal_nan=True, **tol)
    if compute_grad:
        # the gradient buffer stays in the acc dtype (the backward rounds it after scaling)
        assert grad.dtype == acc and grad.shape == pred.shape
        assert grad.stride() == (D, *pred.stride()[1:])
        torch.testing.assert_close(grad.double().cpu(), ref_grad, **tol)
    else:
        assert grad.shape == (0,) and grad.dtype == acc
    return loss, dist, grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
@pytest.mark.parametrize("sum_reduction", [False, True])
@pytest.mark.parametrize("shared", [False, True])
def test_dtypes_reductions_coeffs(dtype, sum_reduction, shared):
    check(*make_inputs((3, 3, 5, 7), 3, 2, dtype, shared), sum_reduction)


@pytest.mark.parametrize("K", [1, 2, 3, 4])
@pytest.mark.parametrize("M", [1, 2, 3])
def test_tensors_and_heads(K, M):
    check(*make_inputs((3, 4, 5), K, M, torch.float32, shared=K % 2 == 0, seed=K * 10 + M), M % 2 == 0)


@pytest.mark.parametrize("shape", [(1, 3, 5, 7), (2, 2, 3, 4, 5), (3, 1)])
def test_shapes(shape):
    check(*make_inputs(shape, 2, 3, torch.float64, shared=False), False)


def test_max_tensors_and_heads():
    check(*make_inputs((2, 37), 8, 8, torch.float32, shared=False), False)


def test_batch_strided_views():
    # Batch strides differ between tensors; each sample's block stays dense.
    big = [torch.randn(6, 3, 5, 7, device=DEVICE) for _ in range(3)]
    xs = [big[0][::2], big[1][1::2], big[2][:3]]
    _, coeffs, weights = make_inputs((3, 3, 5, 7), 3, 2, torch.float32, shared=False)
    check(xs, coeffs, weights, False)


def test_permuted_inner_strides():
    # channels-last-like samples: dense but not contiguous; grad keeps the inner strides.
    xs = [torch.randn(3, 5, 7, 4, device=DEVICE).permute(0, 3, 1, 2) for _ in range(2)]
    _, coeffs, weights = make_inputs((3, 4, 5, 7), 2, 2, torch.float32, shared=True)
    check(xs, coeffs, weights, True)


def test_multiple_chunks_and_tiles(monkeypatch):
    # Small chunks and tiles: several programs per sample, several tiles per program,
    # and a partial last chunk (D = 105 = 3 * 32 + 9).
    monkeypatch.setattr(fk, "CHUNK_MIN", 32)
    monkeypatch.setattr(fk, "BLOCK_MAX", 8)
    assert fk._launch_config(2, 105, 3)[1:3] == (32, 8)
    check(*make_inputs((2, 3, 5, 7), 3, 3, torch.float64, shared=False), False)
    check(*make_inputs((2, 3, 5, 7), 2, 2, torch.float32, shared=True), True)


@pytest.mark.parametrize("shape", [(1, 4, 64, 64), (8, 4, 64, 64), (8, 4, 128, 128), (2, 16, 128, 128),
                                   (8, 16, 128, 128), (1, 4096, 64), (64, 4, 32, 32), (4, 16, 256, 256)])
def test_grid_aims_at_a_fixed_program_count(shape):
    """The chunk comes from a target program count, not a fixed size: enough programs to
    fill a 132-SM GPU at every latent size, the same choice on every device."""
    B, D = shape[0], math.prod(shape[1:])
    _, chunk, block, _ = fk._launch_config(B, D, 2)
    programs = B * triton.cdiv(D, chunk)
    assert chunk & (chunk - 1) == 0 and chunk % block == 0
    if B * D >= fk.TARGET_PROGRAMS * fk.CHUNK_MIN:
        assert fk.TARGET_PROGRAMS // 2 <= programs <= fk.TARGET_PROGRAMS, (shape, chunk, programs)
    else:  # too little work to split further: chunks of CHUNK_MIN
        assert chunk == min(fk.CHUNK_MIN, triton.next_power_of_2(D))
    assert fk._launch_config(B, D, 2) == fk._launch_config(B, D, 2)


def test_device_guard_picks_the_tensors_device():
    """The launch runs under torch.cuda.device(pred.device): cuda:1 tensors with cuda:0 current."""
    guard = fk.device_guard(torch.device("cuda", 1))
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1
    with fk.device_guard(torch.device("cpu")):  # the interpreter: nothing to switch
        pass


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_second_device_launches_there():
    torch.cuda.set_device(0)
    xs, coeffs, weights = make_inputs((3, 4, 5, 7), 3, 2, torch.float32, shared=False)
    check([x.to("cuda:1") for x in xs], coeffs.to("cuda:1"), weights.to("cuda:1"), False)


def test_no_grad():
    check(*make_inputs((3, 3, 5, 7), 2, 2, torch.float16, shared=False), False, compute_grad=False)


def test_deterministic():
    args = make_inputs((3, 3, 5, 7), 3, 3, torch.float32, shared=False)
    a = fk.fused_eps_loss_triton(args[0][0], args[0][1:], args[1], args[2], False, True)
    b = fk.fused_eps_loss_triton(args[0][0], args[0][1:], args[1], args[2], False, True)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


@pytest.mark.parametrize("compute_grad", [False, True])
def test_empty_batch(compute_grad):
    xs, coeffs, weights = make_inputs((0, 3, 5), 2, 3, torch.float32, shared=True)
    loss, dist, grad = check(xs, coeffs, weights, False, compute_grad)
    assert loss.item() == 0 and dist.shape == (0, 3) and grad.numel() == 0


@pytest.mark.parametrize("sum_reduction", [False, True])
def test_empty_samples(sum_reduction):
    # D == 0: the mean is NaN as in F.mse_loss, the sum is 0.
    xs, coeffs, weights = make_inputs((2, 0, 3), 2, 2, torch.float32, shared=False)
    _, dist, grad = check(xs, coeffs, weights, sum_reduction)
    assert dist.isnan().all() if not sum_reduction else (dist == 0).all()
    assert grad.shape == (2, 0, 3)
