"""Where the embedded models' files live in the installed package, and the error for a missing one."""

from __future__ import annotations

import os

from ._version import __version__

ASSETS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")

#: the files each embedded model needs, relative to ``ASSETS_DIR``
REQUIRED = {
    "class_ddpm": ("class_ddpm/config.json", "class_ddpm/diffusion_pytorch_model.safetensors"),
    "text_ddpm": (
        "text_ddpm/unet/config.json",
        "text_ddpm/unet/diffusion_pytorch_model.safetensors",
        "text_ddpm/text_encoder/config.json",
        "text_ddpm/text_encoder/model.safetensors",
        "text_ddpm/tokenizer/tokenizer_config.json",
        "text_ddpm/tokenizer/tokenizer.json",
    ),
    "shapes_ddpm": (
        "shapes_ddpm/unet/config.json",
        "shapes_ddpm/unet/diffusion_pytorch_model.safetensors",
        "shapes_ddpm/text_encoder/config.json",
        "shapes_ddpm/text_encoder/model.safetensors",
        "shapes_ddpm/tokenizer/tokenizer_config.json",
        "shapes_ddpm/tokenizer/tokenizer.json",
        "shapes_ddpm/scheduler/scheduler_config.json",
    ),
    "classifier": ("classifier.safetensors", "classifier_config.json"),
    "detector": ("detector.safetensors", "detector_config.json"),
    "shapes_classifier": ("shapes_classifier.safetensors", "shapes_classifier_config.json"),
    "shapes_detector": ("shapes_detector.safetensors", "shapes_detector_config.json"),
}


class MissingAssetError(FileNotFoundError):
    """A file of an embedded model is not in the installed package."""


def asset_path(relative: str) -> str:
    """The absolute path of ``unlearn_fast/assets/<relative>``; a clear error if it is missing."""
    path = os.path.join(ASSETS_DIR, *relative.split("/"))
    if not os.path.isfile(path):
        raise MissingAssetError(
            f"unlearn_fast/assets/{relative}: embedded asset missing from unlearn_fast {__version__} "
            f"(looked for {path}); this installation is incomplete: reinstall unlearn_fast {__version__}"
        )
    return path


def require_embedded(name: str) -> str:
    """Checks every file of embedded model ``name`` (a key of ``REQUIRED``); returns its folder."""
    if name not in REQUIRED:
        raise ValueError(f"name: expected one of {sorted(REQUIRED)}, got {name!r}")
    for relative in REQUIRED[name]:
        asset_path(relative)
    return os.path.normpath(os.path.join(ASSETS_DIR, os.path.commonpath(REQUIRED[name])))  # the model's folder
