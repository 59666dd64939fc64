"""Checkpoints and the final model folder: written atomically, read back with safe loaders only.

A checkpoint (``output_dir/checkpoint-<step>``) is written into a temporary folder and
renamed into place, so a crash never leaves a half-written checkpoint under a final name.
It holds the trainable weights (``model.safetensors``: the whole denoiser, or the LoRA
weights only), the optimizer, the LR schedule, the method's state (duals), every rank's
RNG states and the step; ``trainer_state.json``, written last, marks it complete. Weights
are safetensors; the rest are ``.pt`` files read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..config import TrainConfig
from .rng import rng_state

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.json"
METRICS_FILE = "metrics.jsonl"


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


def weights(module, lora: bool) -> dict[str, torch.Tensor]:
    """The trainable state of ``module`` on the CPU (only the ``lora_`` tensors with LoRA)."""
    sd = module.state_dict()
    if lora:
        sd = {k: v for k, v in sd.items() if "lora_" in k}
    return {k: v.detach().cpu().contiguous() for k, v in sd.items()}


def replace_dir(tmp: Path, final: Path) -> None:
    """Move the finished ``tmp`` folder to ``final`` (replacing an existing one)."""
    trash = None
    if final.exists():
        trash = final.with_name(f".trash-{final.name}-{os.getpid()}")
        os.replace(final, trash)
    os.replace(tmp, final)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)
    fsync_dir(final.parent)


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def truncate_metrics(path: Path, step: int) -> None:
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


def save_checkpoint(out: Path, step: int, accelerator, module, lora: bool, optimizer, lr_scheduler, method,
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
    torch.save(rng_state(data_gen, step_gen), tmp / f"rng_state_{accelerator.process_index}.pt")
    if main:
        save_file(weights(module, lora), str(tmp / "model.safetensors"), metadata={"step": str(step)})
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
        fsync_dir(tmp)
        replace_dir(tmp, out / name)
        if config.keep_checkpoints > 0:
            for _, old in list_checkpoints(out)[:-config.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def load_checkpoint(path: Path, module, lora: bool, optimizer, lr_scheduler, method, rank: int, world: int):
    """Load a checkpoint into the run's objects; returns ``(step, rng_state of this rank)``."""
    with open(path / STATE_FILE) as f:
        state = json.load(f)
    if state.get("world_size", 1) != world:
        raise ValueError(f"resume: {path} was written by {state.get('world_size')} processes, this run has {world}; "
                         "resume with the same number of processes")
    if bool(state.get("lora", False)) != lora:
        raise ValueError(f"resume: {path} was written with train_params {'lora' if state.get('lora') else 'not lora'}; "
                         "the config disagrees")
    loaded = load_file(str(path / "model.safetensors"))
    missing, unexpected = module.load_state_dict(loaded, strict=False)
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


def save_final(out: Path, module, lora: bool, scheduler, adapter, source_dir: str | None, config: TrainConfig,
               method, step: int) -> None:
    """``output_dir/final``: the model folder the run started from with the trained denoiser
    in place (a pipeline folder stays a pipeline folder), plus ``lora/`` with LoRA and
    ``unlearn_info.json``. Written to a temporary folder, then renamed."""
    from .lora_export import save_lora

    tmp = out / ".tmp-final"
    shutil.rmtree(tmp, ignore_errors=True)
    sub = adapter.subfolder
    if sub is not None and source_dir is not None:
        src = Path(source_dir)
        shutil.copytree(src, tmp, ignore=lambda d, names: [sub] if Path(d) == src else [])
        denoiser_dir = tmp / sub
    else:
        tmp.mkdir(parents=True)
        denoiser_dir = tmp
    base = module
    if lora:
        save_lora(module, tmp / "lora", adapter.family)
        base = copy.deepcopy(module).merge_and_unload()
    base.save_pretrained(str(denoiser_dir), safe_serialization=True)
    if sub is None:
        scheduler.save_pretrained(str(tmp))
    duals = method.state_dict()
    info = {"step": step, "method": config.method, "family": adapter.family, "forget": list(config.forget),
            "retain": list(config.retain),
            "duals": {k: v.tolist() for k, v in duals.get("duals", {}).items()} if duals else {},
            "config": config.to_dict()}
    with open(tmp / "unlearn_info.json", "w") as f:
        json.dump(info, f, indent=2, default=str)
    replace_dir(tmp, out / "final")
