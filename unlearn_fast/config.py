"""The training configuration: one dataclass, loaded from TOML/YAML and flags, validated once.

``TrainConfig`` holds every setting of ``unlearn-fast train``. It validates itself when it
is built (``__post_init__``), so whatever path produced it (a TOML or YAML file, CLI flags,
Python code, ``dataclasses.replace``) the trainer receives a checked configuration and does
not check again. Errors are ``ConfigError`` (a ``ValueError``) naming the key and what it
expected:

    >>> TrainConfig(max_steps="ten")
    ConfigError: max_steps: expected int, got str ('ten')

Precedence: dataclass defaults < the config file < CLI flags (``load_train_config``).

A config file is a flat table of these keys; ``method_kwargs`` is a sub-table passed to
the method's constructor (checked against its signature), e.g.::

    method = "ru"
    forget = ["3"]
    max_steps = 200
    output_dir = "runs/ru-3"

    [method_kwargs]
    bound = 0.05
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

__all__ = ["ConfigError", "TrainConfig", "check_field_types", "load_config_file", "load_train_config", "INJECTED_METHOD_ARGS"]


class ConfigError(ValueError):
    """An invalid configuration: names the key, what it expected and what it got."""


#: constructor arguments the trainer supplies to a method itself (from the model and data)
INJECTED_METHOD_ARGS = ("forget", "anchor", "num_conditions", "num_forget_samples")

Condition = Union[str, int]


@dataclass
class TrainConfig:
    """Every setting of a training run (see the module docstring for the file format).

    Method:
        method: a key of ``unlearn_fast.methods.METHODS`` (ru, fu, lu, esd, ablation, neggrad, finetune).
        method_kwargs: extra constructor arguments of the method (``bound``, ``dual_lr``, ``eta``...).
        forget: conditions to unlearn: class names/ids (``"3"`` or ``3``) or prompts.
        retain: conditions to keep; empty for a class model means every other class.
        anchor: the anchor condition of RU/LU/ESD/ablation (default: the null condition).
        anchor_map: a forget condition's own anchor, ``{forget condition: anchor condition}``
            (``{"a striped star": "a star"}``: erase the style, keep the object); forget conditions
            not named use ``anchor``.

    Model:
        model: the model family (``unlearn_fast.models.FAMILIES``): ``"class"`` (a class-conditional
            ``UNet2DModel`` folder, flat or with ``unet/`` and ``scheduler/``), ``"sd"`` (SD 1.x/2.x
            pipeline; ``"text"`` is the same), ``"sdxl"``, ``"sd3"``, ``"flux"``, ``"dit"``, or
            ``"auto"`` (from the folder's ``model_index.json``; docs/models.md).
        model_path: a diffusers folder; ``None`` is the embedded 16x16 MNIST model: the class DDPM,
            or the text-conditioned DDPM with ``model = "text"``.
        resolution: image side in pixels for the families that condition on it (SDXL's time ids)
            or whose default is large (SD3, Flux: 1024); ``None``: the model's default.
        null_class: the null class id of a class model (default: the last class).
        teacher_path: a model folder of the same family and conditions whose frozen predictions
            are the run's teacher (``None``: a frozen copy of the starting model). A continual
            sequence gives the original model here, so each request is measured against the
            original, not against the previous request's drifted one.
        allow_pickle: also load pickle-based weights (``diffusion_pytorch_model.bin``,
            ``pytorch_model.bin``, ``.pt``/``.pth``/``.ckpt``) when a folder has no safetensors
            weights. Off by default: unpickling an untrusted file can run arbitrary code.

    Data:
        data: ``"mnist"`` (the embedded MNIST train split), ``"pool"`` (samples of the frozen
            teacher, generated once with the family's sampler), ``"images"`` (the user's image
            folders ``forget_images`` and ``retain_images``) or ``"auto"`` (mnist for class models,
            pool otherwise).
        forget_images, retain_images: image folders (Hugging Face imagefolder layout: an optional
            ``metadata.jsonl`` with ``file_name`` and ``text``; without a text an image takes the one
            ``forget``/``retain`` prompt), resized, encoded once by the model's VAE and cached.
        pool_size, pool_steps, pool_guidance: teacher samples per condition, sampler steps, CFG
            scale (``None``: the family's default, 1.5 for the embedded models).
        mnist_conditions: with ``data = "pool"`` on a class model, these classes take ``pool_size``
            MNIST train images instead of pool samples (continual LACU gives the classes erased
            earlier, so their mapping is retrained where their real images lie).

    Optimisation: max_steps (optimizer steps), batch_size (per process and micro-batch; with
        ``grad_accum`` > 1 the duals still step once per micro-batch, as the engine updates them
        from each pass's distances),
        forget_fraction (share of forget samples in a batch), lr, optimizer, adam_beta1/2,
        adam_eps, weight_decay, max_grad_norm (None: no clipping), lr_scheduler,
        lr_warmup_steps, grad_accum, mixed_precision, device.
    Parameters: train_params (None: the method's default; all, cross_attn, no_cross_attn,
        lora), lora_rank, lora_alpha (None: the rank), lora_targets; l2_anchor (``lam``:
        adds ``lam * sum ||p - p0||^2`` over the trainable parameters to the loss, ``p0``
        their values at the start of the run, e.g. the previous model of a continual
        sequence; 0: off).
    Adversarial (``methods.adversarial``, docs/attacks.md): adversarial (off by default: every
        ``adversarial_every`` steps an inner inversion attack of ``adversarial_steps`` Adam steps
        at ``adversarial_lr`` finds the conditioning that best recovers the concept, and a share
        ``adversarial_share`` of the forget rows is trained under it; one forget concept).
    Objective: weighting, snr_gamma, reduction, source (None: the method's default), t_range,
        sampler_steps, guidance_scale (ESD's partial sampling); for flow-matching families the
        timestep density (``timestep_sampling``: uniform, logit_normal with ``logit_mean`` and
        ``logit_std``, or mode with ``mode_scale``, as diffusers' flow-matching scripts draw them).
    Run: checkpoint_every (0: never), keep_checkpoints (0: all), output_dir, resume (None,
        ``"latest"`` or a checkpoint folder), overwrite, seed, deterministic, log_every,
        tensorboard, progress.
    """

    method: str = "ru"
    method_kwargs: dict = field(default_factory=dict)
    forget: list[Condition] = field(default_factory=list)
    retain: list[Condition] = field(default_factory=list)
    anchor: Optional[Condition] = None
    anchor_map: dict = field(default_factory=dict)

    model: Literal["auto", "class", "text", "sd", "sdxl", "sd3", "flux", "dit"] = "auto"
    model_path: Optional[str] = None
    teacher_path: Optional[str] = None
    resolution: Optional[int] = None
    null_class: Optional[int] = None
    allow_pickle: bool = False

    data: Literal["auto", "mnist", "pool", "images"] = "auto"
    forget_images: Optional[str] = None
    retain_images: Optional[str] = None
    pool_size: int = 64
    pool_steps: int = 20
    pool_guidance: Optional[float] = None
    mnist_conditions: list[Condition] = field(default_factory=list)

    max_steps: int = 200
    batch_size: int = 32
    forget_fraction: float = 0.5
    lr: float = 1e-4
    optimizer: Literal["adamw"] = "adamw"
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    max_grad_norm: Optional[float] = 1.0
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine"] = "constant"
    lr_warmup_steps: int = 0
    grad_accum: int = 1
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    device: Literal["auto", "cpu", "cuda"] = "auto"

    train_params: Optional[Literal["all", "cross_attn", "no_cross_attn", "lora"]] = None
    lora_rank: int = 4
    lora_alpha: Optional[float] = None
    lora_targets: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    l2_anchor: float = 0.0
    adversarial: bool = False
    adversarial_every: int = 5
    adversarial_steps: int = 10
    adversarial_lr: float = 0.1
    adversarial_share: float = 0.25

    weighting: Literal["simple", "kl", "elbo", "snr", "min_snr"] = "simple"
    snr_gamma: Optional[float] = None
    reduction: Literal["mean", "sum"] = "mean"
    source: Optional[Literal["data", "student"]] = None
    t_range: Optional[list[int]] = None
    timestep_sampling: Literal["uniform", "logit_normal", "mode"] = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    sampler_steps: int = 20
    guidance_scale: float = 1.5

    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    output_dir: str = "runs/unlearn"
    resume: Optional[str] = None
    overwrite: bool = False
    seed: int = 0
    deterministic: bool = False
    log_every: int = 10
    tensorboard: bool = False
    progress: bool = True

    def __post_init__(self):
        check_field_types(self)
        self._check_values()

    # --- value checks (types are checked generically above) ----------------------------

    def _check_values(self) -> None:
        from .methods import METHODS

        if self.method not in METHODS:
            raise ConfigError(f"method: expected one of {sorted(METHODS)}, got {self.method!r}")
        _check_method_kwargs(self.method, METHODS[self.method], self.method_kwargs)
        positive = ("max_steps", "batch_size", "grad_accum", "log_every", "lora_rank", "pool_size", "pool_steps",
                    "sampler_steps")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: expected an int >= 1, got {getattr(self, name)}")
        for name in ("checkpoint_every", "keep_checkpoints", "lr_warmup_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: expected an int >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.forget_fraction <= 1.0:
            raise ConfigError(f"forget_fraction: expected a float in [0, 1], got {self.forget_fraction}")
        if not self.l2_anchor >= 0:
            raise ConfigError(f"l2_anchor: expected a float >= 0, got {self.l2_anchor}")
        for key, value in self.anchor_map.items():
            if not isinstance(key, (str, int)) or not isinstance(value, (str, int)) or isinstance(value, bool):
                raise ConfigError(f"anchor_map: expected {{forget condition: anchor condition}} (prompts or class "
                                  f"ids), got {key!r}: {value!r}")
            if str(key) == str(value):
                raise ConfigError(f"anchor_map.{key}: a forget condition cannot be its own anchor")
        from .methods.adversarial import check_adversarial

        try:
            check_adversarial(self.adversarial_every, self.adversarial_steps, self.adversarial_lr,
                              self.adversarial_share)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if self.adversarial and len(self.forget) != 1:
            raise ConfigError(f"adversarial: the inner attack optimises one conditioning, so a run erases one "
                              f"concept; got forget = {self.forget}")
        if not self.lr > 0:
            raise ConfigError(f"lr: expected a float > 0, got {self.lr}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ConfigError(f"max_grad_norm: expected a float > 0 or null, got {self.max_grad_norm}")
        if self.weighting == "min_snr" and (self.snr_gamma is None or not self.snr_gamma > 0):
            raise ConfigError(f"snr_gamma: weighting 'min_snr' needs a float > 0, got {self.snr_gamma}")
        if self.resolution is not None and self.resolution < 8:
            raise ConfigError(f"resolution: expected an image side in pixels >= 8, got {self.resolution}")
        if not self.logit_std > 0:
            raise ConfigError(f"logit_std: expected a float > 0, got {self.logit_std}")
        if self.t_range is not None and (len(self.t_range) != 2 or not 0 <= self.t_range[0] < self.t_range[1]):
            raise ConfigError(f"t_range: expected [low, high] with 0 <= low < high, got {self.t_range}")
        if not self.forget:
            raise ConfigError("forget: expected at least one condition to unlearn, got none")
        if self.resume is not None and self.resume != "latest" and not os.path.isdir(self.resume):
            raise ConfigError(f"resume: expected 'latest' or an existing checkpoint folder, got {self.resume!r}")
        for key in ("forget_images", "retain_images"):
            folder = getattr(self, key)
            if folder is not None and not os.path.isdir(folder):
                raise ConfigError(f"{key}: expected a folder of images, got {folder!r} (no such folder)")
        if self.data == "images" and self.forget_images is None:
            raise ConfigError("forget_images: data = 'images' needs the folder of images to forget")
        if self.data != "images" and (self.forget_images or self.retain_images):
            raise ConfigError(f"data: forget_images/retain_images are read with data = 'images', got data = {self.data!r}")
        for key in ("model_path", "teacher_path"):
            folder = getattr(self, key)
            if folder is None:
                continue
            if not os.path.exists(folder):
                raise ConfigError(f"{key}: no such file or directory: {folder!r}")
            if not os.path.isdir(folder):
                raise ConfigError(f"{key}: expected a diffusers folder, got a file: {folder!r}")
        if self.teacher_path is not None and self.train_params == "lora":
            raise ConfigError("teacher_path: a LoRA run's teacher is its base model with the adapters off; "
                              "leave teacher_path unset with train_params = 'lora'")

    # --- conversions ---------------------------------------------------------------------

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict, *, source: str = "config") -> "TrainConfig":
        """Build from a mapping; unknown keys raise ``ConfigError`` naming them."""
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: expected a table of keys, got {type(values).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = [k for k in values if k not in names]
        if unknown:
            raise ConfigError(f"{unknown[0]}: unknown key in {source} (known keys: {', '.join(sorted(names))})")
        return cls(**values)


# --- generic type checking ------------------------------------------------------------------


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if tp is type(None):
        return "null"
    if origin is Union:
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        args = typing.get_args(tp)
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict or tp is dict:
        return "table (dict)"
    if tp is Any:
        return "any value"
    return getattr(tp, "__name__", str(tp))


def _matches(value, tp):
    """``(ok, converted)``: whether ``value`` has type ``tp`` (ints accepted as floats,
    tuples as lists, bools never as numbers)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return True, value
    if tp is type(None):
        return value is None, value
    if origin is Union:
        for arg in typing.get_args(tp):
            ok, out = _matches(value, arg)
            if ok:
                return True, out
        return False, value
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in typing.get_args(tp)), value
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False, value
        args = typing.get_args(tp)
        if not args or origin is tuple:
            return True, list(value)
        out = []
        for item in value:
            ok, conv = _matches(item, args[0])
            if not ok:
                return False, value
            out.append(conv)
        return True, out
    if origin is dict or tp is dict:
        return isinstance(value, dict), value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        if isinstance(value, bool):
            return False, value
        return isinstance(value, (int, float)), float(value) if isinstance(value, (int, float)) else value
    if isinstance(tp, type):
        return isinstance(value, tp), value
    return True, value  # an annotation we do not check


def _check(name: str, value, tp):
    ok, out = _matches(value, tp)
    if not ok:
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise ConfigError(f"{name}: expected {_type_name(tp)}, got {type(value).__name__} ({shown})")
    return out


def check_field_types(settings, prefix: str = "") -> None:
    """Check (and convert: ints to floats, tuples to lists) every field of the dataclass
    ``settings`` against its annotation; ``ConfigError`` names the key (``prefix`` + name).
    Nested dataclass fields are left to their own ``__post_init__``."""
    hints = typing.get_type_hints(type(settings))
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            continue
        object.__setattr__(settings, f.name, _check(prefix + f.name, value, hints[f.name]))


def _check_method_kwargs(method: str, cls, kwargs: dict) -> None:
    sig = inspect.signature(cls.__init__)
    params = {n: p for n, p in sig.parameters.items() if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    accepts_any = any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # pragma: no cover - unevaluable annotations: check names only
        hints = {}
    for key, value in kwargs.items():
        if key in INJECTED_METHOD_ARGS:
            raise ConfigError(f"method_kwargs.{key}: set by the trainer from the model and data; "
                              f"use the top-level keys forget/retain/anchor instead")
        if key not in params:
            if accepts_any:
                continue
            known = sorted(n for n in params if n not in INJECTED_METHOD_ARGS)
            raise ConfigError(f"method_kwargs.{key}: unknown argument of method {method!r} (known: {', '.join(known)})")
        if key in hints:
            kwargs[key] = _check(f"method_kwargs.{key}", value, hints[key])


# --- loading ------------------------------------------------------------------------------


def load_config_file(path: str) -> dict:
    """The table of a ``.toml``, ``.yaml`` or ``.yml`` file (not yet validated)."""
    if not os.path.isfile(path):
        raise ConfigError(f"config: no such file: {path!r}")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".toml":
        try:
            import tomllib
        except ImportError:  # python < 3.11
            import tomli as tomllib  # type: ignore[no-redef]
        with open(path, "rb") as f:
            try:
                values = tomllib.load(f)
            except tomllib.TOMLDecodeError as e:
                raise ConfigError(f"config: {path}: invalid TOML: {e}") from None
    elif ext in (".yaml", ".yml"):
        import yaml

        with open(path) as f:
            try:
                values = yaml.safe_load(f)
            except yaml.YAMLError as e:
                raise ConfigError(f"config: {path}: invalid YAML: {e}") from None
        values = {} if values is None else values
    else:
        raise ConfigError(f"config: expected a .toml, .yaml or .yml file, got {path!r}")
    if not isinstance(values, dict):
        raise ConfigError(f"config: {path}: expected a table of keys at the top level")
    return values


def load_train_config(path: str | None = None, overrides: dict | None = None) -> TrainConfig:
    """Defaults < the file at ``path`` < ``overrides`` (e.g. CLI flags), validated once."""
    values = load_config_file(path) if path else {}
    source = path or "config"
    for key, value in (overrides or {}).items():
        if key == "method_kwargs" and isinstance(value, dict) and isinstance(values.get(key), dict):
            values[key] = {**values[key], **value}
        else:
            values[key] = value
    return TrainConfig.from_dict(values, source=source)
