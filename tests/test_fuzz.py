"""Fuzzing ``train``'s settings: YAML/TOML config values and CLI flag values of every kind
(wrong types, out-of-range numbers, unknown keys, odd strings) give a clear error or a valid
run, never a traceback.

The validation fuzz runs the real config loading and the real CLI with the training itself
replaced by a recorder (500+ cases in seconds); a smaller fuzz runs the real trainer for
one step on the values that validate.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unlearn_fast.config import ConfigError, TrainConfig, load_train_config

KEYS = [f.name for f in dataclasses.fields(TrainConfig)]
ODD_STRINGS = st.sampled_from(["", " ", "none", "null", "NaN", "-1", "1e999", "ru\x00", "☃", "../../etc", "3,5",
                               "@", "--max-steps", "true", "[1, 2]", "a" * 300])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
                    st.floats(allow_nan=True, allow_infinity=True), ODD_STRINGS, st.text(max_size=12))
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=3), st.dictionaries(st.text(max_size=5), SCALARS, max_size=2))
KEY = st.one_of(st.sampled_from(KEYS), st.sampled_from(["max_step", "lr_rate", "", "method.kwargs"]))


def _check_config_outcome(call):
    """Either a validated TrainConfig or one ConfigError that names a key; nothing else."""
    try:
        config = call()
    except ConfigError as e:
        msg = str(e)
        assert msg and ":" in msg.split("\n")[0], msg
        return None
    assert isinstance(config, TrainConfig)
    for name in ("lr", "forget_fraction", "logit_std"):
        value = getattr(config, name)
        assert isinstance(value, float) and math.isfinite(value), (name, value)
    return config


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(table=st.dictionaries(KEY, VALUES, max_size=6), fmt=st.sampled_from(["yaml", "toml"]))
def test_fuzz_config_files(tmp_path, table, fmt):
    table.setdefault("forget", ["3"])
    path = tmp_path / f"run.{fmt}"
    if fmt == "yaml":
        path.write_text(yaml.safe_dump(table, allow_unicode=True))
    else:
        path.write_text(_toml(table))
    _check_config_outcome(lambda: load_train_config(str(path)))


def _toml(table: dict) -> str:
    """A TOML rendering (odd values become strings TOML can hold; the loader still sees odd types)."""
    import json

    lines, sub = [], []
    for k, v in table.items():
        key = json.dumps(k)
        if isinstance(v, dict):
            sub.append((key, v))
        else:
            lines.append(f"{key} = {_toml_value(v)}")
    for key, v in sub:
        lines.append(f"[{key}]")
        lines.extend(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items())
    return "\n".join(lines) + "\n"


def _toml_value(v) -> str:
    import json

    if v is None:
        return '"none"'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v) if abs(v) < 2**63 else json.dumps(str(v))
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v))


FLAGS = ["--" + k.replace("_", "-") for k in KEYS if k not in ("method_kwargs", "anchor_map")] + [
    "--method-kwarg", "--anchor-map", "--config", "--not-a-flag"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pairs=st.lists(st.tuples(st.sampled_from(FLAGS), st.one_of(ODD_STRINGS, st.text(max_size=8),
                                                                   st.integers().map(str),
                                                                   st.floats().map(str))), max_size=5))
def test_fuzz_cli_flags(monkeypatch, capsys, pairs):
    import unlearn_fast.training as training
    from unlearn_fast.cli import main

    seen = []

    def recorder(config):
        seen.append(config)
        raise ValueError("recorded")  # stands for the run; the CLI turns it into one error line

    monkeypatch.setattr(training, "train", recorder)
    argv = ["train", "--forget", "3"]
    for flag, value in pairs:
        argv += [flag, value]
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert code == 2, (argv, code, err)
    last = err.strip().splitlines()[-1]  # argparse's own errors come from "unlearn-fast" or "unlearn-fast train"
    assert last.startswith(("unlearn-fast train: error: ", "unlearn-fast: error: ")), (argv, err)
    if seen:  # it validated: the recorder ran with a checked config
        assert isinstance(seen[0], TrainConfig) and last.endswith("recorded")


@pytest.mark.usefixtures("one_thread")
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.fixed_dictionaries({}, optional={
    "batch_size": st.integers(min_value=-1, max_value=5), "forget_fraction": st.floats(-0.5, 1.5),
    "lr": st.floats(-1, 1), "method": st.sampled_from(["ru", "fu", "lu", "esd", "ablation", "neggrad", "x"]),
    "forget": st.lists(st.sampled_from(["3", "7", "10", "11", "cat", 3]), max_size=2),
    "retain": st.lists(st.sampled_from(["1", "3", "12"]), max_size=2),
    "weighting": st.sampled_from(["simple", "kl", "min_snr", "bad"]), "t_range": st.lists(st.integers(-5, 1200), max_size=3),
    "reduction": st.sampled_from(["mean", "sum"]), "grad_accum": st.integers(0, 2)}))
def test_fuzz_real_runs_end_in_a_result_or_a_clear_error(class_dir, tmp_path_factory, values):
    """The values that validate run the real trainer (one step); the rest stop at validation.
    Either way: a result, or one ValueError naming a key or argument."""
    from unlearn_fast.training import train

    base = dict(model_path=class_dir, max_steps=1, batch_size=2, output_dir=str(tmp_path_factory.mktemp("fuzz")),
                progress=False, forget=["3"])
    base.update(values)
    try:
        result = train(TrainConfig(**base))
    except ValueError as e:  # ConfigError is one
        head = str(e).split(":")[0]
        assert head and " " not in head.strip() or head.startswith("method_kwargs"), str(e)
        return
    assert result.step == 1
