"""Model adapters, one module per family, behind ``ConditionedModel.predict(x_t, t, cond_ids)``.

``load(path, family="auto", prompts=...) -> (adapter, scheduler)`` picks the family from the
folder's ``model_index.json`` (``_class_name``) or ``config.json``; ``FAMILIES`` maps each
family name to its loader and the diffusers classes it stands for.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Sequence

from .base import ConditionedModel, PromptConditionedModel, trainable_parameters
from .class_unet import ClassConditionalUNet, load_class_unet
from .dit import DiTClassTransformer, load_dit
from .flux import FluxTransformer, load_flux
from .loading import ModelFolderError, read_index
from .sd import TextConditionalUNet, load_sd
from .sd3 import SD3Transformer, load_sd3
from .sdxl import SDXLUNet, load_sdxl


@dataclass(frozen=True)
class Family:
    name: str
    loader: Callable  #: ``loader(path, *, prompts, device, allow_pickle, resolution, null_class)``
    classes: tuple[str, ...]  #: ``_class_name`` values of folders of this family
    text: bool  #: conditions are prompts (else class ids)
    flow: bool  #: trained with flow matching (velocity prediction)


FAMILIES = {f.name: f for f in (
    Family("class", load_class_unet, ("UNet2DModel", "DDPMPipeline", "DDIMPipeline"), text=False, flow=False),
    Family("sd", load_sd, ("StableDiffusionPipeline", "UNet2DConditionModel"), text=True, flow=False),
    Family("sdxl", load_sdxl, ("StableDiffusionXLPipeline",), text=True, flow=False),
    Family("sd3", load_sd3, ("StableDiffusion3Pipeline",), text=True, flow=True),
    Family("flux", load_flux, ("FluxPipeline",), text=True, flow=True),
    Family("dit", load_dit, ("DiTPipeline",), text=False, flow=False),
)}
#: the older name of the SD family (the embedded text DDPM's folder is of this layout)
ALIASES = {"text": "sd"}


def detect_family(path: str | None) -> str:
    """The family of a model folder (``None``: the embedded class DDPM)."""
    if path is None:
        return "class"
    if not os.path.isdir(path):
        raise ModelFolderError(f"model_path: expected a model folder, got {path!r} "
                               f"({'a file' if os.path.exists(path) else 'no such folder'})")
    index = read_index(path)
    name = index.get("_class_name")
    if name is None:
        import json

        config = os.path.join(path, "config.json")
        if os.path.isfile(config):
            try:
                with open(config) as f:
                    name = json.load(f).get("_class_name")
            except (OSError, ValueError):
                raise ModelFolderError(f"model_path: {config} is not valid JSON") from None
        elif os.path.isdir(os.path.join(path, "text_encoder")) and os.path.isdir(os.path.join(path, "unet")):
            return "sd"  # the embedded text DDPM's layout: no model_index.json
        elif os.path.isfile(os.path.join(path, "unet", "config.json")):
            return "class"
        else:
            raise ModelFolderError(f"model_path: {path!r} has neither {os.path.join(path, 'model_index.json')} nor "
                                   f"{config} (expected a diffusers model or pipeline folder)")
    for family in FAMILIES.values():
        if name in family.classes:
            return family.name
    known = ", ".join(c for f in FAMILIES.values() for c in f.classes)
    raise ModelFolderError(f"model_path: {path!r} holds a {name or 'folder of unknown kind'}; expected a diffusers "
                           f"folder of one of: {known} (or choose the family with model = ...)")


def family_of(name: str) -> Family:
    name = ALIASES.get(name, name)
    if name not in FAMILIES:
        raise ValueError(f"model: expected one of {sorted(FAMILIES)} or 'auto', got {name!r}")
    return FAMILIES[name]


def load(path: str | None, family: str = "auto", *, prompts: Sequence[str] = (), device="cpu",
         allow_pickle: bool = False, resolution: int | None = None, null_class: int | None = None):
    """``(adapter, scheduler)`` of the model folder ``path`` (see the module docstring)."""
    fam = family_of(detect_family(path) if family == "auto" else family)
    if path is None and fam.name == "sd":
        from ..asset_files import require_embedded

        path = require_embedded("text_ddpm")
    if path is None and fam.name != "class":
        raise ValueError(f"model_path: the {fam.name} family needs a model folder (only class and text are embedded)")
    return fam.loader(path, prompts=list(prompts), device=device, allow_pickle=allow_pickle, resolution=resolution,
                      null_class=null_class)


__all__ = ["ALIASES", "FAMILIES", "ClassConditionalUNet", "ConditionedModel", "DiTClassTransformer", "Family",
           "FluxTransformer", "ModelFolderError", "PromptConditionedModel", "SD3Transformer", "SDXLUNet",
           "TextConditionalUNet", "detect_family", "family_of", "load", "trainable_parameters"]
