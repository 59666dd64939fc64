"""The adapter interface every model family implements: ``predict(x_t, t, cond_ids)``.

A condition is an integer id into the adapter's ``conditions`` (class names, or prompts).
Methods speak in condition ids only, so the same method runs on a class-conditional
``UNet2DModel``, an SD UNet with its text encoder, or a Flux transformer with two.

``t`` is the model's own timestep, as its scheduler defines it: an integer in
``[0, num_train_timesteps)`` for DDPM-style schedulers, a float ``sigma * num_train_timesteps``
for flow matching. ``x_t`` is always ``[B, C, H, W]`` (latents unpacked), so losses and
methods see the same layout for every family.

The frozen teacher is the same adapter over a frozen copy of the network, or, for a peft
LoRA model, the same network with its adapters disabled (no second copy in memory).
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn


class ConditionedModel:
    """Base adapter. Subclasses set ``module`` (the nn.Module that trains), ``conditions``
    (the name of each condition id) and ``null_id`` (the unconditional condition).

    Class attributes a family sets: ``family`` (its key in ``models.FAMILIES``),
    ``subfolder`` (where ``module`` lives in a pipeline folder; ``None`` for a flat folder),
    ``default_guidance`` (the classifier-free guidance its sampler uses by default)."""

    module: nn.Module
    conditions: list[str]
    null_id: int
    family: str = "custom"
    subfolder: str | None = None
    default_guidance: float = 3.0
    #: extra components (VAE, text encoders) the adapter holds, by pipeline subfolder
    components: dict

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, cond_ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sample_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of the model's input (latents for a latent model)."""
        cfg = self.module.config
        size = cfg.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return int(cfg.in_channels), int(h), int(w)

    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` in pixels of the images the model's inputs encode (the VAE's scale)."""
        _, h, w = self.sample_shape()
        vae = self.components.get("vae") if hasattr(self, "components") else None
        scale = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
        return h * scale, w * scale

    @torch.no_grad()
    def to_latents(self, images: torch.Tensor) -> torch.Tensor:
        """Images in ``[-1, 1]`` -> the model's inputs: the VAE posterior's mean, shifted and
        scaled by the VAE config (``(z - shift_factor) * scaling_factor``, as diffusers'
        training scripts do); a pixel-space model takes the images themselves."""
        vae = self.components.get("vae") if hasattr(self, "components") else None
        if vae is None:
            return images
        param = next(vae.parameters())
        z = vae.encode(images.to(param.device, param.dtype)).latent_dist.mean
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return ((z - shift) * vae.config.scaling_factor).float().cpu()

    @torch.no_grad()
    def to_images(self, latents: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`to_latents`: images in ``[-1, 1]`` (float32, CPU)."""
        vae = self.components.get("vae") if hasattr(self, "components") else None
        if vae is None:
            return latents.float().cpu()
        param = next(vae.parameters())
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        z = latents.to(param.device, param.dtype) / vae.config.scaling_factor + shift
        return vae.decode(z).sample.float().cpu().clamp(-1, 1)

    def condition_id(self, name: str | int) -> int:
        """Id of a condition given by name (``"3"``, ``"a handwritten digit three"``) or id."""
        if isinstance(name, int) and 0 <= name < len(self.conditions):
            return name
        text = str(name)
        if text in self.conditions:
            return self.conditions.index(text)
        shown = self.conditions if len(self.conditions) <= 12 else \
            self.conditions[:10] + [f"... {len(self.conditions) - 10} more"]
        raise ValueError(f"condition: {name!r} is not one of this model's conditions {shown}")

    def teacher(self) -> "ConditionedModel":
        """A frozen copy for teacher predictions (see module docstring)."""
        if hasattr(self.module, "disable_adapter"):  # peft: same weights, adapters off
            return _AdapterDisabledTeacher(self)
        clone = copy.copy(self)
        clone.module = copy.deepcopy(self.module).requires_grad_(False).eval()
        return clone


class _AdapterDisabledTeacher(ConditionedModel):
    def __init__(self, student: ConditionedModel):
        self._student = student
        self.conditions = student.conditions
        self.null_id = student.null_id
        self.module = student.module
        self.family = student.family

    def sample_shape(self):
        return self._student.sample_shape()

    def predict(self, x_t, t, cond_ids):
        with self.module.disable_adapter():
            return self._student.predict(x_t, t, cond_ids)


class PromptConditionedModel(ConditionedModel):
    """A denoiser with frozen text encoders over a growing list of prompts.

    The encoders run once per prompt (``encode(prompts) -> {name: [N, ...] tensor}``, each
    family's own); ``predict`` gathers the cached rows of a batch's condition ids. The
    cache lives on the CPU with one copy per device the model runs on, made once (a step
    copies nothing from the host). ``""`` is the null prompt. ``offload()`` moves the
    encoders off the training device (they are needed again only for new prompts).
    """

    tokenizers: Sequence
    text_encoders: Sequence[nn.Module]

    def _init_prompts(self, prompts: Sequence[str], embeddings: dict[str, torch.Tensor] | None = None) -> None:
        """Register ``prompts`` (plus ``""``), encoded now, or given as precomputed ``embeddings``
        (one row per prompt, in order, the null prompt included: then no encoder is needed)."""
        prompts = [str(p) for p in prompts]
        if embeddings is None and "" not in prompts:
            prompts.append("")
        conditions = list(dict.fromkeys(prompts))
        if "" not in conditions:
            raise ValueError("prompts: precomputed embeddings need a row for the null prompt \"\"")
        for enc in self.text_encoders:
            if enc is not None:
                enc.requires_grad_(False).eval()
        if embeddings is not None:
            bad = {k: tuple(v.shape) for k, v in embeddings.items() if len(v) != len(conditions)}
            if bad or len(conditions) != len(prompts):
                raise ValueError(f"embeddings: expected one row per distinct prompt ({len(conditions)}), got {bad}")
            embeddings = {k: v.detach().float().cpu() for k, v in embeddings.items()}
        self.table = _PromptTable(conditions, embeddings if embeddings is not None else self.encode(conditions))
        self.null_id = conditions.index("")

    # the table is shared with the teacher (a shallow copy), so prompts added later reach both
    @property
    def conditions(self) -> list[str]:
        return self.table.conditions

    @property
    def embeddings(self) -> dict[str, torch.Tensor]:
        return self.table.embeddings

    def encode(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def add_prompts(self, prompts: Sequence[str]) -> list[int]:
        """Register more prompts; returns their condition ids."""
        new = [p for p in dict.fromkeys(str(p) for p in prompts) if p not in self.table.conditions]
        if new:
            self.table.add(new, self.encode(new))
        return [self.table.conditions.index(str(p)) for p in prompts]

    def offload(self, device="cpu") -> None:
        """Move the text encoders (not the cached embeddings) to ``device``."""
        for enc in self.text_encoders:
            if enc is not None:
                enc.to(device)

    def cached(self, cond_ids: torch.Tensor, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """The cached embeddings of ``cond_ids``, on their device, in ``dtype``."""
        return {k: v[cond_ids] for k, v in self.table.on(cond_ids.device, dtype).items()}

    def _require_encoders(self) -> None:
        if any(enc is None for enc in self.text_encoders[:1]) or not self.text_encoders:
            raise ValueError("prompts: this adapter was built from precomputed embeddings, without text encoders; "
                             "it cannot encode new prompts")

    @staticmethod
    def _tokens(tokenizer, prompts: Sequence[str], max_length: int | None = None) -> torch.Tensor:
        return tokenizer(list(prompts), padding="max_length", max_length=max_length or tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids

    @staticmethod
    def _device_of(module: nn.Module) -> torch.device:
        return next(module.parameters()).device


class _PromptTable:
    """Prompts, their embeddings (CPU, float32) and one copy per (device, dtype) made once."""

    def __init__(self, conditions: list[str], embeddings: dict[str, torch.Tensor]):
        self.conditions = conditions
        self.embeddings = embeddings
        self._copies: dict = {}

    def add(self, prompts: list[str], embeddings: dict[str, torch.Tensor]) -> None:
        self.embeddings = {k: torch.cat([v, embeddings[k]]) for k, v in self.embeddings.items()}
        self.conditions.extend(prompts)
        self._copies = {}

    def on(self, device, dtype) -> dict[str, torch.Tensor]:
        key = (device, dtype)
        if key not in self._copies:
            self._copies[key] = {k: v.to(device, dtype) for k, v in self.embeddings.items()}
        return self._copies[key]


def trainable_parameters(module: nn.Module, which: str = "all") -> list[nn.Parameter]:
    """Select the parameters that train: ``all``, ``cross_attn`` (ESD-x: attention layers
    that read the text: a UNet's ``attn2``, a transformer's joint text attention),
    ``no_cross_attn`` (ESD-u), ``lora`` (peft adapters)."""
    choices = ("all", "cross_attn", "no_cross_attn", "lora")
    if which not in choices:
        raise ValueError(f"train_params: expected one of {choices}, got {which!r}")
    selected = []
    for name, param in module.named_parameters():
        is_cross = _reads_text(name)
        keep = {
            "all": True,
            "cross_attn": is_cross,
            "no_cross_attn": not is_cross,
            "lora": "lora_" in name,
        }[which]
        param.requires_grad_(keep)
        if keep:
            selected.append(param)
    if not selected:
        raise ValueError(f"train_params: {which!r} selects no parameter of this model")
    return selected


def _reads_text(name: str) -> bool:
    """A parameter of an attention that reads the text: UNet cross-attention (``attn2``), or
    the text-side projections of a joint (MM-DiT) attention (``add_q/k/v_proj``, ``to_add_out``)."""
    return ".attn2." in name or any(f".{p}." in name for p in ("add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"))
