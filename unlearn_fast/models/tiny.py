"""Tiny random pipelines of every family, built from configs and saved with ``save_pretrained``.

For tests and for trying every family offline (``scripts/make_tiny_pipelines.py``): each
``build_<family>()`` returns a diffusers pipeline object of that family's class with
random weights small enough for a CPU step in well under a second; ``save(family, dir)``
writes one. Text encoders are tiny CLIP (and T5) models with in-memory tokenizers; nothing
is downloaded. The pictures they draw are noise: they test plumbing, not quality.
"""

from __future__ import annotations

import json
import os

import torch

#: words that tokenize as one token (prompts of tests and examples)
WORDS = ("a", "photo", "of", "the", "cat", "dog", "car", "tree", "in", "style", "van", "gogh", "painting",
         "nudity", "church", "parachute", "red", "blue", "house", "picture")
CLIP_LENGTH = 16
T5_LENGTH = 16


def clip_tokenizer():
    from ..models_zoo import build_tiny_clip_tokenizer

    return build_tiny_clip_tokenizer(WORDS, model_max_length=CLIP_LENGTH)


def t5_tokenizer():
    """A Unigram T5 tokenizer over ``WORDS`` and single letters, with ``</s>`` appended."""
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    vocab += [("▁" + w, -1.0) for w in WORDS] + [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789,.'"]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=T5_LENGTH)


def clip_encoder(tokenizer, hidden: int = 32, projection: bool = False, seed: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                            projection_dim=hidden, num_hidden_layers=2, num_attention_heads=2,
                            max_position_embeddings=tokenizer.model_max_length, hidden_act="quick_gelu",
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()


def t5_encoder(tokenizer, d_model: int, seed: int = 0):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    config = T5Config(vocab_size=len(tokenizer), d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=1, num_heads=2,
                      pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return T5EncoderModel(config).eval()


def vae(latent_channels: int = 4, flow: bool = False, seed: int = 0):
    """A 2-level ``AutoencoderKL`` (2x down: 16 px images, 8x8 latents); SD3/Flux-style
    scaling and shift factors with ``flow``."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    extra = dict(scaling_factor=1.5035, shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False) \
        if flow else {}
    return AutoencoderKL(block_out_channels=(16, 32), in_channels=3, out_channels=3, norm_num_groups=8,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         latent_channels=latent_channels, sample_size=16, **extra).eval()


def _ddim(prediction_type: str = "epsilon"):
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type)


def build_sd(prediction_type: str = "epsilon"):
    """SD 1.x (``epsilon``) or SD 2.x-v (``v_prediction``)."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    tok = clip_tokenizer()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32),
                                layers_per_block=1, norm_num_groups=8, cross_attention_dim=32, attention_head_dim=2,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    return StableDiffusionPipeline(vae=vae(), text_encoder=clip_encoder(tok), tokenizer=tok, unet=unet,
                                   scheduler=_ddim(prediction_type), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def build_sdxl():
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

    tok, tok2 = clip_tokenizer(), clip_tokenizer()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32),
                                layers_per_block=1, norm_num_groups=8, cross_attention_dim=64,
                                attention_head_dim=(2, 4), use_linear_projection=True,
                                addition_embed_type="text_time", addition_time_embed_dim=8,
                                transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=80,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
    return StableDiffusionXLPipeline(vae=vae(), text_encoder=clip_encoder(tok), text_encoder_2=clip_encoder(
        tok2, projection=True, seed=1), tokenizer=tok, tokenizer_2=tok2, unet=unet, scheduler=_ddim(),
        force_zeros_for_empty_prompt=True)


def _flow_scheduler(**kwargs):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(**kwargs)


def build_sd3():
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

    tok, tok2, tok3 = clip_tokenizer(), clip_tokenizer(), t5_tokenizer()
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=1, in_channels=4, out_channels=4, num_layers=1,
                                        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=64,
                                        caption_projection_dim=16, pooled_projection_dim=64, pos_embed_max_size=16)
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=_flow_scheduler(shift=3.0), vae=vae(flow=True),
        text_encoder=clip_encoder(tok, projection=True), tokenizer=tok,
        text_encoder_2=clip_encoder(tok2, projection=True, seed=1), tokenizer_2=tok2,
        text_encoder_3=t5_encoder(tok3, 64), tokenizer_3=tok3)


def build_flux():
    from diffusers import FluxPipeline, FluxTransformer2DModel

    tok, tok2 = clip_tokenizer(), t5_tokenizer()
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(4, 4, 8))
    scheduler = _flow_scheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                base_image_seq_len=256, max_image_seq_len=4096)
    return FluxPipeline(scheduler=scheduler, vae=vae(flow=True), text_encoder=clip_encoder(tok), tokenizer=tok,
                        text_encoder_2=t5_encoder(tok2, 32), tokenizer_2=tok2, transformer=transformer)


def build_dit():
    from diffusers import DiTPipeline, DiTTransformer2DModel

    torch.manual_seed(0)  # 1000 classes: DiTPipeline's null class is 1000 (ImageNet's)
    transformer = DiTTransformer2DModel(sample_size=8, patch_size=2, in_channels=4, out_channels=8, num_layers=1,
                                        attention_head_dim=8, num_attention_heads=2, num_embeds_ada_norm=1000)
    return DiTPipeline(transformer=transformer, vae=vae(), scheduler=_ddim(), id2label=DIT_LABELS)


#: labels of the tiny DiT's first classes (``save`` writes them into model_index.json as the
#: hub's DiT folders carry them; DiTPipeline's own save_pretrained leaves them out)
DIT_LABELS = {str(i): name for i, name in enumerate(("tench", "goldfish", "white shark", "tiger shark", "hammerhead",
                                                     "electric ray", "stingray", "cock", "hen", "ostrich"))}


BUILDERS = {"sd": build_sd, "sd2-v": lambda: build_sd("v_prediction"), "sdxl": build_sdxl, "sd3": build_sd3,
            "flux": build_flux, "dit": build_dit}
#: the resolution (pixels) the tiny pipelines are meant to run at
RESOLUTION = 16


def save(name: str, path: str) -> str:
    """Build the tiny pipeline ``name`` (a key of ``BUILDERS``) and ``save_pretrained`` it to ``path``."""
    if name not in BUILDERS:
        raise ValueError(f"family: expected one of {sorted(BUILDERS)}, got {name!r}")
    pipe = BUILDERS[name]()
    os.makedirs(path, exist_ok=True)
    pipe.save_pretrained(path, safe_serialization=True)
    if name == "dit":
        index_file = os.path.join(path, "model_index.json")
        with open(index_file) as f:
            index = json.load(f)
        index["id2label"] = DIT_LABELS
        with open(index_file, "w") as f:
            json.dump(index, f, indent=2)
    return path
