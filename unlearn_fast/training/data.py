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


# --- the user's own images ------------------------------------------------------------------------

LATENT_CACHE = "latent_cache"


def images_source(adapter, config: TrainConfig, family_text: bool, forget_ids, retain_ids, output_dir: Path,
                  accelerator) -> tuple[SampleSource, list[int], list[int]]:
    """Forget (and retain) samples from the folders ``forget_images`` / ``retain_images``,
    encoded once by the model's VAE and cached in ``output_dir/latent_cache`` (one
    safetensors file per image, keyed by the file's bytes, the VAE config and the size).
    Returns the source and the forget and retain ids extended by the folders' prompts."""
    from ..data.images import list_images

    forget_items = list_images(config.forget_images, "forget_images")
    retain_items = list_images(config.retain_images, "retain_images") if config.retain_images else []
    f_text = _texts(forget_items, config.forget, "forget_images", "forget")
    r_text = _texts(retain_items, config.retain, "retain_images", "retain")
    if family_text:
        f_ids, r_ids = adapter.add_prompts(f_text), adapter.add_prompts(r_text)
    else:
        f_ids = [adapter.condition_id(t) for t in f_text]
        r_ids = [adapter.condition_id(t) for t in r_text]
    overlap = set(f_ids) & (set(r_ids) | set(retain_ids))
    if overlap:
        raise ValueError(f"retain_images: prompts {sorted(adapter.conditions[i] for i in overlap)} are also forget prompts")
    cache = output_dir / LATENT_CACHE
    if accelerator.is_main_process:
        cache.mkdir(parents=True, exist_ok=True)
        _encode_missing(adapter, forget_items + retain_items, cache, ("forget_images",) * len(forget_items)
                        + ("retain_images",) * len(retain_items))
    accelerator.wait_for_everyone()
    fx = torch.stack([_cached(adapter, item.path, cache) for item in forget_items])
    rx = torch.stack([_cached(adapter, item.path, cache) for item in retain_items]) if retain_items \
        else fx.new_zeros((0, *fx.shape[1:]))
    source = SampleSource(fx, torch.tensor(f_ids), rx, torch.tensor(r_ids, dtype=torch.long),
                          batch_size=config.batch_size, forget_fraction=config.forget_fraction)
    forget_ids = list(dict.fromkeys(list(forget_ids) + f_ids))
    retain_ids = list(dict.fromkeys(list(retain_ids) + r_ids))
    return source, forget_ids, retain_ids


def _texts(items, prompts, key: str, prompt_key: str) -> list[str]:
    """Each image's prompt: its metadata text, else the folder's one prompt (``forget``/``retain``)."""
    default = str(prompts[0]) if len(prompts) == 1 else None
    out = []
    for item in items:
        if item.text is not None:
            out.append(item.text)
        elif default is not None:
            out.append(default)
        else:
            raise ValueError(f"{key}: {item.path} has no metadata.jsonl text and {prompt_key} has "
                             f"{len(prompts)} prompts, not one; give each image its prompt in metadata.jsonl "
                             f"or one {prompt_key} prompt for the folder")
    return out


def _cache_key(adapter, path: str) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    vae = adapter.components.get("vae") if hasattr(adapter, "components") else None
    config = dict(vae.config) if vae is not None else {"pixels": True}
    h.update(json.dumps({"vae": config, "size": list(adapter.image_size()), "channels": _channels(adapter)},
                        sort_keys=True, default=str).encode())
    return h.hexdigest()[:32]


def _channels(adapter) -> int:
    vae = adapter.components.get("vae") if hasattr(adapter, "components") else None
    return int(vae.config.in_channels) if vae is not None else adapter.sample_shape()[0]


def _encode_missing(adapter, items, cache: Path, keys, chunk: int = 8) -> None:
    from ..data.images import load_image

    todo = [(item, key) for item, key in zip(items, keys) if not (cache / f"{_cache_key(adapter, item.path)}.safetensors").is_file()]
    size, channels = adapter.image_size(), _channels(adapter)
    for start in range(0, len(todo), chunk):
        part = todo[start:start + chunk]
        images = torch.stack([load_image(item.path, size, channels, key) for item, key in part])
        latents = adapter.to_latents(images)
        for (item, _), z in zip(part, latents):
            file = cache / f"{_cache_key(adapter, item.path)}.safetensors"
            tmp = file.with_suffix(".tmp")
            save_file({"latent": z.contiguous()}, str(tmp), metadata={"file": os.path.basename(item.path)})
            os.replace(tmp, file)


def _cached(adapter, path: str, cache: Path) -> torch.Tensor:
    return load_file(str(cache / f"{_cache_key(adapter, path)}.safetensors"))["latent"]
