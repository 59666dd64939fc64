"""Stable Diffusion 1.x / 2.x: ``UNet2DConditionModel`` reading one CLIP text encoder
(also the embedded text DDPM, a folder of the same layout without a VAE)."""

from __future__ import annotations

import json
import os
from typing import Sequence

import torch
from torch import nn

from .base import PromptConditionedModel
from .loading import ModelFolderError, check_model_files, from_pretrained, load_component, read_index, training_scheduler


class TextConditionalUNet(PromptConditionedModel):
    """A ``UNet2DConditionModel`` with a frozen CLIP text encoder over a list of prompts:
    the encoder's last hidden states are the UNet's ``encoder_hidden_states``, as the SD
    pipeline computes them. Epsilon or ``v_prediction`` (SD 2.x 768-v): the prediction type
    is the scheduler's; the adapter returns what the UNet predicts."""

    family = "sd"
    subfolder = "unet"
    default_guidance = 7.5

    def __init__(self, unet: nn.Module, text_encoder: nn.Module | None, tokenizer, prompts: Sequence[str],
                 components: dict | None = None, embeddings: dict | None = None):
        self.module = unet
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.tokenizers, self.text_encoders = [tokenizer], [text_encoder]
        self.components = dict(components or {})
        self._init_prompts(prompts, embeddings)

    @torch.no_grad()
    def encode(self, prompts):
        self._require_encoders()
        ids = self._tokens(self.tokenizer, prompts).to(self._device_of(self.text_encoder))
        return {"encoder_hidden_states": self.text_encoder(ids)[0].float().cpu()}

    def predict(self, x_t, t, cond_ids):
        emb = self.cached(cond_ids, x_t.dtype)
        return self.module(x_t, t, encoder_hidden_states=emb["encoder_hidden_states"]).sample


#: the guidance of a pixel-space text UNet (the embedded text DDPM's layout: no VAE), which
#: degrades above ~1.5 (assets/README.md)
PIXEL_MODEL_GUIDANCE = 1.5


def load_sd(path: str, *, prompts: Sequence[str], device="cpu", allow_pickle: bool = False, what: str = "model_path",
            **_):
    """``(adapter, scheduler)`` of an SD 1.x/2.x pipeline folder (or the embedded text DDPM's);
    ``what`` names the path in errors."""
    import transformers
    from diffusers import UNet2DConditionModel

    index = read_index(path)
    for sub in ("unet", "text_encoder", "tokenizer", "scheduler"):
        if not os.path.isdir(os.path.join(path, sub)):
            raise ModelFolderError(f"model_path: a Stable Diffusion folder needs a {sub}/ subfolder, "
                                   f"missing in {path!r}")
    if index:
        unet = load_component(path, "unet", index, allow_pickle=allow_pickle, device=device, what=what)
        text_encoder = load_component(path, "text_encoder", index, allow_pickle=allow_pickle, device=device, what=what)
        tokenizer = load_component(path, "tokenizer", index)
        vae = load_component(path, "vae", index, allow_pickle=allow_pickle, required=False, what=what)
    else:  # a folder without model_index.json (the embedded text DDPM's layout)
        unet = from_pretrained(UNet2DConditionModel, path, subfolder="unet", allow_pickle=allow_pickle,
                               what=what).to(device)
        text_dir = os.path.join(path, "text_encoder")
        check_model_files(text_dir, what)
        with open(os.path.join(text_dir, "config.json")) as f:
            arch = (json.load(f).get("architectures") or ["CLIPTextModel"])[0]
        encoder_cls = getattr(transformers, arch, transformers.AutoModel)
        text_encoder = from_pretrained(encoder_cls, text_dir, allow_pickle=allow_pickle, what=what).to(device)
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(os.path.join(path, "tokenizer"), local_files_only=True)
        except Exception as e:
            raise ModelFolderError(f"{what}: {os.path.join(path, 'tokenizer')} is not a tokenizer folder that loads "
                                   f"({type(e).__name__})") from None
        vae = None
    adapter = TextConditionalUNet(unet.train(), text_encoder, tokenizer, prompts,
                                  components={"vae": vae} if vae is not None else None)
    if vae is None:
        adapter.default_guidance = PIXEL_MODEL_GUIDANCE
    return adapter, training_scheduler(path)
