"""``unlearn-fast sample``: a PNG grid of what a model draws, one row per prompt, fixed seeds.

With ``--compare DIR2`` the same prompts and seeds are drawn by a second model (typically
the original) and shown on the left of each row, the model of ``--model-path`` on the
right, so a change made by unlearning is visible at a glance. Works for every family
(latents are decoded by the pipeline's VAE) and for the embedded models.
"""

from __future__ import annotations

import argparse
import os
from typing import Sequence

import numpy as np
import torch


def add_sample_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-path", default=None,
                        help="a model folder (a trained run's OUT/final, any pipeline folder); default: the embedded "
                             "model of --model")
    parser.add_argument("--model", default="auto", help="the family: auto (from the folder), class, text, sd, sdxl, "
                                                        "sd3, flux, dit")
    parser.add_argument("--prompt", action="append", required=True,
                        help="a prompt (a class id for class models); repeat for more rows; @FILE reads one a line")
    parser.add_argument("--compare", default=None, help="a second model folder drawn with the same seeds, on the left")
    parser.add_argument("--steps", type=int, default=20, help="sampler steps (default: 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--guidance", type=float, default=None, help="classifier-free guidance (default: the family's)")
    parser.add_argument("--n", type=int, default=4, help="images per prompt (default: 4)")
    parser.add_argument("--resolution", type=int, default=None, help="image side in pixels (default: the model's)")
    parser.add_argument("--allow-pickle", action="store_true", help="also load pickle weights (trusted files only)")
    parser.add_argument("--out", required=True, help="the PNG to write")


def run_sample_command(args: argparse.Namespace) -> int:
    from .cli import read_prompt_list

    prompts = read_prompt_list(args.prompt, "--prompt")
    if args.n < 1 or args.steps < 1:
        raise ValueError(f"--n and --steps: expected integers >= 1, got {args.n} and {args.steps}")
    models = [("compare", args.compare)] if args.compare else []
    models.append(("model", args.model_path))
    blocks = [draw(path, args.model, prompts, n=args.n, steps=args.steps, seed=args.seed, guidance=args.guidance,
                   resolution=args.resolution, allow_pickle=args.allow_pickle) for _, path in models]
    save_rows(args.out, blocks)
    print(f"wrote {args.out}: {len(prompts)} rows x {args.n} images"
          + (f", {args.compare} (left) | {args.model_path or 'embedded'} (right)" if args.compare else ""))
    return 0


def draw(path: str | None, family: str, prompts: Sequence[str], *, n: int, steps: int, seed: int,
         guidance: float | None, resolution: int | None, allow_pickle: bool = False) -> torch.Tensor:
    """``[P, n, C, H, W]`` images in ``[-1, 1]`` of each prompt, noise seeded by ``seed`` (the
    same draws for any model of the same latent shape)."""
    from .models import detect_family, family_of, load
    from .sampling import sample

    fam = family_of(detect_family(path) if family == "auto" else family)
    adapter, scheduler = load(path, fam.name, prompts=prompts if fam.text else (), allow_pickle=allow_pickle,
                              resolution=resolution)
    ids = [adapter.condition_id(p if fam.text else _class(p)) for p in prompts]
    cond = torch.tensor(ids).repeat_interleave(n)
    latents = sample(adapter, scheduler, cond, steps=steps, guidance=guidance,
                     generator=torch.Generator().manual_seed(seed), batch_size=max(8, n))
    images = torch.cat([adapter.to_images(latents[i:i + 16]) for i in range(0, len(latents), 16)])
    return images.view(len(prompts), n, *images.shape[1:])


def _class(name: str):
    return int(name) if name.strip().lstrip("-").isdigit() else name


def save_rows(path: str, blocks: Sequence[torch.Tensor], min_cell: int = 64) -> None:
    """PNG: row p = ``blocks[0][p]`` images | a gap | ``blocks[1][p]`` images ...; cells upscaled
    (nearest) to at least ``min_cell`` pixels."""
    from PIL import Image

    gap = 6
    rows = []
    for p in range(blocks[0].shape[0]):
        parts = []
        for b, block in enumerate(blocks):
            if b:
                parts.append(torch.ones(block.shape[2], block.shape[3], gap))
            parts.append(torch.cat(list(block[p]), dim=2))
        rows.append(torch.cat(parts, dim=2))
        rows.append(torch.ones(rows[-1].shape[0], 2, rows[-1].shape[2]))
    grid = torch.cat(rows[:-1], dim=1).clamp(-1, 1)
    pixels = ((grid + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    image = Image.fromarray(np.ascontiguousarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels))
    cell = blocks[0].shape[-1]
    scale = max(1, -(-min_cell // cell))
    image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    image.save(path)
