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
        return cls.from_pretrained(folder, local_files_only=True)
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise ModelFolderError(f"model_path: {folder} has no config.json")
    kwargs = {"local_files_only": True, "use_safetensors": weights_use_safetensors(folder, allow_pickle, what=what)}
    if dtype is not None:
        kwargs["torch_dtype"] = dtype
    model = cls.from_pretrained(folder, **kwargs)
    return model.to(device)


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
