"""The procedural shapes data: determinism, image format, every object x style, prompts and their vocabulary."""

import re

import numpy as np
import pytest
import torch

from unlearn_fast.data.shapes import (
    HELDOUT_PER_COMBO,
    NUM_COMBOS,
    OBJECTS,
    SHAPES_IMAGE_SIZE,
    SHAPES_WORDS,
    STYLES,
    generate,
    heldout_prompt,
    heldout_prompts,
    load_split,
    prompt,
    prompt_table,
    render,
    training_prompts,
)


def test_constants():
    assert SHAPES_IMAGE_SIZE == 32
    assert OBJECTS == ("circle", "square", "triangle", "star", "cross", "heart", "diamond", "arrow")
    assert STYLES == ("solid", "hollow", "striped", "dotted", "checkered", "gradient")
    assert NUM_COMBOS == 48


def test_every_object_and_style_renders():
    for o in OBJECTS:
        for s in STYLES:
            x = render(o, s, np.random.default_rng(7))
            assert x.shape == (3, SHAPES_IMAGE_SIZE, SHAPES_IMAGE_SIZE) and x.dtype == torch.float32
            assert x.min() >= -1 and x.max() <= 1 and torch.isfinite(x).all()
            # something is drawn: a good share of pixels differ from the (plain) corner colour
            diff = (x - x[:, :1, :1]).abs().amax(0)
            assert (diff > 0.3).float().mean() > 0.05, (o, s)


def test_hollow_draws_less_than_solid_with_the_same_draws():
    for o in OBJECTS:
        solid, hollow = render(o, "solid", 3), render(o, "hollow", 3)
        ink = lambda x: (x - x[:, :1, :1]).abs().amax(0).sum()  # noqa: E731
        assert ink(hollow) < 0.8 * ink(solid), o


def test_generate_is_deterministic_and_prefix_stable():
    x1, o1, s1 = generate(12, seed=3)
    x2, o2, s2 = generate(12, seed=3)
    assert torch.equal(x1, x2) and torch.equal(o1, o2) and torch.equal(s1, s2)
    x3, _, _ = generate(5, seed=3)
    assert torch.equal(x3, x1[:5])
    x4, _, _ = generate(12, seed=4)
    assert not torch.equal(x4, x1)
    assert x1.shape == (12, 3, 32, 32) and o1.dtype == s1.dtype == torch.int64
    assert o1.tolist() == [i // 6 for i in range(12)] and s1.tolist() == [i % 6 for i in range(12)]


def test_generate_subsets_and_errors():
    _, o, s = generate(8, seed=0, objects=["star", 5], styles=["dotted"])
    assert set(o.tolist()) == {OBJECTS.index("star"), 5} and set(s.tolist()) == {STYLES.index("dotted")}
    with pytest.raises(ValueError, match="object"):
        generate(2, objects=["zebra"])
    with pytest.raises(ValueError, match="style"):
        render("star", "wavy")
    with pytest.raises(ValueError, match="n:"):
        generate(-1)
    with pytest.raises(TypeError, match="rng"):
        render("star", "solid", rng="x")


def test_heldout_split_is_balanced_and_cached(monkeypatch):
    from unlearn_fast.data import shapes

    assert (shapes.TRAIN_PER_COMBO * NUM_COMBOS, HELDOUT_PER_COMBO * NUM_COMBOS) == (9600, 1200)
    assert shapes.SPLIT_SEEDS == {"train": 0, "heldout": 1}
    # the same code path at 2 images per combination (the full split takes seconds to draw)
    monkeypatch.setattr(shapes, "HELDOUT_PER_COMBO", 2)
    shapes._split.cache_clear()
    try:
        x, o, s = load_split("heldout")
        assert x.shape == (2 * NUM_COMBOS, 3, 32, 32)
        assert (torch.bincount(o * len(STYLES) + s, minlength=NUM_COMBOS) == 2).all()
        assert torch.equal(x, generate(2 * NUM_COMBOS, seed=1)[0])
        x[0] = 0  # a copy: the cache is untouched
        assert not torch.equal(load_split("heldout")[0][0], x[0])
    finally:
        shapes._split.cache_clear()
    with pytest.raises(ValueError, match="split"):
        load_split("test")


def test_prompts():
    assert prompt("star", "striped") == "a striped star"
    assert prompt("star") == "a star"
    assert prompt(style="striped") == "something striped"
    assert prompt("arrow", "hollow", 1) == "hollow arrow"
    assert prompt("arrow") == "an arrow"  # article before a vowel
    assert heldout_prompt("star", "striped", 0) == "star, striped"
    assert heldout_prompt("star", "striped", 1) == "a star with stripes"
    assert heldout_prompt("arrow", "hollow", 1) == "an outlined arrow"
    with pytest.raises(ValueError, match="object, style"):
        prompt()
    with pytest.raises(ValueError, match="template"):
        prompt("star", "solid", 99)
    train, held = training_prompts(), heldout_prompts()
    assert len(train) == len(set(train)) and len(held) == len(set(held))
    assert not set(train) & set(held), "held-out paraphrases must never be training prompts"
    assert "" not in train and "" not in held
    table = prompt_table("train")
    kinds = {(p.object is not None, p.style is not None) for p in table}
    assert kinds == {(True, True), (True, False), (False, True)}
    for p in table + prompt_table("heldout"):
        if p.object is not None:
            assert p.object in p.text
    with pytest.raises(ValueError, match="which"):
        prompt_table("test")


def test_vocabulary_covers_every_prompt_word():
    from unlearn_fast.shapes_zoo import build_shapes_tokenizer

    tok = build_shapes_tokenizer()
    words = {w for p in training_prompts() + heldout_prompts() for w in re.findall(r"[a-z]+", p)}
    assert words <= set(SHAPES_WORDS)
    for w in sorted(words):
        ids = tok(w).input_ids
        assert tok.convert_ids_to_tokens(ids[1:-1]) == [w + "</w>"], w
    longest = max(training_prompts() + heldout_prompts(), key=lambda p: len(tok(p).input_ids))
    assert len(tok(longest).input_ids) <= tok.model_max_length


def test_train_split_images_are_pinned():
    """The shipped shapes DDPM and classifiers were trained on these images: a change to the
    drawing code changes them (and then needs the models retrained, see unlearn_fast/assets/README.md)."""
    x, _, _ = generate(48, seed=0)  # the first 48 images of the train split
    means = x.mean((1, 2, 3))[[0, 7, 14, 21, 28, 35, 42, 47]]
    expected = torch.tensor([0.3422, 0.8672, 0.6493, 0.753, 0.5456, 0.5068, -0.5282, -0.461])
    assert torch.allclose(means, expected, atol=2e-4), means.tolist()


def test_desaturate_keeps_luminance_and_scales_the_colour():
    from unlearn_fast.data.shapes import desaturate

    x = torch.rand(3, 3, 5, 5, generator=torch.Generator().manual_seed(0)) * 2 - 1
    lum = lambda y: 0.299 * y[:, 0] + 0.587 * y[:, 1] + 0.114 * y[:, 2]  # noqa: E731
    assert torch.allclose(desaturate(x, 1.0), x)
    grey = desaturate(x, 0.0)
    assert torch.allclose(grey[:, 0], grey[:, 1]) and torch.allclose(grey[:, 1], grey[:, 2])
    half = desaturate(x, torch.tensor([0.5, 0.3, 1.0]))
    assert torch.allclose(lum(half), lum(x), atol=1e-6)
    assert torch.allclose(half[2], x[2]) and torch.allclose(half[0] - grey[0], 0.5 * (x[0] - grey[0]), atol=1e-6)
