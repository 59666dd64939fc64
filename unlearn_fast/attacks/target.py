"""What an attack tries to bring back: the concept's condition, how the evaluator and the detector read it, its images.

A target is built once per (model kind, concept): ``condition`` is the adapter's condition
the concept is drawn from (a class name or a prompt), ``reads(classifier, images)`` says
for each image whether a classifier reads the concept in it, ``detector_loss`` is the
cross-entropy the embedding attack descends (the *detector*, never the evaluator), and
``images(k)`` are real (or generated-data) images of the concept for the inversion and
relearning attacks; ``retained_images(k)`` those of every other concept (resurgence).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

#: the model kinds an attack accepts
ATTACK_MODELS = ("class", "text", "shapes")


@dataclass
class AttackTarget:
    kind: str
    name: str
    condition: str  # the adapter's condition name of the concept
    reads: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]  # (classifier, images) -> bool [N]
    detector_loss: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]  # (detector, images) -> scalar
    pool: torch.Tensor  # images of the concept ([-1, 1])
    retained_pool: torch.Tensor  # images of every other concept
    retained_conditions: list[str]  # the condition of each retained_pool image

    def __post_init__(self):  # a fixed shuffle: the first k images mix every style/object of the concept
        gen = torch.Generator().manual_seed(0)
        self.pool = self.pool[torch.randperm(len(self.pool), generator=gen)]
        order = torch.randperm(len(self.retained_pool), generator=gen)
        self.retained_pool = self.retained_pool[order]
        self.retained_conditions = [self.retained_conditions[int(i)] for i in order]

    def images(self, k: int) -> torch.Tensor:
        if k > len(self.pool):
            raise ValueError(f"k: expected at most {len(self.pool)} images of {self.name!r} (the data has that many), "
                             f"got {k}")
        return self.pool[:k]


def digit_target(kind: str, concept: str, key: str = "concept") -> AttackTarget:
    """A digit of the embedded class or text model (``"7"``; the text model's prompt of 7 too)."""
    from ..data import load_split
    from ..models_zoo import digit_prompt, embedded_condition_names

    names = embedded_condition_names(kind)
    text = str(concept).strip()
    if text in names:
        digit = names.index(text)
    elif text.isdigit() and int(text) < len(names):
        digit = int(text)
    else:
        raise ValueError(f"{key}: expected a digit 0-9 (or its prompt {digit_prompt(0)!r} ...), got {concept!r}")
    x, y = load_split("train")
    others = y != digit

    def reads(classifier, images):
        return classifier.predict(images.to(next(classifier.parameters()).device)).cpu() == digit

    def loss(detector, images):
        logits = detector(images)
        return F.cross_entropy(logits, torch.full((len(images),), digit, device=logits.device))

    return AttackTarget(kind, str(digit), names[digit], reads, loss, x[y == digit], x[others],
                        [names[int(c)] for c in y[others]])


def shapes_target(concept: str, key: str = "concept") -> AttackTarget:
    """An object, a style or a combination of the embedded shapes model (``"star"``, ``"striped"``,
    ``"hollow star"``); its condition is the concept's canonical prompt."""
    from ..data.shapes import load_split, prompt
    from ..eval.shapes_metrics import parse_concept

    try:
        c = parse_concept(concept)
    except ValueError as e:  # its message names the demo's --forget
        raise ValueError(f"{key}: {str(e).split(': ', 1)[-1]}") from None
    x, objects, styles = load_split("train")
    shows = torch.tensor([c.contains(int(o), int(s)) for o, s in zip(objects, styles)])

    def read(o, s):
        return torch.tensor([c.contains(int(a), int(b)) for a, b in zip(o, s)], dtype=torch.bool)

    def reads(classifier, images):
        o, s = classifier.predict(images.to(next(classifier.parameters()).device))
        return read(o.cpu(), s.cpu())

    def loss(detector, images):
        lo, ls = detector(images)
        total = 0.0
        if c.object is not None:
            total = total + F.cross_entropy(lo, torch.full((len(images),), c.object, device=lo.device))
        if c.style is not None:
            total = total + F.cross_entropy(ls, torch.full((len(images),), c.style, device=ls.device))
        return total

    retained = [prompt(int(o), int(s)) for o, s in zip(objects[~shows], styles[~shows])]
    return AttackTarget("shapes", c.name, prompt(c.object, c.style), reads, loss, x[shows], x[~shows], retained)


def attack_target(kind: str, concept: str, key: str = "concept") -> AttackTarget:
    """The target of ``concept`` on a ``kind`` model (``key``: the argument errors name)."""
    if kind not in ATTACK_MODELS:
        raise ValueError(f"model: expected one of {ATTACK_MODELS}, got {kind!r}")
    return shapes_target(concept, key) if kind == "shapes" else digit_target(kind, concept, key)
