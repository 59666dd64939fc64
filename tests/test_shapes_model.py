"""The shapes benchmark's models: the UNet / text encoder configs, the two-headed classifier, and
the shipped files (the asset tests skip, saying so, when a file has not been trained yet)."""

import os

import pytest
import torch

from unlearn_fast.data.shapes import NUM_OBJECTS, NUM_STYLES, SHAPES_IMAGE_SIZE
from unlearn_fast.eval.shapes_classifier import (
    SHAPES_CLASSIFIER_WEIGHTS_FILE,
    SHAPES_DETECTOR_WEIGHTS_FILE,
    ShapesClassifier,
    load_shapes_classifier,
    load_shapes_detector,
)
from unlearn_fast.shapes_zoo import (
    SHAPES_DDPM_DIR,
    build_shapes_text_config,
    build_shapes_tokenizer,
    build_shapes_unet_config,
    canonical_shapes_prompts,
    load_shapes_ddpm,
)


def test_unet_config_builds_and_runs_one_forward():
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from unlearn_fast.models import TextConditionalUNet

    torch.manual_seed(0)
    tok = build_shapes_tokenizer()
    text = CLIPTextModel(CLIPTextConfig(**build_shapes_text_config(tok)))
    cfg = build_shapes_unet_config()
    assert cfg["sample_size"] == SHAPES_IMAGE_SIZE and cfg["in_channels"] == cfg["out_channels"] == 3
    assert cfg["cross_attention_dim"] == text.config.hidden_size
    unet = UNet2DConditionModel(**cfg).eval()
    n = sum(p.numel() for p in unet.parameters())
    assert 1_000_000 <= n <= 3_000_000, n  # 4 bytes each: must fit the 20 MB asset budget
    adapter = TextConditionalUNet(unet, text, tok, ["a striped star", "a star"])
    assert adapter.conditions[adapter.null_id] == ""
    x = torch.randn(3, 3, SHAPES_IMAGE_SIZE, SHAPES_IMAGE_SIZE)
    with torch.no_grad():
        eps = adapter.predict(x, torch.tensor([999, 500, 0]), torch.tensor([0, 1, adapter.null_id]))
    assert eps.shape == x.shape and torch.isfinite(eps).all()


def test_classifier_heads_and_features():
    model = ShapesClassifier(channels=(8, 8, 8), feature_dim=16).eval()
    x = torch.rand(4, 3, SHAPES_IMAGE_SIZE, SHAPES_IMAGE_SIZE) * 2 - 1
    lo, ls = model(x)
    assert lo.shape == (4, NUM_OBJECTS) and ls.shape == (4, NUM_STYLES)
    assert model.features(x).shape == (4, 16)
    po, ps = model.predict(x, batch_size=3)
    assert po.shape == ps.shape == (4,)
    with pytest.raises(ValueError, match="channels"):
        ShapesClassifier(channels=(8, 8))


def test_missing_files_name_the_argument(tmp_path):
    with pytest.raises(FileNotFoundError, match="path:"):
        load_shapes_ddpm(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="weights:"):
        load_shapes_classifier(str(tmp_path / "none.safetensors"))


@pytest.mark.parametrize("weights", [SHAPES_CLASSIFIER_WEIGHTS_FILE, SHAPES_DETECTOR_WEIGHTS_FILE])
def test_shipped_classifiers_recognise_generated_images(weights):
    if not os.path.exists(weights):
        pytest.skip(f"{weights} not trained yet (scripts/train_shapes_classifier.py)")
    from unlearn_fast.data.shapes import generate

    model = load_shapes_classifier(weights) if weights == SHAPES_CLASSIFIER_WEIGHTS_FILE else load_shapes_detector()
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    x, o, s = generate(96, seed=12345)  # two of every combination, unseen seed
    po, ps = model.predict(x)
    assert (po == o).float().mean() >= 0.95 and (ps == s).float().mean() >= 0.95


def test_shipped_shapes_ddpm_loads_and_samples():
    if not os.path.exists(os.path.join(SHAPES_DDPM_DIR, "unet", "config.json")):
        pytest.skip(f"{SHAPES_DDPM_DIR} not trained yet (scripts/pretrain_shapes_ddpm.py): only the asset part skips")
    from unlearn_fast.sampling import sample

    adapter, scheduler = load_shapes_ddpm()
    assert adapter.conditions[:-1] == canonical_shapes_prompts() and adapter.conditions[-1] == ""
    assert adapter.module.config.sample_size == SHAPES_IMAGE_SIZE and adapter.module.config.in_channels == 3
    assert scheduler.config.prediction_type == "epsilon"
    x = sample(adapter, scheduler, torch.tensor([adapter.condition_id("a striped star")]), steps=2, guidance=2.0,
               generator=torch.Generator().manual_seed(0))
    assert x.shape == (1, 3, SHAPES_IMAGE_SIZE, SHAPES_IMAGE_SIZE) and torch.isfinite(x).all()
