"""Where a run's clean samples come from: MNIST images, or a pool of the frozen teacher's samples."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..config import TrainConfig
from ..methods import FORGET, RETAIN, Batch
from .rng import derive_seed

POOL_FILE = "pool.safetensors"


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
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
        fi = to_device(torch.randint(len(self.forget_x), (self.n_forget,), generator=generator), device)
        ri = to_device(torch.randint(max(len(self.retain_x), 1), (self.n_retain,), generator=generator), device)
        x0 = torch.cat([self.forget_x[fi], self.retain_x[ri]])
        cond = torch.cat([self.forget_c[fi], self.retain_c[ri]])
        role = torch.cat([torch.full_like(fi, FORGET), torch.full_like(ri, RETAIN)])
        sample_id = torch.cat([fi, torch.full_like(ri, -1)])
        return Batch(x0, cond, role, sample_id, n_forget=self.n_forget)  # forget samples first


def split_source(x, c, forget_ids, retain_ids, config: TrainConfig) -> SampleSource:
    """A source over samples ``x`` with condition ids ``c``: those of ``forget_ids`` are the
    forget set, those of ``retain_ids`` (and not forgotten) the retain set."""
    f = torch.isin(c, torch.tensor(list(forget_ids), dtype=torch.long))
    r = torch.isin(c, torch.tensor(list(retain_ids), dtype=torch.long)) & ~f
    return SampleSource(x[f], c[f], x[r], c[r], batch_size=config.batch_size, forget_fraction=config.forget_fraction)


def mnist_train_split(module, classes: dict, key: str = "data") -> tuple[torch.Tensor, torch.Tensor]:
    """The embedded MNIST train split at the model's size, once checked against the model (one
    channel) and against ``classes`` (argument name -> class ids that must have images)."""
    from ..data import load_split

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


def mnist_source(adapter, config: TrainConfig, forget_ids, retain_ids) -> SampleSource:
    x, y = mnist_train_split(adapter.module, {"forget": forget_ids, "retain": retain_ids})
    return split_source(x, y.long(), forget_ids, retain_ids, config)


def pool_source(teacher, scheduler, config: TrainConfig, forget_ids, retain_ids, accelerator, output_dir: Path,
                real_ids=()) -> SampleSource:
    """Teacher samples per condition (the family's sampler and guidance, or ``pool_guidance``),
    generated once by the main process and stored in ``output_dir/pool.safetensors`` under a
    key of what made them; the conditions of ``real_ids`` (classes) take ``pool_size`` MNIST
    train images instead."""
    from ..sampling import sample

    if real_ids:  # checked before the (slow) pool sampling
        rx, ry = mnist_train_split(teacher.module, {"mnist_conditions": list(real_ids)}, key="mnist_conditions")
    ids = [i for i in list(forget_ids) + [i for i in retain_ids if i not in forget_ids] if i not in real_ids]
    guidance = config.pool_guidance if config.pool_guidance is not None else teacher.default_guidance
    key = json.dumps({"conditions": [teacher.conditions[i] for i in ids], "size": config.pool_size,
                      "steps": config.pool_steps, "guidance": guidance, "seed": config.seed,
                      "shape": list(teacher.sample_shape())})
    path = output_dir / POOL_FILE
    xs, cs = [], []
    if ids:
        if accelerator.is_main_process and _stored_key(path) != key:
            conds = torch.tensor(ids).repeat_interleave(config.pool_size)
            gen = torch.Generator("cpu").manual_seed(derive_seed(config.seed, 0, 3))
            x = sample(teacher, scheduler, conds, steps=config.pool_steps, guidance=guidance, generator=gen,
                       batch_size=max(config.batch_size, 16))
            tmp = output_dir / (POOL_FILE + ".tmp")
            save_file({"x": x.contiguous(), "cond": conds.contiguous()}, str(tmp), metadata={"key": key})
            os.replace(tmp, path)
        accelerator.wait_for_everyone()
        pool = load_file(str(path))
        xs.append(pool["x"])
        cs.append(pool["cond"])
    if real_ids:
        g = torch.Generator().manual_seed(derive_seed(config.seed, 0, 4))
        pick = torch.cat([(ry == i).nonzero().squeeze(1)[torch.randperm(int((ry == i).sum()), generator=g)]
                          [:config.pool_size] for i in real_ids])
        xs.append(rx[pick])
        cs.append(ry[pick].long())
    return split_source(torch.cat(xs), torch.cat(cs).long(), forget_ids, retain_ids, config)


def _stored_key(path: Path):
    if not path.exists():
        return None
    with safe_open(str(path), "pt") as f:
        return (f.metadata() or {}).get("key")
