"""Kernel benchmark: the fused op against the eager and the torch.compile'd reference.

Times forward, backward and full (forward + backward) steps of ``fused_eps_loss`` for
every backend usable on the chosen device, beside a plain tensor copy that moves the same
bytes as the minimum the fused step must move (read K inputs, write one gradient).
Also times the autograd floor: forward and ``backward()`` of a one-element graph, the
fixed cost every provider's full step pays on top of its kernel. Writes one long CSV
(kernel, provider, mode, metric, size, p20, p50, p80, floor_ms, device, versions, date)
and prints a markdown summary with the ratios.

    python bench/bench_kernels.py --device cpu --sizes 8x4x64x64 --K 3 --M 2
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import statistics
import sys
import time

import torch

import unlearn_fast as uf
from unlearn_fast.reference import fused_eps_loss_reference

FIELDS = ["kernel", "provider", "mode", "metric", "size", "p20", "p50", "p80", "floor_ms", "device", "versions", "date"]


def parse_size(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.lower().split("x"))


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def quantiles(fn, device: str, warmup: int, reps: int, min_seconds: float) -> tuple[float, float, float]:
    """p20/p50/p80 of fn's wall time in milliseconds (CUDA-synchronised per call)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    start = time.perf_counter()
    while len(times) < reps or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
        if len(times) >= 20 * reps:
            break
    qs = statistics.quantiles(times, n=10)
    return qs[1], statistics.median(times), qs[7]


def peak_memory(fn, device: str) -> float | None:
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def make_inputs(size, K, M, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(size, generator=g).to(dtype).to(device) for _ in range(K)]
    coeffs = torch.randn(M, K, generator=g).to(device)
    weights = torch.rand(size[0], M, generator=g).to(device)
    return xs[0], xs[1:], coeffs, weights


def providers(device: str, compile_modes: list[str]):
    """name -> loss function (pred, others, coeffs, weights) -> (loss, dist)."""
    out = {}
    for name in uf.backends():
        if name == "reference":
            continue
        if name == "triton" and device != "cuda":
            continue  # the interpreter is a correctness tool, not a benchmark subject
        if name == "cpu" and device != "cpu" or name == "cuda" and device != "cuda":
            continue
        out[name] = lambda p, o, c, w, _n=name: uf.fused_eps_loss(p, o, c, w, backend=_n)
    out["eager"] = lambda p, o, c, w: fused_eps_loss_reference(p, o, c, w)
    for mode in compile_modes:
        compiled = torch.compile(fused_eps_loss_reference, mode=None if mode == "default" else mode, dynamic=False)
        out[f"compile-{mode}"] = lambda p, o, c, w, _f=compiled: _f(p, o, c, w)
    return out


def run(args) -> list[dict]:
    device = args.device
    dtype = getattr(torch, args.dtype)
    date = datetime.date.today().isoformat()
    versions = f"torch={torch.__version__};unlearn_fast={uf.__version__};python={platform.python_version()}"
    dev_name = torch.cuda.get_device_name() if device == "cuda" else f"cpu-{os.cpu_count()}cores-{torch.get_num_threads()}threads"
    rows = []
    kernel = f"fused_eps_loss_K{args.K}_M{args.M}_{args.dtype}"
    for size_text in args.sizes:
        # fresh compiled references per size: otherwise dynamo's recompile limit (8) is hit
        # after a few sizes and the "compiled" reference silently runs eager
        torch._dynamo.reset()
        size = parse_size(size_text)
        pred, others, coeffs, weights = make_inputs(size, args.K, args.M, dtype, device)
        n = pred.numel()
        moved_bytes = (args.K + 1) * n * pred.element_size()  # read K inputs, write the gradient
        src = torch.empty(moved_bytes // (2 * pred.element_size()), dtype=dtype, device=device)
        dst = torch.empty_like(src)

        rows_floor = [""]  # set once the copy has been timed

        def record(provider, mode, metric, qs):
            rows.append(dict(kernel=kernel, provider=provider, mode=mode, metric=metric, size=size_text,
                             p20=f"{qs[0]:.5g}", p50=f"{qs[1]:.5g}", p80=f"{qs[2]:.5g}",
                             floor_ms=rows_floor[0], device=dev_name, versions=versions, date=date))

        copy_q = quantiles(lambda: dst.copy_(src), device, args.warmup, args.reps, args.min_seconds)
        rows_floor[0] = f"{copy_q[1]:.5g}"  # the memory floor: a copy of the bytes the step must move
        record("copy", "full", "ms", copy_q)
        # the autograd floor: `loss.backward()` of a one-element graph, the fixed cost every
        # provider's full step pays whatever its kernel (engine, grad_output, AccumulateGrad)
        leaf = torch.zeros(1, device=device, requires_grad=True)

        def tiny_step():
            (leaf * 2.0).sum().backward()
            leaf.grad = None

        record("autograd-floor", "full", "ms", quantiles(tiny_step, device, args.warmup, args.reps, args.min_seconds))
        for name, loss_fn in providers(device, args.compile).items():
            p = pred.detach().clone().requires_grad_()

            def forward():
                with torch.no_grad():
                    return loss_fn(p, others, coeffs, weights)

            def full():
                loss, _ = loss_fn(p, others, coeffs, weights)
                loss.backward()
                p.grad = None

            holder = {}

            def prepare_backward():
                holder["loss"] = loss_fn(p, others, coeffs, weights)[0]

            def backward_only():
                holder["loss"].backward(retain_graph=True)
                p.grad = None

            record(name, "forward", "ms", quantiles(forward, device, args.warmup, args.reps, args.min_seconds))
            prepare_backward()
            record(name, "backward", "ms", quantiles(backward_only, device, args.warmup, args.reps, args.min_seconds))
            full_q = quantiles(full, device, args.warmup, args.reps, args.min_seconds)
            record(name, "full", "ms", full_q)
            gbps = tuple(moved_bytes / (t * 1e-3) / 1e9 for t in (full_q[2], full_q[1], full_q[0]))
            record(name, "full", "GB/s", gbps)
            mem = peak_memory(full, device)
            if mem is not None:
                record(name, "full", "peak_MiB", (mem, mem, mem))
    return rows


def summary(rows: list[dict]) -> str:
    lines = []
    for size in dict.fromkeys(r["size"] for r in rows):
        sel = {(r["provider"], r["mode"], r["metric"]): r for r in rows if r["size"] == size}
        copy = float(sel[("copy", "full", "ms")]["p50"])
        tiny = sel.get(("autograd-floor", "full", "ms"))
        eager = float(sel[("eager", "full", "ms")]["p50"])
        compiled = {k[0]: float(v["p50"]) for k, v in sel.items() if k[0].startswith("compile") and k[1:] == ("full", "ms")}
        lines.append(f"\n### {rows[0]['kernel']} at {size} on {rows[0]['device']}\n")
        head = ["provider", "forward ms", "backward ms", "full ms (p50)", "vs eager"] + [f"vs {c}" for c in compiled]
        head += ["GB/s", "floor ms", "full / floor"]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        for provider in dict.fromkeys(k[0] for k in sel if k[0] not in ("copy", "autograd-floor")):
            full = float(sel[(provider, "full", "ms")]["p50"])
            gbps = float(sel[(provider, "full", "GB/s")]["p50"])
            cells = [provider, sel[(provider, "forward", "ms")]["p50"], sel[(provider, "backward", "ms")]["p50"],
                     f"{full:.4g}", f"{eager / full:.2f}x"] + [f"{c / full:.2f}x" for c in compiled.values()]
            cells += [f"{gbps:.3g}", f"{copy:.4g}", f"{full / copy:.2f}x"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append(f"| copy of the same bytes (the floor) | | | {copy:.4g} | {eager / copy:.1f}x | "
                     + "| " * len(compiled) + "| | 1.00x |")
        if tiny is not None:
            lines.append(f"\nautograd floor (forward + `backward()` of a one-element graph, paid by every "
                         f"provider's full step): {float(tiny['p50']):.4g} ms")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--sizes", nargs="+", default=["8x4x64x64"], help="tensor shapes, e.g. 8x4x64x64")
    parser.add_argument("--K", type=int, default=3, help="tensors per head (pred + K-1 others)")
    parser.add_argument("--M", type=int, default=2, help="heads")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--compile", nargs="*", default=["default"], help="torch.compile modes for the reference")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--min-seconds", type=float, default=1.0)
    parser.add_argument("--csv", default=None, help="append rows to this CSV file")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device available")
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = run(args)
    if args.csv:
        new = not os.path.exists(args.csv)
        with open(args.csv, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS)
            if new:
                writer.writeheader()
            writer.writerows(rows)
    print("command: python " + " ".join(sys.argv))
    print(summary(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
