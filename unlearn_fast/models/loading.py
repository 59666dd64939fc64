"""Loading a pipeline folder's components as ``model_index.json`` names them, offline.

``read_index(path)`` reads ``model_index.json``; ``load_component(path, name)`` builds one
component with the library and class the index gives it (``["transformers",
"CLIPTextModel"]``), from safetensors unless ``allow_pickle``; ``training_scheduler`` turns
the folder's (sampling) scheduler into the one training draws noise with, as diffusers'
training scripts do. Every error names the folder or file and what was expected.
"""

from __future__ import annotations

import importlib
import json
import os

import torch

from ..models_zoo import weights_use_safetensors

INDEX_FILE = "model_index.json"


class ModelFolderError(ValueError):
    """A model folder that cannot be loaded: names the path and what was expected."""


def read_index(path: str) -> dict:
    """The folder's ``model_index.json`` as a dict (``{}`` when it has none)."""
    file = os.path.join(path, INDEX_FILE)
    if not os.path.isfile(file):
        return {}
    try:
        with open(file) as f:
            index = json.load(f)
    except (OSError, ValueError) as e:
        raise ModelFolderError(f"model_path: {file} is not valid JSON ({e})") from None
    if not isinstance(index, dict):
        raise ModelFolderError(f"model_path: {file}: expected a JSON object")
    return index


def component_class(path: str, name: str, index: dict):
    """The class ``index`` names for component ``name``; ``None`` when the index leaves it out."""
    entry = index.get(name)
    if not (isinstance(entry, (list, tuple)) and len(entry) == 2) or entry[0] is None:
        return None
    library, cls_name = entry
    try:
        module = importlib.import_module(library)
        return getattr(module, cls_name)
    except (ImportError, AttributeError):
        raise ModelFolderError(f"model_path: {os.path.join(path, INDEX_FILE)} names {name} = "
                               f"{library}.{cls_name}, which this environment does not have") from None


def load_component(path: str, name: str, index: dict, *, allow_pickle: bool = False, device="cpu",
                   dtype: torch.dtype | None = None, required: bool = True, what: str = "model_path"):
    """Component ``name`` of the pipeline folder ``path`` (``None`` if absent and not required)."""
    cls = component_class(path, name, index)
    folder = os.path.join(path, name)
    if cls is None or not os.path.isdir(folder):
        if required:
            raise ModelFolderError(f"model_path: {path!r} has no {name}/ component (expected a folder {folder} "
                                   f"listed in {INDEX_FILE})")
        return None
    if "Tokenizer" in cls.__name__:
        try:
            return cls.from_pretrained(folder, local_files_only=True)
        except Exception as e:  # a tokenizer's files are read by several libraries, each its own errors
            raise ModelFolderError(f"{what}: {folder} is not a {cls.__name__} folder that loads ({_short(e)})") from None
    kwargs = {} if dtype is None else {"torch_dtype": dtype}
    return from_pretrained(cls, folder, allow_pickle=allow_pickle, what=what, **kwargs).to(device)


def from_pretrained(cls, folder: str, *, allow_pickle: bool = False, what: str = "model_path", subfolder=None,
                    **kwargs):
    """``cls.from_pretrained(folder)`` offline, after checking ``config.json`` parses and every
    safetensors file is whole; any other failure becomes one ``ModelFolderError`` naming the folder."""
    path = os.path.join(folder, subfolder) if subfolder else folder
    check_model_files(path, what)
    kwargs.setdefault("use_safetensors", weights_use_safetensors(path, allow_pickle, what=what))
    try:
        return cls.from_pretrained(path, local_files_only=True, **kwargs)
    except Exception as e:  # diffusers/transformers raise OSError, ValueError, RuntimeError, ... for a bad folder
        raise ModelFolderError(f"{what}: {path} does not load as a {cls.__name__} ({_short(e)})") from None


def check_model_files(folder: str, what: str = "model_path") -> None:
    """``config.json`` is there and is JSON; each ``.safetensors`` file holds all the bytes its header names."""
    config = os.path.join(folder, "config.json")
    if not os.path.isfile(config):
        raise ModelFolderError(f"{what}: {config} is missing (expected the model's config)")
    try:
        with open(config) as f:
            if not isinstance(json.load(f), dict):
                raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        raise ModelFolderError(f"{what}: {config} is not valid JSON ({_short(e)})") from None
    for name in sorted(os.listdir(folder)):
        if name.endswith(".safetensors"):
            check_safetensors(os.path.join(folder, name), what)


def check_safetensors(path: str, what: str = "model_path") -> None:
    """A cheap whole-file check: the header parses and the file is as long as its tensors need."""
    size = os.path.getsize(path)
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if n <= 1 or 8 + n > size:
                raise ValueError("no complete safetensors header")
            header = json.loads(f.read(n))
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError) as e:
        raise ModelFolderError(f"{what}: {path} is not a valid safetensors file ({_short(e)}); the file is damaged "
                               "or truncated") from None
    if 8 + n + end > size:
        raise ModelFolderError(f"{what}: {path} is truncated: {size} bytes, its header needs {8 + n + end}")


def _short(e: Exception, limit: int = 200) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def training_scheduler(path: str, subfolder: str | None = "scheduler"):
    """The noise scheduler training uses: a flow-matching folder keeps its
    ``FlowMatchEulerDiscreteScheduler``; any other (PNDM, DDIM, DPM-Solver, ...) becomes
    ``DDPMScheduler.from_config`` of its config (its betas and prediction type)."""
    from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

    folder = os.path.join(path, subfolder) if subfolder else path
    file = os.path.join(folder, "scheduler_config.json")
    if not os.path.isfile(file):
        raise ModelFolderError(f"model_path: {file} is missing (expected the pipeline's scheduler config)")
    with open(file) as f:
        config = json.load(f)
    if str(config.get("_class_name", "")).startswith("FlowMatch"):
        return FlowMatchEulerDiscreteScheduler.from_config(config)
    return DDPMScheduler.from_config(config)
