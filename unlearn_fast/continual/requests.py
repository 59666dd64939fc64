"""One request of a continual run as a trainer run: its TrainConfig, reuse of a finished one, its scores.

``train_request`` turns the requests into the model's conditions (``spaces``), builds the
``TrainConfig`` (the caller's method and kwargs; ``ru_request``: RU at ``NAIVE_RU``), and runs
``training.train`` in the request's folder; a rerun reuses a ``final/`` written with the same settings and
resumes an interrupted request from its checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

from .settings import ContinualSettings

#: RU of naive / l2 / simultaneous: the demo's RU constants (demo.DEMO_METHOD_DEFAULTS) without
#: its lambda_max cap, pinned here because the reported continual runs used exactly these
NAIVE_RU = dict(method_kwargs=dict(bound=0.05, dual_lr=2.0, init_lambda=0.4, retain_weight=10.0))


def scores(evaluator, model, erased: list, original, space=None) -> dict:
    """The per-step metrics of a model after a request (over everything erased so far); ``space``:
    the request space (``spaces.space_of``; default: digits)."""
    from .spaces import DigitSpace

    return (space or DigitSpace(None)).scores(evaluator, model, erased, original)


def train_request(settings: ContinualSettings, method: str, model_path: str | None, forget: list, out_dir: str, *,
                  steps: int, retain: list | None = None, method_kwargs: dict | None = None, l2_anchor: float = 0.0,
                  lr: float | None = None, seed: int = 0, overrides: dict | None = None, erased: list = (),
                  space=None):
    """Request ``forget`` (digits, or shapes concepts) as a trainer run in ``out_dir``; ``erased``:
    the requests before it (a shapes request keeps none of their combinations); ``space``: the
    run's request space (``spaces.space_of(settings)`` when None; a shapes space carries the
    mapping targets chosen so far)."""
    from ..config import TrainConfig
    from ..methods import METHODS
    from ..training import list_checkpoints, train
    from .spaces import space_of

    space = space or space_of(settings)
    fields = space.request_fields(list(forget), retain, list(erased), out_dir)
    extra = {"log_every": steps}
    if method_kwargs is not None:
        labels = METHODS[method].condition_args  # class labels, given to the trainer as condition names
        kwargs = {k: space.condition_names(v) if k in labels else v for k, v in method_kwargs.items()}
        extra["method_kwargs"] = space.method_kwargs(method, kwargs)
    extra.update(overrides or {})
    fields.update(extra)  # lacu's overrides replace the data fields
    config = TrainConfig(
        method=method, model_path=model_path, max_steps=steps, batch_size=settings.batch_size,
        lr=lr or settings.lr, seed=seed, output_dir=out_dir, overwrite=True, checkpoint_every=0,
        progress=settings.progress, l2_anchor=l2_anchor, **fields,
    )
    start = time.perf_counter()
    finished = finished_request(config)
    if finished is not None:  # a rerun after an interruption: this request was done already
        return finished, 0.0, config
    if list_checkpoints(out_dir):  # interrupted mid-request (SIGTERM writes a checkpoint): continue it
        config = dataclasses.replace(config, resume="latest", overwrite=False)
    result = train(config)
    return result, time.perf_counter() - start, config


def ru_request(settings: ContinualSettings, model_path: str | None, forget: list, out_dir: str, *,
               steps: int, l2_anchor: float = 0.0, seed: int = 0, erased: list = (), space=None):
    """A request of naive / l2 / simultaneous: RU at ``NAIVE_RU`` on ``forget``."""
    return train_request(settings, "ru", model_path, forget, out_dir, steps=steps,
                         method_kwargs=NAIVE_RU["method_kwargs"], l2_anchor=l2_anchor, seed=seed, erased=erased,
                         space=space)


#: settings that do not change what a request trains
_RUN_ONLY_KEYS = ("progress", "overwrite", "resume")


def finished_request(config):
    """The ``TrainResult`` of a request whose ``final/`` was written by the same settings, else None."""
    from ..training import TrainResult, load_model

    final = os.path.join(config.output_dir, "final")
    info_file = os.path.join(final, "unlearn_info.json")
    if not os.path.isfile(info_file):
        return None
    try:
        with open(info_file) as f:
            recorded = json.load(f).get("config", {})
    except (OSError, ValueError):
        return None
    wanted = {k: v for k, v in config.to_dict().items() if k not in _RUN_ONLY_KEYS}
    if {k: v for k, v in recorded.items() if k not in _RUN_ONLY_KEYS} != json.loads(json.dumps(wanted)):
        return None
    model, _, _ = load_model(dataclasses.replace(config, model_path=final))
    model.module.eval()
    return TrainResult(output_dir=config.output_dir, final_dir=final, step=config.max_steps, metrics={},
                       model=model, resumed_from=final)


def train_summary(config) -> dict:
    keep = ("method", "method_kwargs", "forget", "retain", "max_steps", "batch_size", "lr", "seed", "l2_anchor",
            "weighting", "source", "data", "pool_size", "pool_guidance", "mnist_conditions", "teacher_path",
            "anchor_map")
    return {k: v for k, v in config.to_dict().items() if k in keep}


def telemetry(out_dir: str, prefix: str) -> dict:
    """Per logged step, the metrics of ``OUT/metrics.jsonl`` whose key starts with ``prefix``:
    ``{"step": [...], key: [...]}`` (a request's dual trajectories)."""
    path = os.path.join(out_dir, "metrics.jsonl")
    out: dict = {"step": []}
    if not os.path.isfile(path):
        return out
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    keys = sorted({k for r in rows for k in r if k.startswith(prefix)})
    for r in rows:
        out["step"].append(r["step"])
        for k in keys:
            out.setdefault(k, []).append(r.get(k))
    return out
