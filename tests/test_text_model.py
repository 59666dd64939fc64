"""The embedded text-conditioned DDPM: tiny offline tokenizer, configs, shipped folder."""

import os

import pytest
import torch

from unlearn_fast.models_zoo import (
    DIGIT_PROMPTS,
    DIGIT_WORDS,
    TEXT_DDPM_DIR,
    TEXT_DDPM_MAX_LENGTH,
    all_digit_prompts,
    build_text_unet_config,
    build_tiny_clip_text_config,
    build_tiny_clip_tokenizer,
    digit_prompt,
    load_text_ddpm,
)


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_clip_tokenizer()


def test_digit_prompts():
    assert sorted(DIGIT_PROMPTS) == list(range(10))
    assert digit_prompt(7) == "a handwritten digit seven"
    prompts = all_digit_prompts()
    assert len(prompts) == len(set(prompts)) == 10 * len(DIGIT_PROMPTS[0])
    assert "" not in prompts
    for d in range(10):
        assert any(str(d) in p for p in DIGIT_PROMPTS[d]) and DIGIT_WORDS[d] in DIGIT_PROMPTS[d]


def test_tokenizer_is_deterministic_and_covers_prompts(tokenizer):
    assert tokenizer.model_max_length == TEXT_DDPM_MAX_LENGTH
    assert len(tokenizer) == len(build_tiny_clip_tokenizer())
    ids = tokenizer("a handwritten digit seven").input_ids
    # every known word is one token, between <|startoftext|> and <|endoftext|>
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id and len(ids) == 6
    assert tokenizer.convert_ids_to_tokens(ids[1:-1]) == ["a</w>", "handwritten</w>", "digit</w>", "seven</w>"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a handwritten digit seven"
    unk = tokenizer.unk_token_id
    for p in all_digit_prompts() + ["a zebra, 42!"]:
        ids = tokenizer(p).input_ids
        assert len(ids) <= TEXT_DDPM_MAX_LENGTH
        assert unk not in ids[1:-1]  # byte-level: nothing is unknown
    batch = tokenizer(["seven", ""], padding="max_length", max_length=tokenizer.model_max_length,
                      truncation=True, return_tensors="pt").input_ids
    assert batch.shape == (2, TEXT_DDPM_MAX_LENGTH)
    assert batch[1, :2].tolist() == [tokenizer.bos_token_id, tokenizer.eos_token_id]


def test_tokenizer_roundtrip(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    for p in ("a photo of the number 7", "", "digit 3"):
        assert loaded(p).input_ids == tokenizer(p).input_ids
    assert loaded.model_max_length == TEXT_DDPM_MAX_LENGTH


def test_untrained_model_forward(tokenizer):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from unlearn_fast.models import TextConditionalUNet

    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(**build_tiny_clip_text_config(tokenizer)))
    unet = UNet2DConditionModel(**build_text_unet_config())
    assert unet.config.cross_attention_dim == text_encoder.config.hidden_size
    adapter = TextConditionalUNet(unet, text_encoder, tokenizer, ["digit 3", "seven"])
    assert adapter.conditions[adapter.null_id] == ""
    x = torch.randn(3, 1, 16, 16)
    out = adapter.predict(x, torch.tensor([1, 500, 999]), torch.tensor([0, 1, adapter.null_id]))
    assert out.shape == x.shape and torch.isfinite(out).all()


@pytest.mark.skipif(not os.path.exists(os.path.join(TEXT_DDPM_DIR, "unet", "config.json")),
                    reason="shipped text DDPM not present")
def test_shipped_text_ddpm():
    adapter, scheduler = load_text_ddpm()
    for sub in ("unet", "text_encoder", "tokenizer", "scheduler"):
        assert os.path.isdir(os.path.join(TEXT_DDPM_DIR, sub))
    assert adapter.conditions[: len(all_digit_prompts())] == all_digit_prompts()
    assert adapter.conditions[adapter.null_id] == ""
    assert scheduler.config.prediction_type == "epsilon" and scheduler.config.num_train_timesteps == 1000
    ids = adapter.add_prompts(["a handwritten digit seven", "an unseen prompt"])
    assert ids[0] == adapter.condition_id(digit_prompt(7))
    x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = adapter.predict(x, torch.tensor([500, 500]), torch.tensor([ids[0], adapter.null_id]))
    assert out.shape == x.shape and torch.isfinite(out).all()
    # the prompt matters: conditional and unconditional predictions differ
    assert (out[0] - out[1]).abs().mean() > 1e-4
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(TEXT_DDPM_DIR) for f in fs)
    assert size < 6 * 2**20
