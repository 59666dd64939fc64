"""Continual unlearning on the shapes model: concepts as requests, set scoring, request fields, the runner."""

from __future__ import annotations

import json

import pytest

from unlearn_fast.config import ConfigError
from unlearn_fast.continual import ContinualSettings, run_continual
from unlearn_fast.continual.report import acceptance, markdown_table
from unlearn_fast.continual.settings import ShapesRequestSettings
from unlearn_fast.continual.spaces import ShapesSpace
from unlearn_fast.data.shapes import OBJECTS, STYLES, prompt
from unlearn_fast.eval.shapes_metrics import COMBOS, ShapesEvalSettings, concept_scores, parse_concept, set_scores

STAR, STRIPED, HOLLOW = OBJECTS.index("star"), STYLES.index("striped"), STYLES.index("hollow")


def _per(object_ok, style_ok):
    per = {"object": [float(object_ok(o, s)) for o, s in COMBOS], "style": [float(style_ok(o, s)) for o, s in COMBOS]}
    per["both"] = [a * b for a, b in zip(per["object"], per["style"])]
    return per


def test_set_scores_leave_the_other_erasures_out_of_each_retain_set():
    star, striped = parse_concept("star"), parse_concept("striped")
    # both erased cleanly: no star drawn, no stripes drawn, everything else right
    per = _per(lambda o, s: o != STAR, lambda o, s: s != STRIPED)
    r = set_scores(per, [star, striped])
    assert r["per_concept"]["star"]["ua"] == 1.0 and r["per_concept"]["striped"]["ua"] == 1.0
    # the striped combinations' objects are right, but a star prompt's object is erased on purpose:
    # neither counts against the other concept's cross-domain retain
    assert (r["ira"], r["cra"], r["retain_acc"], r["ua_min"]) == (1.0, 1.0, 1.0, 1.0)
    assert len(r["retained"]) == 48 - 8 - 6 + 1
    # the star erasure also broke the style of star prompts: star's CRA sees 5 of its 40 combinations
    per = _per(lambda o, s: o != STAR, lambda o, s: s != STRIPED and o != STAR)
    r = set_scores(per, [star, striped])
    assert r["per_concept"]["star"]["cra"] == pytest.approx(35 / 40)
    assert r["per_concept"]["striped"]["cra"] == 1.0 and r["cra"] == pytest.approx((35 / 40 + 1) / 2)
    # one concept alone: the single-concept scores
    one = set_scores(per, [star])
    for key in ("ua", "ira", "cra"):
        assert one[key] == concept_scores(star, per)[key]
    assert one["ua_min"] == one["ua"]


def test_set_scores_of_a_combination_beside_its_object():
    # "hollow star" and "circle" erased; a hollow circle is gone with the circle, not a locality failure
    combo, circle = parse_concept("hollow star"), parse_concept("circle")
    per = _per(lambda o, s: not (o == STAR and s == HOLLOW) and o != 0, lambda o, s: True)
    r = set_scores(per, [combo, circle])
    assert r["per_concept"]["hollow star"]["ua"] == 1.0 and r["per_concept"]["circle"]["ua"] == 1.0
    assert r["per_concept"]["hollow star"]["ira"] == 1.0  # the hollow circle is out of its locality set


def _shapes_settings(**kw):
    return ContinualSettings(model="shapes", sequence=kw.pop("sequence", ["striped", "star"]),
                             methods=kw.pop("methods", ["naive"]), **kw)


def test_shapes_settings_parse_concepts_and_name_what_is_wrong():
    s = _shapes_settings(sequence=["a striped star", "heart", "dotted"], methods=[])
    assert ShapesSpace(s).requests() == ["striped star", "heart", "dotted"]
    assert s.methods == ["constrained"]  # the default method
    with pytest.raises(ConfigError, match=r"^sequence: expected an object \(circle.*got 'sparkly'"):
        _shapes_settings(sequence=["striped", "sparkly"])
    with pytest.raises(ConfigError, match="^sequence: a concept is requested twice"):
        _shapes_settings(sequence=["striped star", "a striped star"])
    with pytest.raises(ConfigError, match="^shapes.map_to: lacu, constrained map every erased concept onto a target"):
        _shapes_settings(methods=["lacu", "naive", "constrained"], shapes=ShapesRequestSettings(map_to="none"))
    with pytest.raises(ConfigError, match=r"^sequence: the class model's requests are digits"):
        ContinualSettings(model="class", sequence=["striped"])
    with pytest.raises(ConfigError, match="^shapes.pool_size: expected an int >= 1"):
        _shapes_settings(shapes=ShapesRequestSettings(pool_size=0))


def test_a_shapes_request_forgets_the_concept_keeps_the_rest_and_anchors_on_what_stays(tmp_path):
    space = ShapesSpace(_shapes_settings())
    f = space.request_fields(["star"], None, ["striped"], str(tmp_path / "step02"))
    assert f["forget"] == parse_concept("star").prompts() and f["data"] == "pool" and f["pool_size"] == 16
    assert len(f["retain"]) == 48 - 6 - 8 + 1 and prompt(0, STRIPED) not in f["retain"]
    assert prompt(0, HOLLOW) in f["retain"] and prompt(STAR, HOLLOW) not in f["retain"]
    # "a hollow star" -> "a hollow shape"; "a striped star" would anchor on the erased style: null anchor
    assert f["anchor_map"][prompt(STAR, HOLLOW)] == prompt(style=HOLLOW, template=1)
    assert prompt(STAR, STRIPED) not in f["anchor_map"]
    first = space.request_fields(["striped"], None, [], str(tmp_path / "step01"))
    assert first["anchor_map"][prompt(STAR, STRIPED)] == prompt(STAR)
    assert space.method_kwargs("ru", {"bound": 1.0}) == {"shared_dual": True, "bound": 1.0}


def test_a_shapes_request_on_images_writes_folders_without_the_erased_combinations(tmp_path):
    space = ShapesSpace(_shapes_settings(shapes=ShapesRequestSettings(data="images", forget_per_combo=2,
                                                                      retain_per_combo=1)))
    f = space.request_fields(["star"], None, ["striped"], str(tmp_path / "step02"))
    assert f["data"] == "images" and f["forget_images"].startswith(str(tmp_path / "step02-data"))
    rows = [json.loads(line) for line in open(tmp_path / "step02-data" / "data" / "retain" / "metadata.jsonl")]
    assert rows and not any("striped" in r["text"] or "star" in r["text"] for r in rows)
    assert all(not v.startswith("a striped") for v in f["anchor_map"].values())


def test_shapes_continual_runs_end_to_end(tmp_path):
    from test_shapes_eval import _tiny_shapes_folder

    folder = _tiny_shapes_folder(tmp_path / "model")
    settings = ContinualSettings(
        model="shapes", model_path=folder, sequence=["hollow star", "circle"],
        methods=["naive", "simultaneous", "constrained"],
        steps=2, batch_size=4, out=str(tmp_path / "out"), threads=1, shapes=ShapesRequestSettings(pool_size=1),
        shapes_eval=ShapesEvalSettings(per_combo=1, min_concept=4, steps=2, kl_draws=1, paraphrase_samples=0))
    report = run_continual(settings, log=lambda *_: None)
    on_disk = json.load(open(tmp_path / "out" / "report.json"))
    assert on_disk["sequence"] == ["hollow star", "circle"] and on_disk["settings"]["shapes"]["pool_size"] == 1
    assert [s["step"] for s in on_disk["original"]["per_step"]] == [1, 2]
    steps = on_disk["methods"]["naive"]["steps"]
    assert [s["erased"] for s in steps] == [["hollow star"], ["hollow star", "circle"]]
    for s in steps:
        for key in ("ua", "ua_min", "ira", "cra", "retain_acc", "fid", "kl_to_original"):
            assert isinstance(s[key], float), key
        assert set(s["ua_per_class"]) == set(s["erased"])
    assert steps[1]["train"]["forget"] == parse_concept("circle").prompts()
    assert set(steps[1]["targets"]) == {"hollow star", "circle"}  # each erased concept's mapping target
    assert on_disk["methods"]["simultaneous"]["steps"][0]["targets"].keys() == {"hollow star", "circle"}
    assert len(on_disk["methods"]["simultaneous"]["steps"]) == 1
    constrained = on_disk["methods"]["constrained"]["steps"]
    second = constrained[1]["train"]["method_kwargs"]
    # the earlier concept's prompt, remapped onto its target, is one constraint with its own dual
    assert second["remapped"] == ["a hollow star"] and second["remapped_groups"] == ["hollow star"]
    assert second["forget_groups"] == ["circle"] * len(parse_concept("circle").prompts())
    assert "a hollow star" in constrained[1]["train"]["retain"]  # replayed: its samples carry the concept
    assert any(k == "clacu/lambda[hollow star]" for k in constrained[1]["duals"])
    assert set(constrained[1]["bounds"]) == {"hollow star", "circle"}
    acc = acceptance(report, method="naive")
    assert acc["method"] == "naive" and {"ira_ok", "cra_ok", "original_ira"} <= set(acc["steps"][0])
    table = markdown_table(report)
    assert "| IRA | CRA |" in table and "at least 4 per erased concept" in table
    assert (tmp_path / "out" / "continual.png").stat().st_size > 0


def test_mapped_requests_compose_the_targets_of_everything_erased(tmp_path):
    space = ShapesSpace(_shapes_settings())
    space.target_of = {"striped": parse_concept("checkered"), "star": parse_concept("cross")}
    f = space.request_fields(["star"], None, ["striped"], str(tmp_path / "step02"))
    cross, checkered = OBJECTS.index("cross"), STYLES.index("checkered")
    assert f["anchor_map"][prompt(STAR, STRIPED)] == prompt(cross, checkered)  # both swaps
    assert f["anchor_map"][prompt(STAR, HOLLOW)] == prompt(cross, HOLLOW)
    assert f["anchor_map"][prompt(STAR)] == prompt(cross)  # the object's own prompt
    images = ShapesSpace(_shapes_settings(shapes=ShapesRequestSettings(data="images", forget_per_combo=4,
                                                                       retain_per_combo=1)))
    images.target_of = dict(space.target_of)
    g = images.request_fields(["star"], None, ["striped"], str(tmp_path / "img"))
    assert g["anchor_map"]["striped star"] == "checkered cross"  # a folder's template variant
    assert g["anchor_map"]["an image of a hollow star"] == "an image of a hollow cross"


def test_before_request_chooses_targets_and_replaces_an_erased_one(tmp_path):
    from test_shapes_eval import _tiny_shapes_folder

    from unlearn_fast.shapes_zoo import load_shapes_ddpm

    model, scheduler = load_shapes_ddpm(_tiny_shapes_folder(tmp_path / "model"))
    settings = _shapes_settings(shapes=ShapesRequestSettings(check_samples=2, target_check="none"),
                                shapes_eval=ShapesEvalSettings(steps=2))
    space = ShapesSpace(settings)
    rec = space.before_request(model, scheduler, ["striped"], [], seed=0)
    first = rec["targets"]["striped"]
    assert first in ("solid", "hollow", "dotted", "checkered", "gradient") and set(rec["target_choice"]) == {"striped"}
    # the next request erases striped's target: striped gets another one, the new concept its own
    rec = space.before_request(model, scheduler, [first], ["striped"], seed=1)
    assert set(rec["target_choice"]) == {"striped", first}
    assert rec["targets"]["striped"] not in (first, "striped") and rec["targets"][first] != "striped"
    assert ShapesSpace(_shapes_settings(shapes=ShapesRequestSettings(map_to="none"))).before_request(
        model, scheduler, ["star"], [], 0) == {}
