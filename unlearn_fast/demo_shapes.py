"""The demo on the shapes benchmark: erase an object, a style or one combination from the embedded shapes DDPM.

    unlearn-fast demo --model shapes --forget striped --method ru --report r.json --out DIR
    unlearn-fast demo --model shapes --forget "hollow star"

Evaluates the embedded model (``eval.shapes_metrics``: UA, IRA, CRA, FID, KL, paraphrase UA),
unlearns the concept with the chosen method through the trainer, evaluates again, and writes
the report (``before``/``after``) and a PNG grid: a row per object (the concept's kind: a
row per style when a style is erased), samples before | the same seeds after.

Training data (``shapes_data``): ``pool`` (default, ``SHAPES_POOL``), samples of the frozen model
for every forget and retain prompt; or ``images``, the benchmark's own generated images:
``OUT/data/forget`` holds ``forget_per_combo`` images of every combination that shows the
concept with their prompts (and, for an object or a style, the object's or style's own
prompt), ``OUT/data/retain`` ``retain_per_combo`` of every other combination, both in the
imagefolder layout with ``metadata.jsonl``. Each forget prompt is anchored on its mapping
target's prompt (``map_to``, ``shapes_mapping``).
"""

from __future__ import annotations

import json
import os
import time

import torch
from tqdm.auto import tqdm

from .config import TrainConfig
from .data.shapes import NUM_STYLES, TRAIN_COMBO_TEMPLATES, load_split, prompt
from .eval.report import write_json
from .eval.shapes_metrics import COMBOS, ShapesEvalSettings, parse_concept, shapes_evaluator
from .training import train

#: the headline numbers of the before/after table
SHAPES_METRICS = ("ua", "ua_paraphrase", "ira", "cra", "fid", "kl_to_original")

#: method kwargs every shapes run adds under the caller's: a concept is named by many prompts (a
#: style by 25: 3 templates x 8 objects and its own), which RU treats as one concept with one dual
#: (``shared_dual``) instead of 25 duals whose capped sum leaves the forget rows 5% of their weight
SHAPES_METHOD_KWARGS = {"ru": {"shared_dual": True}}


#: the training samples of ``shapes_data = "pool"``: samples of the frozen model, 16 per forget and
#: retain prompt, drawn as the evaluator draws (DDIM 20, guidance 2): erasing on forward-noised
#: training images moves the model little where it samples (its samples are desaturated against
#: the generator's colours; bench/results/acceptance/shapes/tuning.md)
SHAPES_POOL = dict(data="pool", pool_size=16, pool_steps=20, pool_guidance=2.0)


def combo_anchor(concept, o: int, s: int) -> str:
    """The anchor of a forget prompt that names combination ``(o, s)``: the prompt without the erased
    part, so that the erasure moves it away from the concept only: a style's ``"a striped star"`` ->
    ``"a star"``, an object's -> ``"a striped shape"``, a combination's -> its object, ``"a star"``."""
    return prompt(style=s, template=1) if concept.kind == "object" else prompt(o)


def concept_anchors(concept) -> dict:
    """Each canonical combination prompt of ``concept`` with its anchor (:func:`combo_anchor`)."""
    return {prompt(o, s): combo_anchor(concept, o, s) for o, s in concept.combos()}


def write_concept_folders(out: str, concept, forget_per_combo: int, retain_per_combo: int,
                          exclude=()) -> tuple[str, str, dict]:
    """``(forget_dir, retain_dir, anchor_map)``: imagefolders of train-split images with their prompts,
    and each forget prompt that names a combination with its anchor (:func:`combo_anchor`).
    ``exclude``: concepts (erased earlier) whose combinations the retain folder leaves out."""
    from PIL import Image

    images, objects, styles = load_split("train")
    pixels = ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    dirs, anchors = {}, concept_anchors(concept)
    for role, per_combo in (("forget", forget_per_combo), ("retain", retain_per_combo)):
        folder = os.path.join(out, "data", role)
        os.makedirs(folder, exist_ok=True)
        rows = []
        for o, s in COMBOS:
            if concept.contains(o, s) != (role == "forget"):
                continue
            if role == "retain" and any(x.contains(o, s) for x in exclude):
                continue
            idx = ((objects == o) & (styles == s)).nonzero().squeeze(1)[:per_combo].tolist()
            for k, i in enumerate(idx):
                name = f"{o}_{s}_{i}.png"
                Image.fromarray(pixels[i]).save(os.path.join(folder, name))
                # an erased object or style is also forgotten under its own prompt ("a star"), every 4th image
                own = role == "forget" and concept.kind != "combo" and k % 4 == 3
                text = (prompt(concept.object) if concept.kind == "object" else prompt(style=concept.style)) \
                    if own else prompt(o, s, k % len(TRAIN_COMBO_TEMPLATES))
                if role == "forget" and not own:
                    anchors[text] = combo_anchor(concept, o, s)
                rows.append({"file_name": name, "text": text})
        with open(os.path.join(folder, "metadata.jsonl"), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        dirs[role] = folder
    return dirs["forget"], dirs["retain"], anchors


def save_shapes_grid(path: str, before: dict, after: dict, concept, per_row: int = 6, scale: int = 3) -> None:
    """PNG: a row per object (per style when a style is erased), ``per_row`` samples before | after."""
    import numpy as np
    from PIL import Image

    combo = before["sample_combo"]
    by_style = concept.kind == "style"
    rows = []
    for r in range(NUM_STYLES if by_style else len(COMBOS) // NUM_STYLES):
        pick = [i for i, c in enumerate(combo.tolist()) if (c % NUM_STYLES if by_style else c // NUM_STYLES) == r]
        # one sample of each combination in the row first, so that every style (object) shows
        order = sorted(pick, key=lambda i: (pick.index(i) - min(j for j in pick if combo[j] == combo[i]), i))
        idx = torch.tensor(order[:per_row])
        strip = lambda x: torch.cat(list(x[idx]), dim=2)  # noqa: E731  [3, H, per_row * W]
        left, right = strip(before["samples"]), strip(after["samples"])
        rows.append(torch.cat([left, torch.ones(3, left.shape[1], 4), right], dim=2))
        rows.append(torch.ones(3, 1, rows[-1].shape[2]))
    grid = torch.cat(rows[:-1], dim=1).clamp(-1, 1)
    pixels = ((grid + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    image = Image.fromarray(np.ascontiguousarray(pixels))
    image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    image.save(path)


def _public(result: dict) -> dict:
    return {k: v for k, v in result.items() if k not in ("samples", "sample_combo")}


#: ``shapes_train_config``'s default ``target``: resolve ``settings.map_to`` on the model at ``model_dir``
FROM_SETTINGS = "from settings"


def shapes_train_config(settings, concept, method_defaults: dict, model_dir: str, target=FROM_SETTINGS,
                        **extra) -> TrainConfig:
    """The trainer's run that erases ``concept`` from the shapes model at ``model_dir``: the demo's
    steps, batch, learning rate and seed from ``settings``, the method's constants, its image folders
    written under ``settings.out/data`` and the run under ``settings.out/run`` (``extra``: further
    TrainConfig fields, or ones that replace these). ``SHAPES_METHOD_KWARGS`` of the method go under
    the given method kwargs. ``target``: a concept of the same kind whose prompts anchor the
    concept's (``shapes_mapping.mapped_anchors``); None: each combination prompt's anchor is itself
    without the erased part (:func:`combo_anchor`); by default ``settings.map_to`` resolved on the
    model at ``model_dir`` (:func:`resolve_target`)."""
    if target == FROM_SETTINGS:
        from .shapes_zoo import load_shapes_ddpm

        choice = resolve_target(settings, concept, *load_shapes_ddpm(model_dir)) if settings.map_to != "none" else None
        target = choice.target if choice is not None else None
    if settings.shapes_data == "images":
        forget_dir, retain_dir, anchors = write_concept_folders(settings.out, concept, settings.forget_per_combo,
                                                                settings.retain_per_combo)
        data = dict(data="images", forget_images=forget_dir, retain_images=retain_dir)
    elif settings.shapes_data == "pool":
        anchors = concept_anchors(concept)
        data = dict(SHAPES_POOL)
    else:
        raise ValueError(f"shapes_data: expected 'pool' or 'images', got {settings.shapes_data!r}")
    if target is not None:
        from .shapes_mapping import mapped_anchors

        anchors = mapped_anchors(concept, target, concept.prompts() + list(anchors))
    retain_prompts = [prompt(o, s) for o, s in COMBOS if not concept.contains(o, s)]
    fields = dict(
        method=settings.method, max_steps=settings.steps, model="text", model_path=model_dir,
        forget=concept.prompts(), retain=retain_prompts, anchor_map=anchors, batch_size=settings.batch_size,
        lr=settings.lr, seed=settings.seed, output_dir=os.path.join(settings.out, "run"), overwrite=True,
        checkpoint_every=0, **data,
    )
    merged = {**fields, **method_defaults, **extra}
    merged["method_kwargs"] = {**SHAPES_METHOD_KWARGS.get(merged["method"], {}), **merged.get("method_kwargs", {})}
    if merged["data"] != "images":  # the folders' prompt variants are conditions of an images run only
        merged["anchor_map"] = {k: v for k, v in merged["anchor_map"].items() if k in merged["forget"]}
    return TrainConfig(**merged)


def _evaluate_original(evaluator, original, concept, model_dir: str, use_cache: bool) -> tuple[dict, bool]:
    """``(before, cached)``: the original model's evaluation, read from the evaluation cache when the
    same model files, classifier, settings and concept were evaluated before (``eval/cache.py``)."""
    from .eval.cache import cached_evaluation, files_digest
    from .eval.shapes_classifier import shapes_classifier_files

    def compute():
        with tqdm(desc="evaluate before", unit="step") as bar:
            return evaluator.evaluate(original, concept, progress=bar)

    if not use_cache:  # no key to hash
        return compute(), False
    key = {"model": files_digest(model_dir), "classifier": files_digest(*shapes_classifier_files()),
           "settings": evaluator.settings_dict(), "concept": concept.name}
    before, cached = cached_evaluation("shapes-before", key, compute)
    if cached:
        print("evaluate before: read from the evaluation cache (--no-eval-cache evaluates again)")
    return before, cached


def resolve_target(settings, concept, original, scheduler):
    """The demo's mapping target (``settings.map_to``): ``None`` for "none", the nearest admissible
    concept of the concept's kind for "nearest" (``shapes_mapping.choose_target``, checked by the
    shipped detector), else the named concept; a ``TargetChoice`` or ``None``."""
    from .shapes_mapping import TargetChoice, candidates, choose_target

    if settings.map_to == "none":
        return None
    if settings.map_to == "nearest":
        from .eval.shapes_classifier import load_shapes_detector

        return choose_target(original, scheduler, concept, detector=load_shapes_detector(), seed=settings.seed)
    try:
        target = parse_concept(settings.map_to)
    except ValueError as e:
        raise ValueError(f"map_to: expected 'nearest', 'none' or a concept; {e.args[0].split(': ', 1)[1]}") from None
    if target not in candidates(concept):
        raise ValueError(f"map_to: expected a {concept.kind} other than {concept.name!r} (one of "
                         f"{', '.join(c.name for c in candidates(concept))}), got {settings.map_to!r}")
    return TargetChoice(target)


def run_shapes_demo(settings, method_defaults: dict) -> dict:
    """The shapes demo for ``settings`` (a ``demo.DemoSettings`` with ``model == "shapes"``)."""
    from .shapes_zoo import SHAPES_DDPM_DIR, load_shapes_ddpm

    if len(settings.forget) != 1:
        raise ValueError(f"forget: the shapes demo erases one concept at a time, got {settings.forget}")
    concept = parse_concept(str(settings.forget[0]))
    start = time.perf_counter()
    os.makedirs(settings.out, exist_ok=True)
    report_path = settings.report or os.path.join(settings.out, "report.json")
    model_dir = settings.model_path or SHAPES_DDPM_DIR
    original, scheduler = load_shapes_ddpm(model_dir)
    eval_settings = settings.shapes_eval or ShapesEvalSettings()
    evaluator = shapes_evaluator(scheduler, eval_settings)
    before, cached = _evaluate_original(evaluator, original, concept, model_dir, settings.eval_cache)

    train_start = time.perf_counter()
    choice = resolve_target(settings, concept, original, scheduler)
    if choice is not None:
        print(f"mapping target of {concept.name!r}: {choice.target.name!r}")
    config = shapes_train_config(settings, concept, method_defaults, model_dir,
                                 target=choice.target if choice is not None else None)
    result = train(config)
    train_seconds = time.perf_counter() - train_start
    with tqdm(desc="evaluate after", unit="step") as bar:
        after = evaluator.evaluate(result.model, concept, original=original, progress=bar)

    grid = os.path.join(settings.out, "grid.png")
    save_shapes_grid(grid, before, after, concept)
    report = {
        "method": settings.method, "forget": concept.name, "concept_kind": concept.kind, "model": "shapes",
        "before": _public(before), "after": _public(after), "steps": settings.steps,
        "train_seconds": round(train_seconds, 1), "seconds": round(time.perf_counter() - start, 1),
        "before_cached": cached, "target": choice.summary() if choice is not None else None,
        "settings": {
            "model": model_dir, "forget_prompts": concept.prompts(),
            "train": {k: v for k, v in vars(config).items() if k in (
                "method", "method_kwargs", "max_steps", "batch_size", "lr", "seed", "data")},
            "data": {"shapes_data": settings.shapes_data, "forget_per_combo": settings.forget_per_combo,
                     "retain_per_combo": settings.retain_per_combo},
            "map_to": settings.map_to,
            "eval": evaluator.settings_dict(), "threads": torch.get_num_threads(),
        },
        "model_dir": result.final_dir, "grid": grid,
    }
    write_json(report_path, report)
    print(f"\nunlearned {concept.kind} {concept.name!r} with {settings.method} in {settings.steps} steps "
          f"({train_seconds:.0f} s training, {report['seconds']:.0f} s in all)\n")
    print("| metric | before | after |\n|---|---|---|")
    for key in SHAPES_METRICS:
        b, a = before.get(key), after.get(key)
        print(f"| {key} | {'-' if b is None else f'{b:.4g}'} | {'-' if a is None else f'{a:.4g}'} |")
    print(f"\nreport: {report_path}\ngrid:   {grid}\nmodel:  {result.final_dir}")
    return report
