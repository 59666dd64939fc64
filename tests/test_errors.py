"""Bad input: each row of ``docs/errors.md`` that the older test files do not already check.

Every error must name the argument (or config key) and say what was expected. The rows
already covered elsewhere (``tests/test_fused_eps_loss.py::test_bad_input_names_the_argument``,
``tests/test_schedules.py::test_bad_arguments``, ``tests/test_trainer.py::test_config_*``) are
referenced from the table, not repeated here.
"""

from __future__ import annotations

import dataclasses
import inspect
import types

import pytest
import torch

from unlearn_fast import fused_eps_loss
from unlearn_fast.config import ConfigError, TrainConfig, load_train_config
from unlearn_fast.methods import METHODS
from unlearn_fast.schedules import lookup, timestep_weights
from unlearn_fast.training import SampleSource, train


def _inputs(B=2, D=(3, 4), K=2, M=2):
    torch.manual_seed(0)
    pred = torch.randn(B, *D)
    others = [torch.randn(B, *D) for _ in range(K - 1)]
    return pred, others, torch.randn(M, K), torch.rand(B, M)


# --- the fused op: devices (dtype/shape rows are in test_fused_eps_loss.py) -------------------------


@pytest.mark.parametrize("which, match", [("others", r"^others\[0\]: device meta differs from pred's cpu"),
                                          ("coeffs", r"^coeffs: device meta differs from pred's cpu"),
                                          ("weights", r"^weights: device meta differs from pred's cpu")])
def test_device_mismatch_names_the_argument(which, match):
    """A tensor on another device than ``pred`` (the meta device stands in for a GPU)."""
    pred, others, coeffs, weights = _inputs()
    args = dict(pred=pred, others=others, coeffs=coeffs, weights=weights)
    args[which] = [others[0].to("meta")] if which == "others" else args[which].to("meta")
    with pytest.raises(ValueError, match=match):
        fused_eps_loss(**args)


def test_per_sample_coeffs_with_wrong_batch_and_weights_dtype():
    pred, others, coeffs, weights = _inputs(B=2, K=2, M=2)
    with pytest.raises(ValueError, match=r"^coeffs: expected \[M, K=2\] or \[B=2, M, K=2\].*got \(3, 2, 2\)"):
        fused_eps_loss(pred, others, torch.ones(3, 2, 2), weights)
    with pytest.raises(TypeError, match=r"^weights: expected a float tensor \[B, M\], got a torch.int64"):
        fused_eps_loss(pred, others, coeffs, torch.ones(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"^weights: expected shape \[B=2, M=2\], got \(2, 2, 1\)"):
        fused_eps_loss(pred, others, coeffs, weights.unsqueeze(-1))


# --- timesteps and schedulers --------------------------------------------------------------------


@pytest.mark.parametrize("timesteps, match", [
    (torch.tensor([0, 10]), r"^timesteps: expected values in \[0, 10\) .*got min 0, max 10"),
    (torch.tensor([-1, 3]), r"^timesteps: expected values in \[0, 10\) .*got min -1, max 3"),
    (torch.tensor([10.5]), r"^timesteps: expected float timesteps in \[0, 10\], got min 10.5"),
    (torch.tensor([[1, 2]]), r"^timesteps: expected a 1-D tensor \[B\], got shape \(1, 2\)"),
    (torch.tensor([True]), r"^timesteps: expected an integer or float tensor, got torch.bool"),
])
def test_timesteps_outside_the_weight_table(timesteps, match):
    with pytest.raises((ValueError, TypeError), match=match):
        lookup(torch.ones(10), timesteps)


def test_scheduler_without_betas_names_the_scheduler():
    fake = types.SimpleNamespace(config=types.SimpleNamespace(prediction_type="epsilon"), alphas_cumprod=torch.ones(3))
    with pytest.raises(TypeError, match=r"^scheduler: expected a diffusers scheduler with `betas` and "
                                        r"`alphas_cumprod` tensors .*got SimpleNamespace"):
        timestep_weights(fake, "kl")


def test_unsupported_prediction_type_from_the_scheduler_config():
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(num_train_timesteps=10)
    scheduler.register_to_config(prediction_type="flow")  # what a foreign config can carry
    with pytest.raises(ValueError, match=r"^prediction_type: expected one of \('epsilon', 'v_prediction', "
                                         r"'sample'\), got 'flow'"):
        timestep_weights(scheduler, "kl")


# --- an empty forget set ---------------------------------------------------------------------------


def test_empty_forget_set_in_config_and_config_file(tmp_path):
    with pytest.raises(ConfigError, match="^forget: expected at least one condition to unlearn, got none"):
        TrainConfig(forget=[])
    f = tmp_path / "run.toml"
    f.write_text("method = 'esd'\nforget = []\n")
    with pytest.raises(ConfigError, match="^forget: expected at least one condition"):
        load_train_config(str(f))


#: constructor arguments without a default that the trainer does not inject (from method_kwargs)
METHOD_REQUIRED_ARGS = {"lacu": {"targets": [5]}, "clacu": {"targets": [5]}}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_empty_forget_set_through_each_method_constructor(name):
    """Methods that take the forget set refuse an empty one in their constructor; the others
    (ablation, neggrad, finetune) get their forget samples from the data, which refuses it."""
    cls = METHODS[name]
    params = inspect.signature(cls.__init__).parameters
    available = {"forget": [], "anchor": 10, "num_conditions": 11, "num_forget_samples": 0}
    kwargs = {k: v for k, v in available.items() if k in params}
    kwargs.update(METHOD_REQUIRED_ARGS.get(name, {}))
    missing = [n for n, p in params.items() if n != "self" and p.default is p.empty and n not in kwargs
               and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    assert not missing, f"method {name!r}: add its required arguments {missing} to METHOD_REQUIRED_ARGS"
    if "forget" in params:
        with pytest.raises(ValueError, match="^forget: expected at least one condition to erase, got none"):
            cls(**kwargs)
    elif "num_forget_samples" in params:
        with pytest.raises(ValueError, match="^num_forget_samples: the forget set is empty"):
            cls(**kwargs)
    else:
        cls(**kwargs)  # nothing to check there: the data source refuses it
        empty, some = torch.zeros(0, 1, 8, 8), torch.zeros(4, 1, 8, 8)
        with pytest.raises(ValueError, match="^forget: the forget set is empty"):
            SampleSource(empty, torch.zeros(0), some, torch.zeros(4), batch_size=4, forget_fraction=0.5)


def test_empty_forget_set_through_train(tmp_path):
    """A config whose checks were bypassed (``forget`` emptied after construction) still stops
    in ``train`` before any step, naming ``forget``."""
    config = TrainConfig(forget=["3"], max_steps=1, batch_size=4, output_dir=str(tmp_path / "run"), progress=False,
                         device="cpu")
    object.__setattr__(config, "forget", [])
    with pytest.raises(ValueError, match="^forget: the forget set is empty"):
        train(config)
    assert not (tmp_path / "run" / "final").exists()


# --- configuration keys and types ---------------------------------------------------------------------


def test_unknown_key_from_dict_and_yaml(tmp_path):
    with pytest.raises(ConfigError, match=r"^max_stepz: unknown key in config \(known keys: .*max_steps"):
        TrainConfig.from_dict({"forget": ["3"], "max_stepz": 3})
    f = tmp_path / "run.yaml"
    f.write_text("forget: [3]\nallow_pickles: true\n")
    with pytest.raises(ConfigError, match=r"^allow_pickles: unknown key in .*run.yaml"):
        load_train_config(str(f))


@pytest.mark.parametrize("key, value, expected", [
    ("allow_pickle", "yes", "allow_pickle: expected bool, got str ('yes')"),
    ("model_path", 3, "model_path: expected str or null, got int (3)"),
    ("method_kwargs", [1], "method_kwargs: expected table (dict), got list ([1])"),
    ("retain", [1.5], "retain: expected list of str or int, got list ([1.5])"),
])
def test_config_wrong_types_name_the_key(key, value, expected):
    with pytest.raises(ConfigError) as err:
        TrainConfig(**{"forget": ["3"], key: value})
    assert str(err.value) == expected


def test_config_is_checked_again_after_replace():
    config = TrainConfig(forget=["3"])
    with pytest.raises(ConfigError, match="^batch_size: expected an int >= 1, got 0"):
        dataclasses.replace(config, batch_size=0)


# --- model paths --------------------------------------------------------------------------------------


def test_model_path_that_is_a_file_or_missing(tmp_path):
    from unlearn_fast.models_zoo import load_class_ddpm

    f = tmp_path / "weights.safetensors"
    f.write_bytes(b"")
    with pytest.raises(ConfigError, match="^model_path: expected a diffusers folder, got a file"):
        TrainConfig(forget=["3"], model_path=str(f))
    with pytest.raises(FileNotFoundError, match=r"^path: class DDPM not found at .*no_model \(expected a "
                                                r"diffusers folder with config.json: .*no_model/config.json is "
                                                r"missing\)"):
        load_class_ddpm(str(tmp_path / "no_model"))


# --- an incomplete installation: a missing embedded asset -------------------------------------------


@pytest.mark.parametrize("model, relative", [("class", "class_ddpm/diffusion_pytorch_model.safetensors"),
                                             ("text", "text_ddpm/text_encoder/model.safetensors"),
                                             ("class", "classifier.safetensors")])
def test_missing_asset_names_the_file_and_version(tmp_path, monkeypatch, capsys, model, relative):
    """A wheel without an asset: one error line naming the file and the version, exit 2, no hint to retrain."""
    import shutil

    import unlearn_fast
    from unlearn_fast import asset_files
    from unlearn_fast.cli import main

    copy = tmp_path / "assets"
    shutil.copytree(asset_files.ASSETS_DIR, copy)
    (copy / relative).unlink()
    monkeypatch.setattr(asset_files, "ASSETS_DIR", str(copy))
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--model", model, "--steps", "1", "--per-class", "1", "--out", str(tmp_path / "out")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"unlearn-fast demo: error: unlearn_fast/assets/{relative}: embedded asset missing "
                             f"from unlearn_fast {unlearn_fast.__version__}")
    assert "train" not in err[0] and "Traceback" not in err[0]
