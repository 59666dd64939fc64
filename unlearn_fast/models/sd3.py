"""Stable Diffusion 3 / 3.5: an MM-DiT (``SD3Transformer2DModel``) reading CLIP-L, CLIP-G and T5, flow matching."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .base import PromptConditionedModel
from .loading import load_component, read_index, training_scheduler
from .sdxl import vae_scale_factor

#: the pipelines' default T5 sequence length
SD3_MAX_SEQUENCE_LENGTH = 256


class SD3Transformer(PromptConditionedModel):
    """SD3's transformer as ``StableDiffusion3Pipeline`` conditions it: the penultimate
    hidden states of both CLIP encoders concatenated and zero-padded to T5's width, followed
    (along the sequence) by T5's last hidden states (zeros without a T5 encoder), and both
    CLIP pooled projections concatenated (``pooled_projections``). The model predicts the
    flow-matching velocity ``noise - x_0``; ``t`` is ``sigma * 1000``, as the pipeline passes it."""

    family = "sd3"
    subfolder = "transformer"
    default_guidance = 7.0

    def __init__(self, transformer: nn.Module, clip_encoders: Sequence[nn.Module], clip_tokenizers: Sequence,
                 t5_encoder: nn.Module | None, t5_tokenizer, prompts, *, resolution: int,
                 max_sequence_length: int = SD3_MAX_SEQUENCE_LENGTH, components: dict | None = None,
                 embeddings: dict | None = None):
        self.module = transformer
        self.text_encoders = [*clip_encoders, t5_encoder]
        self.tokenizers = [*clip_tokenizers, t5_tokenizer]
        self.max_sequence_length = int(max_sequence_length)
        self.components = dict(components or {})
        self.latent_size = int(resolution) // vae_scale_factor(self.components.get("vae"))
        self._init_prompts(prompts, embeddings)

    @torch.no_grad()
    def encode(self, prompts):
        self._require_encoders()
        hidden, pooled = [], []
        for tokenizer, encoder in zip(self.tokenizers[:2], self.text_encoders[:2]):
            out = encoder(self._tokens(tokenizer, prompts).to(self._device_of(encoder)), output_hidden_states=True)
            pooled.append(out[0].float().cpu())
            hidden.append(out.hidden_states[-2].float().cpu())
        clip = torch.cat(hidden, -1)
        t5_encoder, t5_tokenizer = self.text_encoders[2], self.tokenizers[2]
        if t5_encoder is None:
            t5 = torch.zeros(len(prompts), self.max_sequence_length, self.module.config.joint_attention_dim)
        else:
            ids = self._tokens(t5_tokenizer, prompts, self.max_sequence_length).to(self._device_of(t5_encoder))
            t5 = t5_encoder(ids)[0].float().cpu()
        clip = F.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        return {"encoder_hidden_states": torch.cat([clip, t5], -2), "pooled_projections": torch.cat(pooled, -1)}

    def sample_shape(self):
        return int(self.module.config.in_channels), self.latent_size, self.latent_size

    def predict(self, x_t, t, cond_ids):
        emb = self.cached(cond_ids, x_t.dtype)
        return self.module(hidden_states=x_t, timestep=t.to(x_t.dtype), encoder_hidden_states=emb["encoder_hidden_states"],
                           pooled_projections=emb["pooled_projections"]).sample


def load_sd3(path: str, *, prompts, device="cpu", allow_pickle: bool = False, resolution: int | None = None, **_):
    """``(adapter, scheduler)`` of a ``StableDiffusion3Pipeline`` folder (``text_encoder_3`` optional)."""
    index = read_index(path)
    transformer = load_component(path, "transformer", index, allow_pickle=allow_pickle, device=device)
    clips = [load_component(path, n, index, allow_pickle=allow_pickle, device=device)
             for n in ("text_encoder", "text_encoder_2")]
    clip_tokenizers = [load_component(path, n, index) for n in ("tokenizer", "tokenizer_2")]
    t5 = load_component(path, "text_encoder_3", index, allow_pickle=allow_pickle, device=device, required=False)
    t5_tokenizer = load_component(path, "tokenizer_3", index, required=t5 is not None)
    vae = load_component(path, "vae", index, allow_pickle=allow_pickle, required=False)
    resolution = resolution or int(transformer.config.sample_size) * vae_scale_factor(vae)
    length = min(SD3_MAX_SEQUENCE_LENGTH, getattr(t5_tokenizer, "model_max_length", SD3_MAX_SEQUENCE_LENGTH))
    adapter = SD3Transformer(transformer.train(), clips, clip_tokenizers, t5, t5_tokenizer, prompts,
                             resolution=resolution, max_sequence_length=length, components={"vae": vae})
    return adapter, training_scheduler(path)
