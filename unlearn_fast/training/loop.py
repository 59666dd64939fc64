"""The training loop: ``train(config) -> TrainResult``, on accelerate.

What one run does (docs/design.md, "one training step"):

1. loads the model adapter of the config's family (``models.load``: the embedded MNIST
   class DDPM by default, or a folder of any family: class UNet, SD 1.x/2.x, SDXL, SD3,
   Flux, DiT), optionally wraps the denoiser in peft LoRA adapters (the teacher is then the
   same network with its adapters disabled);
2. builds the method from ``methods.METHODS`` (condition names become ids through the
   adapter's ``condition_id``) and an ``engine.UnlearningObjective`` with the scheduler's
   noising (DDPM or flow matching, ``noising.noising_for``);
3. builds the data source (``training.data``): MNIST train images, or a pool of teacher
   samples generated once and stored in ``output_dir/pool.safetensors``;
4. loops over optimizer steps with ``Accelerator`` (device placement, mixed precision,
   gradient accumulation, DDP: the duals all-reduce their estimates so every rank holds
   the same lambdas), logging every ``log_every`` steps, checkpointing every
   ``checkpoint_every`` steps (``training.checkpoints``), and saving ``final/``.

``resume="latest"`` continues from the newest complete checkpoint so that, on the CPU, the
resumed run ends with bit-identical weights to an uninterrupted run (on a GPU this also
needs ``deterministic = true``). Model folders with only pickle weights are refused unless
``allow_pickle``.

Host synchronisation: a step does not read device values on the host; the loss is summed
and its finiteness tracked on the device, and read at logging steps, before each
checkpoint and at the end. A non-finite loss or dual variable then stops the run with a
``NonFiniteError`` naming the first bad step; no checkpoint is written after it, so the
last one on disk is good.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config import TrainConfig
from ..engine import UnlearningObjective
from ..methods import Method
from ..methods.adversarial import Adversarial
from ..models import ConditionedModel, family_of, trainable_parameters
from ..noising import noising_for
from .checkpoints import (METRICS_FILE, STATE_FILE, find_latest_checkpoint, find_latest_valid_checkpoint,
                          list_checkpoints, load_checkpoint, save_checkpoint, save_final, truncate_metrics,
                          verify_checkpoint)
from .data import SampleSource, images_source, mnist_source, pool_source
from .lock import OutputInUseError, RunLock
from .loading import add_lora, build_method, condition_ids, load_model, load_teacher
from .rng import derive_seed, set_rng_state


class NonFiniteError(RuntimeError):
    """The loss or a dual variable became NaN/Inf; the message names the first bad step."""


class TrainingInterrupted(RuntimeError):
    """SIGTERM or SIGINT: the step in flight finished, a checkpoint was written; ``signum`` says which."""

    def __init__(self, message: str, signum: int, checkpoint: str):
        super().__init__(message)
        self.signum = signum
        self.checkpoint = checkpoint


class _StopSignals:
    """Records SIGTERM/SIGINT instead of dying; the loop stops at the end of the step in flight.
    Installed only in the main thread (signal handlers can live nowhere else)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received: int | None = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.received is not None and signum == signal.SIGINT:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.received = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False

    def requested(self, accelerator) -> int:
        """The signal every rank stops for (0: none). One process: a host flag, no device read;
        several: a max all-reduce each step, so every rank stops at the same step."""
        mine = self.received or 0
        if accelerator.num_processes == 1:
            return mine
        flag = torch.tensor([mine], device=accelerator.device)
        return int(accelerator.reduce(flag, "max").item())


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
    teacher: ConditionedModel | None = None  #: the frozen teacher the run compared against


@dataclass
class _Run:
    """Everything a run's loop works with, built once by ``_build``."""

    config: TrainConfig
    accelerator: object
    out: Path
    adapter: ConditionedModel
    scheduler: object
    family: str
    method: Method
    source: SampleSource
    params: list
    anchor: list | None
    lora: bool
    optimizer: torch.optim.Optimizer
    lr_scheduler: object
    teacher: ConditionedModel | None = None
    resume_dir: Path | None = None
    step: int = 0
    rng_to_load: dict | None = None


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
    lock = RunLock(config.output_dir)
    try:
        with _StopSignals() as stop:  # from the start: a signal during the set-up stops before step 1
            accelerator = _accelerator(config)
            _lock(lock, accelerator)
            resume_dir = _prepare_output(config, accelerator)
            _seed(config)
            run = _build(config, accelerator, resume_dir)
            return _loop(run, stop)
    finally:
        lock.release()
        if not had_state:  # let a later train() in this process choose other accelerate settings
            AcceleratorState._reset_state()
            GradientState._reset_state()
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])


def _lock(lock: RunLock, accelerator) -> None:
    """The main process takes the output folder's lock; every rank fails if it could not."""
    error = None
    if accelerator.is_main_process:
        try:
            lock.acquire()
        except OutputInUseError as e:
            error = e
    if accelerator.num_processes > 1:
        failed = accelerator.reduce(torch.tensor([1 if error else 0], device=accelerator.device), "max")
        if int(failed.item()) and error is None:
            raise OutputInUseError(f"output_dir: {str(lock.path.parent)!r} is in use by another run")
    if error is not None:
        raise error


def _prepare_output(config: TrainConfig, accelerator) -> Path | None:
    """The checkpoint to resume from (or ``None``), after readying ``output_dir``."""
    out = Path(config.output_dir)
    resume_dir = None
    if config.resume == "latest":
        resume_dir = find_latest_valid_checkpoint(out)
    elif config.resume is not None:
        resume_dir = Path(config.resume)
        if not (resume_dir / STATE_FILE).is_file():
            raise ValueError(f"resume: {config.resume!r} is not a complete checkpoint (no {STATE_FILE})")
        problem = verify_checkpoint(resume_dir)
        if problem is not None:
            raise ValueError(f"resume: {config.resume!r} is damaged: {problem}")
    if resume_dir is None and list_checkpoints(out) and not config.overwrite:
        raise ValueError(f"output_dir: {str(out)!r} already holds checkpoints; set resume = 'latest' to "
                         "continue, overwrite = true to start again, or choose another output_dir")
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        if resume_dir is None:
            for _, p in list_checkpoints(out):  # overwrite = true: old checkpoints must not mix in
                shutil.rmtree(p)
            for p in out.glob(".tmp-*"):
                shutil.rmtree(p, ignore_errors=True)
            (out / METRICS_FILE).unlink(missing_ok=True)
    accelerator.wait_for_everyone()
    return resume_dir


def _seed(config: TrainConfig) -> None:
    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    random.seed(config.seed)
    np.random.seed(config.seed % 2**32)
    torch.manual_seed(config.seed)


def _conditions(config: TrainConfig, adapter, family: str) -> tuple[list[int], list[int], int]:
    """``(forget ids, retain ids, anchor id)``; a class model's default retain set is every
    other class."""
    forget_ids = condition_ids(adapter, config.forget, family)
    if config.retain:
        retain_ids = condition_ids(adapter, config.retain, family)
    elif family == "class":
        retain_ids = [i for i in range(len(adapter.conditions)) if i not in forget_ids and i != adapter.null_id]
    else:
        retain_ids = []
    overlap = set(forget_ids) & set(retain_ids)
    if overlap:
        raise ValueError(f"retain: conditions {sorted(adapter.conditions[i] for i in overlap)} are also in forget")
    anchor_id = condition_ids(adapter, [config.anchor], family)[0] if config.anchor is not None else adapter.null_id
    return forget_ids, retain_ids, anchor_id


def _anchor_table(config: TrainConfig, adapter, family: str, forget_ids: list[int], anchor_id: int):
    """The methods' ``anchor``: ``anchor_id``, or with ``config.anchor_map`` a per-condition table
    (a forget condition's own anchor; ``anchor_id`` for the rest)."""
    if not config.anchor_map:
        return anchor_id
    table = torch.full((len(adapter.conditions),), anchor_id, dtype=torch.long)
    for key, value in config.anchor_map.items():
        key_id, value_id = condition_ids(adapter, [key, value], family)
        if key_id not in forget_ids:
            raise ValueError(f"anchor_map.{key}: expected a forget condition (of forget or the forget images' "
                             f"prompts), got one that is not forgotten")
        if value_id in forget_ids:
            raise ValueError(f"anchor_map.{key}: its anchor {value!r} is itself a forget condition")
        table[key_id] = value_id
    return table


def _source(config: TrainConfig, adapter, teacher, scheduler, family: str, forget_ids, retain_ids, accelerator,
            out: Path) -> tuple[SampleSource, list[int], list[int]]:
    """The run's data source, with the forget and retain ids (an image folder's prompts join them)."""
    data_mode = config.data if config.data != "auto" else ("mnist" if family == "class" else "pool")
    if data_mode == "images":
        return images_source(adapter, config, family_of(family).text, forget_ids, retain_ids, out, accelerator)
    if data_mode == "mnist":
        if family != "class":
            raise ValueError(f"data: 'mnist' needs a class model; use data = 'pool' for a {family} model")
        return mnist_source(adapter, config, forget_ids, retain_ids), forget_ids, retain_ids
    real_ids = condition_ids(adapter, config.mnist_conditions, family) if config.mnist_conditions else []
    if real_ids and family != "class":
        raise ValueError("mnist_conditions: MNIST images stand for classes of a class model, not prompts")
    source = pool_source(teacher, scheduler, config, forget_ids, retain_ids, accelerator, out, real_ids)
    return source, forget_ids, retain_ids


def _build(config: TrainConfig, accelerator, resume_dir: Path | None) -> _Run:
    from diffusers.optimization import get_scheduler as get_lr_scheduler

    device = accelerator.device
    out = Path(config.output_dir)
    adapter, scheduler, family = load_model(config, device=device)
    forget_ids, retain_ids, anchor_id = _conditions(config, adapter, family)
    lora = config.train_params == "lora"
    if lora:
        add_lora(adapter, config)
    teacher = load_teacher(config, adapter, family, device=device)
    source, forget_ids, retain_ids = _source(config, adapter, teacher, scheduler, family, forget_ids, retain_ids,
                                             accelerator, out)
    source.to(device)
    anchor = _anchor_table(config, adapter, family, forget_ids, anchor_id)
    method = build_method(config, {"forget": forget_ids, "anchor": anchor,
                                   "num_conditions": len(adapter.conditions),
                                   "num_forget_samples": source.num_forget},
                          condition_ids=lambda names: condition_ids(adapter, names, family))
    if config.adversarial:
        method = Adversarial(method, forget_ids[0], every=config.adversarial_every, steps=config.adversarial_steps,
                             lr=config.adversarial_lr, share=config.adversarial_share)
    params = trainable_parameters(adapter.module, config.train_params or method.default_train_params)
    # the L2 anchor's p0: the weights the run starts from (taken before a resume loads a checkpoint)
    anchor = [p.detach().clone() for p in params] if config.l2_anchor > 0 else None
    optimizer = torch.optim.AdamW(params, lr=config.lr, betas=(config.adam_beta1, config.adam_beta2),
                                  eps=config.adam_eps, weight_decay=config.weight_decay)
    lr_scheduler = get_lr_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=config.lr_warmup_steps,
                                    num_training_steps=config.max_steps)
    run = _Run(config, accelerator, out, adapter, scheduler, family, method, source, params, anchor, lora,
               optimizer, lr_scheduler, teacher, resume_dir)
    if resume_dir is not None:
        run.step, run.rng_to_load = load_checkpoint(resume_dir, adapter.module, lora, optimizer, lr_scheduler, method,
                                                    accelerator.process_index, accelerator.num_processes)
        if accelerator.is_main_process:
            truncate_metrics(out / METRICS_FILE, run.step)
    return run


def _objective(run: _Run, device) -> UnlearningObjective:
    c = run.config
    teacher_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(c.mixed_precision)
    t_range = tuple(c.t_range) if c.t_range else None
    noising = noising_for(run.scheduler, t_range, density=c.timestep_sampling, logit_mean=c.logit_mean,
                          logit_std=c.logit_std, mode_scale=c.mode_scale)
    objective = UnlearningObjective(
        run.adapter, run.scheduler, run.method, teacher=run.teacher, reduction=c.reduction, weighting=c.weighting,
        snr_gamma=c.snr_gamma, source=c.source, t_range=t_range, sampler_steps=c.sampler_steps,
        teacher_dtype=teacher_dtype, guidance_scale=c.guidance_scale, noising=noising)
    objective.weight_table = objective.weight_table.to(device)
    return objective


def _writer(run: _Run):
    if not (run.config.tensorboard and run.accelerator.is_main_process):
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        warnings.warn("tensorboard = true but tensorboard is not installed; logging to metrics.jsonl only")
        return None
    return SummaryWriter(str(run.out / "tensorboard"))


class _Health:
    """Tracks, on the device, the first step with a non-finite loss or dual (0: none)."""

    def __init__(self, device):
        self.bad_loss = torch.zeros((), dtype=torch.long, device=device)
        self.bad_dual = torch.zeros((), dtype=torch.long, device=device)

    def record(self, loss: torch.Tensor, method: Method, step: int) -> None:
        mark = torch.full_like(self.bad_loss, step)
        self.bad_loss = torch.where(~torch.isfinite(loss) & (self.bad_loss == 0), mark, self.bad_loss)
        lam = getattr(getattr(method, "duals", None), "lambdas", None)
        if isinstance(lam, torch.Tensor):
            ok = torch.isfinite(lam).all().to(self.bad_dual.device)
            self.bad_dual = torch.where(~ok & (self.bad_dual == 0), mark, self.bad_dual)

    def check(self, run: _Run, now: int, pbar) -> None:
        """Raise ``NonFiniteError`` if any rank saw a non-finite value (a host read: logging steps only)."""
        bad = run.accelerator.gather(torch.stack([self.bad_loss, self.bad_dual]).view(1, 2)).view(-1, 2)
        bad_loss = [int(v) for v in bad[:, 0].tolist() if v > 0]
        bad_dual = [int(v) for v in bad[:, 1].tolist() if v > 0]
        if not run.method.is_finite() and not bad_dual:
            bad_dual = [now]
        if bad_loss or bad_dual:
            last = find_latest_checkpoint(run.out)
            what = (f"non-finite loss at step {min(bad_loss)}" if bad_loss and (not bad_dual or min(bad_loss) <= min(bad_dual))
                    else f"non-finite dual variable (lambda) at step {min(bad_dual)}")
            pbar.close()
            raise NonFiniteError(f"{what} (noticed at step {now}); stopped without writing a checkpoint; "
                                 f"last good checkpoint: {last if last else 'none'}")


def _log(run: _Run, step: int, loss_mean: torch.Tensor, last_dist, last_reg, t_start: float, writer, pbar) -> dict:
    metrics = {"step": step, "loss": float(loss_mean), "lr": float(run.lr_scheduler.get_last_lr()[0])}
    if last_dist is not None:
        for i, v in enumerate(last_dist.tolist()):
            metrics[f"dist[{i}]"] = v
    if last_reg is not None:
        metrics["l2_anchor"] = float(last_reg)
    metrics.update(run.method.metrics())
    metrics["elapsed_s"] = round(time.time() - t_start, 3)
    if run.accelerator.is_main_process:
        with open(run.out / METRICS_FILE, "a") as f:
            f.write(json.dumps(metrics) + "\n")
        if writer is not None:
            for k, v in metrics.items():
                if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                    writer.add_scalar(k, v, step)
        pbar.set_postfix(_postfix(metrics), refresh=False)
    return metrics


def _loop(run: _Run, stop: _StopSignals) -> TrainResult:
    from tqdm.auto import tqdm

    c, accelerator = run.config, run.accelerator
    device, main = accelerator.device, accelerator.is_main_process
    raw_module = run.adapter.module
    prepared, optimizer_p = accelerator.prepare(raw_module, run.optimizer)
    run.adapter.module = prepared
    duals = getattr(run.method, "duals", None)
    if duals is not None and hasattr(duals, "to"):
        duals.to(device)
    if run.resume_dir is not None and accelerator.scaler is not None and (run.resume_dir / "scaler.pt").is_file():
        accelerator.scaler.load_state_dict(torch.load(run.resume_dir / "scaler.pt", weights_only=True))
    objective = _objective(run, device)
    data_gen = torch.Generator("cpu").manual_seed(derive_seed(c.seed, accelerator.process_index, 1))
    step_gen = torch.Generator(device).manual_seed(derive_seed(c.seed, accelerator.process_index, 2))
    if run.rng_to_load is not None:
        set_rng_state(run.rng_to_load, data_gen, step_gen)
    writer = _writer(run)
    if main:
        with open(run.out / "config.json", "w") as f:
            json.dump(c.to_dict(), f, indent=2)
    step = start_step = run.step
    pbar = tqdm(total=c.max_steps, initial=step, disable=not (main and c.progress), desc="unlearn", dynamic_ncols=True)
    health = _Health(device)
    loss_sum, loss_count = torch.zeros((), device=device), 0
    last_metrics, last_dist, last_reg = {}, None, None
    t_start = time.time()
    last_ckpt = run.resume_dir
    while step < c.max_steps:
        signum = stop.requested(accelerator)
        if signum:  # SIGTERM/SIGINT arrived during the last step (or the set-up): checkpoint, then stop
            _stop(run, signum, step, last_ckpt, health, pbar, writer, raw_module, data_gen, step_gen)
        for _ in range(c.grad_accum):
            batch = run.source.sample(data_gen)
            with accelerator.accumulate(prepared):
                loss, m = objective.loss(batch, step_gen)
                if run.anchor is not None:
                    reg = l2_anchor_penalty(run.params, run.anchor, c.l2_anchor)
                    loss = loss + reg
                    m["loss"] = loss.detach()
                    last_reg = reg.detach()
                accelerator.backward(loss)
                if accelerator.sync_gradients and c.max_grad_norm is not None:
                    accelerator.clip_grad_norm_(run.params, c.max_grad_norm)
                optimizer_p.step()
                optimizer_p.zero_grad(set_to_none=True)
            detached = m["loss"].float()
            loss_sum, loss_count, last_dist = loss_sum + detached, loss_count + 1, m["dist"]
            health.record(detached, run.method, step + 1)
        run.lr_scheduler.step()
        step += 1
        pbar.update(1)
        is_log = step % c.log_every == 0 or step == c.max_steps
        is_ckpt = c.checkpoint_every > 0 and step % c.checkpoint_every == 0
        if is_log or is_ckpt:
            health.check(run, step, pbar)
        if is_log:
            loss_mean = accelerator.reduce(loss_sum / max(loss_count, 1), "mean")
            last_metrics = _log(run, step, loss_mean, last_dist, last_reg, t_start, writer, pbar)
            loss_sum, loss_count = torch.zeros((), device=device), 0
        if is_ckpt:
            last_ckpt = save_checkpoint(run.out, step, accelerator, raw_module, run.lora, run.optimizer,
                                        run.lr_scheduler, run.method, c, data_gen, step_gen)
    pbar.close()
    health.check(run, step, pbar)
    if start_step < c.max_steps or not (run.out / "final").is_dir():
        accelerator.wait_for_everyone()
        if main:
            save_final(run.out, accelerator.unwrap_model(prepared), run.lora, run.scheduler, run.adapter,
                       _source_dir(c, run.family), c, run.method, step)
        accelerator.wait_for_everyone()
    if writer is not None:
        writer.close()
    run.adapter.module = accelerator.unwrap_model(prepared, keep_fp32_wrapper=False)
    return TrainResult(output_dir=str(run.out), final_dir=str(run.out / "final"), step=step, metrics=last_metrics,
                       checkpoints=[str(p) for _, p in list_checkpoints(run.out)], model=run.adapter,
                       method=run.method, resumed_from=str(run.resume_dir) if run.resume_dir is not None else None,
                       teacher=run.teacher)


def _stop(run: _Run, signum: int, step: int, last_ckpt, health: _Health, pbar, writer, raw_module, data_gen,
          step_gen) -> None:
    """Write a checkpoint at ``step`` (unless the last one is of this step) and raise ``TrainingInterrupted``."""
    c = run.config
    ckpt = Path(last_ckpt) if last_ckpt is not None else None
    if ckpt is None or ckpt.name != f"checkpoint-{step:08d}":
        health.check(run, step, pbar)
        ckpt = save_checkpoint(run.out, step, run.accelerator, raw_module, run.lora, run.optimizer,
                               run.lr_scheduler, run.method, c, data_gen, step_gen)
    pbar.close()
    if writer is not None:
        writer.close()
    raise TrainingInterrupted(f"stopped by {signal.Signals(signum).name} after step {step} of {c.max_steps}; "
                              f"checkpoint {ckpt}; resume with --resume latest (same output_dir)", signum, str(ckpt))


def _source_dir(config: TrainConfig, family: str) -> str | None:
    """The folder the run's model came from (the embedded text DDPM's for the SD family without a path)."""
    if config.model_path is None and family_of(family).name == "sd":
        from ..asset_files import require_embedded

        return require_embedded("text_ddpm")
    return config.model_path


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
