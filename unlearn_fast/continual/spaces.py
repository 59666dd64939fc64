"""What a request names, per model kind: digits of the MNIST models, concepts of the shapes model.

A continual run is the same loop on every embedded model; what differs is what a request is
and how it is trained and scored. ``DigitSpace`` (``class``, ``text``): a request is a digit, its
condition the class id or canonical prompt, scored by ``eval.metrics.ClassEvaluator``.
``ShapesSpace`` (``shapes``): a request is an object, a style or one combination
(``"striped"``, ``"star"``, ``"hollow star"``), forgotten through every prompt that names it
(``ShapeConcept.prompts``) and scored by ``eval.shapes_metrics.ShapesEvaluator.evaluate_set``
(UA per concept, IRA, CRA, retain accuracy on the combinations no concept shows). Each space
says: the parsed requests, the model and evaluator, the original's reference per step, a
request's trainer fields, and the scores of a model after a request.
"""

from __future__ import annotations

import time


class DigitSpace:
    """``class`` and ``text``: requests are digits."""

    def __init__(self, settings):
        self.settings = settings

    def requests(self) -> list[int]:
        try:
            return [int(c) for c in self.settings.sequence]
        except (TypeError, ValueError):
            raise ValueError(f"sequence: the {self.settings.model} model's requests are digits (class ids), got "
                             f"{self.settings.sequence}") from None

    def key(self, request) -> str:
        return str(request)

    def load(self):
        from ..models_zoo import load_embedded

        return load_embedded(self.settings.model, self.settings.model_path)

    def describe(self) -> str:
        s = self.settings
        if s.model_path:
            return s.model_path
        if s.model == "text":
            return ("embedded text-conditioned DDPM, 16x16 MNIST (unlearn_fast/assets/text_ddpm); labels are the "
                    "prompts of unlearn_fast.models_zoo.digit_prompt")
        return "embedded class-conditional DDPM, 16x16 MNIST (unlearn_fast/assets/class_ddpm)"

    def settings_dict(self) -> dict:
        return {}

    def before_request(self, model, scheduler, requests: list, erased: list, seed: int) -> dict:
        return {}  # a digit's mapping target is the lacu strategy's choice

    def lacu_plan(self, strategy, ctx, n: int, request) -> dict:
        """LACU's plan of request ``n``: target and replay by score distance (``strategy.plan``)."""
        return strategy.plan(ctx, n, request)

    def lacu_data(self, lacu, erased: list) -> dict:
        """The training data of a lacu request: ``lacu.data``; the earlier erasures' replay on
        their real images (``lacu.erased_data = "mnist"``, class model)."""
        mnist = lacu.erased_data == "mnist" and self.settings.model == "class"
        return dict(data=lacu.data, pool_size=lacu.pool_size, pool_guidance=lacu.pool_guidance,
                    mnist_conditions=[str(e) for e in erased] if mnist else [])

    def evaluator(self, original, scheduler):
        from ..eval.metrics import embedded_evaluator

        return embedded_evaluator(scheduler, self.settings.eval, self.settings.model,
                                  int(original.module.config.sample_size))

    def check(self, evaluator, seq: list) -> None:
        bad = [c for c in seq if not 0 <= c < evaluator.num_classes]
        if bad:
            raise ValueError(f"sequence: expected classes in [0, {evaluator.num_classes}), got {bad}")

    def original_report(self, evaluator, original, seq: list) -> dict:
        """The original model's metrics over the final erased set, and per step of the sequence."""
        t0 = time.perf_counter()
        orig = evaluator.evaluate(original, seq)
        per_class = orig["per_class_acc"]
        per_step = []
        for n in range(1, len(seq) + 1):
            erased = seq[:n]
            retain = [c for c in range(evaluator.num_classes) if c not in erased]
            near = evaluator.neighbors(erased)
            per_step.append({"step": n, "ua": 1 - sum(per_class[c] for c in erased) / n,
                             "retain_acc": sum(per_class[c] for c in retain) / len(retain),
                             "neighbor_acc": sum(per_class[c] for c in near) / len(near) if near else None})
        return {"ua": orig["ua"], "retain_acc": orig["retain_acc"], "neighbor_acc": orig["neighbor_acc"],
                "neighbors": orig["neighbors"], "fid": orig["fid"], "per_class_acc": per_class,
                "note": "metrics over the final erased set; per_step: the same samples scored per step",
                "per_step": per_step, "eval_seconds": round(time.perf_counter() - t0, 1)}

    def scores(self, evaluator, model, erased: list, original) -> dict:
        """The per-step metrics of a model after a request (over everything erased so far)."""
        r = evaluator.evaluate(model, erased, original=original)
        per_class = r["per_class_acc"]
        return {
            "ua": r["ua"],
            "ua_per_class": {str(c): 1 - per_class[c] for c in erased},
            "ua_min": min(1 - per_class[c] for c in erased),
            "retain_acc": r["retain_acc"],
            "neighbor_acc": r["neighbor_acc"],
            "neighbors": r["neighbors"],
            "fid": r["fid"],
            "kl_to_original": r.get("kl_to_original"),
            "per_class_acc": per_class,
        }

    def request_fields(self, forget: list, retain: list | None, erased: list, out_dir: str) -> dict:
        """The ``TrainConfig`` fields naming what request ``forget`` erases and keeps."""
        from ..models_zoo import embedded_condition_names

        names = embedded_condition_names(self.settings.model)
        fields = {"model": self.settings.model}
        if self.settings.model == "text":
            fields["pool_size"] = self.settings.pool_size
            if retain is None:  # a prompt model has no implicit "every other class"
                retain = [c for c in range(len(names)) if c not in forget]
        fields.update(forget=[names[f] for f in forget], retain=[names[r] for r in (retain or [])])
        return fields

    def method_kwargs(self, method: str, kwargs: dict) -> dict:
        return kwargs

    def condition_names(self, values: list) -> list:
        from ..models_zoo import embedded_condition_names

        names = embedded_condition_names(self.settings.model)
        return [names[int(v)] for v in values]


class ShapesSpace:
    """``shapes``: requests are concepts (an object, a style or a combination), named by many prompts.

    With ``shapes.map_to = "nearest"`` each erased concept has a mapping target, a concept of its
    kind (``shapes_mapping``), chosen on the model the request starts from and chosen again when a
    later request erases it; a forgotten prompt is anchored on itself with every erased concept it
    shows swapped for that concept's target ("a striped star" after `striped` -> checkered and
    `star` -> cross: "a checkered cross")."""

    def __init__(self, settings):
        self.settings = settings
        self.target_of: dict = {}  # erased concept name -> its target ShapeConcept
        self._detector = None

    def requests(self) -> list[str]:
        from ..eval.shapes_metrics import parse_concept

        out = []
        for c in self.settings.sequence:
            try:
                out.append(parse_concept(str(c)).name)
            except ValueError as e:
                raise ValueError(f"sequence: {e.args[0].split(': ', 1)[1]}") from None
        if len(set(out)) != len(out):
            raise ValueError(f"sequence: a concept is requested twice: {out}")
        return out

    def key(self, request) -> str:
        return str(request)

    def concept(self, name: str):
        from ..eval.shapes_metrics import parse_concept

        return parse_concept(name)

    def load(self):
        from ..shapes_zoo import load_shapes_ddpm

        return load_shapes_ddpm(self.settings.model_path)

    def describe(self) -> str:
        return self.settings.model_path or (
            "embedded text-conditioned shapes DDPM, 32x32 RGB, 8 objects x 6 styles (unlearn_fast/assets/shapes_ddpm)")

    def settings_dict(self) -> dict:
        from dataclasses import asdict

        return {"shapes": asdict(self.settings.shapes)}

    def _detector_model(self):
        if self._detector is None:
            from ..eval.shapes_classifier import load_shapes_detector

            self._detector = load_shapes_detector()
        return self._detector

    def before_request(self, model, scheduler, requests: list, erased: list, seed: int) -> dict:
        """Choose the mapping target of each new concept, and again for every earlier concept whose
        target is now erased; ``{"targets": {concept: target}, "target_choice": {concept: how}}``."""
        from ..shapes_mapping import candidates, choose_target

        sh = self.settings.shapes
        if sh.map_to == "none":
            return {}
        gone = [self.concept(c) for c in list(erased) + list(requests)]
        how = {}
        for name in list(self.target_of) + list(requests):
            concept = self.concept(name)
            others = [g for g in gone if g != concept]
            current = self.target_of.get(name)
            if current is not None and current in candidates(concept, others):
                continue
            choice = choose_target(model, scheduler, concept, erased=others,
                                   detector=self._detector_model() if sh.target_check == "detector" else None,
                                   check_samples=sh.check_samples, steps=self.settings.shapes_eval.steps,
                                   guidance=sh.pool_guidance, seed=seed)
            self.target_of[name] = choice.target
            how[name] = choice.summary()
        return {"targets": {k: v.name for k, v in self.target_of.items()}, "target_choice": how}

    def lacu_plan(self, strategy, ctx, n: int, request) -> dict:
        """LACU on concepts: every prompt of the request mapped onto its target prompt (the
        composition of the erased concepts' targets, as the anchors of :meth:`request_fields`);
        every earlier concept's prompts remapped the same way, one constraint per concept
        (``groups``); replay: the canonical prompt of every combination no concept shows, and the
        remapped prompts (their samples carry the concept the mapping keeps away)."""
        gone = [self.concept(c) for c in list(ctx.erased) + [request]]
        concept = self.concept(request)
        forget = concept.prompts()
        lacu = self.settings.lacu
        remapped, remapped_targets, groups = [], [], []
        if lacu.replay_erased and lacu.remap_erased:
            for e in ctx.erased:
                for p in self.concept(e).prompts():
                    if p not in forget and p not in remapped:
                        remapped.append(p)
                        remapped_targets.append(self._target_prompt(p, self.concept(e), gone))
                        groups.append(str(e))
        kept = self.kept(gone)
        rec = dict(target=self.target_of[request].name, remapped={e: self.target_of[e].name for e in ctx.erased},
                   replayed=len(kept) + len(remapped))
        return dict(record=rec, retain=kept + remapped, targets=[self._target_prompt(p, concept, gone) for p in forget],
                    remapped=remapped, remapped_targets=remapped_targets, labels=groups, groups=groups,
                    forget_groups=[str(request)] * len(forget))

    @staticmethod
    def kept(gone: list) -> list[str]:
        """The canonical prompt of every combination no concept of ``gone`` shows."""
        from ..data.shapes import prompt
        from ..eval.shapes_metrics import COMBOS

        return [prompt(o, s) for o, s in COMBOS if not any(g.contains(o, s) for g in gone)]

    def _target_prompt(self, text: str, concept, gone: list) -> str:
        """The prompt ``text`` of ``concept`` maps onto: its combination's mapped combination, or the
        concept's own prompt with the concept swapped for its target."""
        from ..data.shapes import prompt
        from ..shapes_mapping import swap

        for o, s in concept.combos():
            if text == prompt(o, s):
                return prompt(*self.mapped(o, s, gone))
        return swap(text, concept, self.target_of[concept.name])

    def lacu_data(self, lacu, erased: list) -> dict:
        return {}  # request_fields gives the shapes data (settings.shapes)

    def mapped(self, o: int, s: int, gone: list):
        """Combination ``(o, s)`` with every erased concept that shows it swapped for its target."""
        for _ in range(len(gone) + 1):
            hit = next((c for c in gone if c.contains(o, s) and c.name in self.target_of), None)
            if hit is None:
                return o, s
            t = self.target_of[hit.name]
            o, s = (t.object if t.object is not None else o), (t.style if t.style is not None else s)
        raise ValueError(f"targets: the mapping targets form a cycle at ({o}, {s})")  # chosen admissible: never

    def evaluator(self, original, scheduler):
        from ..eval.shapes_metrics import shapes_evaluator

        return shapes_evaluator(scheduler, self.settings.shapes_eval)

    def check(self, evaluator, seq: list) -> None:
        pass  # requests() parsed every concept

    def original_report(self, evaluator, original, seq: list) -> dict:
        """The original's evaluation over the whole sequence's concepts once; per step, the same
        per-combination accuracies scored for the concepts erased by then."""
        from ..eval.shapes_metrics import set_scores

        t0 = time.perf_counter()
        concepts = [self.concept(c) for c in seq]
        r = evaluator.evaluate_set(original, concepts)
        per_step = []
        for n in range(1, len(seq) + 1):
            s = set_scores(r["per_combo"], concepts[:n])
            per_step.append({"step": n, "ua": s["ua"], "ua_min": s["ua_min"], "ira": s["ira"], "cra": s["cra"],
                             "retain_acc": s["retain_acc"], "neighbor_acc": None})
        return {"ua": r["ua"], "ira": r["ira"], "cra": r["cra"], "retain_acc": r["retain_acc"], "neighbor_acc": None,
                "fid": r["fid"], "per_combo": r["per_combo"], "samples_per_combo": r["samples_per_combo"],
                "note": "metrics over the final erased set; per_step: the same samples scored per step",
                "per_step": per_step, "eval_seconds": round(time.perf_counter() - t0, 1)}

    def scores(self, evaluator, model, erased: list, original) -> dict:
        r = evaluator.evaluate_set(model, [self.concept(c) for c in erased], original=original)
        return {
            "ua": r["ua"],
            "ua_per_class": {name: e["ua"] for name, e in r["per_concept"].items()},
            "ua_min": r["ua_min"],
            "ira": r["ira"],
            "cra": r["cra"],
            "retain_acc": r["retain_acc"],
            "neighbor_acc": None,
            "fid": r["fid"],
            "kl_to_original": r.get("kl_to_original"),
            "per_concept": r["per_concept"],
            "per_combo": r["per_combo"],
        }

    def request_fields(self, forget: list, retain: list | None, erased: list, out_dir: str) -> dict:
        """Forget every prompt of the requested concepts; keep the canonical prompt of every
        combination that no concept erased so far (or now) shows (:meth:`kept`); anchor each
        forgotten prompt on its target prompt (:meth:`_target_prompt`) when the concept has a
        mapping target, else each combination prompt on itself without the erased part
        (``demo_shapes.combo_anchor``) unless that part is erased too (then the null prompt);
        data from ``settings.shapes``."""
        from ..data.shapes import prompt
        from ..demo_shapes import SHAPES_POOL, concept_anchors, write_concept_folders
        from ..eval.shapes_metrics import ShapeConcept

        sh = self.settings.shapes
        now = [self.concept(c) for c in forget]
        gone = now + [self.concept(c) for c in erased]
        forget_prompts = list(dict.fromkeys(p for c in now for p in c.prompts()))
        anchors, erased_anchors = {}, set()
        for c in now:
            if c.name in self.target_of:  # mapped: each prompt onto the targets of what it shows
                anchors.update({p: self._target_prompt(p, c, gone) for p in c.prompts()})
                continue
            anchors.update(concept_anchors(c))
            for o, s in c.combos():
                # the anchor names the combination's other part: its style (object erased) or object
                named = ShapeConcept("style", None, s) if c.kind == "object" else ShapeConcept("object", o, None)
                if named in gone:  # that part is erased too: the null anchor
                    erased_anchors.add(anchors[prompt(o, s)])
        fields = dict(model="text", forget=forget_prompts, source=sh.source,
                      retain=list(retain) if retain is not None else self.kept(gone))
        if sh.data == "images":
            if len(now) != 1:
                raise ValueError("shapes.data: 'images' writes one concept's folders; simultaneous erases several "
                                 "concepts at once, use shapes.data = 'pool'")
            forget_dir, retain_dir, folder_anchors = write_concept_folders(  # beside the run, which overwrites
                out_dir.rstrip("/\\") + "-data", now[0], sh.forget_per_combo, sh.retain_per_combo, exclude=gone)
            if now[0].name in self.target_of:  # a template variant takes its canonical prompt's target swap
                folder_anchors = {k: self._variant_anchor(k, now[0], gone) for k in folder_anchors}
            anchors.update(folder_anchors)
            fields.update(data="images", forget_images=forget_dir, retain_images=retain_dir)
        else:
            fields.update(data="pool", pool_size=sh.pool_size, pool_guidance=sh.pool_guidance,
                          pool_steps=SHAPES_POOL["pool_steps"])
        fields["anchor_map"] = {k: v for k, v in anchors.items() if v not in erased_anchors}
        return fields

    def _variant_anchor(self, text: str, concept, gone: list) -> str:
        """A folder prompt's anchor: its words of the combination swapped as :meth:`mapped` swaps them."""
        from ..data.shapes import OBJECTS, STYLES
        from ..eval.shapes_metrics import ShapeConcept
        from ..shapes_mapping import swap

        words = text.split()
        o = next(OBJECTS.index(w) for w in words if w in OBJECTS)
        s = next(STYLES.index(w) for w in words if w in STYLES)
        return swap(text, ShapeConcept("combo", o, s), ShapeConcept("combo", *self.mapped(o, s, gone)))

    def method_kwargs(self, method: str, kwargs: dict) -> dict:
        """A shapes request's kwargs: ``demo_shapes.SHAPES_METHOD_KWARGS`` under the caller's."""
        from ..demo_shapes import SHAPES_METHOD_KWARGS

        return {**SHAPES_METHOD_KWARGS.get(method, {}), **kwargs}

    def condition_names(self, values: list) -> list:
        return [str(v) for v in values]


SPACES = {"class": DigitSpace, "text": DigitSpace, "shapes": ShapesSpace}


def space_of(settings):
    """The request space of ``settings.model``."""
    return SPACES[settings.model](settings)
