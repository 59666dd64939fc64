"""fused_eps_loss through the public API, every backend present against the reference.

The reference itself (unlearn_fast.reference) is checked in float64 by gradcheck and
against an explicit per-head loop; each kernel backend is then compared with it in
float64 on the same (dtype-rounded) inputs.
"""

import sys

import pytest
import torch
import torch.nn.functional as F

import unlearn_fast as uf
from unlearn_fast import fused_eps_loss, fused_eps_loss_reference

KERNELS = [b for b in uf.backends() if b != "reference"]
HAS_CUDA = torch.cuda.is_available()


def device_of(backend):
    return "cpu" if backend == "cpu" or (backend == "triton" and not HAS_CUDA) else "cuda"


def dtypes_of(backend):
    # bf16 loads are wrong in the Triton interpreter: bf16 Triton runs on a GPU only.
    bf16 = backend != "triton" or HAS_CUDA
    return [torch.float32, torch.float16, torch.float64] + ([torch.bfloat16] if bf16 else [])


def make(shape, K, M, dtype=torch.float32, per_sample=True, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(shape, generator=g, dtype=torch.float64).to(dtype).to(device) for _ in range(K)]
    cshape = (shape[0], M, K) if per_sample else (M, K)
    coeffs = torch.randn(cshape, generator=g, dtype=torch.float64).float().to(device)
    weights = torch.rand(shape[0], M, generator=g, dtype=torch.float64).float().to(device)
    return xs[0], xs[1:], coeffs, weights


def explicit_loop(pred, others, coeffs, weights, reduction):
    """The formula written out head by head, independently of the reference's einsum."""
    B, M = pred.shape[0], coeffs.shape[-2]
    c = coeffs.double().expand(B, M, len(others) + 1) if coeffs.dim() == 2 else coeffs.double()
    xs = [pred.double()] + [o.double() for o in others]
    loss, dist = 0.0, torch.zeros(B, M, dtype=torch.float64)
    for b in range(B):
        for m in range(M):
            r = sum(c[b, m, k] * xs[k][b] for k in range(len(xs)))
            d = r.square().sum() if reduction == "sum" else r.square().mean()
            dist[b, m] = d
            loss = loss + weights[b, m].double() * d
    return loss, dist


def compare(backend, pred, others, coeffs, weights, reduction="mean", grad_scale=2.5):
    """Kernel backend vs the float64 reference on the same inputs: loss, dist, gradient."""
    p = pred.detach().clone().requires_grad_()
    loss, dist = fused_eps_loss(p, others, coeffs, weights, reduction=reduction, backend=backend)
    (loss * grad_scale).backward()  # grad_output != 1

    p64 = pred.detach().double().cpu().requires_grad_()
    others64 = [o.double().cpu() for o in others]
    ref_loss, ref_dist = fused_eps_loss_reference(
        p64, others64, coeffs.double().cpu(), weights.double().cpu(), reduction=reduction
    )
    (ref_loss * grad_scale).backward()

    acc = torch.float64 if pred.dtype == torch.float64 else torch.float32
    assert loss.dtype == acc and loss.dim() == 0 and dist.dtype == acc
    assert dist.shape == (pred.shape[0], coeffs.shape[-2]) and not dist.requires_grad
    assert p.grad.dtype == pred.dtype and p.grad.shape == pred.shape
    tol = dict(rtol=1e-10, atol=1e-12) if acc == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss.cpu().double(), ref_loss.detach(), **tol)
    torch.testing.assert_close(dist.cpu().double(), ref_dist, **tol)
    gtol = {torch.float16: dict(rtol=2e-3, atol=1e-5), torch.bfloat16: dict(rtol=1.6e-2, atol=1e-4)}.get(
        pred.dtype, tol
    )
    torch.testing.assert_close(p.grad.cpu().double(), p64.grad, **gtol)


# ---------------------------------------------------------------------------------------
# The reference is the specification: check it first.


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("per_sample", [True, False])
def test_reference_matches_explicit_loop(reduction, per_sample):
    pred, others, coeffs, weights = make((3, 2, 5, 3), 3, 2, torch.float64, per_sample)
    loss, dist = fused_eps_loss_reference(pred, others, coeffs, weights, reduction=reduction)
    ref_loss, ref_dist = explicit_loop(pred, others, coeffs, weights, reduction)
    torch.testing.assert_close(dist, ref_dist)
    torch.testing.assert_close(loss, ref_loss)


def test_reference_gradient_formula():
    # dL/dpred = sum_m (2 / D) g c0 r_m  (math.md section 3)
    pred, others, coeffs, weights = make((2, 3, 4), 2, 3, torch.float64)
    pred.requires_grad_()
    loss, _ = fused_eps_loss_reference(pred, others, coeffs, weights)
    (grad,) = torch.autograd.grad(loss, pred)
    D = 12
    r = torch.einsum("bmk,bkj->bmj", coeffs.double(), torch.stack([pred.detach(), *others], 1).reshape(2, 2, D))
    expected = torch.einsum("bm,bmj->bj", 2 / D * weights.double() * coeffs.double()[:, :, 0], r)
    torch.testing.assert_close(grad.reshape(2, D), expected)


@pytest.mark.parametrize("backend", ["reference"] + (["cpu"] if "cpu" in KERNELS else []))
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_gradcheck_float64(backend, reduction):
    pred, others, coeffs, weights = make((2, 3, 5), 3, 2, torch.float64)
    pred.requires_grad_()

    def f(p):
        return fused_eps_loss(p, others, coeffs, weights, reduction=reduction, backend=backend)[0]

    assert torch.autograd.gradcheck(f, (pred,))


# ---------------------------------------------------------------------------------------
# Every kernel backend against the reference.

@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("shape", [(1, 4, 8, 8), (3, 3, 5, 7), (2, 2, 3, 4, 5), (5, 1)])
@pytest.mark.parametrize("K", [1, 2, 3, 4])
@pytest.mark.parametrize("M", [1, 2, 3])
def test_shapes_tensors_heads(backend, shape, K, M):
    seed = K * 10 + M
    per_sample = (K + M) % 2 == 0
    reduction = "sum" if seed % 3 == 0 else "mean"
    compare(backend, *make(shape, K, M, torch.float64, per_sample, device_of(backend), seed), reduction)


@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("per_sample", [True, False])
def test_dtypes(backend, reduction, per_sample):
    for dtype in dtypes_of(backend):
        compare(backend, *make((3, 4, 5, 7), 3, 2, dtype, per_sample, device_of(backend)), reduction)


def _loss_scaled_gradient(backend, dtype, device, scale=2.0**16):
    """fp16/bf16 AMP's case: an SD-latent-sized mean, weights 1/B, ``(loss * 65536).backward()``.

    Returns the share of gradient elements outside rtol 2e-3 (bf16: 1e-2) of the float64
    truth and their mean relative error.
    """
    pred, others, coeffs, weights = make((8, 4, 64, 64), 3, 2, dtype, device=device, seed=7)
    weights = torch.full_like(weights, 1 / 8)
    p = pred.detach().clone().requires_grad_()
    loss, _ = fused_eps_loss(p, others, coeffs, weights, backend=backend)
    (loss * scale).backward()
    p64 = pred.detach().double().cpu().requires_grad_()
    ref, _ = fused_eps_loss_reference(p64, [o.double().cpu() for o in others], coeffs.double().cpu(), weights.double().cpu())
    (ref * scale).backward()
    assert p.grad.dtype == dtype
    got, truth = p.grad.double().cpu(), p64.grad
    rel = (got - truth).abs() / truth.abs().clamp_min(1e-30)
    rtol = 2e-3 if dtype == torch.float16 else 1e-2  # a few times half an ulp (2^-11, 2^-8)
    outside = (~torch.isclose(got, truth, rtol=rtol, atol=0)).double().mean().item()
    return outside, rel.mean().item()


@pytest.mark.parametrize("backend", KERNELS)
def test_low_precision_gradient_under_a_loss_scale(backend):
    """The gradient is rounded to pred's dtype after grad_output scales it, not before."""
    for dtype in [d for d in dtypes_of(backend) if d in (torch.float16, torch.bfloat16)]:
        outside, mean_rel = _loss_scaled_gradient(backend, dtype, device_of(backend))
        ref_outside, ref_mean_rel = _loss_scaled_gradient("reference", dtype, device_of(backend))
        assert ref_outside < 1e-3  # the truth rounded once
        assert outside <= ref_outside + 1e-4, (dtype, outside, ref_outside)
        assert mean_rel <= 1.05 * ref_mean_rel + 1e-7, (dtype, mean_rel, ref_mean_rel)


@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_second_backward_and_unit_grad_output(backend, dtype):
    """grad_output 1 may hand back the saved buffer; a retained graph's second backward is exact."""
    pred, others, coeffs, weights = make((3, 4, 5, 7), 3, 2, dtype, device=device_of(backend))
    p = pred.detach().clone().requires_grad_()
    loss, _ = fused_eps_loss(p, others, coeffs, weights, backend=backend)
    loss.backward(retain_graph=True)
    first = p.grad.clone()
    p.grad.mul_(-3.0)  # the user edits the gradient in place (clipping, a hook)
    p.grad = None
    (loss * 3.0).backward(retain_graph=True)
    tol = dict(rtol=1e-3, atol=1e-7) if dtype == torch.float16 else dict(rtol=1e-6, atol=0)
    torch.testing.assert_close(p.grad, first * 3.0, **tol)  # fp16: `first` was rounded before * 3
    p.grad = None
    loss.backward()
    assert torch.equal(p.grad, first)


@pytest.mark.skipif("cpu" not in KERNELS, reason="C++ extension not built")
def test_inputs_in_the_kernels_layout_skip_the_python_checks(monkeypatch):
    """Contiguous fp32 inputs go straight to the C++ op; anything else still gets the full path."""
    from unlearn_fast import ops

    calls = []
    real = ops._check_inputs
    monkeypatch.setattr(ops, "_check_inputs", lambda *a: calls.append(1) or real(*a))
    pred, others, coeffs, weights = make((3, 4, 5), 3, 2, per_sample=False)
    p = pred.clone().requires_grad_()
    loss, dist = fused_eps_loss(p, others, coeffs, weights)
    assert calls == [] and loss.grad_fn is not None and not dist.requires_grad
    ref, ref_dist = fused_eps_loss_reference(pred, others, coeffs, weights)
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(dist, ref_dist)
    fused_eps_loss(p, [others[0].mT.contiguous().mT, others[1]], coeffs, weights)  # a layout copy
    fused_eps_loss(p, others, coeffs.double(), weights)  # needs the dtype conversion
    assert calls == [1, 1]
    with pytest.raises(ValueError, match=r"^weights: expected shape \[B=3, M=2\]"):
        fused_eps_loss(p, others, coeffs, weights[:2])  # the op refuses it; the full path names it
    fused_eps_loss(p, others, coeffs, weights, backend="cpu")  # naming pred's device: the same op
    assert calls == [1, 1, 1]
    with pytest.raises(RuntimeError, match=r"^backend: 'cuda' is not available|^backend: 'cuda' runs on cuda"):
        fused_eps_loss(p, others, coeffs, weights, backend="cuda")  # another device: the full path explains


@pytest.mark.skipif("cpu" not in KERNELS, reason="C++ extension not built")
def test_cpu_kernel_is_parallel_and_thread_count_independent():
    """The kernel's at::parallel_for is OpenMP when torch's is (a build without -fopenmp runs it
    on one thread); results are bit-identical whatever the thread count (fixed chunks)."""
    from unlearn_fast import _C

    if torch._C.has_openmp and sys.platform.startswith("linux"):
        with open(_C.__file__, "rb") as f:
            assert b"GOMP_parallel" in f.read(), "unlearn_fast._C was built without -fopenmp"
    pred, others, coeffs, weights = make((8, 4, 64, 64), 3, 2, per_sample=False)  # 32 chunks of 4096
    pred.requires_grad_()
    old, runs = torch.get_num_threads(), []
    try:
        for threads in (1, 2, 1):
            torch.set_num_threads(threads)
            loss, dist = fused_eps_loss(pred, others, coeffs, weights, backend="cpu")
            (grad,) = torch.autograd.grad(loss, pred)
            runs.append((loss, dist, grad))
    finally:
        torch.set_num_threads(old)
    for other in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(runs[0], other))


@pytest.mark.parametrize("backend", KERNELS)
def test_zero_weights_and_zero_coefficients(backend):
    pred, others, coeffs, weights = make((4, 3, 5), 3, 3, device=device_of(backend))
    weights[1:3] = 0
    coeffs[:, 1, 0] = 0  # head 1 does not involve pred: no gradient from it
    compare(backend, pred, others, coeffs, weights)


@pytest.mark.parametrize("backend", KERNELS)
def test_non_contiguous_inputs(backend):
    dev = device_of(backend)
    g = torch.Generator().manual_seed(3)
    big = torch.randn(6, 4, 6, 5, generator=g).to(dev)
    nhwc = torch.randn(3, 6, 5, 4, generator=g).to(dev).permute(0, 3, 1, 2)  # channels-last
    wide = torch.randn(3, 4, 6, 10, generator=g).to(dev)[..., ::2]  # strided within a sample
    pred = big[::2]  # batch-strided view
    others = [big[1::2], nhwc, wide, torch.randn(3, 4, 6, 5, generator=g).to(dev)]
    coeffs = torch.randn(2, 5, generator=g).to(dev)
    weights = torch.rand(3, 2, generator=g).to(dev)
    compare(backend, pred, others, coeffs, weights)
    compare(backend, nhwc, [pred, wide], coeffs[:, :3], weights, "sum")  # channels-last pred
    compare(backend, wide, [pred], coeffs[:, :2], weights)  # pred itself needs the copy


@pytest.mark.parametrize("backend", KERNELS)
def test_no_grad_gives_same_values(backend):
    pred, others, coeffs, weights = make((3, 4, 5), 2, 2, device=device_of(backend))
    with torch.no_grad():
        loss0, dist0 = fused_eps_loss(pred.requires_grad_(), others, coeffs, weights, backend=backend)
    loss1, dist1 = fused_eps_loss(pred, others, coeffs, weights, backend=backend)
    assert loss0.grad_fn is None and loss1.grad_fn is not None
    assert torch.equal(loss0, loss1.detach()) and torch.equal(dist0, dist1)


@pytest.mark.parametrize("backend", KERNELS)
def test_deterministic(backend):
    pred, others, coeffs, weights = make((2, 4, 64, 64), 3, 2, device=device_of(backend))
    pred.requires_grad_()
    runs = []
    for _ in range(2):
        loss, dist = fused_eps_loss(pred, others, coeffs, weights, backend=backend)
        (grad,) = torch.autograd.grad(loss, pred)
        runs.append((loss, dist, grad))
    assert all(torch.equal(a, b) for a, b in zip(*runs))


@pytest.mark.parametrize("backend", ["reference"] + KERNELS)
def test_empty_batch(backend):
    dev = device_of(backend) if backend != "reference" else "cpu"
    pred = torch.randn(0, 3, 5, device=dev, requires_grad=True)
    loss, dist = fused_eps_loss(pred, [torch.randn(0, 3, 5, device=dev)], torch.ones(2, 2, device=dev),
                                torch.ones(0, 2, device=dev), backend=backend)
    loss.backward()
    assert loss.item() == 0 and dist.shape == (0, 2) and pred.grad.shape == (0, 3, 5)


@pytest.mark.parametrize("backend", ["reference"] + KERNELS)
def test_nan_and_inf_propagate_like_mse_loss(backend):
    dev = device_of(backend) if backend != "reference" else "cpu"
    target = torch.randn(2, 3, 4, device=dev)
    for bad in (float("nan"), float("inf")):
        pred = torch.randn(2, 3, 4, device=dev)
        pred[1, 0, 2] = bad
        pred.requires_grad_()
        ours = uf.mse_loss(pred, target, backend=backend)
        ours.backward()
        ref_pred = pred.detach().clone().requires_grad_()
        ref = F.mse_loss(ref_pred, target)
        ref.backward()
        torch.testing.assert_close(ours, ref, equal_nan=True)
        torch.testing.assert_close(pred.grad, ref_pred.grad, equal_nan=True)


# ---------------------------------------------------------------------------------------
# The drop-in MSE.


@pytest.mark.parametrize("backend", ["reference"] + KERNELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_mse_loss_matches_f_mse_loss(backend, dtype):
    dev = device_of(backend) if backend != "reference" else "cpu"
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(4, 4, 6, 6, generator=g).to(dtype).to(dev).requires_grad_()
    target = torch.randn(4, 4, 6, 6, generator=g).to(dtype).to(dev)
    ref_pred = pred.detach().clone().requires_grad_()
    for reduction in ("mean", "sum"):
        ours = uf.mse_loss(pred, target, reduction=reduction, backend=backend)
        ref = F.mse_loss(ref_pred.float(), target.float(), reduction=reduction)
        (ours * 3).backward()
        (ref * 3).backward()
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(pred.grad, ref_pred.grad, rtol=2e-3 if dtype == torch.float16 else 1e-5, atol=1e-6)
        pred.grad = ref_pred.grad = None


@pytest.mark.parametrize("backend", ["reference"] + KERNELS)
def test_mse_loss_with_timestep_weights_matches_min_snr_recipe(backend):
    from diffusers import DDPMScheduler
    from diffusers.training_utils import compute_snr

    dev = device_of(backend) if backend != "reference" else "cpu"
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    table = uf.timestep_weights(scheduler, "min_snr", snr_gamma=5.0).to(dev)
    g = torch.Generator().manual_seed(1)
    pred = torch.randn(6, 4, 8, 8, generator=g).to(dev).requires_grad_()
    target = torch.randn(6, 4, 8, 8, generator=g).to(dev)
    timesteps = torch.randint(0, 1000, (6,), generator=g).to(dev)
    ours = uf.mse_loss(pred, target, timesteps=timesteps, weight_table=table, backend=backend)
    # The diffusers training scripts' min-SNR lines, written out.
    snr = compute_snr(scheduler, timesteps.cpu()).to(dev)
    w = torch.stack([snr, 5.0 * torch.ones_like(timesteps)], dim=1).min(dim=1)[0] / snr
    ref = (F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3)) * w).mean()
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-7)
    (g1,) = torch.autograd.grad(ours, pred)
    (g2,) = torch.autograd.grad(ref, pred)
    torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-8)


def test_module_wrappers():
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(num_train_timesteps=100)
    loss_fn = uf.FusedMSELoss(scheduler, "kl", reduction="sum")
    pred, target = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    t = torch.tensor([0, 50, 99])
    table = uf.timestep_weights(scheduler, "kl")
    expected = (table[t] * (pred - target).square().sum(dim=(1, 2, 3))).sum()
    torch.testing.assert_close(loss_fn(pred, target, t), expected)
    module = uf.FusedEpsLoss(reduction="sum")
    loss, dist = module(pred, [target], torch.tensor([[1.0, -1.0]]), torch.ones(3, 1))
    torch.testing.assert_close(loss, (pred - target).square().sum())


# ---------------------------------------------------------------------------------------
# torch.library: opcheck and torch.compile.


@pytest.mark.skipif("cpu" not in KERNELS and "cuda" not in KERNELS, reason="C++ extension not built")
def test_opcheck_cpp_op():
    dev = "cuda" if "cuda" in KERNELS else "cpu"
    pred, others, coeffs, weights = make((3, 2, 5, 3), 3, 2, device=dev)
    for compute_grad, sum_reduction in ((True, False), (False, True)):
        args = (pred.clone().requires_grad_(compute_grad), others, coeffs.contiguous(), weights, sum_reduction, compute_grad)
        torch.library.opcheck(torch.ops.unlearn_fast.fused_eps_loss.default, args)


@pytest.mark.skipif("triton" not in KERNELS, reason="triton not available")
def test_opcheck_triton_op():
    pred, others, coeffs, weights = make((3, 2, 5, 3), 3, 2, device=device_of("triton"))
    args = (pred.clone().requires_grad_(), others, coeffs, weights, False, True)
    # The interpreter runs kernels on real data, so it cannot be traced with fake tensors:
    # the AOT-dispatch check (a trace) runs on a GPU only.
    utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    torch.library.opcheck(
        torch.ops.unlearn_fast.fused_eps_loss_triton.default,
        args,
        test_utils=utils + (("test_aot_dispatch_dynamic",) if HAS_CUDA else ()),
    )


@pytest.mark.parametrize(
    "backend", [b for b in KERNELS if b != "triton" or HAS_CUDA]  # the interpreter cannot be traced
)
def test_torch_compile_fullgraph(backend):
    dev = device_of(backend)
    pred, others, coeffs, weights = make((2, 3, 4, 5), 3, 2, device=dev)

    def step(p, a, b, c, w):
        loss, dist = fused_eps_loss(p, [a, b], c, w, backend=backend)
        return loss * 2 + dist.sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager" if dev == "cpu" else "inductor")
    p1 = pred.clone().requires_grad_()
    p2 = pred.clone().requires_grad_()
    out1 = compiled(p1, *others, coeffs, weights)
    out2 = step(p2, *others, coeffs, weights)
    out1.backward()
    out2.backward()
    torch.testing.assert_close(out1, out2)
    torch.testing.assert_close(p1.grad, p2.grad)


# ---------------------------------------------------------------------------------------
# Backends and bad input.


def test_backends_truthful():
    names = uf.backends()
    assert names[0] == "reference"
    assert ("cuda" in names) == (
        HAS_CUDA and torch._C._dispatch_has_kernel_for_dispatch_key("unlearn_fast::fused_eps_loss", "CUDA")
    )
    for name in ("cpu", "cuda", "triton"):
        pred, others, coeffs, weights = make((2, 3), 2, 1)
        if name in names:
            continue
        with pytest.raises(RuntimeError, match=f"backend: '{name}' is not available"):
            fused_eps_loss(pred, others, coeffs, weights, backend=name)


def test_auto_backend_and_env_override(monkeypatch):
    pred, others, coeffs, weights = make((2, 3, 4), 2, 1)
    expected = fused_eps_loss(pred, others, coeffs, weights, backend="reference")[0]
    torch.testing.assert_close(fused_eps_loss(pred, others, coeffs, weights)[0], expected)
    monkeypatch.setenv("UNLEARN_FAST_BACKEND", "reference")
    torch.testing.assert_close(fused_eps_loss(pred, others, coeffs, weights)[0], expected)
    monkeypatch.setenv("UNLEARN_FAST_BACKEND", "fastest")
    with pytest.raises(ValueError, match="UNLEARN_FAST_BACKEND"):
        fused_eps_loss(pred, others, coeffs, weights)


def _bad_inputs():
    pred, others, coeffs, weights = make((2, 3, 4), 2, 2, per_sample=False)
    cases = [
        ("pred", dict(pred=[1.0, 2.0])),
        ("pred", dict(pred=pred.long())),
        ("pred", dict(pred=torch.tensor(1.0))),
        ("others", dict(others=others[0])),
        (r"others\[0\]: shape", dict(others=[torch.randn(2, 3, 5)])),
        (r"others\[0\]: dtype", dict(others=[others[0].double()])),
        (r"others\[0\]: expected", dict(others=["noise"])),
        ("coeffs", dict(coeffs=torch.ones(2, 3))),
        ("coeffs", dict(coeffs=torch.ones(3, 2, 2))),
        ("coeffs", dict(coeffs=torch.ones(2, 2, dtype=torch.long))),
        ("coeffs", dict(coeffs=torch.ones(0, 2))),
        ("weights", dict(weights=torch.ones(2, 3))),
        ("weights", dict(weights=torch.ones(2))),
        ("weights", dict(weights=None)),
        ("reduction", dict(reduction="none")),
        ("backend", dict(backend="gpu")),
    ]
    base = dict(pred=pred, others=others, coeffs=coeffs, weights=weights)
    return [(match, {**base, **override}) for match, override in cases]


@pytest.mark.parametrize("match,kwargs", _bad_inputs())
def test_bad_input_names_the_argument(match, kwargs):
    with pytest.raises((ValueError, TypeError, RuntimeError), match=match):
        fused_eps_loss(**kwargs)


def test_wrong_device_for_backend():
    pred, others, coeffs, weights = make((2, 3), 2, 1)
    if "cuda" in uf.backends():
        with pytest.raises(ValueError, match="backend: 'cuda' runs on cuda tensors"):
            fused_eps_loss(pred, others, coeffs, weights, backend="cuda")
        with pytest.raises(ValueError, match=r"others\[0\]: device"):
            fused_eps_loss(pred, [others[0].cuda()], coeffs, weights)
    if "cpu" in uf.backends() and HAS_CUDA:
        with pytest.raises(ValueError, match="backend: 'cpu' runs on cpu tensors"):
            fused_eps_loss(pred.cuda(), [others[0].cuda()], coeffs.cuda(), weights.cuda(), backend="cpu")
    # without a GPU the device mismatch cannot be built; the meta device stands in
    with pytest.raises(ValueError, match="coeffs: device"):
        fused_eps_loss(pred, others, coeffs.to("meta"), weights)


def test_too_many_tensors_for_kernels_points_to_reference():
    if "cpu" not in uf.backends():
        pytest.skip("C++ extension not built")
    pred, others, coeffs, weights = make((2, 3), 9, 1)
    with pytest.raises(ValueError, match="backend='reference'"):
        fused_eps_loss(pred, others, coeffs, weights, backend="cpu")
    fused_eps_loss(pred, others, coeffs, weights, backend="reference")


def test_mse_loss_bad_input():
    pred, target = torch.randn(2, 3), torch.randn(2, 3)
    with pytest.raises(ValueError, match="reduction"):
        uf.mse_loss(pred, target, reduction="none")
    with pytest.raises(ValueError, match="target"):
        uf.mse_loss(pred, target.requires_grad_())
    with pytest.raises(ValueError, match="timesteps and weight_table"):
        uf.mse_loss(pred, target.detach(), timesteps=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"timesteps: expected values in \[0, 10\)"):
        uf.mse_loss(pred, target.detach(), timesteps=torch.tensor([1, 10]), weight_table=torch.ones(10))
    with pytest.raises(ValueError, match=r"timesteps: expected shape \[B=2\]"):
        uf.mse_loss(pred, target.detach(), timesteps=torch.tensor([1, 2, 3]), weight_table=torch.ones(10))


def test_extension_loaded_in_ci():
    """CI builds the C++ extension: a missing build must fail loudly, not skip silently."""
    import os

    if os.environ.get("CI"):
        assert "cpu" in uf.backends(), "the C++ CPU kernel is not built"
        assert "triton" in uf.backends(), "triton is not usable"
    else:
        pytest.skip("only meaningful in CI (CI=1)")
