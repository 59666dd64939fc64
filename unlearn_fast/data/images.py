"""A user's image folder: files, prompts from ``metadata.jsonl``, decoded and resized to the model's size.

The layout is Hugging Face's imagefolder: image files (in the folder or below it) and an
optional ``metadata.jsonl`` whose lines are ``{"file_name": "cat1.png", "text": "a cat"}``.
An image without a metadata line takes the folder's default prompt. Every error names the
argument and the file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
METADATA_FILE = "metadata.jsonl"


@dataclass
class ImageItem:
    path: str  #: the image file
    text: str | None  #: its prompt from metadata.jsonl, or None (the folder's default)


def list_images(folder: str, key: str) -> list[ImageItem]:
    """The folder's images (sorted by path) with their metadata prompts; ``key`` names the
    argument in errors (``forget_images``)."""
    if not os.path.isdir(folder):
        raise ValueError(f"{key}: expected a folder of images, got {folder!r} (no such folder)")
    texts = _metadata(folder, key)
    items = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            if name.lower().endswith(IMAGE_EXTENSIONS):
                path = os.path.join(root, name)
                items.append(ImageItem(path, texts.get(os.path.relpath(path, folder).replace(os.sep, "/"))))
    if not items:
        raise ValueError(f"{key}: {folder!r} has no images (expected files ending in {', '.join(IMAGE_EXTENSIONS)})")
    known = {os.path.relpath(i.path, folder).replace(os.sep, "/") for i in items}
    stray = sorted(set(texts) - known)
    if stray:
        raise ValueError(f"{key}: {os.path.join(folder, METADATA_FILE)} names {stray[0]!r}, which is not an image "
                         "in the folder")
    return items


def _metadata(folder: str, key: str) -> dict[str, str]:
    file = os.path.join(folder, METADATA_FILE)
    if not os.path.isfile(file):
        return {}
    texts = {}
    with open(file, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                raise ValueError(f"{key}: {file} line {n} is not JSON") from None
            if not isinstance(entry, dict) or not isinstance(entry.get("file_name"), str) \
                    or not isinstance(entry.get("text", ""), str):
                raise ValueError(f"{key}: {file} line {n}: expected {{\"file_name\": \"...\", \"text\": \"...\"}}")
            if "text" in entry:
                texts[entry["file_name"].replace(os.sep, "/")] = entry["text"]
    return texts


def load_image(path: str, size: tuple[int, int], channels: int, key: str) -> torch.Tensor:
    """``[C, H, W]`` in ``[-1, 1]``: decoded, the shorter side resized to fit, centre-cropped."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("L" if channels == 1 else "RGB")
            h, w = size
            scale = max(h / img.height, w / img.width)
            new = (max(w, round(img.width * scale)), max(h, round(img.height * scale)))
            img = img.resize(new, Image.BICUBIC)
            left, top = (new[0] - w) // 2, (new[1] - h) // 2
            img = img.crop((left, top, left + w, top + h))
            arr = np.asarray(img, dtype=np.float32)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ValueError(f"{key}: {path} is not an image that can be decoded ({type(e).__name__}: {e})") from None
    x = torch.from_numpy(arr.copy()) / 127.5 - 1
    x = x[None] if x.dim() == 2 else x.permute(2, 0, 1)
    if x.shape[0] != channels:
        raise ValueError(f"{key}: {path} decodes to {x.shape[0]} channels, the model takes {channels}")
    return x
