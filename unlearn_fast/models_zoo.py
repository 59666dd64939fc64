"""Embedded default models, loaded from files shipped in ``unlearn_fast/assets`` (no download).

* :func:`load_class_ddpm` -- a class-conditional DDPM on 16x16 MNIST digits
  (diffusers ``UNet2DModel`` + ``DDPMScheduler``). Classes 0..9 are the digits and class
  ``NULL_CLASS`` (10) is the null / unconditional class: the model was trained with the
  label replaced by 10 with probability 0.1, so ``eps(x, t, 10)`` is the unconditional
  prediction and classifier-free guidance is
  ``eps_u + w * (eps_c - eps_u)``. Epsilon prediction, 1000 training timesteps,
  ``squaredcos_cap_v2`` betas; images in [-1, 1], shape (N, 1, 16, 16).
* :func:`build_class_unet_config` -- the ``UNet2DModel`` keyword arguments of that model
  (to build an untrained one, e.g. in tests or in ``scripts/pretrain_class_ddpm.py``).

The classifier used to score samples is in :mod:`unlearn_fast.eval.classifier`.
See ``unlearn_fast/assets/README.md`` for how the weights were trained.
"""

from __future__ import annotations

import os
from typing import Optional, Tuple, Union

import torch

from .asset_files import ASSETS_DIR, require_embedded

CLASS_DDPM_DIR = os.path.join(ASSETS_DIR, "class_ddpm")

#: digits 0..9 plus the null class
CLASS_DDPM_NUM_CLASS_EMBEDS = 11
CLASS_DDPM_NULL_CLASS = 10
CLASS_DDPM_IMAGE_SIZE = 16


def build_class_unet_config(image_size: int = CLASS_DDPM_IMAGE_SIZE) -> dict:
    """Keyword arguments of ``diffusers.UNet2DModel`` for the class-conditional DDPM.

    Two resolutions (16x16 with 32 channels, 8x8 with 64 channels + self-attention), one
    ResNet block per level, an attention mid block at 8x8; class labels go through an
    ``nn.Embedding(11, 128)`` added to the timestep embedding (``class_embed_type=None``).
    """
    return dict(
        sample_size=image_size,
        in_channels=1,
        out_channels=1,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=32,
        norm_num_groups=8,
        class_embed_type=None,
        num_class_embeds=CLASS_DDPM_NUM_CLASS_EMBEDS,
    )


def build_class_scheduler_config() -> dict:
    """Keyword arguments of ``diffusers.DDPMScheduler`` the DDPM was trained with.

    ``timestep_spacing="trailing"`` is carried over by ``DDIMScheduler.from_config`` so a
    few-step DDIM sampler starts at t=999.
    """
    return dict(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        prediction_type="epsilon",
        clip_sample=True,
        clip_sample_range=1.0,
        timestep_spacing="trailing",
    )


#: file endings of pickle-based weight files: loading one can run arbitrary code
PICKLE_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


class PickleWeightsError(ValueError):
    """A model folder has only pickle-based weights and ``allow_pickle`` was not given."""


def weights_use_safetensors(folder: str, allow_pickle: bool = False, *, what: str = "model_path") -> bool:
    """Whether to load ``folder``'s weights from safetensors (``True``) or pickle (``False``).

    Safetensors files are always preferred. A folder whose only weights are pickle-based
    (``diffusion_pytorch_model.bin``, ``pytorch_model.bin``, ``*.pt``/``.pth``/``.ckpt``)
    raises ``PickleWeightsError`` naming the file and the opt-in unless ``allow_pickle`` is
    true (``TrainConfig.allow_pickle`` / ``--allow-pickle``); with it, diffusers and
    transformers read them with ``torch.load(weights_only=True)``.
    """
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return True  # the loader reports the missing folder itself
    if any(n.endswith(".safetensors") or n.endswith(".safetensors.index.json") for n in names):
        return True
    pickled = [n for n in names if n.endswith(PICKLE_WEIGHT_SUFFIXES) or n.endswith(".bin.index.json")]
    if not pickled:
        return True  # no weights at all: the loader names what it looked for
    if not allow_pickle:
        raise PickleWeightsError(
            f"{what}: {os.path.join(folder, pickled[0])} is a pickle-based weight file (loading one can run "
            "arbitrary code) and the folder has no .safetensors weights; convert it to safetensors, or, if "
            "you trust the file, opt in with allow_pickle=True (config key `allow_pickle = true`, CLI flag "
            "--allow-pickle)"
        )
    return False


def load_class_ddpm(
    path: Optional[str] = None,
    device: Union[str, torch.device] = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    allow_pickle: bool = False,
) -> Tuple["UNet2DModel", "DDPMScheduler"]:  # noqa: F821
    """``(unet, scheduler)`` of the shipped class-conditional DDPM (eval mode, no download).

    ``path`` defaults to ``unlearn_fast/assets/class_ddpm`` (a ``save_pretrained`` folder
    holding ``config.json``, ``diffusion_pytorch_model.safetensors`` and
    ``scheduler_config.json``). Weights load from safetensors; a folder with only pickle
    weights (``diffusion_pytorch_model.bin``) is refused unless ``allow_pickle=True``
    (see :func:`weights_use_safetensors`).
    """
    from diffusers import DDPMScheduler, UNet2DModel

    path = path or require_embedded("class_ddpm")
    if not os.path.exists(os.path.join(path, "config.json")):
        raise FileNotFoundError(
            f"path: class DDPM not found at {path} (expected a diffusers folder with config.json: "
            f"{os.path.join(path, 'config.json')} is missing)"
        )
    from .models.loading import from_pretrained

    unet = from_pretrained(UNet2DModel, path, allow_pickle=allow_pickle, what="path", torch_dtype=dtype)
    unet = unet.to(device).eval()
    if os.path.exists(os.path.join(path, "scheduler_config.json")):
        scheduler = DDPMScheduler.from_pretrained(path, local_files_only=True)
    else:
        scheduler = DDPMScheduler(**build_class_scheduler_config())
    return unet, scheduler


# --- the embedded text-conditioned DDPM ---------------------------------------------------------
#
# * :func:`load_text_ddpm` -- a text-conditioned DDPM on the same 16x16 MNIST digits: a
#   diffusers ``UNet2DConditionModel`` (cross-attention at 8x8) reading the last hidden states
#   of a tiny ``CLIPTextModel`` that was trained jointly with it from scratch, with a tiny
#   byte-level BPE ``CLIPTokenizer`` built offline (:func:`build_tiny_clip_tokenizer`).
#   Prompts are the ``DIGIT_PROMPTS`` paraphrases (``"a handwritten digit seven"``,
#   ``"a photo of the number 7"``, ``"digit 7"``, ``"seven"``, ...); the empty prompt ``""`` is
#   the null / unconditional prompt (prompt dropout 0.1 in training). Epsilon prediction, the
#   scheduler of :func:`build_class_scheduler_config`. Weights: ``assets/text_ddpm/``, a
#   pipeline-style folder (``unet/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``) that
#   ``unlearn_fast.training`` loads as a ``"text"`` model; trained by
#   ``scripts/pretrain_text_ddpm.py``.

TEXT_DDPM_DIR = os.path.join(ASSETS_DIR, "text_ddpm")
#: hidden size of the tiny CLIP text encoder (= the UNet's ``cross_attention_dim``)
TEXT_DDPM_HIDDEN = 64
#: tokenizer ``model_max_length`` and text encoder ``max_position_embeddings``
TEXT_DDPM_MAX_LENGTH = 16

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

#: prompt templates; ``{word}`` is the digit's English name, ``{digit}`` its numeral. The first
#: one is the canonical prompt (``"a handwritten digit seven"``) that quality checks use.
DIGIT_PROMPT_TEMPLATES = (
    "a handwritten digit {word}",
    "a photo of the number {digit}",
    "digit {digit}",
    "{word}",
    "a handwritten {digit}",
    "an image of the digit {word}",
    "the number {word}",
    "a drawing of a {digit}",
)

#: digit -> its training prompts (``DIGIT_PROMPT_TEMPLATES`` filled in; index 0 is canonical)
DIGIT_PROMPTS = {
    d: tuple(t.format(word=DIGIT_WORDS[d], digit=d) for t in DIGIT_PROMPT_TEMPLATES) for d in range(10)
}

#: words that become single BPE tokens in the tiny tokenizer (anything else still tokenizes,
#: byte-level, into smaller pieces)
TINY_CLIP_WORDS = DIGIT_WORDS + (
    "a", "an", "the", "of", "handwritten", "hand", "written", "digit", "digits", "number", "numeral",
    "photo", "image", "picture", "drawing", "sketch", "black", "white", "and", "in", "on", "with", "style",
)


def digit_prompt(digit: int, template: int = 0) -> str:
    """The prompt of ``digit`` (0..9) from ``DIGIT_PROMPT_TEMPLATES[template]``."""
    return DIGIT_PROMPTS[int(digit)][template]


def all_digit_prompts() -> list:
    """Every training prompt, digit by digit (``DIGIT_PROMPTS`` flattened; no null prompt)."""
    return [p for d in range(10) for p in DIGIT_PROMPTS[d]]


def _bytes_to_unicode() -> dict:
    """The GPT-2 / CLIP byte -> printable unicode map (the alphabet of byte-level BPE)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _bpe(symbols: list, ranks: dict) -> list:
    """Apply BPE merges (``ranks``: pair -> rank, lowest first) to a list of symbols."""
    symbols = list(symbols)
    while len(symbols) > 1:
        pairs = [(ranks.get((a, b), float("inf")), i) for i, (a, b) in enumerate(zip(symbols, symbols[1:]))]
        rank, first = min(pairs)
        if rank == float("inf"):
            break
        a, b = symbols[first], symbols[first + 1]
        out, i = [], 0
        while i < len(symbols):
            if i < len(symbols) - 1 and symbols[i] == a and symbols[i + 1] == b:
                out.append(a + b)
                i += 2
            else:
                out.append(symbols[i])
                i += 1
        symbols = out
    return symbols


def build_tiny_clip_tokenizer(words=TINY_CLIP_WORDS, model_max_length: int = TEXT_DDPM_MAX_LENGTH):
    """A tiny byte-level BPE ``transformers.CLIPTokenizer``, built in memory (no download).

    Vocabulary, in CLIP's order: the 256 byte symbols, the same with the end-of-word suffix
    ``</w>``, one token per merge, then ``<|startoftext|>`` and ``<|endoftext|>`` (which is
    also the pad token, as in CLIP). The merges are chosen so that each of ``words``
    becomes a single token; any other text still tokenizes (into bytes and known pieces).
    Deterministic: the same ``words`` give the same vocabulary. Save it with
    ``save_pretrained`` to ship it.
    """
    from transformers import CLIPTokenizer

    alphabet = list(_bytes_to_unicode().values())
    vocab_list = alphabet + [c + "</w>" for c in alphabet]
    merges, ranks = [], {}
    for word in dict.fromkeys(str(w).lower() for w in words):
        chars = ["".join(_bytes_to_unicode()[b] for b in ch.encode("utf-8")) for ch in word]
        symbols = chars[:-1] + [chars[-1] + "</w>"]
        while True:
            symbols = _bpe(symbols, ranks)
            if len(symbols) == 1:
                break
            pair = (symbols[0], symbols[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            vocab_list.append(pair[0] + pair[1])
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


def build_tiny_clip_text_config(tokenizer=None, hidden_size: int = TEXT_DDPM_HIDDEN) -> dict:
    """Keyword arguments of ``transformers.CLIPTextConfig`` for the tiny text encoder
    (2 layers, 2 heads, hidden 64, MLP 256, 16 positions; special ids from ``tokenizer``)."""
    tokenizer = tokenizer or build_tiny_clip_tokenizer()
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        projection_dim=hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=tokenizer.model_max_length,
        hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_text_unet_config(image_size: int = CLASS_DDPM_IMAGE_SIZE, cross_attention_dim: int = TEXT_DDPM_HIDDEN) -> dict:
    """Keyword arguments of ``diffusers.UNet2DConditionModel`` for the text-conditioned DDPM.

    The class model's layout (16x16 with 32 channels, 8x8 with 64 channels, one ResNet per
    level, norm groups 8) with each attention replaced by a transformer block (self-attention,
    cross-attention to the text, feed-forward): ``CrossAttnDownBlock2D`` / ``CrossAttnUpBlock2D``
    at 8x8 and a ``UNetMidBlock2DCrossAttn``. ``attention_head_dim=4`` is, as in Stable
    Diffusion's config, the number of heads (4 heads of 16 channels). ~1.0 M parameters.
    """
    return dict(
        sample_size=image_size,
        in_channels=1,
        out_channels=1,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=4,
        norm_num_groups=8,
    )


def load_text_ddpm(
    path: Optional[str] = None,
    device: Union[str, torch.device] = "cpu",
    prompts=None,
    dtype: torch.dtype = torch.float32,
    *,
    allow_pickle: bool = False,
):
    """``(adapter, scheduler)`` of the shipped text-conditioned DDPM (eval mode, no download).

    ``adapter`` is a :class:`unlearn_fast.models.TextConditionalUNet` over ``prompts``
    (default: every ``DIGIT_PROMPTS`` prompt, digit by digit, then the null prompt ``""``);
    more prompts can be added with ``adapter.add_prompts``. ``path`` defaults to
    ``unlearn_fast/assets/text_ddpm`` (``unet/``, ``text_encoder/``, ``tokenizer/``,
    ``scheduler/``). Weights load from safetensors; pickle-only weights are refused unless
    ``allow_pickle=True`` (see :func:`weights_use_safetensors`).
    """
    prompts = list(prompts) if prompts is not None else all_digit_prompts() + [""]
    return load_text_folder(path or require_embedded("text_ddpm"), prompts, device, dtype, allow_pickle,
                            name="text DDPM", script="scripts/pretrain_text_ddpm.py")


def load_text_folder(path: str, prompts, device, dtype, allow_pickle: bool, *, name: str, script: str):
    """``(adapter, scheduler)`` of an embedded text-to-image folder (the text DDPM's layout:
    ``unet/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``), in eval mode; a missing part
    is a ``FileNotFoundError`` naming it and the script that writes the folder."""
    from .models.sd import load_sd

    required = ("unet/config.json", "text_encoder/config.json", "tokenizer/tokenizer_config.json")
    missing = [r for r in required if not os.path.isfile(os.path.join(path, *r.split("/")))]
    if missing:
        raise FileNotFoundError(f"path: {name} not found at {path} (missing {', '.join(missing)}; expected the "
                                f"folder {script} writes: unet/, text_encoder/, tokenizer/, scheduler/)")
    adapter, scheduler = load_sd(path, prompts=prompts, device=device, allow_pickle=allow_pickle, what="path")
    if dtype != next(adapter.module.parameters()).dtype:
        adapter.module.to(dtype)
    adapter.module.eval()
    return adapter, scheduler


# --- either embedded model, by kind ---------------------------------------------------------------


def embedded_condition_names(kind: str = "class", num_classes: int = 10) -> list:
    """The condition name of each digit in the embedded model of ``kind``: the class id
    (``"3"``) for ``"class"``, the canonical prompt (``digit_prompt``) for ``"text"``."""
    return [digit_prompt(c) if kind == "text" else str(c) for c in range(num_classes)]


def load_embedded(kind: str = "class", path: Optional[str] = None):
    """``(adapter, scheduler)`` of the embedded class DDPM (a ``ClassConditionalUNet``, null class
    last) or text DDPM (a ``TextConditionalUNet`` over the canonical digit prompts); ``path``
    replaces the shipped folder."""
    from .models import ClassConditionalUNet

    if kind == "text":
        return load_text_ddpm(path, prompts=embedded_condition_names("text"))
    unet, scheduler = load_class_ddpm(path)
    return ClassConditionalUNet(unet, null_class=unet.config.num_class_embeds - 1), scheduler
