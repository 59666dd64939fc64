"""Checkpoints and the final model folder: written atomically, read back with safe loaders only.

A checkpoint (``output_dir/checkpoint-<step>``) is written into a temporary folder and
renamed into place, so a crash never leaves a half-written checkpoint under a final name.
It holds the trainable weights (``model.safetensors``: the whole denoiser, or the LoRA
weights only), the optimizer, the LR schedule, the method's state (duals), every rank's
RNG states and the step, then ``trainer_state.json`` and, last, ``manifest.json`` (every
file's size and sha256). Weights are safetensors; the rest are ``.pt`` files read with
``torch.load(weights_only=True)``.

Resuming verifies the manifest: a damaged checkpoint (a truncated copy, a file changed or
missing) is skipped with a warning naming the file, and the run resumes from the newest
valid one. Pruning (``keep_checkpoints``) never deletes the newest valid checkpoint. A
write that fails (a full disk) leaves the previous checkpoints as they were and stops the
run with ``CheckpointWriteError``.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import hashlib
import json
import os
import re
import shutil
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..config import TrainConfig
from .rng import rng_state

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.json"
MANIFEST_FILE = "manifest.json"
METRICS_FILE = "metrics.jsonl"


class CheckpointWriteError(RuntimeError):
    """Writing a checkpoint failed (e.g. a full disk); the previous checkpoints are intact."""


class NoValidCheckpointError(ValueError):
    """``resume`` found checkpoints, none of them intact."""


def list_checkpoints(output_dir) -> list[tuple[int, Path]]:
    """Checkpoints written to the end (``(step, path)``, oldest first; their manifest is
    there, not yet verified); temporary folders are ignored."""
    out = []
    root = Path(output_dir)
    if root.is_dir():
        for p in root.iterdir():
            m = CHECKPOINT_RE.match(p.name)
            if m and p.is_dir() and (p / STATE_FILE).is_file() and (p / MANIFEST_FILE).is_file():
                out.append((int(m.group(1)), p))
    return sorted(out)


def find_latest_checkpoint(output_dir) -> Path | None:
    """The newest complete checkpoint (not verified; see :func:`find_latest_valid_checkpoint`)."""
    ckpts = list_checkpoints(output_dir)
    return ckpts[-1][1] if ckpts else None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(folder: Path) -> None:
    """``manifest.json``: the size and sha256 of every other file of ``folder`` (written last)."""
    files = {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST_FILE}
    tmp = folder / (MANIFEST_FILE + ".tmp")
    with open(tmp, "w") as f:
        json.dump({"files": files}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / MANIFEST_FILE)


def verify_checkpoint(folder: Path, *, hashes: bool = True) -> str | None:
    """``None`` if ``folder`` matches its manifest, else what is wrong (naming the file)."""
    manifest = folder / MANIFEST_FILE
    try:
        with open(manifest) as f:
            files = json.load(f)["files"]
    except FileNotFoundError:
        return f"{manifest} is missing"
    except (OSError, ValueError, KeyError, TypeError):
        return f"{manifest} is not a valid manifest"
    for name, entry in files.items():
        path = folder / name
        if not path.is_file():
            return f"{path} is missing"
        size = path.stat().st_size
        if size != entry.get("size"):
            return f"{path} has {size} bytes, the manifest says {entry.get('size')}"
        if hashes and _sha256(path) != entry.get("sha256"):
            return f"{path} does not match its sha256 in the manifest"
    return None


def find_latest_valid_checkpoint(output_dir) -> Path | None:
    """The newest checkpoint that matches its manifest; each damaged newer one is skipped with
    a warning naming the file. ``None`` without checkpoints; ``NoValidCheckpointError`` when
    there are some and none is intact."""
    ckpts = list_checkpoints(output_dir)
    problems = []
    for _, path in reversed(ckpts):
        problem = verify_checkpoint(path)
        if problem is None:
            return path
        warnings.warn(f"resume: skipping the damaged checkpoint {path}: {problem}", stacklevel=2)
        problems.append(problem)
    if ckpts:
        raise NoValidCheckpointError(f"resume: no intact checkpoint in {str(output_dir)!r} (newest: {problems[0]}); "
                                     "start again with overwrite = true or resume from another folder")
    return None


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
                    config: TrainConfig, data_gen, step_gen) -> Path:
    """Write ``checkpoint-<step>`` atomically: everything goes to a temporary folder that is
    renamed into place once every rank has written its part and the manifest is written.
    A failed write removes the temporary folder and raises ``CheckpointWriteError``."""
    name = f"checkpoint-{step:08d}"
    tmp = out / f".tmp-{name}"
    main = accelerator.is_main_process
    try:
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
            with open(tmp / STATE_FILE, "w") as f:
                json.dump({"step": step, "world_size": accelerator.num_processes, "lora": lora,
                           "method": config.method, "config": config.to_dict()}, f, indent=2)
        accelerator.wait_for_everyone()
        if main:
            write_manifest(tmp)  # last: a checkpoint without it is not complete
            fsync_dir(tmp)
            replace_dir(tmp, out / name)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        why = "the disk is full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
        last = find_latest_checkpoint(out)
        raise CheckpointWriteError(f"checkpoint: writing {out / name} failed ({why}); nothing was replaced, "
                                   f"the last checkpoint on disk is {last if last else 'none'}") from e
    if main and config.keep_checkpoints > 0:
        _prune(out, config.keep_checkpoints)
    accelerator.wait_for_everyone()
    return out / name


def _prune(out: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints, never the newest valid one (sizes checked)."""
    ckpts = [p for _, p in list_checkpoints(out)]
    newest_valid = next((p for p in reversed(ckpts) if verify_checkpoint(p, hashes=False) is None), None)
    for old in ckpts[:-keep]:
        if old != newest_valid:
            shutil.rmtree(old, ignore_errors=True)


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
    duals = method.duals.state_dict() if method.duals is not None else {}
    info = {"step": step, "method": config.method, "family": adapter.family, "forget": list(config.forget),
            "retain": list(config.retain),
            "duals": {k: v.tolist() for k, v in duals.items()},
            "config": config.to_dict()}
    with open(tmp / "unlearn_info.json", "w") as f:
        json.dump(info, f, indent=2, default=str)
    replace_dir(tmp, out / "final")
