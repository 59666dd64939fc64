"""The shapes-benchmark evaluator: UA, in-domain and cross-domain retain, FID and KL, as UnlearnCanvas scores them.

A concept is an object (``"star"``), a style (``"striped"``) or one combination
(``"hollow star"``): :func:`parse_concept`. The evaluator samples the canonical prompt of every
object-style combination (``"a striped star"``; ``per_combo`` samples each, and more for the
erased concept's combinations so that at least ``min_concept`` samples decide its UA) with a
fixed seed, sampler and guidance, classifies object and style with the shipped shapes
classifier, and reports, per-combination accuracies averaged over combinations:

- ``ua``: share of the erased concept's samples that no longer show it (object erased: the
  object is not read; style: the style is not read; combination: not both);
- ``ira`` (in-domain retain): accuracy of the concept's own kind on the combinations without
  it (object erased: object accuracy on the other objects' prompts; style: style accuracy
  on the other styles'); for a combination, both-right accuracy on the combinations that
  share its object or its style (``"hollow circle"``, ``"solid star"``: the locality test);
- ``cra`` (cross-domain retain): accuracy of the other kind on every prompt, the erased
  concept's included (erasing ``striped`` must still draw a star for "a striped star");
  for a combination, both-right accuracy on the combinations sharing neither;
- ``fid``: Frechet distance between classifier features of the samples of the retained
  combinations and generated held-out images of the same combinations
  (``data.shapes.load_split("heldout")``);
- ``kl_to_original``: ``E[T w_t ||eps - eps_orig||^2]`` in nats per sample over fixed draws of
  held-out images of the retained combinations (as ``metrics.ClassEvaluator``);
- ``ua_paraphrase``: UA on the held-out paraphrases of the concept's prompts (never trained on).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import NamedTuple, Optional, Sequence

import torch

from ..data.shapes import NUM_OBJECTS, NUM_STYLES, OBJECTS, STYLES, HELDOUT_COMBO_TEMPLATES, heldout_prompt, prompt
from ..models import ConditionedModel
from ..sampling import sample
from .metrics import frechet_distance, kl_on_draws

COMBOS = [(o, s) for o in range(NUM_OBJECTS) for s in range(NUM_STYLES)]  # object-major, as the data


class ShapeConcept(NamedTuple):
    """An erasable concept: ``kind`` "object", "style" or "combo"; ids into OBJECTS / STYLES."""

    kind: str
    object: Optional[int]
    style: Optional[int]

    @property
    def name(self) -> str:
        parts = ([STYLES[self.style]] if self.style is not None else []) + (
            [OBJECTS[self.object]] if self.object is not None else [])
        return " ".join(parts)

    def contains(self, o: int, s: int) -> bool:
        """Whether combination ``(o, s)`` shows the concept."""
        return (self.object is None or o == self.object) and (self.style is None or s == self.style)

    def shown(self, objects: torch.Tensor, styles: torch.Tensor) -> torch.Tensor:
        """Which images, read as ``objects`` and ``styles`` (a classifier's ids), show the concept."""
        return {"object": objects == self.object, "style": styles == self.style,
                "combo": (objects == self.object) & (styles == self.style)}[self.kind]

    def combos(self) -> list[tuple[int, int]]:
        return [c for c in COMBOS if self.contains(*c)]

    def prompts(self) -> list[str]:
        """The training prompts that name the concept (what an erasure forgets): every
        combination's canonical prompt that shows it, and the object's or style's own prompt."""
        out = [prompt(o, s) for o, s in self.combos()]
        if self.kind == "object":
            out.append(prompt(self.object))
        elif self.kind == "style":
            out.append(prompt(style=self.style))
        return out


def parse_concept(text: str) -> ShapeConcept:
    """``"star"`` (an object), ``"striped"`` (a style) or ``"hollow star"`` / ``"a hollow star"``
    (a combination: style then object); ``ValueError`` naming the words it knows otherwise."""
    words = [w for w in str(text).lower().replace(",", " ").split() if w not in ("a", "an", "the")]
    objs = [OBJECTS.index(w) for w in words if w in OBJECTS]
    stys = [STYLES.index(w) for w in words if w in STYLES]
    unknown = [w for w in words if w not in OBJECTS and w not in STYLES]
    if unknown or not words or len(objs) > 1 or len(stys) > 1:
        raise ValueError(f"forget: expected an object ({', '.join(OBJECTS)}), a style ({', '.join(STYLES)}) or "
                         f"'<style> <object>', got {text!r}")
    if objs and stys:
        return ShapeConcept("combo", objs[0], stys[0])
    return ShapeConcept("object", objs[0], None) if objs else ShapeConcept("style", None, stys[0])


@dataclass
class ShapesEvalSettings:
    per_combo: int = field(default=4, metadata={"help": "evaluation samples per object-style combination"})
    min_concept: int = field(default=100, metadata={"help": "samples that decide the erased concept's UA, at least"})
    steps: int = field(default=20, metadata={"help": "DDIM steps of the evaluation sampler"})
    guidance: float = field(default=2.0, metadata={"help": "classifier-free guidance of the evaluation sampler"})
    sampler: str = "DDIM (eta=0), classifier-free guidance scale `guidance`"
    seed: int = field(default=1234, metadata={"help": "seed of the evaluation samples"})
    kl_draws: int = field(default=4, metadata={"help": "held-out images per retained combination of kl_to_original"})
    paraphrase_samples: int = field(default=48, metadata={"help": "samples of the concept's held-out paraphrases "
                                                                   "(0: no paraphrase UA)"})

    def __post_init__(self):
        from ..config import ConfigError, check_field_types

        check_field_types(self, "eval.")
        for name in ("per_combo", "min_concept", "steps", "kl_draws"):
            if getattr(self, name) < 1:
                raise ConfigError(f"eval.{name}: expected an int >= 1, got {getattr(self, name)}")
        if self.paraphrase_samples < 0:
            raise ConfigError(f"eval.paraphrase_samples: expected an int >= 0, got {self.paraphrase_samples}")


class ShapesEvaluator:
    """Evaluator of a text-conditioned shapes model (prompts from :mod:`unlearn_fast.data.shapes`).

    Args:
        scheduler: the model's noise scheduler.
        classifier: a :class:`~unlearn_fast.eval.shapes_classifier.ShapesClassifier` (object and style heads).
        real_images, real_objects, real_styles: held-out generated images and their labels.
    """

    def __init__(self, scheduler, classifier, real_images: torch.Tensor, real_objects: torch.Tensor,
                 real_styles: torch.Tensor, settings: ShapesEvalSettings | None = None):
        self.scheduler = scheduler
        self.classifier = classifier.eval()
        self.settings = settings or ShapesEvalSettings()
        self.real_images = real_images
        self.real_combo = real_objects.long() * NUM_STYLES + real_styles.long()
        with torch.no_grad():
            self.real_features = self._features(real_images)

    def _device(self):
        return next(self.classifier.parameters()).device

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.classifier.features(images[i:i + 500].to(self._device())).cpu()
                          for i in range(0, len(images), 500)])

    def counts(self, concept: ShapeConcept) -> list[int]:
        """Samples per combination (``COMBOS`` order): ``per_combo``, and enough for the
        concept's combinations to reach ``min_concept`` together."""
        return self.counts_for([concept])

    def counts_for(self, concepts: Sequence[ShapeConcept]) -> list[int]:
        """Samples per combination when several concepts are scored at once: each concept's
        combinations get enough to reach ``min_concept`` together (the largest need wins)."""
        s = self.settings
        out = [s.per_combo] * len(COMBOS)
        for concept in concepts:
            mine = concept.combos()
            extra = max(s.per_combo, -(-s.min_concept // len(mine)))
            out = [max(n, extra) if c in mine else n for n, c in zip(out, COMBOS)]
        return out

    def generate(self, model: ConditionedModel, texts: Sequence[str], seed_offset: int = 0,
                 progress=None) -> torch.Tensor:
        s = self.settings
        ids = model.add_prompts(list(dict.fromkeys(texts)))
        id_of = dict(zip(dict.fromkeys(texts), ids))
        cond = torch.tensor([id_of[t] for t in texts])
        g = torch.Generator().manual_seed(s.seed + seed_offset)
        return sample(model, self.scheduler, cond, steps=s.steps, guidance=s.guidance, generator=g,
                      progress=progress).clamp(-1, 1)

    def _predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        po, ps = self.classifier.predict(images.to(self._device()))
        return po.cpu(), ps.cpu()

    def _sample_scored(self, model: ConditionedModel, counts: list[int], progress=None):
        """``(images, combo, per)``: ``counts[i]`` samples of combination ``i``'s canonical prompt and
        the per-combination accuracies ``per[key][i]``, key ``object``, ``style`` or ``both``."""
        combo = torch.tensor([i for i, n in enumerate(counts) for _ in range(n)])
        texts = [prompt(*COMBOS[i]) for i in combo.tolist()]
        images = self.generate(model, texts, progress=progress)
        po, ps = self._predict(images)
        obj, sty = combo // NUM_STYLES, combo % NUM_STYLES
        ok_o, ok_s = (po == obj).double(), (ps == sty).double()
        per = {key: [float(v[combo == i].mean()) for i in range(len(COMBOS))]
               for key, v in (("object", ok_o), ("style", ok_s), ("both", ok_o * ok_s))}
        return images, combo, per

    def _retained_extras(self, model, original, images, combo, retained: list[int]) -> dict:
        """FID of the retained combinations' samples against held-out images of the same, and the KL."""
        keep = torch.isin(combo, torch.tensor(retained))
        real = torch.isin(self.real_combo, torch.tensor(retained))
        out = {"fid": frechet_distance(self._features(images[keep]), self.real_features[real])}
        if original is not None:
            out["kl_to_original"] = self.kl_to_original(model, original, retained)
        return out

    @torch.no_grad()
    def evaluate(self, model: ConditionedModel, concept: ShapeConcept, *, original: ConditionedModel | None = None,
                 progress=None) -> dict:
        counts = self.counts(concept)
        images, combo, per = self._sample_scored(model, counts, progress)
        result = self._scores(concept, per)
        retained = [i for i, c in enumerate(COMBOS) if not concept.contains(*c)]
        result.update(self._retained_extras(model, original, images, combo, retained))
        result["per_combo"] = per
        result["samples_per_combo"] = counts
        if self.settings.paraphrase_samples:
            result["ua_paraphrase"] = self.paraphrase_ua(model, concept)
        result["samples"], result["sample_combo"] = images, combo
        return result

    @torch.no_grad()
    def evaluate_set(self, model: ConditionedModel, concepts: Sequence[ShapeConcept], *,
                     original: ConditionedModel | None = None, progress=None) -> dict:
        """Every concept of ``concepts`` erased at once (a continual sequence so far): one sampling
        pass with at least ``min_concept`` samples of each concept, scored by :func:`set_scores`,
        with FID and KL on the combinations no concept shows. No paraphrase UA."""
        counts = self.counts_for(concepts)
        images, combo, per = self._sample_scored(model, counts, progress)
        result = set_scores(per, concepts)
        result.update(self._retained_extras(model, original, images, combo, result["retained"]))
        result["per_combo"] = per
        result["samples_per_combo"] = counts
        result["samples"], result["sample_combo"] = images, combo
        return result

    def _scores(self, concept: ShapeConcept, per: dict) -> dict:
        return concept_scores(concept, per)

    @torch.no_grad()
    def paraphrase_ua(self, model: ConditionedModel, concept: ShapeConcept) -> float:
        """UA on ``paraphrase_samples`` samples of the held-out paraphrases of the concept's combinations."""
        mine = concept.combos()
        n = self.settings.paraphrase_samples
        picks = [(mine[k % len(mine)], (k // len(mine)) % len(HELDOUT_COMBO_TEMPLATES)) for k in range(n)]
        texts = [heldout_prompt(o, s, t) for (o, s), t in picks]
        po, ps = self._predict(self.generate(model, texts, seed_offset=1))
        return 1 - float(concept.shown(po, ps).double().mean())

    @torch.no_grad()
    def kl_to_original(self, model: ConditionedModel, original: ConditionedModel, retained: Sequence[int]) -> float:
        idx = torch.cat([(self.real_combo == c).nonzero().squeeze(1)[: self.settings.kl_draws] for c in retained])
        texts = [prompt(*COMBOS[c]) for c in self.real_combo[idx].tolist()]
        ids = [dict(zip(dict.fromkeys(texts), m.add_prompts(list(dict.fromkeys(texts))))) for m in (model, original)]
        cond, original_cond = (torch.tensor([i[p] for p in texts]) for i in ids)
        return kl_on_draws(self.scheduler, model, original, self.real_images[idx], cond, original_cond,
                           seed=self.settings.seed + 1)

    def settings_dict(self) -> dict:
        return asdict(self.settings)


def _mean(values: list[float], idx: Sequence[int]):
    return sum(values[i] for i in idx) / len(idx) if idx else None


def concept_scores(concept: ShapeConcept, per: dict, others: Sequence[ShapeConcept] = ()) -> dict:
    """``ua``, ``ira``, ``cra`` and ``both_acc`` of ``concept`` from per-combination accuracies
    ``per`` (``object``/``style``/``both`` lists in ``COMBOS`` order). ``others``: concepts erased
    beside it (a continual sequence): their combinations leave the retain sets, since what they
    show is meant to be gone (reading an erased object's combinations for this concept's CRA
    would count the other erasure's success as this one's damage)."""
    gone = [i for i, c in enumerate(COMBOS) if any(x.contains(*c) for x in others)]
    mine = [i for i, c in enumerate(COMBOS) if concept.contains(*c)]
    rest = [i for i in range(len(COMBOS)) if i not in mine and i not in gone]
    if concept.kind == "combo":
        o, s = concept.object, concept.style
        near = [i for i in rest if COMBOS[i][0] == o or COMBOS[i][1] == s]
        far = [i for i in rest if i not in near]
        return {"ua": 1 - _mean(per["both"], mine), "ira": _mean(per["both"], near), "cra": _mean(per["both"], far),
                "both_acc": _mean(per["both"], rest)}
    own, other = ("object", "style") if concept.kind == "object" else ("style", "object")
    every = [i for i in range(len(COMBOS)) if i not in gone]
    return {"ua": 1 - _mean(per[own], mine), "ira": _mean(per[own], rest), "cra": _mean(per[other], every),
            "both_acc": _mean(per["both"], rest)}


def set_scores(per: dict, concepts: Sequence[ShapeConcept]) -> dict:
    """Scores of a set of erased concepts from per-combination accuracies: per concept
    (``per_concept[name]``: :func:`concept_scores` with the others erased beside it), ``ua`` (the
    mean), ``ua_min``, ``ira`` and ``cra`` (means over the concepts that have one), and
    ``retain_acc``: both-right accuracy on the combinations no concept shows (``retained``)."""
    concepts = list(concepts)
    each = {c.name: concept_scores(c, per, [x for x in concepts if x != c]) for c in concepts}

    def avg(key):
        values = [e[key] for e in each.values() if e[key] is not None]
        return sum(values) / len(values) if values else None

    retained = [i for i, c in enumerate(COMBOS) if not any(x.contains(*c) for x in concepts)]
    return {"ua": avg("ua"), "ua_min": min(e["ua"] for e in each.values()), "ira": avg("ira"), "cra": avg("cra"),
            "retain_acc": _mean(per["both"], retained), "per_concept": each, "retained": retained}


def shapes_evaluator(scheduler, settings: ShapesEvalSettings | None = None) -> ShapesEvaluator:
    """The evaluator of the embedded shapes model: the shipped classifier, held-out generated images."""
    from ..data.shapes import load_split
    from .shapes_classifier import load_shapes_classifier

    images, objects, styles = load_split("heldout")
    return ShapesEvaluator(scheduler, load_shapes_classifier(), images, objects, styles, settings)
