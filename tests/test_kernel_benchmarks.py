"""pytest-benchmark entries for the kernel cases of bench/bench_kernels.py.

In the test suite these run once each (``--benchmark-disable`` in pyproject.toml) and check
that the timed call gives the reference's loss and gradient; to time them::

    pytest tests/test_kernel_benchmarks.py --benchmark-enable --benchmark-only \\
        --benchmark-columns=min,median,max --benchmark-group-by=param:case

Cases: latent shapes of real models (SD1.5 4x64x64, SDXL 4x128x128, SD3/Flux 16x128x128,
video 16x16x60x90) at batch 1 and 8 (and 32 on a GPU), K = 3 inputs, M = 2 heads, fp32,
forward + backward; providers: our dispatcher (``auto``: the C++ kernel on CPU, the CUDA or
Triton one on a GPU) and the eager PyTorch reference. Triton under the CPU interpreter is
not timed (it is a correctness tool there).
"""

from __future__ import annotations

import pytest
import torch

import unlearn_fast as uf
from unlearn_fast.reference import fused_eps_loss_reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
LATENTS = {"sd15": (4, 64, 64), "sdxl": (4, 128, 128), "sd3": (16, 128, 128), "video": (16, 16, 60, 90)}
BATCHES = (1, 8, 32) if DEVICE == "cuda" else (1, 8)
CASES = [f"{name}-b{b}" for name in LATENTS for b in BATCHES]
PROVIDERS = {
    "fused": lambda p, o, c, w: uf.fused_eps_loss(p, o, c, w),
    "eager": lambda p, o, c, w: fused_eps_loss_reference(p, o, c, w),
}


def make_case(case: str, K: int = 3, M: int = 2):
    name, batch = case.split("-b")
    g = torch.Generator().manual_seed(0)
    shape = (int(batch), *LATENTS[name])
    xs = [torch.randn(shape, generator=g).to(DEVICE) for _ in range(K)]
    coeffs = torch.randn(M, K, generator=g).to(DEVICE)
    weights = torch.rand(shape[0], M, generator=g).to(DEVICE)
    return xs[0].requires_grad_(), xs[1:], coeffs, weights


@pytest.mark.parametrize("provider", list(PROVIDERS))
@pytest.mark.parametrize("case", CASES)
def test_fused_eps_loss_forward_backward(benchmark, case, provider):
    pred, others, coeffs, weights = make_case(case)
    loss_fn = PROVIDERS[provider]
    benchmark.extra_info.update(case=case, device=DEVICE, numel=pred.numel())

    def step():
        pred.grad = None
        loss, _ = loss_fn(pred, others, coeffs, weights)
        loss.backward()
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        return loss

    loss = benchmark(step)
    grad = pred.grad.clone()
    ref_pred = pred.detach().double().requires_grad_()
    ref_loss, _ = fused_eps_loss_reference(ref_pred, [o.double() for o in others], coeffs.double(), weights.double())
    ref_loss.backward()
    torch.testing.assert_close(loss.double(), ref_loss.detach(), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(grad.double(), ref_pred.grad, rtol=1e-4, atol=1e-9)
