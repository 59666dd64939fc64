"""bench/robustness.py's acceptance (adversarial RU against RU) and its report, on made-up rows."""

import importlib.util
import os
import sys

import pytest

PATH = os.path.join(os.path.dirname(__file__), "..", "bench", "robustness.py")


@pytest.fixture(scope="module")
def robustness():
    sys.path.insert(0, os.path.dirname(PATH))
    spec = importlib.util.spec_from_file_location("bench_robustness", PATH)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(os.path.dirname(PATH))


def _row(emb, inv, fid=2.5, retain=0.96):
    steps = [{"step": 0, "asr": 0.0}, {"step": 100, "asr": max(emb, inv)}]
    att = {kind: {"asr_before": 0.0, "asr": a, "asr_start": 0.0, "seconds": 1.0, "per_step_asr": steps,
                  "budget": {"steps": 100}} for kind, a in (("embedding", emb), ("inversion", inv))}
    return {"model_dir": None, "train_seconds": 1.0, "attacks": att, "asr_before": 0.0, "fid": fid,
            "retain_acc": retain}


def test_the_strongest_attack_decides_and_each_attack_is_reported(robustness):
    rows = {"original": _row(0.96, 0.95), "ru": _row(0.02, 0.44), "ru+adversarial": _row(0.09, 0.07, fid=2.7)}
    acc = robustness.acceptance(rows)
    assert acc["pass"]  # 0.09 (embedding) <= 0.5 x 0.44 (inversion); FID 2.7 <= 1.3 x 2.5; no retain drop
    strongest = next(k for k in acc["checks"] if k.startswith("strongest"))
    assert "0.09 (embedding)" in strongest and "0.44 (inversion)" in strongest
    assert list(acc["per_attack"].values()) == [False, True]  # embedding not halved, inversion halved
    rows["ru+adversarial"] = _row(0.09, 0.30)  # the strongest attack on it no longer halved
    assert not robustness.acceptance(rows)["pass"]
    rows["ru+adversarial"] = _row(0.05, 0.05, fid=3.3)  # FID over 1.3x the original's
    assert not robustness.acceptance(rows)["pass"]
    rows["ru+adversarial"] = _row(0.05, 0.05, retain=0.92)  # retain drop 4 points
    assert not robustness.acceptance(rows)["pass"]
    assert robustness.acceptance({"original": rows["original"], "ru": rows["ru"]}) is None


def test_render_recomputes_the_acceptance_and_draws_both_plots(robustness, tmp_path):
    rows = {"original": _row(0.96, 0.95), "ru": _row(0.02, 0.44), "ru+adversarial": _row(0.09, 0.07)}
    relearn = {"ru, k=4": {"per_step_asr": [{"step": s, "asr": s / 100} for s in (0, 10, 50)], "budget": {}}}
    data = {"date": "2026-12-04", "attacks": ["embedding", "inversion"], "budgets": {"embedding": {}, "inversion": {}},
            "asr_samples": 100, "fid_samples": 50, "asr_sampler": "DDIM 20", "steps": 200, "command": "x",
            "digits": [{"digit": 7, "models": rows, "relearn": relearn, "acceptance": {"checks": {}, "pass": False}}]}
    table = robustness.render(data, str(tmp_path))
    assert "-> PASS" in table and "Per attack (reported, not deciding)" in table  # not the stale saved verdict
    assert "ru, k=4: 0.00, 0.10, 0.50" in table  # relearning ASR at steps 0, 10, 50
    assert (tmp_path / "asr_vs_steps.png").stat().st_size > 0 and (tmp_path / "relearn.png").stat().st_size > 0
