"""Attacks on the embedded class model: each brings a digit back where it is only hidden, and bad inputs get one clear error;
adversarial unlearning: its rows, its inner attack, its exact resume and its settings errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from unlearn_fast.attacks import AttackSettings, AttackedModel, attack_target, build_context, run_attack
from unlearn_fast.config import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def hidden_seven(tmp_path_factory) -> str:
    """The embedded class model with 7's class embedding replaced by 1's: it draws a 1 for "7",
    but everything that drew a 7 is still in the network (hidden, not erased)."""
    from unlearn_fast.asset_files import require_embedded

    folder = tmp_path_factory.mktemp("hidden") / "model"
    shutil.copytree(require_embedded("class_ddpm"), folder)
    weights = folder / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    table = state["class_embedding.weight"].clone()
    table[7] = table[1]
    state["class_embedding.weight"] = table
    save_file(state, str(weights))
    return str(folder)


def _settings(tmp_path, **kw) -> AttackSettings:
    values = dict(concept="7", samples=32, eval_steps=10, fid=False, out=str(tmp_path / "out"), seed=0)
    values.update(kw)
    return AttackSettings(**values)


def test_the_attacked_condition_reads_the_free_embedding_and_nothing_else():
    from unlearn_fast.models_zoo import load_embedded

    for kind in ("class", "text"):
        model, _ = load_embedded(kind)
        attacked = AttackedModel(model, 7)
        x, t = torch.randn(4, 1, 16, 16), torch.full((4,), 500)
        ids = torch.tensor([7, attacked.attack_id, 3, attacked.attack_id])
        with torch.no_grad():
            same = attacked.predict(x, t, ids)
            plain = model.predict(x, t, torch.tensor([7, 7, 3, 7]))
        assert torch.allclose(same, plain, atol=1e-5), kind  # starts as the concept's own conditioning
        attacked.predict(x, t, ids).pow(2).sum().backward()
        assert attacked.embedding.grad is not None and attacked.embedding.grad.abs().sum() > 0
        with torch.no_grad():
            attacked.embedding.add_(torch.randn_like(attacked.embedding))  # (a constant shift: LayerNorm removes it)
            moved = attacked.predict(x, t, ids)
        assert torch.allclose(moved[[0, 2]], plain[[0, 2]], atol=1e-5)  # other rows unchanged
        assert not torch.allclose(moved[[1, 3]], plain[[1, 3]], atol=1e-3)


def test_inversion_recovers_a_hidden_digit(hidden_seven, tmp_path):
    report = run_attack(_settings(tmp_path, attack="inversion", model_path=hidden_seven, steps=60, k=16), log=lambda *_: None)
    assert report["asr_before"] <= 0.2  # the model draws 1 for "7"
    assert report["asr"] >= 0.6, report["asr"]
    assert report["budget"]["k"] == 16 and len(report["curve"]) == 60
    curve = report["per_step_asr"]  # read at step 0, every asr_every (10) steps and at the end
    assert [p["step"] for p in curve] == list(range(0, 61, 10))
    kept = next(p for p in curve if p["step"] == report["kept_step"])  # the detector's best read step
    assert kept["asr"] == report["asr"] and kept["detector_asr"] == max(p["detector_asr"] for p in curve)
    assert curve[0]["asr"] == pytest.approx(report["asr_before"], abs=1e-4)  # it starts from the concept's own
    assert json.load(open(tmp_path / "out" / "report.json"))["asr"] == report["asr"]
    assert (tmp_path / "out" / "attack.png").stat().st_size > 0


class _ScriptedContext:
    """What ``_optimise`` reads of an attack context, with scripted evaluator and detector reads."""

    def __init__(self, keep, evaluator, detector):
        from types import SimpleNamespace

        self.settings = SimpleNamespace(lr=0.1, asr_every=1, keep=keep)
        self.init_id, self.before = None, None
        self._evaluator, self._detector, self.reads = list(evaluator), list(detector), 0

    def asr(self, attacked, cond_id):
        self.reads += 1
        return self._evaluator[self.reads - 1], torch.full((1,), float(self.reads - 1))

    def detector_asr(self, attacked, cond_id):
        return self._detector[self.reads - 1]


@pytest.mark.parametrize("keep, step, asr", [("best", 1, 0.7), ("last", 4, 0.95)])
def test_the_attack_keeps_the_detectors_best_step_never_the_evaluators(keep, step, asr):
    from types import SimpleNamespace

    from unlearn_fast.attacks.embedding import _optimise

    attacked = SimpleNamespace(embedding=torch.nn.Parameter(torch.zeros(3)), attack_id=11)
    seen = []

    def loss_of_step(_):
        seen.append(attacked.embedding.detach().clone())
        return -attacked.embedding.sum()  # Adam moves every entry up by lr each step

    # the evaluator's best is the last step (0.95); the detector's is step 1 (0.9, tied at step 3: the earlier)
    ctx = _ScriptedContext(keep, evaluator=[0.0, 0.7, 0.8, 0.6, 0.95], detector=[0.1, 0.9, 0.5, 0.9, 0.2])
    out = _optimise(ctx, attacked, loss_of_step, 4, None)
    assert out["kept_step"] == step and out["asr"] == asr and float(out["samples"][0]) == step
    assert [p["asr"] for p in out["per_step_asr"]] == [0.0, 0.7, 0.8, 0.6, 0.95]  # the whole curve is reported
    assert torch.allclose(attacked.embedding.detach(), torch.full((3,), 0.1 * step), atol=1e-6)  # left at that step
    assert ("detector_asr" in out["per_step_asr"][0]) == (keep == "best")


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory) -> str:
    """The embedded class model fine-tuned for 10 steps on the retained digits (nothing erased)."""
    from unlearn_fast.config import TrainConfig
    from unlearn_fast.training import train

    out = tmp_path_factory.mktemp("finetuned")
    torch.set_num_threads(1)
    return train(TrainConfig(method="finetune", forget=["7"], max_steps=10, batch_size=16, lr=1e-4, progress=False,
                             output_dir=str(out), log_every=10)).final_dir


@pytest.mark.parametrize("which", ["original", "finetuned"])
def test_inversion_from_another_digit_recovers_seven(which, finetuned, tmp_path):
    path = None if which == "original" else finetuned
    report = run_attack(_settings(tmp_path, attack="inversion", model_path=path, init="1", steps=60, k=16),
                        log=lambda *_: None)
    assert report["asr_before"] >= 0.9  # the model still draws its 7s
    assert report["asr_start"] <= 0.2  # the free conditioning starts as a 1
    assert report["asr"] >= 0.6, report["per_step_asr"]


def test_relearn_recovers_a_hidden_digit_with_a_per_step_curve(hidden_seven, tmp_path):
    report = run_attack(_settings(tmp_path, attack="relearn", model_path=hidden_seven, steps=20, k=16, asr_every=10),
                        log=lambda *_: None)
    steps = [p["step"] for p in report["per_step_asr"]]
    assert steps == [0, 10, 20]
    assert report["per_step_asr"][0]["asr"] == pytest.approx(report["asr_before"], abs=1e-4)
    assert report["asr_before"] <= 0.2
    best = max(p["asr"] for p in report["per_step_asr"])
    assert best >= 0.3 and best >= report["asr_before"] + 0.25, report["per_step_asr"]  # 20 steps on 16 images


def test_resurgence_trains_on_retained_digits_only(hidden_seven, tmp_path):
    ctx = build_context(_settings(tmp_path, attack="resurgence", model_path=hidden_seven, k=32))
    assert "7" not in ctx.target.retained_conditions[:32]
    report = run_attack(_settings(tmp_path, attack="resurgence", model_path=hidden_seven, steps=4, k=32, asr_every=2),
                        log=lambda *_: None)
    assert [p["step"] for p in report["per_step_asr"]] == [0, 2, 4] and report["budget"]["k"] == 32


@pytest.mark.parametrize("kw, match", [
    (dict(concept="12"), "concept: expected a digit 0-9"),
    (dict(concept="purple", model="shapes"), "concept: expected an object"),
    (dict(attack="inversion", k=100000), "k: expected at most"),
    (dict(attack="resurgence", k=100000), "k: expected at most"),
    (dict(init="eleven", attack="inversion"), "init: expected a digit 0-9"),
])
def test_bad_attack_inputs_get_one_error_naming_the_argument(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        run_attack(_settings(tmp_path, steps=1, samples=2, eval_steps=1, **kw), log=lambda *_: None)


def test_a_model_without_the_concepts_condition_is_named(tmp_path):
    from diffusers import DDPMScheduler
    from helpers import tiny_class_unet

    folder = tmp_path / "six_classes"
    tiny_class_unet(classes=6, size=16).save_pretrained(folder)
    DDPMScheduler(num_train_timesteps=10).save_pretrained(folder)
    with pytest.raises(ValueError, match="concept: the model has no condition '7'"):
        build_context(_settings(tmp_path, model_path=str(folder)))


def test_attack_settings_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="model_path: expected a model folder"):
        _settings(tmp_path, model_path=str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="samples: expected an int >= 1"):
        _settings(tmp_path, samples=0)
    with pytest.raises(ConfigError, match="attack"):
        _settings(tmp_path, attack="prompt-injection")


def test_the_attack_command_prints_one_error_line(capsys):
    from unlearn_fast.cli import main

    with pytest.raises(SystemExit) as e:
        main(["attack", "--concept", "12", "--steps", "1", "--samples", "2", "--no-fid"])
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "it/s]" not in line]
    assert e.value.code == 2 and len(err) == 1 and "concept: expected a digit" in err[0], err


def test_shapes_targets_read_objects_styles_and_combinations():
    star = attack_target("shapes", "star")
    combo = attack_target("shapes", "hollow star")
    assert star.condition == "a star" and combo.condition == "a hollow star"
    assert len(star.pool) == 6 * len(combo.pool)  # the star in all 6 styles against one
    assert "a hollow star" not in combo.retained_conditions and "a hollow circle" in combo.retained_conditions


# --- adversarial unlearning (methods.adversarial) -------------------------------------------------


def _adv_config(class_dir, out, **kw):
    from unlearn_fast.config import TrainConfig

    values = dict(method="ru", forget=["3"], retain=["1", "7"], model_path=class_dir, batch_size=6, max_steps=4,
                  log_every=1, output_dir=str(out), progress=False, method_kwargs={"bound": 0.05}, adversarial=True,
                  adversarial_every=2, adversarial_steps=2)
    values.update(kw)
    return TrainConfig(**values)


def test_adversarial_rows_see_the_attacks_conditioning_and_the_attack_follows_the_model(class_dir, tmp_path):
    from unlearn_fast.methods.adversarial import Adversarial
    from unlearn_fast.methods.base import FORGET, RETAIN, Batch
    from unlearn_fast.training import train

    result = train(_adv_config(class_dir, tmp_path / "run"))
    method = result.method
    assert isinstance(method, Adversarial) and method.calls == 4
    start = result.teacher.module.class_embedding.weight[3].float()
    assert not torch.allclose(method.attacked.embedding.detach(), start)  # two rounds moved it off the concept's
    assert "adv_inversion_loss" in result.metrics and "ru/lambda[3]" in result.metrics
    # a share of the forget rows (the default 0.25: one of four) reads the attack's condition; the retain rows
    # and the teacher's slots are untouched
    role = torch.tensor([FORGET] * 4 + [RETAIN] * 2)
    batch = Batch(torch.zeros(6, 1, 8, 8), torch.tensor([3, 3, 3, 3, 1, 7]), role, n_forget=4)
    plain = method.inner.recipe(batch, torch.ones(6))
    r = method.recipe(batch, torch.ones(6))
    assert method.share == 0.25
    assert r.student_cond.tolist() == [method.attacked.attack_id] + [3, 3, 3, 1, 7]
    assert torch.equal(r.teacher_conds, plain.teacher_conds) and torch.equal(r.coeffs, plain.coeffs)
    info = json.loads((Path(result.final_dir) / "unlearn_info.json").read_text())
    assert info["duals"]["lambdas"] and info["config"]["adversarial"] is True


def test_adversarial_resume_is_exact(class_dir, tmp_path):
    from unlearn_fast.training import train

    from helpers import assert_same_weights

    common = dict(max_steps=6, checkpoint_every=3, keep_checkpoints=0, seed=2, adversarial_every=2)
    straight = train(_adv_config(class_dir, tmp_path / "straight", **common))
    half = train(_adv_config(class_dir, tmp_path / "half", **{**common, "max_steps": 3}))
    assert half.method.calls == 3
    resumed = train(_adv_config(class_dir, tmp_path / "half", resume="latest", **common))
    assert resumed.method.calls == 6
    weights = lambda r: load_file(str(Path(r.final_dir) / "diffusion_pytorch_model.safetensors"))  # noqa: E731
    assert_same_weights(weights(resumed), weights(straight))
    assert torch.equal(resumed.method.attacked.embedding.detach(), straight.method.attacked.embedding.detach())


def test_adversarial_settings_errors_name_the_key(class_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"^adversarial: .*one concept; got forget = \['3', '5'\]"):
        _adv_config(class_dir, tmp_path, forget=["3", "5"])
    with pytest.raises(ConfigError, match=r"^adversarial_share: expected a float in \(0, 1\]"):
        _adv_config(class_dir, tmp_path, adversarial_share=0.0)
    with pytest.raises(ConfigError, match=r"^adversarial_every: expected an int >= 1"):
        _adv_config(class_dir, tmp_path, adversarial_every=0)
    with pytest.raises(ConfigError, match=r"^adversarial_steps: expected an int >= 1, got 0"):
        _adv_config(class_dir, tmp_path, adversarial_steps=0)
    with pytest.raises(ConfigError, match=r"^adversarial_lr: expected a float > 0"):
        _adv_config(class_dir, tmp_path, adversarial_lr=0.0)


def test_the_adversarial_wrapper_checks_its_settings_as_the_config_does():
    from unlearn_fast.methods.adversarial import Adversarial

    with pytest.raises(ValueError, match=r"^adversarial_steps: expected an int >= 1, got 0"):
        Adversarial(object(), 3, steps=0)
    with pytest.raises(ValueError, match=r"^adversarial_share: expected a float in \(0, 1\], got 1.5"):
        Adversarial(object(), 3, share=1.5)
