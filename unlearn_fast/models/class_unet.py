"""Class-conditional ``UNet2DModel`` (the embedded MNIST DDPM and folders like it)."""

from __future__ import annotations

import os
from typing import Sequence

from torch import nn

from .base import ConditionedModel
from ..models_zoo import weights_use_safetensors
from .loading import ModelFolderError, check_model_files, from_pretrained, training_scheduler


class ClassConditionalUNet(ConditionedModel):
    """A class-conditional ``UNet2DModel`` (``num_class_embeds`` classes, one of them null)."""

    family = "class"
    default_guidance = 1.5

    def __init__(self, unet: nn.Module, null_class: int, class_names: Sequence[str] | None = None):
        n = unet.config.num_class_embeds
        if n is None:
            raise ValueError("unet: expected a class-conditional UNet2DModel (config.num_class_embeds is None)")
        if not 0 <= null_class < n:
            raise ValueError(f"null_class: expected an id in [0, {n}), got {null_class}")
        self.module = unet
        self.null_id = null_class
        self.conditions = list(class_names) if class_names is not None else [str(i) for i in range(n)]
        if len(self.conditions) != n:
            raise ValueError(f"class_names: expected {n} names, got {len(self.conditions)}")
        self.components = {}

    def predict(self, x_t, t, cond_ids):
        return self.module(x_t, t, class_labels=cond_ids).sample


def load_class_unet(path: str | None, *, device="cpu", allow_pickle: bool = False, null_class: int | None = None,
                    **_):
    """``(adapter, scheduler)`` of a class-conditional ``UNet2DModel``: the embedded MNIST DDPM
    (``path=None``), a flat ``save_pretrained`` folder, or a pipeline folder (``unet/`` and
    ``scheduler/``, e.g. a ``DDPMPipeline``)."""
    from diffusers import UNet2DModel

    from ..models_zoo import load_class_ddpm

    if path is not None and not os.path.isfile(os.path.join(path, "config.json")) \
            and os.path.isdir(os.path.join(path, "unet")):
        unet = from_pretrained(UNet2DModel, path, subfolder="unet", allow_pickle=allow_pickle).to(device)
        scheduler = training_scheduler(path)
        subfolder = "unet"
    else:
        if path is not None:
            check_model_files(path)  # names model_path (load_class_ddpm's errors name its own argument)
            weights_use_safetensors(path, allow_pickle)
        unet, scheduler = load_class_ddpm(path, device=device, allow_pickle=allow_pickle)
        subfolder = None
    n = unet.config.num_class_embeds
    if n is None:
        raise ModelFolderError(f"model_path: {path!r} is not a class-conditional UNet2DModel "
                               "(config.num_class_embeds is null); for a text-to-image pipeline use its family "
                               "(model = 'sd', 'sdxl', ...)")
    adapter = ClassConditionalUNet(unet.train(), null_class if null_class is not None else n - 1)
    adapter.subfolder = subfolder
    return adapter, scheduler
