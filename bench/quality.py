"""Method comparison on an embedded model: every method, the same forgotten digit(s) or shapes concept.

Runs each method of the engine with the same steps, batch, learning rate and seed (the
per-method constants are the demo's, ``unlearn_fast.demo.DEMO_METHOD_DEFAULTS``), evaluates
each result with the same evaluator settings, and writes a markdown table, a JSON file,
a trade-off plot (UA against retain accuracy and against Frechet distance) and a plot of
UA against the step. Steps to reach the UA target: every method saves a checkpoint every
``--probe-every`` steps; each checkpoint's UA is probed on samples of the forgotten
digit(s) only (``ClassEvaluator.class_accuracy``, the evaluator's seed and sampler).

    python bench/quality.py --forget 3 --out bench/results/quality
    python bench/quality.py --model shapes --forget striped --out bench/results/quality-shapes/striped

``--model shapes``: one concept (an object, a style or a 'style object' combination), each
method trained as ``unlearn-fast demo --model shapes`` trains it (``demo_shapes.shapes_train_config``)
and scored by the shapes evaluator (UA, paraphrase UA, IRA, CRA, FID, KL to the original); no
steps-to-target probe there.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import sys
import time

import torch
from safetensors.torch import load_file

from unlearn_fast.config import TrainConfig
from unlearn_fast.demo import DEMO_METHOD_DEFAULTS, DemoSettings, embedded_train_args
from unlearn_fast.eval.metrics import ClassEvaluator, EvalSettings, embedded_evaluator
from unlearn_fast.eval.shapes_metrics import ShapesEvalSettings
from unlearn_fast.eval.report import public, write_json
from unlearn_fast.models_zoo import load_embedded
from unlearn_fast.training import list_checkpoints, train

CONSTRAINED = {"ru", "fu", "lu"}
UA_TARGET = 0.99


def method_config(method: str, forget: list, *, steps: int, output_dir: str, checkpoint_every: int = 0,
                  model: str = "class", model_path: str | None = None, **extra) -> TrainConfig:
    """The run of ``method`` every comparison uses: the demo's batch, learning rate, seed and
    per-method constants (``extra``: further TrainConfig fields, e.g. ``adversarial=True``, or ones
    that replace the demo's, e.g. ``method_kwargs``); ``model``: the embedded class or text model
    (``forget``: digits), or the shapes model (``forget``: one concept, trained as the shapes demo
    trains it, its image folders written under ``output_dir/data``; ``model_path``: another shapes model)."""
    demo = DemoSettings()
    common = dict(max_steps=steps, progress=False, output_dir=output_dir, overwrite=True,
                  checkpoint_every=checkpoint_every, keep_checkpoints=0, log_every=steps)
    if model == "shapes":
        from unlearn_fast.demo_shapes import shapes_train_config
        from unlearn_fast.eval.shapes_metrics import parse_concept
        from unlearn_fast.shapes_zoo import SHAPES_DDPM_DIR

        if len(forget) != 1:
            raise ValueError(f"forget: the shapes model erases one concept at a time, got {forget}")
        concept = parse_concept(str(forget[0]))
        # the image folders go to output_dir/data (the trainer's overwrite clears checkpoints only)
        settings = DemoSettings(model="shapes", forget=[concept.name], method=method, steps=steps, out=output_dir)
        return shapes_train_config(settings, concept, {**DEMO_METHOD_DEFAULTS[method], **extra},
                                   model_path or SHAPES_DDPM_DIR, **common)
    return TrainConfig(method=method, **embedded_train_args(model, forget, demo.pool_size), batch_size=demo.batch_size,
                       lr=demo.lr, seed=demo.seed, **common, **{**DEMO_METHOD_DEFAULTS[method], **extra})


def ua_trace(evaluator: ClassEvaluator, original, result, forget: list[int]) -> list[tuple[int, float]]:
    """``(step, UA)`` at step 0 and at each checkpoint of the run (forgotten digits only)."""
    model = copy.deepcopy(result.model)
    trace = [(0, 1 - evaluator.class_accuracy(original, forget))]
    for step, path in list_checkpoints(result.output_dir):
        model.module.load_state_dict(load_file(str(path / "model.safetensors")))
        trace.append((step, 1 - evaluator.class_accuracy(model, forget)))
    return trace


def steps_to_target(trace: list[tuple[int, float]], target: float = UA_TARGET) -> int | None:
    """The first probed step at which UA reaches ``target`` (None: never)."""
    return next((step for step, ua in trace if ua >= target), None)


def plot_trace(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        steps, uas = zip(*r["ua_trace"])
        ax.plot(steps, uas, "o-" if r["method"] in CONSTRAINED else "s--", ms=3, label=r["method"])
    ax.axhline(UA_TARGET, color="k", lw=0.8, ls=":")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("UA (forgotten digit samples)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


#: per model: the columns of the table after UA (key, header) and the trade-off plot's two x axes
COLUMNS = {
    "class": (("retain_acc", "retain acc"), ("neighbor_acc", "neighbour acc"), ("fid", "Frechet distance"),
              ("kl_to_original", "KL to original (nats)")),
    "shapes": (("ua_paraphrase", "UA, paraphrases"), ("ira", "IRA"), ("cra", "CRA"), ("fid", "Frechet distance"),
               ("kl_to_original", "KL to original (nats)")),
}
TRADEOFF = {"class": (("retain_acc", "retain accuracy"), ("fid", "Frechet distance")),
            "shapes": (("cra", "cross-domain retain (CRA)"), ("fid", "Frechet distance"))}


def plot(rows: list[dict], before: dict, path: str, model: str = "class") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (key, label) in zip(axes, TRADEOFF[model]):
        ax.scatter([before[key]], [before["ua"]], marker="*", s=150, c="black", label="original")
        for r in rows:
            color = "tab:blue" if r["method"] in CONSTRAINED else "tab:orange"
            ax.scatter([r[key]], [r["ua"]], c=color)
            ax.annotate(r["method"], (r[key], r["ua"]), textcoords="offset points", xytext=(4, 4))
        ax.set_xlabel(label)
        ax.set_ylabel("UA (unlearning accuracy)")
        ax.grid(alpha=0.3)
    axes[0].set_title("blue: constrained (primal-dual), orange: fixed-weight")
    axes[0].legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _cell(key: str, value) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if key == "fid" else f"{value:.1f}" if key == "kl_to_original" else f"{value:.3f}"


def render(data: dict, out: str) -> str:
    """quality.md, tradeoff.png and (class model) ua_vs_steps.png from the results (``quality.json``)."""
    demo, ev, steps, before, rows = DemoSettings(), data["eval"], data["steps"], data["before"], data["methods"]
    model = data.get("model", "class")
    columns = COLUMNS[model]
    probed = model == "class"
    if probed:
        for r in rows:
            r["steps_to_ua_target"] = steps_to_target(r["ua_trace"])
        head = (f"Forgotten digit(s): {data['forget']}; {steps} steps, batch {demo.batch_size}, lr {demo.lr}, "
                f"seed {demo.seed}; evaluation: {ev['per_class']} samples per digit, DDIM {ev['steps']} steps, "
                f"guidance {ev['guidance']}, seed {ev['seed']}. Method constants: unlearn_fast/demo.py. "
                f"Steps to UA >= {UA_TARGET}: the first checkpoint (every {data['probe_every']} steps) whose UA probe "
                f"(50 samples of the forgotten digit, the evaluator's seed and sampler) reaches it; '-' = not within "
                f"{steps} steps; ua_vs_steps.png shows the whole trace. ")
    else:
        head = (f"Shapes model, forgotten concept {data['forget']!r}; {steps} steps, batch {demo.batch_size}, lr "
                f"{demo.lr}, seed {demo.seed}, trained as `unlearn-fast demo --model shapes`; evaluation: "
                f"{ev['per_combo']} samples per combination (at least {ev['min_concept']} of the concept), "
                f"{ev['paraphrase_samples']} of its held-out paraphrases, DDIM {ev['steps']} steps, guidance "
                f"{ev['guidance']}, seed {ev['seed']}. Method constants: unlearn_fast/demo.py. ")
    lines = [head + f"Train seconds {'include the checkpoints and ' if probed else ''}depend on what else ran on the machine (not comparable across rows here) "
             f"(torch threads: {data['threads']}).", "",
             "| method | UA | " + " | ".join(h for _, h in columns) + (" | steps to UA target" if probed else "")
             + " | train s |",
             "|---|---|" + "---|" * len(columns) + ("---|" if probed else "") + "---|",
             f"| original | {before['ua']:.3f} | " + " | ".join(
                 "0" if k == "kl_to_original" else _cell(k, before.get(k)) for k, _ in columns)
             + (" | | |" if probed else " | |")]
    for r in rows:
        reached = r.get("steps_to_ua_target")
        lines.append(f"| {r['method']} | {r['ua']:.3f} | " + " | ".join(_cell(k, r.get(k)) for k, _ in columns)
                     + (f" | {'-' if reached is None else reached}" if probed else "") + f" | {r['seconds']} |")
    table = "\n".join(lines)
    with open(os.path.join(out, "quality.md"), "w") as f:
        f.write(f"# Method comparison, {data['date']}\n\n```\n{data['command']}\n```\n\n{table}\n")
    plot(rows, before, os.path.join(out, "tradeoff.png"), model)
    if probed:
        plot_trace(rows, os.path.join(out, "ua_vs_steps.png"))
    return table


def shapes_concept_name(parser: argparse.ArgumentParser, flag: str, text: str) -> str:
    """One shapes concept (an object, a style or "style object") as the evaluator spells it,
    or the flag's one-line error (exit 2). Shared by the benches that take shapes concepts."""
    from unlearn_fast.eval.shapes_metrics import parse_concept

    try:
        return parse_concept(text).name
    except ValueError as err:
        parser.error(f"{flag}: " + str(err).removeprefix("forget: "))


def load_shapes(model_path: str | None = None, evaluation: ShapesEvalSettings | None = None):
    """``(model folder, original model, evaluator)`` of the shapes benchmark: the shipped model
    unless ``model_path``; the evaluator at ``evaluation`` (default: its own settings)."""
    from unlearn_fast.eval.shapes_metrics import shapes_evaluator
    from unlearn_fast.shapes_zoo import SHAPES_DDPM_DIR, load_shapes_ddpm

    model_dir = model_path or SHAPES_DDPM_DIR
    original, scheduler = load_shapes_ddpm(model_dir)
    return model_dir, original, shapes_evaluator(scheduler, evaluation or ShapesEvalSettings())


def shapes_rows(args, steps: int, evaluation=None) -> tuple[dict, list[dict], dict]:
    """``(before, rows, eval settings)`` of every method on one shapes concept (``evaluation``: the
    ``ShapesEvalSettings``; default: the evaluator's, ``args.per_combo`` samples per combination)."""
    from unlearn_fast.eval.shapes_metrics import parse_concept

    if len(args.forget) != 1:
        raise SystemExit(f"--forget: --model shapes compares the methods on one concept, got {args.forget}")
    concept = parse_concept(args.forget[0])
    model_dir, original, evaluator = load_shapes(args.model_path,
                                                 evaluation or ShapesEvalSettings(per_combo=args.per_combo))
    before = public(evaluator.evaluate(original, concept))
    rows = []
    for method in args.methods:
        start = time.perf_counter()
        config = method_config(method, [concept.name], steps=steps, model="shapes", model_path=model_dir,
                               output_dir=os.path.join(args.runs, concept.name.replace(" ", "_"), method))
        result = train(config)
        seconds = time.perf_counter() - start
        after = public(evaluator.evaluate(result.model, concept, original=original))
        rows.append({"method": method, **{k: after.get(k) for k in ("ua",) + tuple(k for k, _ in COLUMNS["shapes"])},
                     "seconds": round(seconds, 1)})
        print(rows[-1], flush=True)
    return before, rows, evaluator.settings_dict()


def class_rows(args, steps: int) -> tuple[dict, list[dict], dict]:
    """``(before, rows, eval settings)`` of every method on the class model's digit(s)."""
    try:
        forget = [int(f) for f in args.forget]
    except ValueError:
        raise SystemExit(f"--forget: the class model forgets digits, got {args.forget}") from None
    original, scheduler = load_embedded("class")
    evaluator = embedded_evaluator(scheduler, EvalSettings(per_class=args.per_class))
    before = public(evaluator.evaluate(original, forget))
    rows = []
    for method in args.methods:
        start = time.perf_counter()
        config = method_config(method, forget, steps=steps, output_dir=os.path.join(args.runs, method),
                               checkpoint_every=args.probe_every)
        result = train(config)
        seconds = time.perf_counter() - start
        after = public(evaluator.evaluate(result.model, forget, original=original))
        trace = ua_trace(evaluator, original, result, forget)
        rows.append({"method": method, **{k: after[k] for k in ("ua", "retain_acc", "neighbor_acc", "fid",
                                                                 "kl_to_original")}, "seconds": round(seconds, 1),
                     "steps_to_ua_target": steps_to_target(trace), "ua_trace": trace})
        print({k: v for k, v in rows[-1].items() if k != "ua_trace"}, flush=True)
    return before, rows, evaluator.settings_dict()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("class", "shapes"), default="class")
    parser.add_argument("--forget", nargs="+", default=["3"],
                        help="digit(s) (class model), or one shapes concept: an object, a style or 'style object'")
    parser.add_argument("--methods", nargs="+", default=list(DEMO_METHOD_DEFAULTS))
    parser.add_argument("--per-class", type=int, default=50, help="class model: evaluation samples per digit")
    parser.add_argument("--per-combo", type=int, default=ShapesEvalSettings().per_combo,
                        help="shapes model: evaluation samples per combination")
    parser.add_argument("--model-path", default=None, help="shapes model: another shapes model folder")
    parser.add_argument("--out", default="bench/results/quality")
    parser.add_argument("--runs", default=None, help="where the runs go (default: runs/quality, runs/quality-shapes)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the demo's)")
    parser.add_argument("--probe-every", type=int, default=10, help="steps between UA probes (checkpoints)")
    parser.add_argument("--render", metavar="JSON", default=None,
                        help="only rewrite quality.md and the plots in --out from a saved quality.json")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if args.render:
        with open(args.render) as f:
            print(render(json.load(f), args.out))
        return 0
    unknown = [m for m in args.methods if m not in DEMO_METHOD_DEFAULTS]
    if unknown:
        raise SystemExit(f"--methods: expected names from {sorted(DEMO_METHOD_DEFAULTS)}, got {unknown}")
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = args.steps or DemoSettings().steps
    args.runs = args.runs or os.path.join("runs", "quality" if args.model == "class" else "quality-shapes")
    before, rows, ev = (shapes_rows if args.model == "shapes" else class_rows)(args, steps)
    data = {"model": args.model, "before": before, "methods": rows, "date": datetime.date.today().isoformat(),
            "eval": ev, "steps": steps,
            "forget": args.forget[0] if args.model == "shapes" else [int(f) for f in args.forget], "probe_every": args.probe_every, "threads": torch.get_num_threads(),
            "command": "python bench/quality.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    write_json(os.path.join(args.out, "quality.json"), data)
    table = render(data, args.out)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
