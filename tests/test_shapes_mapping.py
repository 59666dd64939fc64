"""Mapping targets of shapes concepts: word swaps, candidates, the anchors a run gets, the chosen target."""

from __future__ import annotations

import pytest
import torch

from unlearn_fast.data.shapes import OBJECTS, STYLES, prompt
from unlearn_fast.eval.shapes_metrics import parse_concept
from unlearn_fast.shapes_mapping import (TargetChoice, candidates, choose_target, mapped_anchors, paired_prompts,
                                        swap)

STAR, STRIPED = OBJECTS.index("star"), STYLES.index("striped")


def test_swap_replaces_the_concept_words_only():
    striped, checkered = parse_concept("striped"), parse_concept("checkered")
    assert swap("a striped star", striped, checkered) == "a checkered star"
    assert swap("something striped", striped, checkered) == "something checkered"
    assert swap("an image of a striped star", striped, checkered) == "an image of a checkered star"
    assert swap("a star shape", parse_concept("star"), parse_concept("arrow")) == "a arrow shape"
    assert swap("a hollow star", parse_concept("hollow star"), parse_concept("dotted star")) == "a dotted star"
    with pytest.raises(ValueError, match="^target: expected a style like 'striped', got object 'star'"):
        swap("a striped star", striped, parse_concept("star"))


def test_candidates_are_the_other_concepts_of_the_kind_not_erased():
    assert [c.name for c in candidates(parse_concept("star"))] == [o for o in OBJECTS if o != "star"]
    assert "dotted" not in [c.name for c in candidates(parse_concept("striped"), [parse_concept("dotted")])]
    combo = candidates(parse_concept("hollow star"))
    assert len(combo) == 5 + 7 and all((c.object == STAR) != (c.style == STYLES.index("hollow")) for c in combo)
    # an erased object takes its combinations out of a combination's candidates
    assert "hollow circle" not in [c.name for c in candidates(parse_concept("hollow star"), [parse_concept("circle")])]
    # pairs whose target combination is erased are not compared
    pairs = paired_prompts(parse_concept("striped"), parse_concept("checkered"), [parse_concept("star")])
    assert len(pairs) == 7 and (prompt(STAR, STRIPED), prompt(STAR, STYLES.index("checkered"))) not in pairs


def test_a_mapped_run_anchors_every_forget_prompt_on_the_target(tmp_path):
    from unlearn_fast.demo import DEMO_METHOD_DEFAULTS, DemoSettings
    from unlearn_fast.demo_shapes import shapes_train_config

    concept, target = parse_concept("striped"), parse_concept("checkered")
    settings = DemoSettings(model="shapes", forget=["striped"], out=str(tmp_path), forget_per_combo=4,
                            retain_per_combo=1, shapes_data="images")
    (tmp_path / "model").mkdir()
    config = shapes_train_config(settings, concept, DEMO_METHOD_DEFAULTS["ru"], str(tmp_path / "model"),
                                 target=target)
    assert config.anchor_map["a striped star"] == "a checkered star"
    assert config.anchor_map["something striped"] == "something checkered"
    assert config.anchor_map["striped star"] == "checkered star"  # a folder's template variant
    assert all("striped" not in v for v in config.anchor_map.values())
    pool = shapes_train_config(DemoSettings(model="shapes", forget=["striped"], out=str(tmp_path / "p")), concept,
                               DEMO_METHOD_DEFAULTS["ru"], str(tmp_path / "model"), target=target)
    assert (pool.data, pool.pool_size, pool.pool_guidance, pool.forget_images) == ("pool", 16, 2.0, None)
    assert set(pool.anchor_map) == set(pool.forget) and pool.anchor_map["a striped star"] == "a checkered star"
    assert not (tmp_path / "p" / "data").exists()  # no image folders for a pool run
    plain = shapes_train_config(DemoSettings(model="shapes", forget=["striped"], out=str(tmp_path / "q"),
                                             map_to="none"), concept, DEMO_METHOD_DEFAULTS["ru"],
                                str(tmp_path / "model"))
    assert plain.anchor_map["a striped star"] == "a star"  # map_to none: the prompt without the erased part
    assert mapped_anchors(concept, target, ["a striped star", "a striped star"]) == {
        "a striped star": "a checkered star"}


def test_resolve_target_names_the_setting(tmp_path):
    from unlearn_fast.demo import DemoSettings
    from unlearn_fast.demo_shapes import resolve_target

    concept = parse_concept("striped")
    s = lambda m: DemoSettings(model="shapes", forget=["striped"], map_to=m)  # noqa: E731
    assert resolve_target(s("none"), concept, None, None) is None
    assert resolve_target(s("dotted"), concept, None, None).target == parse_concept("dotted")
    with pytest.raises(ValueError, match=r"^map_to: expected a style other than 'striped' \(one of solid, hollow"):
        resolve_target(s("star"), concept, None, None)
    with pytest.raises(ValueError, match=r"^map_to: expected 'nearest', 'none' or a concept; expected an object"):
        resolve_target(s("sparkly"), concept, None, None)


class _Reads(torch.nn.Module):
    """A detector whose style head reads the i-th image of every call as ``styles[i % len]``."""

    def __init__(self, styles):
        super().__init__()
        self.styles, self.w = list(styles), torch.nn.Parameter(torch.zeros(1))

    def predict(self, x):
        s = torch.tensor([self.styles[i % len(self.styles)] for i in range(len(x))])
        return torch.zeros(len(x), dtype=torch.long), s


def test_choose_target_takes_the_nearest_admissible_and_checks_it():
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from unlearn_fast.models import TextConditionalUNet
    from unlearn_fast.shapes_zoo import build_shapes_scheduler_config, build_shapes_text_config, build_shapes_tokenizer

    torch.manual_seed(0)
    tok = build_shapes_tokenizer()
    text = CLIPTextModel(CLIPTextConfig(**build_shapes_text_config(tok, hidden_size=16)))
    unet = UNet2DConditionModel(sample_size=32, in_channels=3, out_channels=3, layers_per_block=1,
                                block_out_channels=(8, 8), norm_num_groups=4, cross_attention_dim=16,
                                attention_head_dim=2, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D")).eval()
    model = TextConditionalUNet(unet, text, tok, [""])
    scheduler = DDPMScheduler(**build_shapes_scheduler_config())
    concept = parse_concept("striped")
    kw = dict(draws=4, check_samples=2, steps=2, erased=[parse_concept("dotted")])
    plain = choose_target(model, scheduler, concept, **kw)
    assert set(plain.distances) == {"solid", "hollow", "checkered", "gradient"} and not plain.confusion
    assert plain.target.name == min(plain.distances, key=plain.distances.get)
    # no candidate read as itself (everything reads as the erased dotted): equal reliability, the nearest wins
    near = choose_target(model, scheduler, concept, detector=_Reads([STYLES.index("dotted")]), **kw)
    assert near.target == plain.target and set(near.reliability.values()) == {0.0}
    # a detector that reads every sample as striped: all are confused; the least confused (all equal) is kept
    confused = choose_target(model, scheduler, concept, detector=_Reads([STRIPED]), **kw)
    assert set(confused.confusion.values()) == {1.0} and confused.target == plain.target
    # the reliable one wins over the nearest: only checkered's samples are read as checkered
    checkered = STYLES.index("checkered")
    reliable = choose_target(model, scheduler, concept, detector=_Reads([checkered]), **kw)
    assert reliable.target.name == "checkered" and reliable.reliability["checkered"] == 1.0
    assert reliable.reliability["solid"] == 0.0 and set(reliable.summary()) == {"target", "distances", "reliability",
                                                                                "confusion"}
    assert TargetChoice(concept).summary()["target"] == "striped"
    with pytest.raises(ValueError, match="^forget: no admissible mapping target for 'star'"):
        choose_target(model, scheduler, parse_concept("star"),
                      erased=[parse_concept(o) for o in OBJECTS if o != "star"], draws=2)
