"""The one GPU call, as a list of timed steps that fits the device budget (bench/gpu_run.sh runs it).

Each step is a command with its own time limit; the whole run has a deadline (8 minutes on
a GPU), and a step that would start with less than its limit left is skipped and says so.
What comes back from ``$OUT`` is at most four files:

- ``summary.md``: device, versions, every step's status and time, the kernel and step
  tables (also printed as the run goes);
- ``kernels.csv`` and ``step.csv``: the benchmarks' long CSVs;
- ``results.tar.gz``: every step's full log and the plots.

``--cpu-dry-run`` runs the same steps end to end on the CPU at tiny sizes (the Triton
kernel under its interpreter, the build step replaced by a check that the extension
imports), so the script is exercised by the test suite and cannot rot between GPU runs.
The exit status is non-zero when the build fails, when ``backends()`` lacks what the
run needs (``cuda`` and ``triton`` on a GPU; ``cpu`` and ``triton`` on the dry run), or
when any step fails.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable


@dataclass
class Step:
    name: str
    command: list[str]
    limit_s: int
    required: bool = False  # a failure stops the run (the build, the backends check)
    env: dict = field(default_factory=dict)


#: What differs between the GPU run and its CPU dry run; the steps themselves are one list.
MODES = {
    "gpu": dict(
        build=[PY, "-m", "pip", "install", "-q", "--no-build-isolation", "--no-deps", "-e", "."],
        build_env={"UNLEARN_FAST_CUDA": "1"}, backends=["cuda", "triton"], env={},
        tests=["tests/test_cuda_kernel.py", "tests/test_fused_eps_loss.py", "tests/test_triton_kernel.py"],
        bench=["--device", "cuda", "--reps", "30", "--min-seconds", "0.3"],
        fp32=["--compile", "default", "--sizes", "1x4x64x64", "8x4x64x64", "8x4x128x128", "8x16x128x128",
              "1x16x16x60x90"],
        bf16=["--compile", "default", "--sizes", "8x4x128x128", "8x16x128x128"],
        autotune=["--compile", "max-autotune", "--sizes", "8x4x128x128"],
        step=["--device", "cuda", "--model", "sd15", "--batch", "8", "--reps", "5"],
        sdxl=["--device", "cuda", "--model", "sdxl", "--batch", "2", "--reps", "3", "--lora", "16", "--dtype", "bf16"],
        flux=["--device", "cuda", "--model", "flux", "--batch", "1", "--reps", "3", "--lora", "16", "--dtype", "bf16",
              "--provider", "unlearn_fast"],
        limits=dict(build=240, backends=30, tests=120, fp32=100, bf16=60, autotune=90, step=60, big=90, plots=30)),
    "dry": dict(
        build=[PY, "-c", "import unlearn_fast._C"], build_env={}, backends=["cpu", "triton"],
        env={"TRITON_INTERPRET": "1"},
        tests=["tests/test_cuda_kernel.py", "tests/test_triton_kernel.py", "-k", "grid or guard or device or tail or heads"],
        bench=["--device", "cpu", "--reps", "3", "--min-seconds", "0", "--warmup", "1"],
        fp32=["--compile", "--sizes", "2x4x8x8", "1x3x5x7"],
        bf16=["--compile", "--sizes", "2x4x8x8"],
        autotune=["--compile", "default", "--sizes", "2x4x8x8"],
        step=["--device", "cpu", "--model", "tiny", "--batch", "4", "--reps", "2"],
        sdxl=["--device", "cpu", "--model", "sdxl-tiny", "--batch", "2", "--reps", "2", "--lora", "4",
              "--provider", "unlearn_fast"],
        flux=["--device", "cpu", "--model", "flux-tiny", "--batch", "2", "--reps", "2", "--lora", "4", "--dtype", "bf16",
              "--provider", "unlearn_fast"],
        limits=dict(build=60, backends=60, tests=120, fp32=60, bf16=60, autotune=240, step=120, big=120, plots=60)),
}


def steps(work: str, mode: str) -> list[Step]:
    m, lim = MODES[mode], MODES[mode]["limits"]
    kernels_csv, step_csv = os.path.join(work, "kernels.csv"), os.path.join(work, "step.csv")
    bench = [PY, "bench/bench_kernels.py", *m["bench"], "--csv", kernels_csv]
    step = [PY, "bench/bench_step.py", *m["step"], "--csv", step_csv]
    return [
        Step("build", m["build"], lim["build"], required=True, env=m["build_env"]),
        Step("backends", [PY, "bench/gpu_run.py", "--check-backends", *m["backends"]], lim["backends"],
             required=True, env=m["env"]),
        Step("gpu_tests", [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", *m["tests"]], lim["tests"], env=m["env"]),
        Step("kernels_fp32", bench + m["fp32"], lim["fp32"]),
        Step("kernels_bf16", bench + ["--dtype", "bfloat16"] + m["bf16"], lim["bf16"]),
        Step("kernels_autotune", bench + m["autotune"], lim["autotune"]),
        Step("step_sd15_fp32", step, lim["step"]),
        Step("step_sd15_bf16", step + ["--teacher-dtype", "bf16"], lim["step"]),
        Step("plots", [PY, "bench/plot_kernels.py", kernels_csv, "--out", os.path.join(work, "plots")], lim["plots"]),
        # the full-size transformer-era steps, LoRA in bf16, last: they run if the budget has room
        Step("step_sdxl_lora_bf16", [PY, "bench/bench_step.py", *m["sdxl"], "--csv", step_csv], lim["big"]),
        Step("step_flux_lora_bf16", [PY, "bench/bench_step.py", *m["flux"], "--csv", step_csv], lim["big"]),
    ]


def run_step(step: Step, work: str, remaining: float) -> tuple[str, float]:
    """Runs one step into work/logs/NAME.log; returns (status, seconds)."""
    if remaining < step.limit_s:
        return f"skipped: {remaining:.0f} s left of the run's budget, the step may take {step.limit_s} s", 0.0
    log_path = os.path.join(work, "logs", f"{step.name}.log")
    env = dict(os.environ, PYTHONUNBUFFERED="1", **step.env)
    start = time.monotonic()
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(step.command) + "\n")
        log.flush()
        try:
            rc = subprocess.run(step.command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                timeout=step.limit_s).returncode
        except subprocess.TimeoutExpired:
            return f"failed: over its {step.limit_s} s limit", time.monotonic() - start
    seconds = time.monotonic() - start
    return ("ok" if rc == 0 else f"failed: exit status {rc}"), seconds


def tail(path: str, lines: int) -> str:
    if not os.path.exists(path):
        return ""
    with open(path, errors="replace") as f:
        return "".join(f.readlines()[-lines:])


def markdown_tables(path: str) -> str:
    """The markdown a benchmark printed (its '|' table lines and '###' headings)."""
    if not os.path.exists(path):
        return ""
    with open(path, errors="replace") as f:
        keep = [line for line in f if line.startswith(("|", "###", "RU step", "  "))]
    return "".join(keep)


def check_backends(needed: list[str]) -> int:
    import unlearn_fast as uf

    names = uf.backends()
    missing = [n for n in needed if n not in names]
    print(f"backends: {names}")
    for name in missing:
        why = uf.ops._why_unavailable(name) if name in uf.ops.BACKENDS else "not a backend of this version"
        print(f"missing {name!r}: {why}")
    return 1 if missing else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-dry-run", action="store_true", help="the same steps on the CPU at tiny sizes")
    parser.add_argument("--out", default=os.environ.get("OUT"), help="result folder (default: $OUT, else "
                        "bench/results/<device>-<date>/)")
    parser.add_argument("--budget-s", type=float, default=None, help="the whole run's deadline (GPU: 480 s)")
    parser.add_argument("--check-backends", nargs="+", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.check_backends:
        return check_backends(args.check_backends)

    budget = args.budget_s or (900.0 if args.cpu_dry_run else 480.0)
    deadline = time.monotonic() + budget
    work = tempfile.mkdtemp(prefix="gpu_run_")
    os.makedirs(os.path.join(work, "logs"))
    device = describe_device(args.cpu_dry_run)
    out = args.out or os.path.join(ROOT, "bench", "results", f"{device['slug']}-{datetime.date.today().isoformat()}")
    os.makedirs(out, exist_ok=True)
    plan = steps(work, "dry" if args.cpu_dry_run else "gpu")

    header = [f"# GPU run{' (CPU dry run)' if args.cpu_dry_run else ''}: {device['name']}", "",
              f"date {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {device['versions']}; "
              f"budget {budget:.0f} s", "", "| step | status | seconds |", "|---|---|---|"]
    print("\n".join(header), flush=True)
    rows, failed, stopped = [], False, False
    for step in plan:
        if stopped:
            status, seconds = "skipped: an earlier required step failed", 0.0
        else:
            status, seconds = run_step(step, work, deadline - time.monotonic())
        rows.append(f"| {step.name} | {status} | {seconds:.0f} |")
        print(rows[-1], flush=True)
        if status.startswith("failed"):
            failed = True
            print(tail(os.path.join(work, "logs", f"{step.name}.log"), 8), flush=True)
            stopped = stopped or step.required

    sections = ["", "## Kernels (fused_eps_loss: forward + backward; floor = a copy of the same bytes)", ""]
    for name in ("kernels_fp32", "kernels_bf16", "kernels_autotune"):
        sections.append(markdown_tables(os.path.join(work, "logs", f"{name}.log")))
    sections += ["", "## RU step: engine vs the straightforward loop", "", "```"]
    for name in ("step_sd15_fp32", "step_sd15_bf16", "step_sdxl_lora_bf16", "step_flux_lora_bf16"):
        sections.append(markdown_tables(os.path.join(work, "logs", f"{name}.log")).rstrip())
    sections += ["```", "", "## Tests", "", "```", tail(os.path.join(work, "logs", "gpu_tests.log"), 3).rstrip(),
                 "```", ""]
    summary = "\n".join(header + rows + sections)
    print("\n".join(sections), flush=True)
    collect(work, out, summary)
    print(f"results: {out} ({', '.join(sorted(os.listdir(out)))})")
    return 1 if failed else 0


def describe_device(dry_run: bool) -> dict:
    import torch

    if not dry_run and torch.cuda.is_available():
        name = torch.cuda.get_device_name()
    else:
        name = f"cpu-{os.cpu_count()}cores"
    versions = f"torch {torch.__version__}, CUDA {torch.version.cuda}, python {sys.version.split()[0]}"
    try:
        import triton

        versions += f", triton {triton.__version__}"
    except ImportError:
        pass
    return {"name": name, "slug": name.replace(" ", "-"), "versions": versions}


def collect(work: str, out: str, summary: str) -> None:
    """summary.md, kernels.csv, step.csv and results.tar.gz (logs, plots) into out."""
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(summary)
    for name in ("kernels.csv", "step.csv"):
        if os.path.exists(os.path.join(work, name)):
            shutil.copy(os.path.join(work, name), os.path.join(out, name))
    with tarfile.open(os.path.join(out, "results.tar.gz"), "w:gz") as tar:
        for sub in ("logs", "plots"):
            if os.path.isdir(os.path.join(work, sub)):
                tar.add(os.path.join(work, sub), arcname=sub)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
