"""Adapters over diffusers models: one ``predict(x_t, t, cond_ids)`` for every kind.

A condition is an integer id into the adapter's ``conditions`` (class names, or prompts).
Methods speak in condition ids only, so the same method runs on a class-conditional
``UNet2DModel`` and on a ``UNet2DConditionModel`` with a text encoder.

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
    (the name of each condition id) and ``null_id`` (the unconditional condition)."""

    module: nn.Module
    conditions: list[str]
    null_id: int

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, cond_ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def condition_id(self, name: str | int) -> int:
        """Id of a condition given by name (``"3"``, ``"a handwritten digit three"``) or id."""
        if isinstance(name, int) and 0 <= name < len(self.conditions):
            return name
        text = str(name)
        if text in self.conditions:
            return self.conditions.index(text)
        raise ValueError(f"condition: {name!r} is not one of this model's conditions {self.conditions}")

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

    def predict(self, x_t, t, cond_ids):
        with self.module.disable_adapter():
            return self._student.predict(x_t, t, cond_ids)


class ClassConditionalUNet(ConditionedModel):
    """A class-conditional ``UNet2DModel`` (``num_class_embeds`` classes, one of them null)."""

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

    def predict(self, x_t, t, cond_ids):
        return self.module(x_t, t, class_labels=cond_ids).sample


class TextConditionalUNet(ConditionedModel):
    """A ``UNet2DConditionModel`` with a frozen text encoder over a fixed list of prompts.

    The prompt embeddings are computed once (the text encoder does not train), so a
    condition id indexes a cached ``[L, E]`` embedding. ``prompts[null_id]`` is ``""``.
    """

    def __init__(self, unet: nn.Module, text_encoder: nn.Module, tokenizer, prompts: Sequence[str]):
        prompts = list(prompts)
        if "" not in prompts:
            prompts.append("")
        self.module = unet
        self.conditions = prompts
        self.null_id = prompts.index("")
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder.requires_grad_(False).eval()
        self.embeddings = self.encode(prompts)

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(
            list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
            truncation=True, return_tensors="pt",
        )
        device = next(self.text_encoder.parameters()).device
        return self.text_encoder(tokens.input_ids.to(device))[0]

    def add_prompts(self, prompts: Sequence[str]) -> list[int]:
        """Register more prompts; returns their condition ids."""
        new = [p for p in prompts if p not in self.conditions]
        if new:
            self.embeddings = torch.cat([self.embeddings, self.encode(new)])
            self.conditions.extend(new)
        return [self.conditions.index(p) for p in prompts]

    def predict(self, x_t, t, cond_ids):
        emb = self.embeddings.to(x_t.device)[cond_ids].to(x_t.dtype)
        return self.module(x_t, t, encoder_hidden_states=emb).sample


def trainable_parameters(module: nn.Module, which: str = "all") -> list[nn.Parameter]:
    """Select the parameters that train: ``all``, ``cross_attn`` (ESD-x: attention layers
    that read the text, ``attn2``), ``no_cross_attn`` (ESD-u), ``lora`` (peft adapters)."""
    choices = ("all", "cross_attn", "no_cross_attn", "lora")
    if which not in choices:
        raise ValueError(f"train_params: expected one of {choices}, got {which!r}")
    selected = []
    for name, param in module.named_parameters():
        is_cross = ".attn2." in name
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
