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


def test_the_other_concept_an_original_attack_starts_from(robustness):
    assert robustness.other_concept("class", 7, 1) == "1" and robustness.other_concept("class", 1, 1) == "2"
    assert robustness.other_concept("shapes", "striped", 1) == "dotted"  # the next style
    assert robustness.other_concept("shapes", "arrow", 1) == "circle"  # the next object, cyclically
    assert robustness.other_concept("shapes", "hollow star", 1) == "hollow cross"  # same style, next object
    assert robustness.folder_name("class", 7) == "d7" and robustness.folder_name("shapes", "hollow star") == \
        "shapes-hollow_star"


def test_a_shapes_report_tables_ira_and_cra(robustness, tmp_path):
    def shapes_row(emb, inv):
        row = _row(emb, inv)
        del row["retain_acc"]
        return {**row, "ira": 0.9, "cra": 0.95}

    rows = {"original": shapes_row(0.9, 0.9), "ru": shapes_row(0.1, 0.3)}
    data = {"date": "2026-12-04", "attacks": ["embedding", "inversion"], "budgets": {"embedding": {}, "inversion": {}},
            "asr_samples": 100, "fid_samples": 48, "asr_sampler": "DDIM 20", "steps": 200, "command": "x",
            "digits": [{"concept": "striped", "model": "shapes", "models": rows, "relearn": {}, "acceptance": None}]}
    table = robustness.render(data, str(tmp_path))
    assert "## Concept 'striped'" in table and "| FID | IRA | CRA | train s |" in table
    assert "| ru | 1.000 | 0.00 -> **0.10** | 0.00 -> **0.30** | 2.50 | 0.900 | 0.950 |" in table
    assert "Adversarial RU against RU" not in table  # no adversarial row on the shapes model


def test_an_unknown_shapes_concept_is_one_flag_error(robustness, capsys):
    with pytest.raises(SystemExit) as err:
        robustness.main(["--model", "shapes", "--concepts", "striped", "dog"])
    assert err.value.code == 2
    assert "--concepts: " in capsys.readouterr().err


@pytest.mark.parametrize("continual_method", ["none", "lacu"])
def test_continual_method_none_leaves_out_the_continual_row(robustness, monkeypatch, tmp_path, continual_method):
    import argparse

    trained = []
    monkeypatch.setattr(robustness, "train_variant", lambda name, *a, **k: (f"runs/{name}", 1.0))
    monkeypatch.setattr(robustness, "continual_model", lambda *a, **k: trained.append(a) or ("runs/cont", 2.0))
    monkeypatch.setattr(robustness, "attack", lambda *a, **k: {"asr_before": 0.0, "asr": 0.1, "fid": 2.5,
                                                                  "retain_acc": 0.95, "per_step_asr": [],
                                                                  "budget": {}})
    args = argparse.Namespace(model="class", runs=str(tmp_path), init_from=1, variants=["ru"], steps=2,
                              continual_method=continual_method, continual_prefix=[5], threads=1,
                              attacks=["embedding"], attack_steps={"embedding": None}, asr_every=20,
                              relearn_steps=2)
    rows = robustness.run_concept(7, args, log=lambda line: None)["models"]
    if continual_method == "none":
        assert list(rows) == ["original", "original, from 1", "ru"] and not trained
    else:
        assert "continual lacu" in rows and len(trained) == 1
