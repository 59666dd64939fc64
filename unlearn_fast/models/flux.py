"""Flux.1: ``FluxTransformer2DModel`` on packed 2x2 latents, reading CLIP (pooled) and T5, flow matching."""

from __future__ import annotations

import torch
from torch import nn

from .base import PromptConditionedModel
from .loading import load_component, read_index, training_scheduler
from .sdxl import vae_scale_factor

#: the pipeline's default T5 sequence length (its maximum)
FLUX_MAX_SEQUENCE_LENGTH = 512
#: the pipeline's default image side, in pixels
FLUX_DEFAULT_RESOLUTION = 1024
#: the guidance a guidance-distilled model (FLUX.1-dev) is given, as the training scripts do
FLUX_EMBEDDED_GUIDANCE = 3.5


def pack(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B, H/2 * W/2, 4C]`` (the pipeline's ``_pack_latents``)."""
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The inverse of :func:`pack` for latents of height ``h`` and width ``w``."""
    b, _, c4 = x.shape
    return x.view(b, h // 2, w // 2, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c4 // 4, h, w)


def image_ids(h: int, w: int) -> torch.Tensor:
    """``[H/2 * W/2, 3]`` positions of the packed latent tokens (row, column in channels 1, 2)."""
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] = torch.arange(h // 2)[:, None]
    ids[..., 2] = torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3)


class FluxTransformer(PromptConditionedModel):
    """Flux's transformer as ``FluxPipeline`` conditions it: T5's last hidden states
    (``encoder_hidden_states``, with zero ``txt_ids``), CLIP's pooled output
    (``pooled_projections``), the latents packed in 2x2 patches with their ``img_ids``,
    ``timestep = t / 1000`` and, for a guidance-distilled model, the guidance embedding.
    ``predict`` takes and returns unpacked ``[B, C, H, W]`` latents (the velocity
    ``noise - x_0``), so losses see the same elements in another order."""

    family = "flux"
    subfolder = "transformer"
    default_guidance = 1.0  # FLUX.1 is guidance-distilled: the guidance is embedded, not classifier-free

    def __init__(self, transformer: nn.Module, clip_encoder: nn.Module, clip_tokenizer, t5_encoder: nn.Module,
                 t5_tokenizer, prompts, *, resolution: int = FLUX_DEFAULT_RESOLUTION,
                 max_sequence_length: int = FLUX_MAX_SEQUENCE_LENGTH, embedded_guidance: float = FLUX_EMBEDDED_GUIDANCE,
                 components: dict | None = None, embeddings: dict | None = None):
        self.module = transformer
        self.text_encoders, self.tokenizers = [clip_encoder, t5_encoder], [clip_tokenizer, t5_tokenizer]
        self.max_sequence_length = int(max_sequence_length)
        self.components = dict(components or {})
        scale = vae_scale_factor(self.components.get("vae"))
        self.latent_size = 2 * (int(resolution) // (scale * 2))
        self.embedded_guidance = float(embedded_guidance) if transformer.config.guidance_embeds else None
        self._ids: dict = {}
        self._init_prompts(prompts, embeddings)

    @torch.no_grad()
    def encode(self, prompts):
        self._require_encoders()
        clip_encoder, t5_encoder = self.text_encoders
        clip_tokenizer, t5_tokenizer = self.tokenizers
        pooled = clip_encoder(self._tokens(clip_tokenizer, prompts).to(self._device_of(clip_encoder)),
                              output_hidden_states=False).pooler_output
        ids = self._tokens(t5_tokenizer, prompts, self.max_sequence_length).to(self._device_of(t5_encoder))
        return {"encoder_hidden_states": t5_encoder(ids, output_hidden_states=False)[0].float().cpu(),
                "pooled_projections": pooled.float().cpu()}

    def sample_shape(self):
        return int(self.module.config.in_channels) // 4, self.latent_size, self.latent_size

    def _constants(self, x: torch.Tensor, seq: int):
        """Position ids and guidance on ``x``'s device, made once per (device, dtype, shape)."""
        key = (x.device, x.dtype, x.shape[-2], x.shape[-1], seq)
        if key not in self._ids:
            guidance = None
            if self.embedded_guidance is not None:
                guidance = torch.full((1,), self.embedded_guidance, dtype=x.dtype).to(x.device)
            self._ids[key] = (image_ids(x.shape[-2], x.shape[-1]).to(x.device, x.dtype),
                              torch.zeros(seq, 3, dtype=x.dtype).to(x.device), guidance)
        return self._ids[key]

    def predict(self, x_t, t, cond_ids):
        emb = self.cached(cond_ids, x_t.dtype)
        text = emb["encoder_hidden_states"]
        img_ids, txt_ids, guidance = self._constants(x_t, text.shape[1])
        b, _, h, w = x_t.shape
        out = self.module(hidden_states=pack(x_t), timestep=t.to(x_t.dtype) / 1000,
                          guidance=guidance.expand(b) if guidance is not None else None,
                          pooled_projections=emb["pooled_projections"], encoder_hidden_states=text,
                          txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]
        return unpack(out, h, w)


def load_flux(path: str, *, prompts, device="cpu", allow_pickle: bool = False, resolution: int | None = None, **_):
    """``(adapter, scheduler)`` of a ``FluxPipeline`` folder."""
    index = read_index(path)
    transformer = load_component(path, "transformer", index, allow_pickle=allow_pickle, device=device)
    clip = load_component(path, "text_encoder", index, allow_pickle=allow_pickle, device=device)
    t5 = load_component(path, "text_encoder_2", index, allow_pickle=allow_pickle, device=device)
    tokenizers = [load_component(path, n, index) for n in ("tokenizer", "tokenizer_2")]
    vae = load_component(path, "vae", index, allow_pickle=allow_pickle, required=False)
    length = min(FLUX_MAX_SEQUENCE_LENGTH, getattr(tokenizers[1], "model_max_length", FLUX_MAX_SEQUENCE_LENGTH))
    adapter = FluxTransformer(transformer.train(), clip, tokenizers[0], t5, tokenizers[1], prompts,
                              resolution=resolution or FLUX_DEFAULT_RESOLUTION, max_sequence_length=length,
                              components={"vae": vae})
    return adapter, training_scheduler(path)
