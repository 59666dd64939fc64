"""The embedded text-to-image model of the shapes benchmark: its configs, tokenizer and loader.

* :func:`load_shapes_ddpm` -- a text-conditioned DDPM on the 32x32 RGB images of
  :mod:`unlearn_fast.data.shapes` (8 objects x 6 styles): a diffusers ``UNet2DConditionModel``
  (:func:`build_shapes_unet_config`, cross-attention at 16x16, 8x8 and in the mid block)
  reading the last hidden states of a tiny ``CLIPTextModel`` (:func:`build_shapes_text_config`)
  trained jointly with it from scratch, with the offline byte-level BPE tokenizer of
  :func:`build_shapes_tokenizer` (every word of ``shapes.SHAPES_WORDS`` is one token).
  Prompts name an object and a style (``"a striped star"``), an object (``"a star"``) or a style
  (``"something striped"``), see :mod:`unlearn_fast.data.shapes`; ``""`` is the null /
  unconditional prompt (prompt dropout in training, for classifier-free guidance). Epsilon
  prediction with the scheduler of :func:`build_shapes_scheduler_config` (the MNIST models'
  one). Weights: ``assets/shapes_ddpm/``, the pipeline-style folder layout of ``text_ddpm/``
  (``unet/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``, ``train_info.json``), written by
  ``scripts/pretrain_shapes_ddpm.py``.

The object / style classifiers that score its samples are in
:mod:`unlearn_fast.eval.shapes_classifier`; see ``unlearn_fast/assets/README.md`` for training.
"""

from __future__ import annotations

import os
from typing import Optional, Union

import torch

from .asset_files import ASSETS_DIR
from .data.shapes import OBJECTS, SHAPES_IMAGE_SIZE, SHAPES_WORDS, STYLES, prompt
from .models_zoo import (
    TEXT_DDPM_HIDDEN,
    TEXT_DDPM_MAX_LENGTH,
    build_class_scheduler_config,
    build_tiny_clip_text_config,
    build_tiny_clip_tokenizer,
    load_text_folder,
)

SHAPES_DDPM_DIR = os.path.join(ASSETS_DIR, "shapes_ddpm")
#: hidden size of the shapes text encoder (= the UNet's ``cross_attention_dim``)
SHAPES_TEXT_HIDDEN = TEXT_DDPM_HIDDEN
#: tokenizer ``model_max_length`` and text encoder ``max_position_embeddings``
SHAPES_MAX_LENGTH = TEXT_DDPM_MAX_LENGTH


def build_shapes_tokenizer():
    """The tiny offline CLIP tokenizer over ``SHAPES_WORDS`` (each word one token; any text tokenizes)."""
    return build_tiny_clip_tokenizer(words=SHAPES_WORDS, model_max_length=SHAPES_MAX_LENGTH)


def build_shapes_text_config(tokenizer=None, hidden_size: int = SHAPES_TEXT_HIDDEN) -> dict:
    """Keyword arguments of ``transformers.CLIPTextConfig`` for the shapes text encoder (the MNIST
    text model's: 2 layers, 2 heads, hidden 64, MLP 256, 16 positions; vocabulary of
    :func:`build_shapes_tokenizer`)."""
    return build_tiny_clip_text_config(tokenizer or build_shapes_tokenizer(), hidden_size=hidden_size)


def build_shapes_unet_config(image_size: int = SHAPES_IMAGE_SIZE,
                             cross_attention_dim: int = SHAPES_TEXT_HIDDEN) -> dict:
    """Keyword arguments of ``diffusers.UNet2DConditionModel`` for the shapes DDPM.

    RGB in and out; three resolutions (32x32 with 32 channels, 16x16 and 8x8 with 64), one
    ResNet per level, norm groups 8; a transformer block (self-attention, cross-attention to the
    text, feed-forward) at 16x16 and 8x8 (``CrossAttnDownBlock2D`` / ``CrossAttnUpBlock2D``) and
    in the ``UNetMidBlock2DCrossAttn``. ``attention_head_dim=4`` is, as in Stable Diffusion's
    config, the number of heads (4 heads of 16 channels). ~1.69 M parameters.
    """
    return dict(
        sample_size=image_size,
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=4,
        norm_num_groups=8,
    )


def build_shapes_scheduler_config() -> dict:
    """Keyword arguments of ``diffusers.DDPMScheduler`` (1000 steps, ``squaredcos_cap_v2``, epsilon,
    ``"trailing"`` spacing: the embedded MNIST models' scheduler)."""
    return build_class_scheduler_config()


def canonical_shapes_prompts() -> list:
    """The canonical prompt of every object-style combination (``"a solid circle"``, object-major),
    then of every object alone (``"a circle"``) and every style alone (``"something solid"``)."""
    return ([prompt(o, s) for o in OBJECTS for s in STYLES] + [prompt(o) for o in OBJECTS]
            + [prompt(style=s) for s in STYLES])


def load_shapes_ddpm(
    path: Optional[str] = None,
    device: Union[str, torch.device] = "cpu",
    prompts=None,
    dtype: torch.dtype = torch.float32,
    *,
    allow_pickle: bool = False,
):
    """``(adapter, scheduler)`` of the shipped shapes DDPM (eval mode, no download).

    ``adapter`` is a :class:`unlearn_fast.models.TextConditionalUNet` over ``prompts`` (default:
    :func:`canonical_shapes_prompts`, then the null prompt ``""``); more prompts can be added with
    ``adapter.add_prompts``. ``path`` defaults to ``unlearn_fast/assets/shapes_ddpm``. Weights load
    from safetensors; pickle-only weights are refused unless ``allow_pickle=True`` (see
    :func:`unlearn_fast.models_zoo.weights_use_safetensors`).
    """
    prompts = list(prompts) if prompts is not None else canonical_shapes_prompts() + [""]
    return load_text_folder(path or SHAPES_DDPM_DIR, prompts, device, dtype, allow_pickle, name="shapes DDPM",
                            script="scripts/pretrain_shapes_ddpm.py")
