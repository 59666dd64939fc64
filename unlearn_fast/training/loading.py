"""What a run trains: the model adapter of the config's family, LoRA, the method, condition ids."""

from __future__ import annotations

import inspect

from ..config import TrainConfig
from ..methods import METHODS, Method
from ..models import ConditionedModel, family_of, load


def family_name(config: TrainConfig) -> str:
    """The config's family (``model``, or detected from ``model_path``)."""
    from ..models import detect_family

    return family_of(config.model).name if config.model != "auto" else detect_family(config.model_path)


def prompts_of(config: TrainConfig) -> list[str]:
    """Every prompt a run conditions on: forget, retain, the anchors, and the method's condition
    arguments (e.g. LACU's mapping targets)."""
    prompts = [str(p) for p in list(config.forget) + list(config.retain)]
    if config.anchor is not None:
        prompts.append(str(config.anchor))
    prompts.extend(str(p) for p in config.anchor_map.values())
    for arg in getattr(METHODS.get(config.method), "condition_args", ()):
        prompts.extend(str(p) for p in config.method_kwargs.get(arg, ()))
    return list(dict.fromkeys(prompts))


def load_model(config: TrainConfig, device="cpu") -> tuple[ConditionedModel, object, str]:
    """``(adapter, scheduler, family)`` for the config's model (before LoRA wrapping); text
    encoders are moved back to the CPU once the run's prompts are encoded."""
    family = family_name(config)
    adapter, scheduler = _load(config, config.model_path, family, device)
    adapter.module.train()
    return adapter, scheduler, family


def _load(config: TrainConfig, path: str | None, family: str, device) -> tuple[ConditionedModel, object]:
    """``(adapter, scheduler)`` of ``path`` with the config's prompts and loading options; text
    encoders moved back to the CPU once the prompts are encoded."""
    adapter, scheduler = load(path, family, prompts=prompts_of(config) if family_of(family).text else (),
                              device=device, allow_pickle=config.allow_pickle, resolution=config.resolution,
                              null_class=config.null_class)
    if hasattr(adapter, "offload"):
        adapter.offload("cpu")
    return adapter, scheduler


def load_teacher(config: TrainConfig, student: ConditionedModel, family: str, device="cpu") -> ConditionedModel:
    """The run's frozen teacher: ``config.teacher_path`` (same family, same conditions as the
    student) or a frozen copy of the student."""
    if config.teacher_path is None:
        return student.teacher()
    teacher, _ = _load(config, config.teacher_path, family, device)
    if list(teacher.conditions) != list(student.conditions):
        raise ValueError(f"teacher_path: expected a model with the conditions of model_path, got "
                         f"{len(teacher.conditions)} conditions {list(teacher.conditions)[:4]}... in "
                         f"{config.teacher_path!r}")
    teacher.module.requires_grad_(False).eval()
    return teacher


def condition_ids(adapter: ConditionedModel, names, family: str) -> list[int]:
    """Condition ids of ``names`` (prompts for a text family, class ids or names otherwise)."""
    text = family_of(family).text
    return [adapter.condition_id(str(n) if text else n) for n in names]


def add_lora(adapter: ConditionedModel, config: TrainConfig) -> None:
    """Wrap ``adapter.module`` in peft LoRA adapters (the teacher: the same network, adapters off)."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as e:  # pragma: no cover
        raise ImportError("train_params = 'lora' needs peft: pip install peft") from e
    lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha or config.lora_rank,
                      target_modules=list(config.lora_targets), lora_dropout=0.0, init_lora_weights=True)
    try:
        adapter.module = get_peft_model(adapter.module, lora)
    except ValueError as e:
        raise ValueError(f"lora_targets: {list(config.lora_targets)} match no layer of this model ({e})") from e


def build_method(config: TrainConfig, available: dict, condition_ids=None) -> Method:
    """The method of ``config.method``: its constructor gets those of ``available`` (forget ids,
    anchor id, num_conditions, num_forget_samples) it names, plus ``config.method_kwargs``,
    whose condition lists (``Method.condition_args``) go through ``condition_ids(names)``."""
    cls = METHODS[config.method]
    params = inspect.signature(cls.__init__).parameters
    kwargs = {k: v for k, v in available.items() if k in params}
    kwargs.update(config.method_kwargs)
    if condition_ids is not None:
        for arg in cls.condition_args:
            if arg in kwargs:
                kwargs[arg] = condition_ids(kwargs[arg])
    return cls(**kwargs)
