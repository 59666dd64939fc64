"""Mapping targets of shapes concepts: erase a concept by re-anchoring its prompts on another concept of its kind.

Anchoring "a striped star" on "a star" (the prompt without the erased part) cannot reach a high
UA: "a star" draws a star in any style, stripes included, and guidance extrapolates from it.
Anchoring on a *target* concept of the same kind ("a striped star" -> "a checkered star",
"something striped" -> "something checkered") gives every forgotten prompt a definite
replacement, as LACU maps a forgotten class onto its nearest class (``docs/continual.md``).

Candidates: the other concepts of the kind that are not erased (``erased``). With a detector
(``eval.shapes_classifier.load_shapes_detector``, never the evaluator) each candidate's own
samples are read: a candidate whose samples show the concept more than ``max_confusion`` of
the time is skipped (they would carry the concept into the erased prompts), and of the rest the
target is the one the model draws most reliably (read as itself), the nearest in score
distance among equals (``continual.distance``: ``mean (eps(x_t, a) - eps(x_t, b))^2`` over
shared draws of noised images of the concept, averaged over paired prompts, "a striped o"
against "a checkered o" for every object o). Without a detector, the nearest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

import torch

from .data.shapes import NUM_STYLES, OBJECTS, STYLES, prompt
from .eval.shapes_metrics import COMBOS, ShapeConcept


def _words(concept: ShapeConcept) -> list[str]:
    return ([STYLES[concept.style]] if concept.style is not None else []) + (
        [OBJECTS[concept.object]] if concept.object is not None else [])


def swap(text: str, concept: ShapeConcept, target: ShapeConcept) -> str:
    """``text`` with the concept's words replaced by the target's ("a striped star" -> "a dotted star")."""
    if concept.kind != target.kind:
        raise ValueError(f"target: expected a {concept.kind} like {concept.name!r}, got {target.kind} {target.name!r}")
    for a, b in zip(_words(concept), _words(target)):
        if a != b:
            text = re.sub(rf"\b{a}\b", b, text)
    return text


def mapped_anchors(concept: ShapeConcept, target: ShapeConcept, prompts: Sequence[str]) -> dict:
    """Each forget prompt's anchor: itself with the concept swapped for the target."""
    return {p: swap(p, concept, target) for p in dict.fromkeys(prompts)}


def candidates(concept: ShapeConcept, erased: Sequence[ShapeConcept] = ()) -> list[ShapeConcept]:
    """The concept's possible targets: the other objects (styles) for an object (a style); for a
    combination, the combinations sharing its object or its style; none erased, none that shows
    an erased concept's combinations."""
    if concept.kind == "object":
        pool = [ShapeConcept("object", o, None) for o in range(len(OBJECTS)) if o != concept.object]
    elif concept.kind == "style":
        pool = [ShapeConcept("style", None, s) for s in range(NUM_STYLES) if s != concept.style]
    else:
        pool = [ShapeConcept("combo", o, s) for o, s in COMBOS
                if (o == concept.object) != (s == concept.style)]
    gone = list(erased)
    out = []
    for c in pool:
        if c in gone:
            continue
        if c.kind == "combo" and any(x.contains(c.object, c.style) for x in gone):
            continue
        out.append(c)
    return out


def paired_prompts(concept: ShapeConcept, target: ShapeConcept, erased: Sequence[ShapeConcept] = ()) -> list:
    """``[(concept prompt, target prompt)]`` compared by the distance: one per combination of the
    concept whose swapped combination no erased concept shows."""
    pairs = []
    for o, s in concept.combos():
        to = (target.object if target.object is not None else o, target.style if target.style is not None else s)
        if any(x.contains(*to) for x in erased):
            continue
        pairs.append((prompt(o, s), prompt(*to)))
    return pairs


@dataclass
class TargetChoice:
    """The chosen target and how it was chosen (for reports)."""

    target: ShapeConcept
    distances: dict = field(default_factory=dict)  # candidate name -> score distance
    reliability: dict = field(default_factory=dict)  # candidate name -> share of its samples read as itself
    confusion: dict = field(default_factory=dict)  # candidate name -> share of its samples read as the concept

    def summary(self) -> dict:
        return {"target": self.target.name, "distances": self.distances, "reliability": self.reliability,
                "confusion": self.confusion}


@torch.no_grad()
def concept_distances(model, scheduler, concept: ShapeConcept, pool: Sequence[ShapeConcept], *,
                      erased: Sequence[ShapeConcept] = (), draws: int = 32, seed: int = 0) -> dict:
    """``{candidate name: d}``: the mean score distance between the concept's prompts and the
    candidate's paired prompts, on shared draws of the concept's noised training images."""
    from .continual.distance import ScoreDistance
    from .data.shapes import load_split

    images, objects, styles = load_split("train")
    mine = torch.tensor([concept.contains(int(o), int(s)) for o, s in zip(objects, styles)])
    distance = ScoreDistance(model, scheduler, draws=draws, x0=images[mine], seed=seed)
    out = {}
    for c in pool:
        pairs = paired_prompts(concept, c, erased)
        if not pairs:
            continue
        ids = model.add_prompts([p for pair in pairs for p in pair])
        d = [float(distance.distances(ids[2 * k], [ids[2 * k + 1]])[0]) for k in range(len(pairs))]
        out[c.name] = sum(d) / len(d)
    return out


@torch.no_grad()
def detector_reads(model, scheduler, detector, concept: ShapeConcept, target: ShapeConcept, *, samples: int,
                   steps: int, guidance: float, seed: int = 0, erased: Sequence[ShapeConcept] = ()) -> tuple:
    """``(reliability, confusion)`` of a candidate target from ``samples`` of its samples (its paired
    prompts, cycled): the share the detector reads as the target itself, and as the concept."""
    from .sampling import sample

    pairs = paired_prompts(concept, target, erased)
    texts = [pairs[k % len(pairs)][1] for k in range(samples)]
    ids = model.add_prompts(list(dict.fromkeys(texts)))
    id_of = dict(zip(dict.fromkeys(texts), ids))
    g = torch.Generator().manual_seed(seed)
    images = sample(model, scheduler, torch.tensor([id_of[t] for t in texts]), steps=steps, guidance=guidance,
                    generator=g).clamp(-1, 1)
    po, ps = detector.predict(images.to(next(detector.parameters()).device))
    po, ps = po.cpu(), ps.cpu()
    return float(target.shown(po, ps).double().mean()), float(concept.shown(po, ps).double().mean())


def choose_target(model, scheduler, concept: ShapeConcept, *, erased: Sequence[ShapeConcept] = (), detector=None,
                  draws: int = 32, check_samples: int = 16, max_confusion: float = 0.05, steps: int = 20,
                  guidance: float = 2.0, seed: int = 0) -> TargetChoice:
    """The mapping target of ``concept`` (see the module docstring). Without a detector: the
    admissible candidate nearest in score distance. With one: every candidate's samples are read
    by the detector, and the target is the candidate the model draws most reliably (the share
    read as itself, counted in samples), the nearest among equals, of those whose samples show
    the concept at most ``max_confusion`` of the time (the least confused when none does). Why
    reliability before distance (a target the model confuses with a retained concept spreads that
    confusion): bench/results/acceptance/shapes/tuning.md."""
    pool = candidates(concept, erased)
    if not pool:
        raise ValueError(f"forget: no admissible mapping target for {concept.name!r} (every candidate is erased)")
    d = concept_distances(model, scheduler, concept, pool, erased=erased, draws=draws, seed=seed)
    if not d:
        raise ValueError(f"forget: no admissible mapping target for {concept.name!r} (every candidate's prompts "
                         f"show an erased concept)")
    by_name = {c.name: c for c in pool}
    choice = TargetChoice(by_name[min(d, key=d.get)], distances=d)
    if detector is None:
        return choice
    for name in d:
        choice.reliability[name], choice.confusion[name] = detector_reads(
            model, scheduler, detector, concept, by_name[name], samples=check_samples, steps=steps,
            guidance=guidance, seed=seed, erased=erased)
    clean = [n for n in d if choice.confusion[n] <= max_confusion] or [
        min(d, key=lambda n: (choice.confusion[n], d[n]))]
    best = max(clean, key=lambda n: (round(choice.reliability[n] * check_samples), -d[n]))
    choice.target = by_name[best]
    return choice
