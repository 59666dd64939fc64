"""The training loop: ``train(config) -> TrainResult``, on accelerate.

What one run does (docs/design.md, "one training step"):

1. builds the model adapter and the noise scheduler: the embedded 16x16 MNIST class DDPM
   (``models_zoo.load_class_ddpm``) by default, a class-conditional ``UNet2DModel`` folder,
   or a text-to-image pipeline folder (``unet/``, ``text_encoder/``, ``tokenizer/``,
   ``scheduler/``); optionally wraps the UNet in peft LoRA adapters (the teacher is then
   the same network with its adapters disabled);
2. builds the method from ``methods.METHODS`` (condition names become ids through the
   adapter's ``condition_id``) and an ``engine.UnlearningObjective``;
3. builds the data source: forget/retain images of the embedded MNIST train split (sample
   ids are indices within the forget set, for FU's per-sample duals), or a pool of samples
   of the frozen teacher, generated once with DDIM and stored in ``output_dir/pool.safetensors``
   (the default for prompt models, where no data exists);
4. loops over optimizer steps with ``Accelerator`` (device placement, mixed precision,
   gradient accumulation, DDP: the duals all-reduce their estimates so every rank holds
   the same lambdas), logging every ``log_every`` steps, checkpointing every
   ``checkpoint_every`` steps, and saving the final model with ``save_pretrained``.

Checkpoints (``output_dir/checkpoint-<step>``) are written into a temporary folder and
renamed into place, so a crash never leaves a half-written checkpoint under a final name;
the last ``keep_checkpoints`` are kept. Each holds the trainable weights
(``model.safetensors``: the whole UNet, or the LoRA weights only), the optimizer, the LR
schedule, the method's state (duals), every RNG state of every rank (python, numpy, torch,
CUDA, and the generators of the data and of the step) and the step. Model weights are
safetensors; the optimizer, LR schedule, duals and RNG states are ``.pt`` files read back
with ``torch.load(weights_only=True)`` (tensors and plain containers only, no code). Model
folders with only pickle weights are refused unless ``allow_pickle`` (see
``models_zoo.weights_use_safetensors``). ``resume="latest"``
continues from the newest complete one so that, on the CPU, the resumed run ends with
bit-identical weights to an uninterrupted run (on a GPU this also needs
``deterministic = true``).

Host synchronisation: a step does not read device values on the host; the loss is summed
and its finiteness tracked on the device, and read at logging steps, before each
checkpoint and at the end. A non-finite loss or dual variable then stops the run with a
``NonFiniteError`` naming the first bad step; no checkpoint is written after it, so the
last one on disk is good.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import math
import os
import random
import re
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .config import TrainConfig
from .engine import UnlearningObjective
from .methods import FORGET, METHODS, RETAIN, Batch, Method
from .models import ClassConditionalUNet, ConditionedModel, TextConditionalUNet, trainable_parameters

__all__ = ["NonFiniteError", "SampleSource", "TrainResult", "build_method", "find_latest_checkpoint",
           "l2_anchor_penalty", "load_model", "train"]

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.json"
METRICS_FILE = "metrics.jsonl"
POOL_FILE = "pool.safetensors"


class NonFiniteError(RuntimeError):
    """The loss or a dual variable became NaN/Inf; the message names the first bad step."""


@dataclass
class TrainResult:
    output_dir: str
    final_dir: str | None  #: the ``save_pretrained`` folder of the trained model
    step: int  #: optimizer steps done
    metrics: dict  #: the last logged metrics
    checkpoints: list[str] = field(default_factory=list)  #: checkpoint folders on disk, oldest first
    model: ConditionedModel | None = None  #: the trained adapter (unwrapped)
    method: Method | None = None  #: the method, with its final duals
    resumed_from: str | None = None


# --- model ------------------------------------------------------------------------------------


def model_kind(config: TrainConfig) -> str:
    if config.model != "auto":
        return config.model
    path = config.model_path
    if path is not None and os.path.isdir(os.path.join(path, "text_encoder")):
        return "text"
    return "class"


def _text_model_dir(config: TrainConfig) -> str:
    from .asset_files import require_embedded

    return config.model_path or require_embedded("text_ddpm")  # None: the embedded text DDPM


def load_model(config: TrainConfig, device="cpu") -> tuple[ConditionedModel, object, str]:
    """``(adapter, scheduler, kind)`` for the config's model (before LoRA wrapping)."""
    kind = model_kind(config)
    if kind == "class":
        from .models_zoo import load_class_ddpm, weights_use_safetensors

        path = config.model_path
        if path is not None and not os.path.isfile(os.path.join(path, "config.json")) \
                and os.path.isfile(os.path.join(path, "unet", "config.json")):
            # a pipeline folder (e.g. DDPMPipeline): unet/ and scheduler/ subfolders
            from diffusers import DDPMScheduler, UNet2DModel

            use_st = weights_use_safetensors(os.path.join(path, "unet"), config.allow_pickle)
            unet = UNet2DModel.from_pretrained(path, subfolder="unet", local_files_only=True,
                                               use_safetensors=use_st).to(device)
            scheduler = DDPMScheduler.from_config(DDPMScheduler.load_config(path, subfolder="scheduler",
                                                                            local_files_only=True))
        else:
            if path is not None:
                weights_use_safetensors(path, config.allow_pickle)  # names model_path in its error
            unet, scheduler = load_class_ddpm(path, device=device, allow_pickle=config.allow_pickle)
        n = unet.config.num_class_embeds
        if n is None:
            raise ValueError(f"model_path: {config.model_path!r} is not a class-conditional UNet2DModel "
                             "(config.num_class_embeds is null); set model = 'text' for a pipeline folder")
        null = config.null_class if config.null_class is not None else n - 1
        adapter = ClassConditionalUNet(unet.train(), null)
    else:
        import transformers
        from diffusers import DDPMScheduler, UNet2DConditionModel

        path = _text_model_dir(config)
        for sub in ("unet", "text_encoder", "tokenizer", "scheduler"):
            if not os.path.isdir(os.path.join(path, sub)):
                raise ValueError(f"model_path: a text model folder needs a {sub}/ subfolder, "
                                 f"missing in {path!r}")
        from .models_zoo import weights_use_safetensors

        unet_st = weights_use_safetensors(os.path.join(path, "unet"), config.allow_pickle)
        text_st = weights_use_safetensors(os.path.join(path, "text_encoder"), config.allow_pickle)
        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", local_files_only=True,
                                                    use_safetensors=unet_st).to(device).train()
        scheduler = DDPMScheduler.from_config(DDPMScheduler.load_config(path, subfolder="scheduler",
                                                                        local_files_only=True))
        tokenizer = transformers.AutoTokenizer.from_pretrained(os.path.join(path, "tokenizer"), local_files_only=True)
        with open(os.path.join(path, "text_encoder", "config.json")) as f:
            arch = (json.load(f).get("architectures") or ["CLIPTextModel"])[0]
        encoder_cls = getattr(transformers, arch, transformers.AutoModel)
        text_encoder = encoder_cls.from_pretrained(os.path.join(path, "text_encoder"), local_files_only=True,
                                                   use_safetensors=text_st).to(device)
        prompts = [str(p) for p in list(config.forget) + list(config.retain)]
        if config.anchor is not None:
            prompts.append(str(config.anchor))
        for arg in getattr(METHODS.get(config.method), "condition_args", ()):  # e.g. LACU's mapping targets
            prompts.extend(str(p) for p in config.method_kwargs.get(arg, ()))
        prompts = list(dict.fromkeys(prompts))
        adapter = TextConditionalUNet(unet, text_encoder, tokenizer, prompts)
    return adapter, scheduler, kind


def _condition_ids(adapter: ConditionedModel, names, kind: str) -> list[int]:
    return [adapter.condition_id(str(n) if kind == "text" else n) for n in names]


def _add_lora(adapter: ConditionedModel, config: TrainConfig) -> None:
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


def _is_peft(module) -> bool:
    return hasattr(module, "disable_adapter") and hasattr(module, "peft_config")


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


# --- data --------------------------------------------------------------------------------------


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU tensor on ``device``; to a GPU through pinned memory, asynchronously (a copy from
    pageable memory would make the host wait for the GPU)."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


class SampleSource:
    """Forget and retain samples (clean images or teacher samples) with their condition ids.

    Each call to ``sample(generator)`` draws (with replacement) ``n_forget`` forget and
    ``batch_size - n_forget`` retain samples; a forget sample's ``sample_id`` is its index
    in the forget set."""

    def __init__(self, forget_x, forget_c, retain_x, retain_c, *, batch_size: int, forget_fraction: float):
        if len(forget_x) == 0:
            raise ValueError("forget: the forget set is empty")
        self.forget_x, self.forget_c = forget_x, forget_c.long()
        self.retain_x, self.retain_c = retain_x, retain_c.long()
        if len(retain_x) == 0 or forget_fraction >= 1.0:
            n_forget = batch_size
        elif forget_fraction <= 0.0:
            n_forget = 0
        else:
            n_forget = min(max(1, round(batch_size * forget_fraction)), batch_size - 1)
        self.n_forget = n_forget
        self.n_retain = batch_size - n_forget

    @property
    def num_forget(self) -> int:
        return len(self.forget_x)

    def to(self, device) -> "SampleSource":
        for name in ("forget_x", "forget_c", "retain_x", "retain_c"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def sample(self, generator: torch.Generator) -> Batch:
        device = self.forget_x.device
        fi = _to_device(torch.randint(len(self.forget_x), (self.n_forget,), generator=generator), device)
        ri = _to_device(torch.randint(max(len(self.retain_x), 1), (self.n_retain,), generator=generator), device)
        x0 = torch.cat([self.forget_x[fi], self.retain_x[ri]])
        cond = torch.cat([self.forget_c[fi], self.retain_c[ri]])
        role = torch.cat([torch.full_like(fi, FORGET), torch.full_like(ri, RETAIN)])
        sample_id = torch.cat([fi, torch.full_like(ri, -1)])
        return Batch(x0, cond, role, sample_id, n_forget=self.n_forget)  # forget samples first


def _mnist_train_split(module, classes: dict, key: str = "data") -> tuple[torch.Tensor, torch.Tensor]:
    """The embedded MNIST train split at the model's size, once checked against the model (one
    channel) and against ``classes`` (argument name -> class ids that must have images)."""
    from .data import load_split

    cfg = module.config
    if cfg.in_channels != 1:
        raise ValueError(f"{key}: the embedded MNIST images have 1 channel, the model has {cfg.in_channels}"
                         + ("; use data = 'pool'" if key == "data" else ""))
    x, y = load_split("train", size=int(cfg.sample_size))
    present = set(y.unique().tolist())
    for name, ids in classes.items():
        missing = [i for i in ids if i not in present]
        if missing:
            raise ValueError(f"{name}: classes {missing} have no images in the embedded MNIST data (classes 0-9)")
    return x, y


def _mnist_source(adapter, config, forget_ids, retain_ids) -> SampleSource:
    x, y = _mnist_train_split(adapter.module, {"forget": forget_ids, "retain": retain_ids})
    f = torch.isin(y, torch.tensor(forget_ids))
    r = torch.isin(y, torch.tensor(retain_ids, dtype=torch.long))
    return SampleSource(x[f], y[f], x[r], y[r], batch_size=config.batch_size, forget_fraction=config.forget_fraction)


def _pool_source(teacher, scheduler, config, forget_ids, retain_ids, accelerator, output_dir: Path,
                 real_ids=()) -> SampleSource:
    """Teacher samples per condition, generated once by the main process and stored; the
    conditions of ``real_ids`` (classes) take ``pool_size`` MNIST train images instead."""
    from .eval.sampling import sample

    if real_ids:  # checked before the (slow) pool sampling
        rx, ry = _mnist_train_split(teacher.module, {"mnist_conditions": list(real_ids)}, key="mnist_conditions")
    ids = [i for i in list(forget_ids) + [i for i in retain_ids if i not in forget_ids] if i not in real_ids]
    key = json.dumps({"conditions": [teacher.conditions[i] for i in ids], "size": config.pool_size,
                      "steps": config.pool_steps, "guidance": config.pool_guidance, "seed": config.seed})
    path = output_dir / POOL_FILE

    def stored_key():
        if not path.exists():
            return None
        with safe_open(str(path), "pt") as f:
            return (f.metadata() or {}).get("key")

    xs, cs = [], []
    if ids:
        if accelerator.is_main_process and stored_key() != key:
            conds = torch.tensor(ids).repeat_interleave(config.pool_size)
            gen = torch.Generator("cpu").manual_seed(_derive_seed(config.seed, 0, 3))
            x = sample(teacher, scheduler, conds, steps=config.pool_steps, guidance=config.pool_guidance,
                       generator=gen, batch_size=max(config.batch_size, 16))
            tmp = output_dir / (POOL_FILE + ".tmp")
            save_file({"x": x.contiguous(), "cond": conds.contiguous()}, str(tmp), metadata={"key": key})
            os.replace(tmp, path)
        accelerator.wait_for_everyone()
        pool = load_file(str(path))
        xs.append(pool["x"])
        cs.append(pool["cond"])
    if real_ids:
        g = torch.Generator().manual_seed(_derive_seed(config.seed, 0, 4))
        pick = torch.cat([(ry == i).nonzero().squeeze(1)[torch.randperm(int((ry == i).sum()), generator=g)]
                          [:config.pool_size] for i in real_ids])
        xs.append(rx[pick])
        cs.append(ry[pick].long())
    x, c = torch.cat(xs), torch.cat(cs)
    f = torch.isin(c, torch.tensor(forget_ids))
    r = torch.isin(c, torch.tensor(retain_ids, dtype=torch.long)) & ~f
    return SampleSource(x[f], c[f], x[r], c[r], batch_size=config.batch_size, forget_fraction=config.forget_fraction)


# --- RNG ---------------------------------------------------------------------------------------


def _derive_seed(seed: int, rank: int, stream: int) -> int:
    return int(np.random.SeedSequence([seed, rank, stream]).generate_state(1, np.uint64)[0] >> 1)


def _rng_state(data_gen: torch.Generator, step_gen: torch.Generator) -> dict:
    py = random.getstate()
    npst = np.random.get_state()
    state = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [npst[0], torch.from_numpy(np.asarray(npst[1]).astype(np.int64)), int(npst[2]), int(npst[3]),
                  float(npst[4])],
        "torch": torch.get_rng_state(),
        "data": data_gen.get_state(),
        "step": step_gen.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, data_gen: torch.Generator, step_gen: torch.Generator) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"])
    data_gen.set_state(state["data"])
    step_gen.set_state(state["step"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- checkpoints -------------------------------------------------------------------------------


def list_checkpoints(output_dir) -> list[tuple[int, Path]]:
    """Complete checkpoints (``(step, path)``, oldest first); temporary folders are ignored."""
    out = []
    root = Path(output_dir)
    if root.is_dir():
        for p in root.iterdir():
            m = CHECKPOINT_RE.match(p.name)
            if m and p.is_dir() and (p / STATE_FILE).is_file():
                out.append((int(m.group(1)), p))
    return sorted(out)


def find_latest_checkpoint(output_dir) -> Path | None:
    ckpts = list_checkpoints(output_dir)
    return ckpts[-1][1] if ckpts else None


def _weights(module, lora: bool) -> dict[str, torch.Tensor]:
    sd = module.state_dict()
    if lora:
        sd = {k: v for k, v in sd.items() if "lora_" in k}
    return {k: v.detach().cpu().contiguous() for k, v in sd.items()}


def _replace_dir(tmp: Path, final: Path) -> None:
    """Move the finished ``tmp`` folder to ``final`` (replacing an existing one)."""
    trash = None
    if final.exists():
        trash = final.with_name(f".trash-{final.name}-{os.getpid()}")
        os.replace(final, trash)
    os.replace(tmp, final)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)
    _fsync_dir(final.parent)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# --- the loop ----------------------------------------------------------------------------------


def _accelerator(config: TrainConfig):
    from accelerate import Accelerator

    if config.device == "cpu":
        cpu = True
    elif config.device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device: 'cuda' was asked for but torch sees no CUDA device")
        cpu = False
    else:
        cpu = not torch.cuda.is_available()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if cpu and world > 1 and "OMP_NUM_THREADS" not in os.environ:
        # accelerate needs psutil to choose a thread count otherwise
        local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // local))
    return Accelerator(cpu=cpu, mixed_precision=config.mixed_precision,
                       gradient_accumulation_steps=config.grad_accum)


def train(config: TrainConfig) -> TrainResult:
    """Run the unlearning method of ``config`` (see the module docstring); returns a ``TrainResult``."""
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config: expected a TrainConfig, got {type(config).__name__}")
    from accelerate.state import AcceleratorState, GradientState

    had_state = bool(AcceleratorState._shared_state)
    deterministic = (torch.are_deterministic_algorithms_enabled(),
                     torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        return _train(config)
    finally:
        if not had_state:  # let a later train() in this process choose other accelerate settings
            AcceleratorState._reset_state()
            GradientState._reset_state()
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])


def _train(config: TrainConfig) -> TrainResult:
    from diffusers.optimization import get_scheduler as get_lr_scheduler
    from tqdm.auto import tqdm

    accelerator = _accelerator(config)
    device = accelerator.device
    rank, world = accelerator.process_index, accelerator.num_processes
    main = accelerator.is_main_process
    out = Path(config.output_dir)

    # --- where to start ---
    resume_dir = None
    if config.resume == "latest":
        resume_dir = find_latest_checkpoint(out)
    elif config.resume is not None:
        resume_dir = Path(config.resume)
        if not (resume_dir / STATE_FILE).is_file():
            raise ValueError(f"resume: {config.resume!r} is not a complete checkpoint (no {STATE_FILE})")
    if resume_dir is None and list_checkpoints(out) and not config.overwrite:
        raise ValueError(f"output_dir: {str(out)!r} already holds checkpoints; set resume = 'latest' to "
                         "continue, overwrite = true to start again, or choose another output_dir")
    if main:
        out.mkdir(parents=True, exist_ok=True)
        if resume_dir is None:
            for _, p in list_checkpoints(out):  # overwrite = true: old checkpoints must not mix in
                shutil.rmtree(p)
            for p in out.glob(".tmp-*"):
                shutil.rmtree(p, ignore_errors=True)
            (out / METRICS_FILE).unlink(missing_ok=True)
    accelerator.wait_for_everyone()

    # --- seeds, determinism ---
    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    random.seed(config.seed)
    np.random.seed(config.seed % 2**32)
    torch.manual_seed(config.seed)

    # --- model, teacher, method ---
    adapter, scheduler, kind = load_model(config, device=device)
    forget_ids = _condition_ids(adapter, config.forget, kind)
    if config.retain:
        retain_ids = _condition_ids(adapter, config.retain, kind)
    elif kind == "class":
        retain_ids = [i for i in range(len(adapter.conditions)) if i not in forget_ids and i != adapter.null_id]
    else:
        retain_ids = []
    overlap = set(forget_ids) & set(retain_ids)
    if overlap:
        raise ValueError(f"retain: conditions {sorted(adapter.conditions[i] for i in overlap)} are also in forget")
    anchor_id = adapter.condition_id(str(config.anchor) if kind == "text" else config.anchor) \
        if config.anchor is not None else adapter.null_id

    which = config.train_params
    lora = which == "lora"
    if lora:
        _add_lora(adapter, config)
    teacher = adapter.teacher()

    data_mode = config.data if config.data != "auto" else ("mnist" if kind == "class" else "pool")
    if data_mode == "mnist":
        if kind != "class":
            raise ValueError("data: 'mnist' needs a class model; use data = 'pool' for a text model")
        source = _mnist_source(adapter, config, forget_ids, retain_ids)
    else:
        real_ids = _condition_ids(adapter, config.mnist_conditions, kind) if config.mnist_conditions else []
        if real_ids and kind != "class":
            raise ValueError("mnist_conditions: MNIST images stand for classes of a class model, not prompts")
        source = _pool_source(teacher, scheduler, config, forget_ids, retain_ids, accelerator, out, real_ids)
    source.to(device)

    method = build_method(config, {"forget": forget_ids, "anchor": anchor_id,
                                   "num_conditions": len(adapter.conditions),
                                   "num_forget_samples": source.num_forget},
                          condition_ids=lambda names: _condition_ids(adapter, names, kind))
    if which is None:
        which = method.default_train_params  # e.g. ESD-u / ESD-x
    params = trainable_parameters(adapter.module, which)
    # the L2 anchor's p0: the weights the run starts from (taken before a resume loads a checkpoint)
    anchor = [p.detach().clone() for p in params] if config.l2_anchor > 0 else None

    optimizer = torch.optim.AdamW(params, lr=config.lr, betas=(config.adam_beta1, config.adam_beta2),
                                  eps=config.adam_eps, weight_decay=config.weight_decay)
    lr_scheduler = get_lr_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=config.lr_warmup_steps,
                                    num_training_steps=config.max_steps)

    # --- resume: weights, optimizer, schedule, duals (RNG comes last, just before the loop) ---
    step = 0
    rng_to_load = None
    if resume_dir is not None:
        step, rng_to_load = _load_checkpoint(resume_dir, adapter.module, lora, optimizer, lr_scheduler, method,
                                             rank, world)
        if main:
            _truncate_metrics(out / METRICS_FILE, step)

    # --- accelerate ---
    raw_module = adapter.module
    prepared, optimizer_p = accelerator.prepare(raw_module, optimizer)
    adapter.module = prepared
    duals = getattr(method, "duals", None)
    if duals is not None and hasattr(duals, "to"):
        duals.to(device)
    if resume_dir is not None and accelerator.scaler is not None and (resume_dir / "scaler.pt").is_file():
        accelerator.scaler.load_state_dict(torch.load(resume_dir / "scaler.pt", weights_only=True))
    teacher_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(config.mixed_precision)
    objective = UnlearningObjective(
        adapter, scheduler, method, teacher=teacher, reduction=config.reduction,
        weighting=config.weighting, snr_gamma=config.snr_gamma, source=config.source, t_range=tuple(config.t_range) if config.t_range else None,
        sampler_steps=config.sampler_steps, teacher_dtype=teacher_dtype, guidance_scale=config.guidance_scale,
    )
    objective.weight_table = objective.weight_table.to(device)

    data_gen = torch.Generator("cpu").manual_seed(_derive_seed(config.seed, rank, 1))
    step_gen = torch.Generator(device).manual_seed(_derive_seed(config.seed, rank, 2))
    if rng_to_load is not None:
        _set_rng_state(rng_to_load, data_gen, step_gen)

    # --- logging ---
    writer = None
    if config.tensorboard and main:
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(out / "tensorboard"))
        except ImportError:
            warnings.warn("tensorboard = true but tensorboard is not installed; logging to metrics.jsonl only")
    if main:
        with open(out / "config.json", "w") as f:
            json.dump(config.to_dict(), f, indent=2)
    pbar = tqdm(total=config.max_steps, initial=step, disable=not (main and config.progress), desc="unlearn",
                dynamic_ncols=True)

    loss_sum = torch.zeros((), device=device)
    loss_count = 0
    first_bad_loss = torch.zeros((), dtype=torch.long, device=device)  # 0: none (steps count from 1)
    first_bad_dual = torch.zeros((), dtype=torch.long, device=device)
    last_metrics: dict = {}
    last_dist = None
    last_reg = None
    t_start = time.time()
    start_step = step

    def check_finite(now: int) -> None:
        bad = accelerator.gather(torch.stack([first_bad_loss, first_bad_dual]).view(1, 2)).view(-1, 2)
        bad_loss = [int(v) for v in bad[:, 0].tolist() if v > 0]
        bad_dual = [int(v) for v in bad[:, 1].tolist() if v > 0]
        if not method.is_finite() and not bad_dual:
            bad_dual = [now]
        if bad_loss or bad_dual:
            last = find_latest_checkpoint(out)
            what = (f"non-finite loss at step {min(bad_loss)}" if bad_loss and (not bad_dual or min(bad_loss) <= min(bad_dual))
                    else f"non-finite dual variable (lambda) at step {min(bad_dual)}")
            pbar.close()
            raise NonFiniteError(f"{what} (noticed at step {now}); stopped without writing a checkpoint; "
                                 f"last good checkpoint: {last if last else 'none'}")

    while step < config.max_steps:
        for _ in range(config.grad_accum):
            batch = source.sample(data_gen)
            with accelerator.accumulate(prepared):
                loss, m = objective.loss(batch, step_gen)
                if anchor is not None:
                    reg = l2_anchor_penalty(params, anchor, config.l2_anchor)
                    loss = loss + reg
                    m["loss"] = loss.detach()
                    last_reg = reg.detach()
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.max_grad_norm is not None:
                    accelerator.clip_grad_norm_(params, config.max_grad_norm)
                optimizer_p.step()
                optimizer_p.zero_grad(set_to_none=True)
            detached = m["loss"].float()
            loss_sum = loss_sum + detached
            loss_count += 1
            last_dist = m["dist"]
            ok = torch.isfinite(detached)
            first_bad_loss = torch.where(~ok & (first_bad_loss == 0), torch.full_like(first_bad_loss, step + 1),
                                         first_bad_loss)
            lam = getattr(getattr(method, "duals", None), "lambdas", None)
            if isinstance(lam, torch.Tensor):
                ok_dual = torch.isfinite(lam).all().to(device)
                first_bad_dual = torch.where(~ok_dual & (first_bad_dual == 0),
                                             torch.full_like(first_bad_dual, step + 1), first_bad_dual)
        lr_scheduler.step()
        step += 1
        pbar.update(1)

        is_log = step % config.log_every == 0 or step == config.max_steps
        is_ckpt = config.checkpoint_every > 0 and step % config.checkpoint_every == 0
        if is_log or is_ckpt:
            check_finite(step)
        if is_log:
            loss_mean = accelerator.reduce(loss_sum / max(loss_count, 1), "mean")
            last_metrics = {"step": step, "loss": float(loss_mean), "lr": float(lr_scheduler.get_last_lr()[0])}
            if last_dist is not None:
                for i, v in enumerate(last_dist.tolist()):
                    last_metrics[f"dist[{i}]"] = v
            if last_reg is not None:
                last_metrics["l2_anchor"] = float(last_reg)
            last_metrics.update(method.metrics())
            last_metrics["elapsed_s"] = round(time.time() - t_start, 3)
            loss_sum = torch.zeros((), device=device)
            loss_count = 0
            if main:
                with open(out / METRICS_FILE, "a") as f:
                    f.write(json.dumps(last_metrics) + "\n")
                if writer is not None:
                    for k, v in last_metrics.items():
                        if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                            writer.add_scalar(k, v, step)
                pbar.set_postfix(_postfix(last_metrics), refresh=False)
        if is_ckpt:
            _save_checkpoint(out, step, accelerator, raw_module, lora, optimizer, lr_scheduler, method, config,
                             data_gen, step_gen)

    pbar.close()
    check_finite(step)
    final_dir = None
    if start_step < config.max_steps or not (out / "final").is_dir():
        accelerator.wait_for_everyone()
        if main:
            _save_final(out, accelerator.unwrap_model(prepared), lora, scheduler, kind, config, method, step)
        accelerator.wait_for_everyone()
    final_dir = str(out / "final")
    if writer is not None:
        writer.close()
    adapter.module = accelerator.unwrap_model(prepared, keep_fp32_wrapper=False)
    return TrainResult(output_dir=str(out), final_dir=final_dir, step=step, metrics=last_metrics,
                       checkpoints=[str(p) for _, p in list_checkpoints(out)], model=adapter, method=method,
                       resumed_from=str(resume_dir) if resume_dir is not None else None)


def l2_anchor_penalty(params, anchor, lam: float) -> torch.Tensor:
    """``lam * sum_i ||params[i] - anchor[i]||^2`` (``TrainConfig.l2_anchor``), differentiable in ``params``."""
    return lam * sum((p.float() - p0.float()).square().sum() for p, p0 in zip(params, anchor))


def _postfix(metrics: dict) -> dict:
    post = {"loss": f"{metrics['loss']:.4g}"}
    shown = 0
    for k, v in metrics.items():
        if ("lambda" in k or "constraint" in k) and isinstance(v, float) and shown < 6:
            post[k.split("/", 1)[-1]] = f"{v:.3g}"
            shown += 1
    return post


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume: drop log lines written after the checkpoint (they will be written again)."""
    if not path.is_file():
        return
    keep = []
    with open(path) as f:
        for line in f:
            with contextlib.suppress(ValueError):
                if json.loads(line).get("step", 0) <= step:
                    keep.append(line)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        f.writelines(keep)
    os.replace(tmp, path)


def _save_checkpoint(out: Path, step: int, accelerator, module, lora: bool, optimizer, lr_scheduler, method,
                     config: TrainConfig, data_gen, step_gen) -> None:
    """Write ``checkpoint-<step>`` atomically: everything goes to a temporary folder that is
    renamed into place once every rank has written its part."""
    name = f"checkpoint-{step:08d}"
    tmp = out / f".tmp-{name}"
    main = accelerator.is_main_process
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(_rng_state(data_gen, step_gen), tmp / f"rng_state_{accelerator.process_index}.pt")
    if main:
        save_file(_weights(module, lora), str(tmp / "model.safetensors"), metadata={"step": str(step)})
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(lr_scheduler.state_dict(), tmp / "lr_scheduler.pt")
        torch.save(method.state_dict(), tmp / "method.pt")
        if accelerator.scaler is not None:
            torch.save(accelerator.scaler.state_dict(), tmp / "scaler.pt")
        with open(tmp / STATE_FILE, "w") as f:  # written last: its presence marks a complete checkpoint
            json.dump({"step": step, "world_size": accelerator.num_processes, "lora": lora,
                       "method": config.method, "config": config.to_dict()}, f, indent=2)
    accelerator.wait_for_everyone()
    if main:
        _fsync_dir(tmp)
        _replace_dir(tmp, out / name)
        if config.keep_checkpoints > 0:
            for _, old in list_checkpoints(out)[:-config.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _load_checkpoint(path: Path, module, lora: bool, optimizer, lr_scheduler, method, rank: int, world: int):
    with open(path / STATE_FILE) as f:
        state = json.load(f)
    if state.get("world_size", 1) != world:
        raise ValueError(f"resume: {path} was written by {state.get('world_size')} processes, this run has {world}; "
                         "resume with the same number of processes")
    if bool(state.get("lora", False)) != lora:
        raise ValueError(f"resume: {path} was written with train_params {'lora' if state.get('lora') else 'not lora'}; "
                         "the config disagrees")
    weights = load_file(str(path / "model.safetensors"))
    missing, unexpected = module.load_state_dict(weights, strict=False)
    if unexpected or (missing and not lora) or (lora and any("lora_" in k for k in missing)):
        raise ValueError(f"resume: {path}/model.safetensors does not match the model "
                         f"(missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]})")
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    lr_scheduler.load_state_dict(torch.load(path / "lr_scheduler.pt", weights_only=True))
    method.load_state_dict(torch.load(path / "method.pt", weights_only=True))
    rng_file = path / f"rng_state_{rank}.pt"
    if not rng_file.is_file():
        raise ValueError(f"resume: {rng_file} is missing")
    return int(state["step"]), torch.load(rng_file, weights_only=True)


def _save_final(out: Path, module, lora: bool, scheduler, kind: str, config: TrainConfig, method, step: int) -> None:
    """``output_dir/final``: a diffusers folder (written to a temporary folder, then renamed)."""
    tmp = out / ".tmp-final"
    shutil.rmtree(tmp, ignore_errors=True)
    if kind == "text":
        src = _text_model_dir(config)
        shutil.copytree(src, tmp, ignore=lambda d, names: ["unet"] if Path(d) == Path(src) else [])
        unet_dir = tmp / "unet"
    else:
        tmp.mkdir(parents=True)
        unet_dir = tmp
    base = module
    if lora:
        module.save_pretrained(str(tmp / "lora"))  # the adapter alone (peft format)
        base = copy.deepcopy(module).merge_and_unload()
    base.save_pretrained(str(unet_dir), safe_serialization=True)
    if kind == "class":
        scheduler.save_pretrained(str(tmp))
    duals = method.state_dict()
    info = {"step": step, "method": config.method, "forget": list(config.forget), "retain": list(config.retain),
            "duals": {k: v.tolist() for k, v in duals.get("duals", {}).items()} if duals else {},
            "config": config.to_dict()}
    with open(tmp / "unlearn_info.json", "w") as f:
        json.dump(info, f, indent=2, default=str)
    _replace_dir(tmp, out / "final")
