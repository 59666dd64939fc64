"""Embedded default models, loaded from files shipped in ``unlearn_fast/assets`` (no download).

* :func:`load_class_ddpm` -- a class-conditional DDPM on 16x16 MNIST digits
  (diffusers ``UNet2DModel`` + ``DDPMScheduler``). Classes 0..9 are the digits and class
  ``NULL_CLASS`` (10) is the null / unconditional class: the model was trained with the
  label replaced by 10 with probability 0.1, so ``eps(x, t, 10)`` is the unconditional
  prediction and classifier-free guidance is
  ``eps_u + w * (eps_c - eps_u)``. Epsilon prediction, 1000 training timesteps,
  ``squaredcos_cap_v2`` betas; images in [-1, 1], shape (N, 1, 16, 16).
* :func:`build_class_unet_config` -- the ``UNet2DModel`` keyword arguments of that model
  (to build an untrained one, e.g. in tests or in ``scripts/pretrain_class_ddpm.py``).

The classifier used to score samples is in :mod:`unlearn_fast.eval.classifier`.
See ``unlearn_fast/assets/README.md`` for how the weights were trained.
"""

from __future__ import annotations

import os
from typing import Optional, Tuple, Union

import torch

ASSETS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
CLASS_DDPM_DIR = os.path.join(ASSETS_DIR, "class_ddpm")

#: digits 0..9 plus the null class
CLASS_DDPM_NUM_CLASS_EMBEDS = 11
CLASS_DDPM_NULL_CLASS = 10
CLASS_DDPM_IMAGE_SIZE = 16


def build_class_unet_config(image_size: int = CLASS_DDPM_IMAGE_SIZE) -> dict:
    """Keyword arguments of ``diffusers.UNet2DModel`` for the class-conditional DDPM.

    Two resolutions (16x16 with 32 channels, 8x8 with 64 channels + self-attention), one
    ResNet block per level, an attention mid block at 8x8; class labels go through an
    ``nn.Embedding(11, 128)`` added to the timestep embedding (``class_embed_type=None``).
    """
    return dict(
        sample_size=image_size,
        in_channels=1,
        out_channels=1,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=32,
        norm_num_groups=8,
        class_embed_type=None,
        num_class_embeds=CLASS_DDPM_NUM_CLASS_EMBEDS,
    )


def build_class_scheduler_config() -> dict:
    """Keyword arguments of ``diffusers.DDPMScheduler`` the DDPM was trained with.

    ``timestep_spacing="trailing"`` is carried over by ``DDIMScheduler.from_config`` so a
    few-step DDIM sampler starts at t=999.
    """
    return dict(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        prediction_type="epsilon",
        clip_sample=True,
        clip_sample_range=1.0,
        timestep_spacing="trailing",
    )


def load_class_ddpm(
    path: Optional[str] = None,
    device: Union[str, torch.device] = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Tuple["UNet2DModel", "DDPMScheduler"]:  # noqa: F821
    """``(unet, scheduler)`` of the shipped class-conditional DDPM (eval mode, no download).

    ``path`` defaults to ``unlearn_fast/assets/class_ddpm`` (a ``save_pretrained`` folder
    holding ``config.json``, ``diffusion_pytorch_model.safetensors`` and
    ``scheduler_config.json``).
    """
    from diffusers import DDPMScheduler, UNet2DModel

    path = path or CLASS_DDPM_DIR
    if not os.path.exists(os.path.join(path, "config.json")):
        raise FileNotFoundError(
            f"class DDPM not found at {path}; train it with scripts/pretrain_class_ddpm.py"
        )
    unet = UNet2DModel.from_pretrained(path, local_files_only=True, use_safetensors=True, torch_dtype=dtype)
    unet = unet.to(device).eval()
    if os.path.exists(os.path.join(path, "scheduler_config.json")):
        scheduler = DDPMScheduler.from_pretrained(path, local_files_only=True)
    else:
        scheduler = DDPMScheduler(**build_class_scheduler_config())
    return unet, scheduler
