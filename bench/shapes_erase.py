"""One shapes erasure for tuning: the demo's training recipe with overrides, then the "after" evaluation only.

The shapes demo's code path (``demo_shapes.shapes_train_config`` -> ``training.train``, then
``ShapesEvaluator.evaluate``), without the "before" evaluation (it is the same for every
variant of a concept; the demo caches it), so that recipes can be compared at the cost of one
training run and one evaluation. Prints and writes ``OUT/result.json``: UA, paraphrase UA, IRA,
CRA, FID, KL to the original, the per-combination accuracies, the training and evaluation
seconds and the dual's trace.

    python bench/shapes_erase.py striped --out runs/tune/striped
    python bench/shapes_erase.py star --steps 100 --extra '{"source": "student"}' --out runs/tune/star-student
    python bench/shapes_erase.py striped --kw '{"lambda_max": 0.9}' --lr 3e-4 --steps 80 --out runs/tune/fast

``--kw`` updates the method kwargs of the demo's defaults, ``--extra`` sets TrainConfig fields
(JSON); ``--no-anchors`` trains with the null condition as every forget prompt's anchor.
Results of the runs made while tuning: ``bench/results/acceptance/shapes/tuning.md``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from unlearn_fast.demo import DEMO_METHOD_DEFAULTS, DemoSettings  # noqa: E402
from unlearn_fast.demo_shapes import resolve_target, shapes_train_config  # noqa: E402
from unlearn_fast.eval.shapes_metrics import ShapesEvalSettings, parse_concept, shapes_evaluator  # noqa: E402
from unlearn_fast.shapes_zoo import SHAPES_DDPM_DIR, load_shapes_ddpm  # noqa: E402
from unlearn_fast.training import train  # noqa: E402

KEYS = ("ua", "ua_paraphrase", "ira", "cra", "fid", "kl_to_original", "both_acc")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("concept", help="an object, a style or '<style> <object>'")
    ap.add_argument("--out", required=True, help="folder of the run and result.json")
    ap.add_argument("--method", default="ru", choices=sorted(DEMO_METHOD_DEFAULTS))
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--kw", default="{}", help="JSON: method kwargs over the demo's")
    ap.add_argument("--extra", default="{}", help="JSON: TrainConfig fields")
    ap.add_argument("--per-combo", type=int, default=4, help="evaluation samples per combination")
    ap.add_argument("--min-concept", type=int, default=100, help="evaluation samples of the concept, at least")
    ap.add_argument("--eval-steps", type=int, default=20, help="DDIM steps of the evaluation")
    ap.add_argument("--no-anchors", action="store_true", help="the null condition anchors every forget prompt")
    ap.add_argument("--map-to", default="none", help="the demo's --map-to: none (here the default, as the runs "
                    "before it: each prompt without the erased part), nearest, or a concept of the concept's kind "
                    "('a striped star' -> 'a checkered star', 'something striped' -> 'something checkered')")
    ap.add_argument("--data", default="images", choices=["images", "pool"],
                    help="the demo's --shapes-data (here images by default, as the runs before it; --extra can "
                         "set the data fields too)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model-path", default=SHAPES_DDPM_DIR)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    concept = parse_concept(a.concept)
    settings = DemoSettings(model="shapes", forget=[a.concept], method=a.method, steps=a.steps, lr=a.lr, out=a.out,
                            map_to=a.map_to, shapes_data=a.data)
    defaults = copy.deepcopy(DEMO_METHOD_DEFAULTS[a.method])
    defaults.setdefault("method_kwargs", {}).update(json.loads(a.kw))
    extra = json.loads(a.extra)
    if a.no_anchors:
        extra["anchor_map"] = {}
    original, scheduler = load_shapes_ddpm(a.model_path)
    start = time.time()
    choice = resolve_target(settings, concept, original, scheduler)
    config = shapes_train_config(settings, concept, defaults, a.model_path, progress=False,
                                 target=choice.target if choice is not None else None, **extra)
    result = train(config)
    trained = time.time()
    evaluator = shapes_evaluator(scheduler, ShapesEvalSettings(per_combo=a.per_combo, min_concept=a.min_concept,
                                                                      steps=a.eval_steps))
    after = evaluator.evaluate(result.model, concept, original=original)
    out = {k: after.get(k) for k in KEYS}
    out.update(train_s=round(trained - start), eval_s=round(time.time() - trained), args=vars(a),
               target=choice.summary() if choice is not None else None,
               samples_per_combo=after["samples_per_combo"], per_combo=after["per_combo"])
    metrics_file = os.path.join(a.out, "run", "metrics.jsonl")
    rows = [json.loads(line) for line in open(metrics_file)] if os.path.exists(metrics_file) else []
    duals = [round(r["ru/lambda[shared]"], 3) for r in rows if "ru/lambda[shared]" in r]
    out["lambda_trace"] = duals[::max(1, len(duals) // 10)]
    print(json.dumps(out))
    with open(os.path.join(a.out, "result.json"), "w") as f:
        json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
