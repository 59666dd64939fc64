"""bench/gpu_run.sh cannot rot between GPU runs: its CPU dry run, end to end, in the suite."""

import importlib.metadata
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_cpu_dry_run_runs_every_step_and_returns_at_most_four_files(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(["bash", "bench/gpu_run.sh", "--cpu-dry-run", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, PYTHON=sys.executable))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(os.listdir(out)) == ["kernels.csv", "results.tar.gz", "step.csv", "summary.md"]
    summary = (out / "summary.md").read_text()
    steps = [line.split("|")[1:3] for line in summary.splitlines() if line.startswith("| ") and " ok " in line]
    assert [s[0].strip() for s in steps] == ["build", "backends", "gpu_tests", "kernels_fp32", "kernels_bf16",
                                            "kernels_autotune", "step_sd15_fp32", "step_sd15_bf16", "plots",
                                            "step_sdxl_lora_bf16", "step_flux_lora_bf16"]
    assert "full / floor" in summary and "speed-up" in summary
    assert all(f.stat().st_size < 16 * 2**20 for f in out.iterdir())  # what the device tool brings back


def test_missing_backend_fails_the_run():
    proc = subprocess.run([sys.executable, "bench/gpu_run.py", "--check-backends", "cpu", "no-such-backend"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "missing 'no-such-backend'" in proc.stdout


def test_carried_wheels_match_what_the_tests_run_with():
    """bench/gpu_wheels.txt pins each wheel the GPU image lacks at the version installed here."""
    with open(os.path.join(ROOT, "bench", "gpu_wheels.txt")) as f:
        specs = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    assert specs, "bench/gpu_wheels.txt lists no wheels"
    for spec in specs:
        name, version = spec.split("==")
        assert importlib.metadata.version(name) == version, spec
