"""The evaluator's metrics and the demo (both embedded models), at tiny settings.

The demo runs end to end on the shipped models (no download) with 2 unlearning steps,
2 evaluation samples per class and a 2-step sampler, so it checks the wiring, the report
and the files, not unlearning quality (bench/demo_acceptance.py measures that).
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from unlearn_fast.cli import main as cli_main
from unlearn_fast.demo import DemoSettings, run_demo
from unlearn_fast.eval import metrics
from unlearn_fast.eval.metrics import ClassEvaluator, EvalSettings, frechet_distance
from unlearn_fast.models_zoo import digit_prompt

TINY_EVAL = dict(per_class=2, steps=2, kl_draws=2)
REPORT_METRICS = ("ua", "retain_acc", "neighbor_acc", "fid")


def test_frechet_distance_matches_the_eigenvalue_formula():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(300, 5, generator=g, dtype=torch.float64) @ torch.randn(5, 5, generator=g, dtype=torch.float64)
    b = torch.randn(200, 5, generator=g, dtype=torch.float64) * 2 + 0.5
    ca, cb = torch.cov(a.T), torch.cov(b.T)
    # tr sqrt(ca cb) = sum of the square roots of the (real, >= 0) eigenvalues of ca cb
    root_trace = torch.linalg.eigvals(ca @ cb).real.clamp(min=0).sqrt().sum()
    expected = (a.mean(0) - b.mean(0)).square().sum() + ca.trace() + cb.trace() - 2 * root_trace
    assert frechet_distance(a, b) == pytest.approx(float(expected), rel=1e-9)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)


class _FixedClassifier(torch.nn.Module):
    """Predicts the class written in the image's first pixel (so the test controls accuracy)."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def features(self, x):
        return torch.cat([x.flatten(1)[:, :4], x.flatten(1)[:, :4].square()], 1) * self.scale

    def forward(self, x):
        return torch.nn.functional.one_hot(x.flatten(1)[:, 0].round().long().clamp(0, 9), 10).float()


class _PromptModel:
    """Stands in for a text adapter: condition ids come from ``add_prompts``."""

    def __init__(self, prompts):
        self.conditions = list(prompts) + [""]
        self.null_id = len(prompts)

    def add_prompts(self, prompts):
        for p in prompts:
            if p not in self.conditions:
                self.conditions.append(p)
        return [self.conditions.index(p) for p in prompts]


def test_evaluator_scores_ua_retain_and_neighbours_and_maps_prompts(monkeypatch):
    prompts = [f"digit {c}" for c in range(10)]
    model = _PromptModel(list(reversed(prompts)))  # condition id 0 is "digit 9"
    seen = {}

    def fake_sample(model_, scheduler, cond_ids, **kwargs):
        seen["cond_ids"] = cond_ids.clone()
        label = torch.tensor([int(model_.conditions[i].split()[1]) for i in cond_ids.tolist()])
        label = torch.where(label == 3, torch.full_like(label, 5), label)  # class 3 is never drawn: UA(3) = 1
        return label.float()[:, None, None, None].expand(-1, 1, 4, 4).clone()

    monkeypatch.setattr(metrics, "sample", fake_sample)
    real = torch.arange(10).repeat_interleave(6).float()[:, None, None, None].expand(-1, 1, 4, 4).clone()
    real = real + 0.1 * torch.randn(real.shape, generator=torch.Generator().manual_seed(0))
    ev = ClassEvaluator(None, _FixedClassifier(), real, torch.arange(10).repeat_interleave(6),
                        EvalSettings(per_class=3, neighbors=2), prompts=prompts)
    result = ev.evaluate(model, [3])
    assert seen["cond_ids"].tolist() == [9 - c for c in range(10) for _ in range(3)]
    assert result["ua"] == 1.0
    assert result["retain_acc"] == pytest.approx(1.0)
    assert sorted(result["neighbors"]) == [2, 4]  # the class means nearest 3's in feature space
    assert result["per_class_acc"][3] == 0.0
    with pytest.raises(ValueError, match="prompts: expected one prompt per class"):
        ClassEvaluator(None, _FixedClassifier(), real, torch.arange(10).repeat_interleave(6), prompts=prompts[:3])


@pytest.mark.parametrize("model", ["class", "text"])
def test_demo_runs_end_to_end_and_writes_report_and_grid(tmp_path, model):
    out = tmp_path / "demo"
    settings = DemoSettings(forget=[1], model=model, steps=2, batch_size=4, out=str(out), pool_size=2,
                            eval=EvalSettings(**TINY_EVAL))
    report = run_demo(settings)
    on_disk = json.load(open(out / "report.json"))
    assert on_disk["method"] == "ru" and on_disk["forget"] == [1] and on_disk["model"] == model
    for when in ("before", "after"):
        assert all(isinstance(on_disk[when][k], float) for k in REPORT_METRICS)
    assert on_disk["steps"] == 2 and on_disk["seconds"] > 0
    assert on_disk["settings"]["eval"]["per_class"] == 2
    assert os.path.getsize(out / "grid.png") > 1000
    assert os.path.isdir(report["model_dir"])
    if model == "text":
        assert on_disk["settings"]["train"]["forget"] == [digit_prompt(1)]
        assert on_disk["settings"]["prompts"][1] == digit_prompt(1)
        assert os.path.isdir(os.path.join(report["model_dir"], "text_encoder"))
        assert digit_prompt(1, 2) in on_disk["paraphrases"]  # "digit 1": UA on the untrained paraphrases
        assert len(on_disk["paraphrases"]) == 7
        assert all(0 <= v["ua_after"] <= 1 for v in on_disk["paraphrases"].values())
    else:
        assert on_disk["paraphrases"] is None


@pytest.mark.parametrize("argv, message", [
    (["--forget", "12"], "forget: expected digits 0-9"),
    (["--method", "nope"], "method: expected one of"),
])
def test_demo_cli_rejects_bad_arguments(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["demo", "--out", str(tmp_path), *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_demo_cli_rejects_an_unknown_model(capsys):
    with pytest.raises(SystemExit):
        cli_main(["demo", "--model", "video"])
    assert "invalid choice: 'video'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="model: expected one of"):
        run_demo(DemoSettings(model="video"))
