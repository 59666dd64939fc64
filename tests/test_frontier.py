"""bench/frontier.py's logic: the knobs' overrides, the aggregation over seeds, the --values parser and the report."""

import importlib.util
import json
import os
import sys

import pytest

PATH = os.path.join(os.path.dirname(__file__), "..", "bench", "frontier.py")


@pytest.fixture(scope="module")
def frontier():
    spec = importlib.util.spec_from_file_location("bench_frontier", PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_knob_overrides_keep_the_demo_constants_and_set_the_knob(frontier):
    from unlearn_fast.demo import DEMO_METHOD_DEFAULTS

    over = frontier.SWEEPS["ru"].overrides("ru", 50.0)
    base = DEMO_METHOD_DEFAULTS["ru"].get("method_kwargs", {})
    swept = ("bound", "lambda_max", "bound_units", "dual_lr")
    assert over["method_kwargs"]["bound"] == 50.0 and over["method_kwargs"]["lambda_max"] == 0.95
    assert over["method_kwargs"]["bound_units"] == "nats"  # bounds in nats, the primal as the demo trains it
    assert {k: v for k, v in over["method_kwargs"].items() if k not in swept} == \
        {k: v for k, v in base.items() if k not in swept}
    assert "weighting" not in over and "reduction" not in over
    steps = frontier.SWEEPS["ablation"].overrides("ablation", 100)
    assert steps["max_steps"] == 100 and "max_steps" not in steps["method_kwargs"]


def _point(method, value, seed, ua, kl, at_cap=None):
    duals = {} if at_cap is None else {"at_cap": at_cap, "lambda_last_half_std": 0.1}
    return {"method": method, "knob": "k", "value": value, "seed": seed, "ua": ua, "retain_acc": 0.9,
            "fid": 2.0, "kl_to_original": kl, "duals": duals, "dual_trace": {}}


def test_aggregate_means_and_ranges_over_seeds(frontier):
    rows = frontier.aggregate([_point("ru", 1.0, 0, 0.8, 10.0, 0.5), _point("ru", 1.0, 1, 1.0, 30.0, 0.7),
                               _point("esd", 2.0, 0, 0.9, 5.0)])
    ru = next(r for r in rows if r["method"] == "ru")
    assert ru["seeds"] == 2 and ru["ua"] == pytest.approx(0.9) and ru["ua_range"] == (0.8, 1.0)
    assert ru["kl_to_original"] == pytest.approx(20.0) and ru["at_cap"] == pytest.approx(0.6)
    esd = next(r for r in rows if r["method"] == "esd")
    assert esd["at_cap"] is None and esd["lambda_swing"] is None and esd["kl_to_original_range"] == (5.0, 5.0)


def test_parse_values_names_the_flag(frontier):
    assert frontier.parse_values(["ru=10,20", "esd=1"]) == {"ru": (10.0, 20.0), "esd": (1.0,)}
    with pytest.raises(SystemExit, match="--values: expected METHOD="):
        frontier.parse_values(["nosuch=1"])
    with pytest.raises(SystemExit, match="expected numbers after ru="):
        frontier.parse_values(["ru=a,b"])


def test_dual_summary_reads_time_at_cap_and_swing(frontier, tmp_path):
    with open(tmp_path / "metrics.jsonl", "w") as f:
        for step, lam in enumerate([0.1, 0.95, 0.95, 0.5]):
            f.write(json.dumps({"step": step, "lambda/0": lam, "constraint/0": 1.0 + step}) + "\n")
    trace = frontier.dual_trace(str(tmp_path))
    assert trace["lambda"] == [0.1, 0.95, 0.95, 0.5] and trace["constraint"] == [1.0, 2.0, 3.0, 4.0]
    s = frontier.dual_summary(trace, 0.95)
    assert s["at_cap"] == pytest.approx(0.5) and s["lambda_last_half_mean"] == pytest.approx(0.725)


def test_render_writes_the_table_and_plots(frontier, tmp_path):
    data = {"date": "2026-12-04", "concept": [3], "steps": 4, "seeds": [0, 1], "command": "python bench/frontier.py",
            "eval": {"per_class": 4, "steps": 20, "guidance": 1.0, "seed": 1234},
            "before": {"ua": 0.05, "retain_acc": 0.96, "fid": 2.4},
            "points": [_point("ru", 1.0, 0, 0.8, 10.0, 0.5), _point("ru", 1.0, 1, 1.0, 30.0, 0.7),
                       _point("esd", 2.0, 0, 0.9, 5.0)]}
    data["points"].append(_point("ru", 2.0, 0, 1.0, 12.0, 0.2))
    table = frontier.render(data, str(tmp_path))
    assert "| ru | k=1 | 2 | 0.900 [0.800, 1.000] | 20.0 [10.0, 30.0]" in table
    assert "| ru | 1 of 2 | 12.0 (k=2) |" in table and "| esd | 0 of 1 | - |" in table  # UA 0.9 does not erase
    assert (tmp_path / "frontier.png").stat().st_size > 0 and (tmp_path / "frontier.md").exists()


def test_a_variant_trains_its_method_with_its_own_constants(frontier):
    pi = frontier.SWEEPS["ru-pi"]
    assert frontier.trained("ru-pi") == "ru" and frontier.constrained("ru-pi") and not frontier.constrained("esd")
    over = pi.overrides(frontier.trained("ru-pi"), 40.0)
    assert over["method_kwargs"]["dual_kp"] > 0 and over["method_kwargs"]["bound"] == 40.0
    assert "dual_kp" not in frontier.SWEEPS["ru"].overrides("ru", 40.0)["method_kwargs"]


def test_method_config_erases_the_text_models_prompt(frontier):
    from quality import method_config  # bench/ is on sys.path once frontier is loaded

    config = method_config("ru", [7], steps=3, output_dir="unused", model="text")
    assert config.model == "text" and config.forget == ["a handwritten digit seven"]
    assert len(config.retain) == 9 and config.data == "pool"
    assert method_config("ru", [7], steps=3, output_dir="unused").forget == ["7"]


def test_the_cli_rejects_a_concept_that_is_not_a_digit(frontier):
    with pytest.raises(SystemExit):
        frontier.main(["--concept", "12", "--render"])


def test_cached_reports_what_was_run_and_runs_nothing(frontier, tmp_path):
    from types import SimpleNamespace

    knob = frontier.SWEEPS["esd"]
    point = {**_point("esd", 1.0, 0, 1.0, 20.0), "overrides": knob.overrides("esd", 1.0)}
    frontier.write_json(frontier.point_path(str(tmp_path), "esd", knob, 1.0, 0), point)
    stale = {**_point("esd", 2.0, 0, 1.0, 70.0), "overrides": {"method_kwargs": {"eta": 2.0}}}  # other settings
    frontier.write_json(frontier.point_path(str(tmp_path), "esd", knob, 2.0, 0), stale)
    args = SimpleNamespace(methods=["esd"], values={"esd": (1.0, 2.0, 4.0)}, seeds=[0, 1], runs=str(tmp_path),
                           cached=True, concept=[3], steps=1, model="class")
    points = frontier.run_all(args, None, None)  # no evaluator: a run would fail
    assert [(p["value"], p["seed"]) for p in points] == [(1.0, 0)]
    steps = frontier.SWEEPS["ablation"]  # its knob is the steps, which a point keeps apart from its overrides
    frontier.write_json(frontier.point_path(str(tmp_path), "ablation", steps, 50, 0),
                        {**_point("ablation", 50, 0, 0.5, 30.0), "overrides": frontier.point_overrides(
                            "ablation", steps, 50)})
    args.methods, args.values = ["ablation"], {"ablation": (50,)}
    assert len(frontier.run_all(args, None, None)) == 1


def test_the_cli_names_a_bad_shapes_concept(frontier, capsys):
    with pytest.raises(SystemExit) as err:
        frontier.main(["--model", "shapes", "--concept", "dog", "--render"])
    assert err.value.code == 2
    assert "--concept: " in capsys.readouterr().err
