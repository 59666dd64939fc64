"""Stable Diffusion XL: a UNet reading two CLIP encoders, pooled text embeddings and size ``time_ids``."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .base import PromptConditionedModel
from .loading import ModelFolderError, load_component, read_index, training_scheduler


def vae_scale_factor(vae) -> int:
    """Pixels per latent cell of a VAE (8 for SD's), from its config."""
    return 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 8


class SDXLUNet(PromptConditionedModel):
    """SDXL's UNet as ``StableDiffusionXLPipeline`` conditions it: the penultimate hidden
    states of both text encoders concatenated (``encoder_hidden_states``), the second
    encoder's projected pooled output (``text_embeds``) and ``time_ids`` =
    ``(H, W, 0, 0, H, W)`` for the model's resolution (original size, no crop, target size).
    With ``force_zeros_for_empty_prompt`` (the pipeline's default) the null prompt's
    embeddings are zeros, as the pipeline's unconditional branch uses."""

    family = "sdxl"
    subfolder = "unet"
    default_guidance = 5.0

    def __init__(self, unet: nn.Module, text_encoders: Sequence[nn.Module], tokenizers: Sequence, prompts,
                 *, resolution: int, force_zeros_for_empty_prompt: bool = True, components: dict | None = None,
                 embeddings: dict | None = None):
        self.module = unet
        self.text_encoders, self.tokenizers = list(text_encoders), list(tokenizers)
        self.force_zeros = force_zeros_for_empty_prompt
        self.resolution = int(resolution)
        self.components = dict(components or {})
        self.latent_size = self.resolution // vae_scale_factor(self.components.get("vae"))
        self._time_ids = torch.tensor([[self.resolution, self.resolution, 0, 0, self.resolution, self.resolution]],
                                      dtype=torch.float32)
        expected = unet.add_embedding.linear_1.in_features
        pooled = embeddings["text_embeds"].shape[-1] if embeddings is not None else \
            self.text_encoders[-1].config.projection_dim
        got = unet.config.addition_time_embed_dim * 6 + pooled
        if expected != got:
            raise ModelFolderError(f"model_path: the SDXL UNet expects an added embedding of {expected} features, "
                                   f"its text_encoder_2 and time ids give {got}")
        self._init_prompts(prompts, embeddings)

    @torch.no_grad()
    def encode(self, prompts):
        self._require_encoders()
        hidden, pooled = [], None
        for tokenizer, encoder in zip(self.tokenizers, self.text_encoders):
            ids = self._tokens(tokenizer, prompts).to(self._device_of(encoder))
            out = encoder(ids, output_hidden_states=True)
            if out[0].ndim == 2:  # the projected pooled output (CLIPTextModelWithProjection)
                pooled = out[0]
            hidden.append(out.hidden_states[-2])
        emb = {"encoder_hidden_states": torch.cat(hidden, -1).float().cpu(), "text_embeds": pooled.float().cpu()}
        if self.force_zeros:
            empty = torch.tensor([p == "" for p in prompts])
            emb = {k: torch.where(empty.view(-1, *[1] * (v.dim() - 1)), torch.zeros_like(v), v) for k, v in emb.items()}
        return emb

    def sample_shape(self):
        return int(self.module.config.in_channels), self.latent_size, self.latent_size

    def predict(self, x_t, t, cond_ids):
        emb = self.cached(cond_ids, x_t.dtype)
        if self._time_ids.device != x_t.device:
            self._time_ids = self._time_ids.to(x_t.device)  # once per device: no host copy per step
        time_ids = self._time_ids.to(x_t.dtype).expand(len(cond_ids), -1)
        return self.module(x_t, t, encoder_hidden_states=emb["encoder_hidden_states"],
                           added_cond_kwargs={"text_embeds": emb["text_embeds"], "time_ids": time_ids}).sample


def load_sdxl(path: str, *, prompts, device="cpu", allow_pickle: bool = False, resolution: int | None = None, **_):
    """``(adapter, scheduler)`` of a ``StableDiffusionXLPipeline`` folder."""
    index = read_index(path)
    unet = load_component(path, "unet", index, allow_pickle=allow_pickle, device=device)
    encoders = [load_component(path, n, index, allow_pickle=allow_pickle, device=device)
                for n in ("text_encoder", "text_encoder_2")]
    tokenizers = [load_component(path, n, index) for n in ("tokenizer", "tokenizer_2")]
    vae = load_component(path, "vae", index, allow_pickle=allow_pickle, required=False)
    resolution = resolution or int(unet.config.sample_size) * vae_scale_factor(vae)
    adapter = SDXLUNet(unet.train(), encoders, tokenizers, prompts, resolution=resolution,
                       force_zeros_for_empty_prompt=bool(index.get("force_zeros_for_empty_prompt", True)),
                       components={"vae": vae})
    return adapter, training_scheduler(path)
