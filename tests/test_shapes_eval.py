"""The shapes evaluator: concepts, sample counts, how UA / IRA / CRA read per-combination
accuracies, and one evaluation of a small random model end to end."""

import json

import pytest
import torch

from unlearn_fast.data.shapes import NUM_STYLES, OBJECTS, STYLES, SHAPES_IMAGE_SIZE, load_split, prompt
from unlearn_fast.eval.shapes_classifier import ShapesClassifier
from unlearn_fast.eval.shapes_metrics import COMBOS, ShapeConcept, ShapesEvalSettings, ShapesEvaluator, parse_concept

pytestmark = pytest.mark.usefixtures("one_thread")


def test_parse_concept_reads_objects_styles_and_combinations():
    assert parse_concept("star") == ShapeConcept("object", OBJECTS.index("star"), None)
    assert parse_concept("Striped") == ShapeConcept("style", None, STYLES.index("striped"))
    assert parse_concept("a hollow star") == parse_concept("hollow star") == ShapeConcept("combo", 3, 1)
    assert parse_concept("hollow star").name == "hollow star"
    assert parse_concept("star").prompts()[-1] == prompt("star") and len(parse_concept("star").prompts()) == 7
    assert len(parse_concept("dotted").prompts()) == 9 and parse_concept("hollow star").prompts() == [prompt(3, 1)]
    for bad in ("dog", "star circle", "", "striped dotted"):
        with pytest.raises(ValueError, match="forget: expected an object"):
            parse_concept(bad)


def test_counts_give_the_erased_concept_at_least_min_concept_samples():
    ev = ShapesEvaluator.__new__(ShapesEvaluator)
    ev.settings = ShapesEvalSettings(per_combo=4, min_concept=100)
    for text, n_mine in (("star", 6), ("striped", 8), ("hollow star", 1)):
        concept = parse_concept(text)
        counts = ev.counts(concept)
        mine = [n for n, c in zip(counts, COMBOS) if concept.contains(*c)]
        assert len(mine) == n_mine and sum(mine) >= 100 and min(mine) == max(mine)
        assert all(n == 4 for n, c in zip(counts, COMBOS) if not concept.contains(*c))
    with pytest.raises(ValueError, match="eval.per_combo: expected an int >= 1"):
        ShapesEvalSettings(per_combo=0)


def _per(object_ok, style_ok):
    per = {"object": [float(object_ok(o, s)) for o, s in COMBOS], "style": [float(style_ok(o, s)) for o, s in COMBOS]}
    per["both"] = [a * b for a, b in zip(per["object"], per["style"])]
    return per


def test_scores_read_the_right_combinations():
    ev = ShapesEvaluator.__new__(ShapesEvaluator)
    star, striped = OBJECTS.index("star"), STYLES.index("striped")
    # star erased cleanly: stars no longer drawn, every style still right, the other objects right
    r = ev._scores(parse_concept("star"), _per(lambda o, s: o != star, lambda o, s: True))
    assert (r["ua"], r["ira"], r["cra"]) == (1.0, 1.0, 1.0)
    # erasing the star also broke the style of star prompts: CRA sees it (6 of 48 combinations)
    r = ev._scores(parse_concept("star"), _per(lambda o, s: o != star, lambda o, s: o != star))
    assert r["cra"] == pytest.approx(42 / 48) and r["ira"] == 1.0
    # a style erased that also took the circles away: IRA (styles) intact, CRA (objects) down
    r = ev._scores(parse_concept("striped"), _per(lambda o, s: o != 0, lambda o, s: s != striped))
    assert (r["ua"], r["ira"]) == (1.0, 1.0) and r["cra"] == pytest.approx(7 / 8)
    # a combination: the 12 combinations sharing its object or style are the locality test (ira)
    hollow = STYLES.index("hollow")
    r = ev._scores(parse_concept("hollow star"),
                   _per(lambda o, s: not (o == star and s == hollow) and o != star, lambda o, s: True))
    assert r["ua"] == 1.0 and r["ira"] == pytest.approx(7 / 12) and r["cra"] == 1.0


def test_evaluate_a_small_model_end_to_end():
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from unlearn_fast.models import TextConditionalUNet
    from unlearn_fast.shapes_zoo import build_shapes_scheduler_config, build_shapes_text_config, build_shapes_tokenizer

    torch.manual_seed(0)
    tok = build_shapes_tokenizer()
    text = CLIPTextModel(CLIPTextConfig(**build_shapes_text_config(tok, hidden_size=16)))
    unet = UNet2DConditionModel(sample_size=SHAPES_IMAGE_SIZE, in_channels=3, out_channels=3, layers_per_block=1,
                                block_out_channels=(8, 8), norm_num_groups=4, cross_attention_dim=16,
                                attention_head_dim=2,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D")).eval()
    model = TextConditionalUNet(unet, text, tok, [""])
    other = TextConditionalUNet(UNet2DConditionModel(**unet.config).eval(), text, tok, [""])
    scheduler = DDPMScheduler(**build_shapes_scheduler_config())
    images, objects, styles = load_split("heldout")
    keep = torch.arange(0, len(images), 6)
    clf = ShapesClassifier(channels=(8, 8, 8), feature_dim=16).eval()
    settings = ShapesEvalSettings(per_combo=1, min_concept=12, steps=2, kl_draws=1, paraphrase_samples=6)
    ev = ShapesEvaluator(scheduler, clf, images[keep], objects[keep], styles[keep], settings)
    concept = parse_concept("striped")
    r = ev.evaluate(model, concept, original=model)
    assert r["samples_per_combo"] == ev.counts(concept) and len(r["samples"]) == sum(r["samples_per_combo"])
    for key in ("ua", "ira", "cra", "fid", "ua_paraphrase", "both_acc"):
        assert isinstance(r[key], float) and (key == "fid" or 0.0 <= r[key] <= 1.0), key
    assert r["kl_to_original"] == 0.0  # the model against itself
    assert ev.evaluate(other, concept, original=model)["kl_to_original"] > 0
    again = ev.evaluate(model, concept)
    assert torch.equal(again["samples"], r["samples"])  # a fixed seed: the same samples every time
    assert len(r["per_combo"]["both"]) == 48 and r["sample_combo"].tolist()[:2] == [0, 1]
    assert NUM_STYLES == 6


def _tiny_shapes_folder(path):
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from unlearn_fast.shapes_zoo import build_shapes_scheduler_config, build_shapes_text_config, build_shapes_tokenizer

    torch.manual_seed(0)
    tok = build_shapes_tokenizer()
    CLIPTextModel(CLIPTextConfig(**build_shapes_text_config(tok, hidden_size=16))).save_pretrained(path / "text_encoder")
    tok.save_pretrained(path / "tokenizer")
    UNet2DConditionModel(sample_size=SHAPES_IMAGE_SIZE, in_channels=3, out_channels=3, layers_per_block=1,
                         block_out_channels=(8, 8), norm_num_groups=4, cross_attention_dim=16, attention_head_dim=2,
                         down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                         up_block_types=("CrossAttnUpBlock2D", "UpBlock2D")).save_pretrained(path / "unet")
    DDPMScheduler(**build_shapes_scheduler_config()).save_pretrained(path / "scheduler")
    return str(path)


def test_shapes_demo_runs_end_to_end_and_writes_report_and_grid(tmp_path, capsys, monkeypatch):
    import json

    from unlearn_fast.demo import DemoSettings, run_demo

    monkeypatch.setenv("UNLEARN_FAST_CACHE", str(tmp_path / "cache"))

    folder = _tiny_shapes_folder(tmp_path / "model")
    settings = DemoSettings(forget=["hollow star"], model="shapes", steps=2, batch_size=4, out=str(tmp_path / "out"),
                            model_path=folder, forget_per_combo=4, retain_per_combo=1, shapes_data="images",
                            shapes_eval=ShapesEvalSettings(per_combo=1, min_concept=4, steps=2, kl_draws=1,
                                                           paraphrase_samples=3))
    report = run_demo(settings)
    on_disk = json.load(open(tmp_path / "out" / "report.json"))
    assert on_disk["forget"] == "hollow star" and on_disk["concept_kind"] == "combo"
    for part in ("before", "after"):
        for key in ("ua", "ira", "cra", "fid", "ua_paraphrase"):
            assert isinstance(on_disk[part][key], float), (part, key)
    assert isinstance(on_disk["after"]["kl_to_original"], float) and report["settings"]["forget_prompts"] == [
        prompt(3, 1)]
    rows = [json.loads(line) for line in open(tmp_path / "out" / "data" / "forget" / "metadata.jsonl")]
    assert len(rows) == 4 and all("hollow star" in r["text"] for r in rows)
    assert (tmp_path / "out" / "grid.png").stat().st_size > 0
    assert "| ira |" in capsys.readouterr().out
    # RU erases the concept's prompts as one concept: one dual (SHAPES_METHOD_KWARGS), whatever the prompt count
    assert report["settings"]["train"]["method_kwargs"]["shared_dual"] is True
    metrics = [json.loads(line) for line in open(tmp_path / "out" / "run" / "metrics.jsonl")]
    assert "ru/lambda[shared]" in metrics[-1]

    # the original's evaluation is cached: a second run reads it back, the same numbers
    assert report["before_cached"] is False
    settings.out = str(tmp_path / "again")
    again = run_demo(settings)
    assert again["before_cached"] is True and again["before"] == report["before"]
    assert "read from the evaluation cache" in capsys.readouterr().out


def test_shapes_anchor_map_keeps_the_part_not_erased():
    """Each forget prompt of a combination is anchored on itself without the erased part."""
    import os
    import tempfile

    from unlearn_fast.demo_shapes import write_concept_folders

    with tempfile.TemporaryDirectory() as out:
        for name, expected in (("striped", {prompt(3, 2): prompt(3)}), ("star", {prompt(3, 2): prompt(style=2, template=1)}),
                               ("hollow star", {prompt(3, 1): prompt(3)})):
            concept = parse_concept(name)
            _, _, anchors = write_concept_folders(os.path.join(out, name), concept, 4, 0)
            for key, value in expected.items():
                assert anchors[key] == value, (name, key)
            # every combination prompt in the forget folder has an anchor; the concept's own prompt has none
            rows = [json.loads(x) for x in open(os.path.join(out, name, "data", "forget", "metadata.jsonl"))]
            own = {prompt(concept.object)} if concept.kind == "object" else {prompt(style=concept.style)}
            assert all((r["text"] in anchors) != (r["text"] in own) for r in rows)
            assert not any(v in anchors for v in anchors.values())

        # a run on another data source than the folders keeps the anchors of its own forget prompts only
        from unlearn_fast.demo import DemoSettings
        from unlearn_fast.demo_shapes import shapes_train_config

        settings = DemoSettings(model="shapes", forget=["striped"], out=os.path.join(out, "pool"))
        config = shapes_train_config(settings, parse_concept("striped"), {}, out, target=None, data="pool",
                                     forget_images=None, retain_images=None)
        assert config.anchor_map == {prompt(o, 2): prompt(o) for o in range(len(OBJECTS))}


def test_evaluation_cache_misses_on_another_key_and_survives_a_bad_file(tmp_path, monkeypatch):
    from unlearn_fast.eval.cache import cache_dir, cached_evaluation, files_digest

    monkeypatch.setenv("UNLEARN_FAST_CACHE", str(tmp_path))
    calls = []

    def compute():
        calls.append(1)
        return {"ua": 0.5, "samples": torch.ones(2, 3)}

    first, hit = cached_evaluation("t", {"a": 1}, compute)
    again, hit2 = cached_evaluation("t", {"a": 1}, compute)
    assert (hit, hit2, len(calls)) == (False, True, 1) and torch.equal(again["samples"], first["samples"])
    cached_evaluation("t", {"a": 2}, compute)
    assert len(calls) == 2
    for f in cache_dir().glob("t-*.pt"):
        f.write_bytes(b"not a pickle")
    with pytest.warns(UserWarning, match="evaluation cache: cannot read"):
        _, hit3 = cached_evaluation("t", {"a": 1}, compute)
    assert hit3 is False and len(calls) == 3
    cached_evaluation("t", {"a": 1}, compute, enabled=False)
    assert len(calls) == 4
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "w.bin").write_bytes(b"1")
    d1 = files_digest(tmp_path / "m")
    (tmp_path / "m" / "w.bin").write_bytes(b"2")
    assert files_digest(tmp_path / "m") != d1


def test_shapes_demo_cli_rejects_an_unknown_concept(capsys):
    from unlearn_fast.cli import main

    with pytest.raises(SystemExit) as err:
        main(["demo", "--model", "shapes", "--forget", "dog", "--out", "unused"])
    assert err.value.code == 2
    assert "forget: expected an object" in capsys.readouterr().err


def test_quality_bench_compares_methods_on_a_shapes_concept(tmp_path):
    """bench/quality.py --model shapes: each method trained as the shapes demo trains it, scored and tabled."""
    import argparse
    import importlib.util
    import os
    import sys

    bench = os.path.join(os.path.dirname(__file__), "..", "bench")
    sys.path.insert(0, bench)
    try:
        spec = importlib.util.spec_from_file_location("bench_quality", os.path.join(bench, "quality.py"))
        quality = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(quality)
    finally:
        sys.path.remove(bench)
    folder = _tiny_shapes_folder(tmp_path / "model")
    args = argparse.Namespace(forget=["striped"], model_path=folder, methods=["ru", "esd"], per_combo=1,
                              runs=str(tmp_path / "runs"))
    evaluation = ShapesEvalSettings(per_combo=1, min_concept=4, steps=2, kl_draws=1, paraphrase_samples=3)
    before, rows, ev = quality.shapes_rows(args, 2, evaluation)
    assert [r["method"] for r in rows] == ["ru", "esd"] and ev["per_combo"] == 1
    for r in rows:
        for key in ("ua", "ua_paraphrase", "ira", "cra", "fid", "kl_to_original"):
            assert isinstance(r[key], float), (r["method"], key)
    config = json.loads((tmp_path / "runs" / "striped" / "ru" / "config.json").read_text())
    assert config["data"] == "pool" and "a striped star" in config["forget"]  # as the demo trains
    assert not any("striped" in v for v in config["anchor_map"].values())  # mapped onto another style
    data = {"model": "shapes", "before": before, "methods": rows, "date": "2026-12-04", "eval": ev, "steps": 2,
            "forget": "striped", "probe_every": 10, "threads": 1, "command": "python bench/quality.py --model shapes"}
    table = quality.render(data, str(tmp_path))
    assert "| method | UA | UA, paraphrases | IRA | CRA |" in table and "| esd |" in table
    assert "steps to UA target" not in table and "'striped'" in table
    assert (tmp_path / "tradeoff.png").stat().st_size > 0 and not (tmp_path / "ua_vs_steps.png").exists()
    with pytest.raises(SystemExit, match="--forget: --model shapes compares the methods on one concept"):
        quality.shapes_rows(argparse.Namespace(**{**vars(args), "forget": ["striped", "star"]}), 2, evaluation)


def test_frontier_point_and_report_on_a_shapes_concept(tmp_path, monkeypatch):
    """bench/frontier.py --model shapes: a point trains as the shapes demo, reads IRA and CRA; the report tables them."""
    import importlib.util
    import os
    import sys

    import unlearn_fast.shapes_zoo as zoo
    from unlearn_fast.eval.shapes_metrics import shapes_evaluator

    bench = os.path.join(os.path.dirname(__file__), "..", "bench")
    spec = importlib.util.spec_from_file_location("bench_frontier_shapes", os.path.join(bench, "frontier.py"))
    frontier = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = frontier  # its dataclasses look their module up
    try:
        spec.loader.exec_module(frontier)
        folder = _tiny_shapes_folder(tmp_path / "model")
        monkeypatch.setattr(zoo, "SHAPES_DDPM_DIR", folder)  # the points train from the tiny model
        original, scheduler = zoo.load_shapes_ddpm(folder)
        evaluator = shapes_evaluator(scheduler, ShapesEvalSettings(per_combo=1, min_concept=4, steps=2, kl_draws=1,
                                                                   paraphrase_samples=0))
        points = [frontier.run_point("esd", frontier.SWEEPS["esd"], eta, 0, ["striped"], 2, evaluator, original,
                                     str(tmp_path / f"work{eta}"), "shapes") for eta in (1.0, 2.0)]
        for p in points:
            assert {"ua", "ira", "cra", "fid", "kl_to_original"} <= set(p) and "retain_acc" not in p
        before = evaluator.evaluate(original, frontier.evaluated("shapes", ["striped"]))
        data = {"date": "2026-12-04", "model": "shapes", "concept": ["striped"], "steps": 2, "seeds": [0],
                "eval": evaluator.settings_dict(), "points": points, "command": "python bench/frontier.py --model shapes",
                "before": {k: before[k] for k in ("ua", "ira", "cra", "fid")}}
        table = frontier.render(data, str(tmp_path / "report"))
        assert "| UA | KL to original (nats) | IRA | CRA | FID |" in table and "| esd | eta=2 | 1 |" in table
        assert "Shapes model, forgotten concept 'striped'" in table
        assert (tmp_path / "report" / "frontier.png").stat().st_size > 0
        parser = frontier.argparse.ArgumentParser()
        assert frontier.parse_concept_arg(parser, "shapes", ["hollow star"]) == ["hollow star"]
        assert frontier.parse_concept_arg(parser, "class", ["3", "7"]) == [3, 7]
        with pytest.raises(SystemExit):
            frontier.parse_concept_arg(parser, "shapes", ["dog"])
    finally:
        sys.modules.pop(spec.name, None)


def test_shapes_erase_bench_trains_and_scores_one_recipe(tmp_path):
    """bench/shapes_erase.py: the demo's recipe with overrides, then the after-evaluation, in result.json."""
    import importlib.util
    import os

    spec = importlib.util.spec_from_file_location(
        "shapes_erase", os.path.join(os.path.dirname(__file__), "..", "bench", "shapes_erase.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    folder = _tiny_shapes_folder(tmp_path / "model")
    out = bench.main(["hollow star", "--out", str(tmp_path / "run"), "--steps", "2", "--kw", '{"lambda_max": 0.5}',
                      "--extra", '{"batch_size": 4}', "--per-combo", "1", "--min-concept", "2", "--eval-steps", "2",
                      "--model-path", folder])
    on_disk = json.load(open(tmp_path / "run" / "result.json"))
    assert on_disk["ua"] == out["ua"] and 0.0 <= out["ua"] <= 1.0 and isinstance(out["kl_to_original"], float)
    assert out["samples_per_combo"][COMBOS.index((3, 1))] == 2 and len(out["lambda_trace"]) >= 1
    assert out["lambda_trace"][0] <= 0.5


def test_shapes_acceptance_bench_checks_and_reads_finished_runs_back(tmp_path):
    """bench/shapes_acceptance.py: the bar per concept, the table, and a finished concept read back, not rerun."""
    import importlib.util
    import os

    spec = importlib.util.spec_from_file_location(
        "shapes_acceptance", os.path.join(os.path.dirname(__file__), "..", "bench", "shapes_acceptance.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert len(bench.DEFAULT_CONCEPTS) == 8 + 6 + 4 and len(set(bench.DEFAULT_CONCEPTS)) == 18

    def report(ua, ira, cra, fid, seconds):
        return {"forget": "striped", "concept_kind": "style", "train_seconds": 100.0, "seconds": seconds,
                "target": {"target": "checkered"},
                "before": {"ua": 0.07, "ira": 0.956, "cra": 0.909, "fid": 9.91},
                "after": {"ua": ua, "ua_paraphrase": 1.0, "ira": ira, "cra": cra, "fid": fid},
                "settings": {"eval": {"per_combo": 4, "min_concept": 100, "steps": 20, "guidance": 2.0, "seed": 1234,
                                      "paraphrase_samples": 48},
                             "train": {"method": "ru", "method_kwargs": {}, "max_steps": 200, "batch_size": 32,
                                       "lr": 1e-4, "data": "pool"}, "map_to": "nearest"}}

    ok = bench.check(report(1.0, 0.944, 0.939, 10.29, 900.0))
    assert ok["quality_ok"] and not ok["time_ok"] and not ok["passed"] and ok["target"] == "checkered"
    assert not bench.check(report(1.0, 0.919, 0.954, 10.04, 100.0))["quality_ok"]  # IRA 3.7 points down
    assert not bench.check(report(0.94, 0.95, 0.95, 10.0, 100.0))["quality_ok"]  # UA below 0.95
    assert not bench.check(report(1.0, 0.95, 0.95, 13.0, 100.0))["quality_ok"]  # FID 1.31x
    assert bench.check(report(0.95, 0.926, 0.879, 12.88, 180.0))["passed"]  # every bar met at its edge
    run = tmp_path / "runs" / "striped"
    run.mkdir(parents=True)
    (run / "report.json").write_text(json.dumps(report(1.0, 0.944, 0.939, 10.29, 900.0)))
    code = bench.main(["--concepts", "striped", "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "res")])
    table = (tmp_path / "res" / "acceptance.md").read_text()
    assert code == 1 and "| striped | checkered |" in table and "1 of 1 concepts pass the quality bar, 0 the" in table
    assert json.load(open(tmp_path / "res" / "acceptance.json"))["rows"][0]["ua"] == 1.0
