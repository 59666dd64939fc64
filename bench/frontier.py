"""Trade-off frontiers: each method's one strength knob swept, UA against the damage it costs (KL to the original, retain accuracy, FID).

Every point is one run of ``bench/quality.py``'s recipe (the demo's batch, learning rate and
per-method constants, ``unlearn_fast.demo.DEMO_METHOD_DEFAULTS``) with one knob changed, the
same steps and seeds for every method, evaluated by the same evaluator (the shipped
classifier's samples: UA on the forgotten digit, retain accuracy and Frechet distance on the
others, ``kl_to_original`` in nats on the retained digits). The constrained methods log their
duals every step; the report keeps each run's trajectory (lambda and the constraint's running
estimate), how much of the run lambda sat at its cap and how far it swung in the last half.

Points are cached, one JSON per (method, value, seed) under ``--runs``: rerunning the same
command resumes where it stopped; ``--render`` only redraws the report from them.

    python bench/frontier.py --concept 3 --seeds 0 1 2            # -> bench/results/frontier/class-3
    python bench/frontier.py --model text --concept 7 --seeds 0   # -> bench/results/frontier/text-7
    python bench/frontier.py --model shapes --concept striped     # -> bench/results/frontier/shapes-striped

On the shapes model (one concept: an object, a style or a 'style object' combination) each
point trains as ``unlearn-fast demo --model shapes`` does and the damage is read as the shapes
evaluator reads it: in-domain and cross-domain retain accuracy (IRA, CRA) in place of the
retain accuracy, FID and KL on the retained combinations.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from quality import CONSTRAINED, load_shapes, method_config, shapes_concept_name  # noqa: E402  (bench/quality.py)

from unlearn_fast.eval.metrics import EvalSettings, embedded_evaluator  # noqa: E402
from unlearn_fast.eval.report import public, write_json  # noqa: E402
from unlearn_fast.models_zoo import load_embedded  # noqa: E402
from unlearn_fast.training import train  # noqa: E402


@dataclass(frozen=True)
class Knob:
    """One method's strength knob: a ``method_kwargs`` key, or a ``TrainConfig`` field."""

    name: str
    values: tuple
    where: str = "method"  # "method" or "config"
    config: tuple = ()  # further TrainConfig fields of every point, as (key, value) pairs
    kwargs: tuple = ()  # further method kwargs of every point, as (key, value) pairs
    method: str | None = None  # the method trained (None: the sweep's name; a variant names its method)

    def overrides(self, method: str, value) -> dict:
        from unlearn_fast.demo import DEMO_METHOD_DEFAULTS

        base = dict(DEMO_METHOD_DEFAULTS[method])
        kwargs = {**base.pop("method_kwargs", {}), **dict(self.kwargs)}
        extra = {**base, **dict(self.config)}
        if self.where == "method":
            kwargs[self.name] = value
        else:
            extra[self.name] = value
        return {"method_kwargs": kwargs, **extra}


RU_NATS = (("lambda_max", 0.95), ("bound_units", "nats"), ("dual_lr", 0.1))


def ru_nats(**changes) -> tuple:
    """RU_NATS with some of its constants changed (or others added)."""
    return tuple({**dict(RU_NATS), **changes}.items())


SWEEPS = {
    # RU's bound in nats: the whole reverse chain's KL to the forget concept (methods/nats.py), the
    # primal trained at the demo's weighting; the cap lifted so that the bound, not the cap, decides;
    # the dual step per unit of relative error (b - g) / b
    "ru": Knob("bound", (20.0, 40.0, 80.0, 160.0, 320.0), kwargs=RU_NATS),
    # the same, the dual updated by the PI controller (duals.py): the proportional term answers the
    # change of the error, which damps the integrator's swing around the bound
    "ru-pi": Knob("bound", (20.0, 40.0, 80.0, 160.0, 320.0), method="ru", kwargs=ru_nats(dual_kp=1.0)),
    # the bound in the training weighting's units, the demo's dual constants (lambda_max 0.75, dual_lr 2)
    "ru-weighted": Knob("bound", (0.005, 0.01, 0.02, 0.05, 0.1), method="ru",
                        kwargs=(("bound_units", "weighted"), ("dual_lr", 2.0), ("lambda_max", 0.75))),
    # plain ascent with a smaller step (less wind-up while the constraint is far)
    "ru-slow": Knob("bound", (20.0, 40.0, 80.0, 160.0, 320.0), method="ru", kwargs=ru_nats(dual_lr=0.03)),
    # a damped controller: the integral step halved, the proportional gain tripled
    "ru-pi3": Knob("bound", (20.0, 40.0, 80.0, 160.0, 320.0), method="ru", kwargs=ru_nats(dual_lr=0.05, dual_kp=3.0)),
    # LU's bound: the allowed mean likelihood ratio (methods/lu.py); FU's: the denoising loss each
    # forget image must reach (per-sample duals); the demo's constants otherwise
    "lu": Knob("bound", (0.1, 0.25, 0.5, 1.0, 2.0)),
    "fu": Knob("bound", (0.02, 0.05, 0.1, 0.2, 0.5)),
    "esd": Knob("eta", (0.25, 0.5, 1.0, 2.0, 4.0)),
    "neggrad": Knob("alpha", (0.02, 0.05, 0.1, 0.2, 0.5)),
    "ablation": Knob("max_steps", (25, 50, 100, 200, 400), where="config"),
}


#: the UA at which a point counts as erasing (the demo's acceptance)
UA_ERASED = 0.99

#: per model: the retain accuracies a point reports (key, label)
RETAIN = {"class": (("retain_acc", "retain acc"),), "text": (("retain_acc", "retain acc"),),
          "shapes": (("ira", "IRA"), ("cra", "CRA"))}


def metric_keys(model: str) -> tuple[str, ...]:
    """The metrics a point of ``model`` keeps and aggregates over seeds."""
    return ("ua",) + tuple(k for k, _ in RETAIN[model]) + ("fid", "kl_to_original")


def point_path(runs: str, method: str, knob: Knob, value, seed: int) -> str:
    return os.path.join(runs, method, f"{knob.name}={value:g}", f"seed{seed}.json")


def dual_trace(output_dir: str) -> dict:
    """lambda and the constraint estimate per logged step (the first concept's), from metrics.jsonl."""
    steps, lam, con = [], [], []
    with open(os.path.join(output_dir, "metrics.jsonl")) as f:
        for line in f:
            m = json.loads(line)
            lk = next((k for k in m if "lambda" in k and not k.endswith("_max")), None)
            if lk is None:
                return {}
            ck = lk.replace("lambda", "constraint")
            steps.append(m["step"])
            lam.append(m[lk])
            con.append(m.get(ck))
    return {"step": steps, "lambda": lam, "constraint": con}


def dual_summary(trace: dict, cap: float | None) -> dict:
    """Share of steps at the cap, the swing (std) of lambda and of the constraint over the last half."""
    if not trace:
        return {}
    lam = torch.tensor(trace["lambda"], dtype=torch.float64)
    half = lam[len(lam) // 2:]
    con = torch.tensor([c for c in trace["constraint"][len(lam) // 2:] if c is not None], dtype=torch.float64)
    return {"at_cap": None if cap is None else float((lam >= cap - 1e-6).double().mean()),
            "lambda_last_half_mean": float(half.mean()), "lambda_last_half_std": float(half.std()),
            "constraint_last_half_mean": float(con.mean()) if len(con) else None,
            "constraint_last_half_std": float(con.std()) if len(con) > 1 else None}


def trained(name: str) -> str:
    """The method a sweep trains (a variant, e.g. ``ru-pi``, names its method)."""
    return SWEEPS[name].method or name if name in SWEEPS else name


def constrained(name: str) -> bool:
    return trained(name) in CONSTRAINED


def point_overrides(method: str, knob: Knob, value) -> dict:
    """The TrainConfig fields a point changes (a point's ``overrides``; the steps travel apart)."""
    over = knob.overrides(trained(method), value)
    over.pop("max_steps", None)
    return over


def run_point(method: str, knob: Knob, value, seed: int, concept: list, steps: int, evaluator, original,
              workdir: str, model: str = "class") -> dict:
    over = point_overrides(method, knob, value)
    run_steps = int(value) if knob.name == "max_steps" else steps
    log_every = 1 if constrained(method) else run_steps
    config = method_config(trained(method), concept, steps=run_steps, output_dir=workdir, model=model, **over)
    config.seed, config.log_every = seed, log_every
    start = time.perf_counter()
    result = train(config)
    seconds = time.perf_counter() - start
    after = public(evaluator.evaluate(result.model, evaluated(model, concept), original=original))
    trace = dual_trace(result.output_dir) if constrained(method) else {}
    cap = over["method_kwargs"].get("lambda_max")
    return {"method": method, "knob": knob.name, "value": value, "seed": seed, "steps": run_steps,
            **{k: after[k] for k in metric_keys(model) + (() if model == "shapes" else ("neighbor_acc",))},
            "train_seconds": round(seconds, 1), "duals": dual_summary(trace, cap), "dual_trace": trace,
            "overrides": over}


def evaluated(model: str, concept: list):
    """What the model's evaluator takes: the digits, or the one shapes concept parsed."""
    if model != "shapes":
        return concept
    from unlearn_fast.eval.shapes_metrics import parse_concept

    return parse_concept(concept[0])


def run_all(args, evaluator, original) -> list[dict]:
    points = []
    for method in args.methods:
        knob = SWEEPS[method]
        for value in args.values.get(method, knob.values):
            for seed in args.seeds:
                path = point_path(args.runs, method, knob, value, seed)
                if os.path.exists(path):
                    with open(path) as f:
                        cached = json.load(f)
                    if cached.get("overrides") == json.loads(json.dumps(point_overrides(method, knob, value))):
                        points.append(cached)
                        continue
                    print(f"{path}: run with other settings than the sweep's now; running it again", flush=True)
                if args.cached:
                    continue
                work = os.path.join(args.runs, f"work-{os.getpid()}")  # one per process: runs may share --runs
                p = run_point(method, knob, value, seed, args.concept, args.steps, evaluator, original, work,
                              args.model)
                write_json(path, p)
                shutil.rmtree(work, ignore_errors=True)  # the point is its JSON; the model is not kept
                points.append(p)
                kept = " ".join(f"{label} {p[key]:.3f}" for key, label in RETAIN[args.model])
                print(f"{method} {knob.name}={value:g} seed {seed}: UA {p['ua']:.3f} {kept} "
                      f"FID {p['fid']:.2f} KL {p['kl_to_original']:.1f} {p['duals'] or ''}", flush=True)
    return points


def aggregate(points: list[dict], model: str = "class") -> list[dict]:
    """One row per (method, value): the mean and the spread (min, max) over seeds."""
    groups: dict[tuple, list[dict]] = {}
    for p in points:
        groups.setdefault((p["method"], p["value"]), []).append(p)
    rows = []
    for (method, value), ps in groups.items():
        row = {"method": method, "knob": ps[0]["knob"], "value": value, "seeds": len(ps)}
        for key in metric_keys(model):
            vals = [p[key] for p in ps]
            row[key] = sum(vals) / len(vals)
            row[key + "_range"] = (min(vals), max(vals))
        caps = [p["duals"].get("at_cap") for p in ps if p.get("duals") and p["duals"].get("at_cap") is not None]
        row["at_cap"] = sum(caps) / len(caps) if caps else None
        swings = [p["duals"]["lambda_last_half_std"] for p in ps if p.get("duals")]
        row["lambda_swing"] = sum(swings) / len(swings) if swings else None
        rows.append(row)
    return rows


#: the zoomed row of the frontier plot keeps the points that still draw the retained digits
ZOOM_RETAIN_DROP, ZOOM_UA = 0.05, 0.8


def _kept(rows: list[dict], before: dict, model: str) -> list[dict]:
    """The points that erase (UA >= ZOOM_UA) and keep every retain accuracy within ZOOM_RETAIN_DROP."""
    return [r for r in rows if r["ua"] >= ZOOM_UA and all(
        r[key] >= before[key] - ZOOM_RETAIN_DROP for key, _ in RETAIN[model])]


def _frontier_panel(ax, rows: list[dict], before: dict, key: str, label: str, zoom: bool, model: str) -> None:
    ax.axvline(before.get(key, 0.0), color="black", lw=1, ls=":", label=f"original (UA {before['ua']:.2f})")
    for method in dict.fromkeys(r["method"] for r in rows):
        rs = sorted((r for r in rows if r["method"] == method), key=lambda r: r["value"])  # in the knob's order
        line, = ax.plot([r[key] for r in rs], [r["ua"] for r in rs], "o-" if constrained(method) else "s--", ms=4,
                        label=method)
        for r in (r for r in rs if r["seeds"] > 1):
            (ylo, yhi), (xlo, xhi) = r["ua_range"], r[key + "_range"]
            ax.errorbar([r[key]], [r["ua"]], xerr=[[r[key] - xlo], [xhi - r[key]]],
                        yerr=[[r["ua"] - ylo], [yhi - r["ua"]]], color=line.get_color(), lw=0.8, capsize=2)
    ax.set_xlabel(label)
    ax.set_ylabel("UA (unlearning accuracy)")
    kept = _kept(rows, before, model)
    if zoom and kept:
        lo, hi = min(r[key + "_range"][0] for r in kept), max(r[key + "_range"][1] for r in kept)
        lo, hi = min(lo, before.get(key, lo)), max(hi, before.get(key, hi))
        pad = 0.05 * (hi - lo or 1.0)
        ax.set_xlim(lo - pad if key != "kl_to_original" else max(0.0, lo * 0.8), hi + pad)
        ax.set_ylim(min(r["ua_range"][0] for r in kept) - 0.02, 1.01)
    else:
        ax.set_ylim(max(0.0, min(r["ua_range"][0] for r in rows) - 0.05), 1.02)
    if key == "kl_to_original":
        ax.set_xscale("symlog", linthresh=1.0)
        if not zoom:
            ax.set_xlim(left=0.0)
    ax.grid(alpha=0.3)


def plot_frontier(rows: list[dict], before: dict, path: str, model: str = "class") -> None:
    """Top: every point; bottom: zoomed on the points that erase (UA >= 0.8) and keep the retained
    concepts (every retain accuracy within 5 points of the original's)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    retained = "combinations" if model == "shapes" else "digits"
    panels = ((("kl_to_original", f"KL to the original on retained {retained} (nats)"),)
              + tuple((key, label if model == "shapes" else "retain accuracy") for key, label in RETAIN[model])
              + (("fid", f"Frechet distance (retained {retained})"),))
    fig, axes = plt.subplots(2, len(panels), figsize=(5 * len(panels), 8.4))
    for row, zoom in ((0, False), (1, True)):
        for ax, (key, label) in zip(axes[row], panels):
            _frontier_panel(ax, rows, before, key, label, zoom, model)
    axes[0, 0].legend(fontsize=8, loc="lower right")
    axes[1, 0].set_title("zoomed: UA >= 0.8, retain within 5 points of the original", fontsize=9, loc="left")
    fig.suptitle("solid: constrained (primal-dual), dashed: fixed-weight; each line in the order of its knob's values; "
                 "bars: min-max over seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_duals(points: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    traced = [p for p in points if p.get("dual_trace") and p["seed"] == min(q["seed"] for q in points)]
    methods = list(dict.fromkeys(p["method"] for p in traced))
    if not methods:
        return
    fig, axes = plt.subplots(2, len(methods), figsize=(5 * len(methods), 6), squeeze=False)
    for j, method in enumerate(methods):
        for p in (q for q in traced if q["method"] == method):
            tr = p["dual_trace"]
            axes[0, j].plot(tr["step"], tr["lambda"], lw=1, label=f"{p['knob']}={p['value']:g}")
            ratio = [None if c is None else c / p["value"] for c in tr["constraint"]]
            axes[1, j].plot(tr["step"], ratio, lw=1)
        axes[1, j].axhline(1.0, lw=0.8, ls=":", color="black")
        axes[0, j].set_title(f"{method}: lambda")
        axes[1, j].set_title(f"{method}: constraint estimate / bound")
        axes[1, j].set_xlabel("step")
        axes[1, j].set_yscale("log")
        axes[1, j].set_ylim(0.05, 20)
        axes[0, j].legend(fontsize=7)
        for ax in axes[:, j]:
            ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _describe(data: dict) -> str:
    """The report's first sentence: the model, the concept, the steps, the seeds and the evaluation."""
    model, ev = data.get("model", "class"), data["eval"]
    if model == "shapes":
        what = f"Shapes model, forgotten concept {data['concept'][0]!r}"
        samples = (f"{ev['per_combo']} samples per combination, at least {ev['min_concept']} of the concept "
                   f"(DDIM {ev['steps']}, guidance {ev['guidance']}, seed {ev['seed']}); IRA, CRA: in- and "
                   "cross-domain retain accuracy")
    else:
        kind = "prompt(s) of digit(s)" if model == "text" else "digit(s)"
        what = f"{model.capitalize()} model, forgotten {kind} {data['concept']}"
        samples = (f"{ev['per_class']} samples per digit (DDIM {ev['steps']}, guidance {ev['guidance']}, seed "
                   f"{ev['seed']})")
    return (f"{what}; {data['steps']} steps (ablation: its steps are the knob), seeds {data['seeds']}; the demo's "
            f"batch, lr and per-method constants otherwise; evaluation {samples}. Values: the mean over seeds, "
            "[min, max] beside it. RU's bound in nats (bound_units=nats: the chain's KL to the forget concept, "
            "methods/nats.py). at cap: share of the steps the dual sat at lambda_max; swing: std of lambda over the "
            "last half of the run.")


def render(data: dict, out: str) -> str:
    """frontier.md, frontier.png and duals.png from the results (``frontier.json``)."""
    model = data.get("model", "class")
    rows, before, retain = aggregate(data["points"], model), data["before"], RETAIN[model]
    heads = " | ".join(label for _, label in retain)
    lines = [_describe(data), "",
             f"| method | knob | seeds | UA | KL to original (nats) | {heads} | FID | at cap | swing |",
             "|---|---|---|---|---|" + "---|" * len(retain) + "---|---|---|",
             f"| original | - | | {before['ua']:.3f} | 0 | " + " | ".join(f"{before[k]:.3f}" for k, _ in retain)
             + f" | {before['fid']:.2f} | | |"]

    def cell(r, key, fmt):
        lo, hi = r[key + "_range"]
        return f"{r[key]:{fmt}}" + (f" [{lo:{fmt}}, {hi:{fmt}}]" if r["seeds"] > 1 else "")

    for r in rows:
        cap = "-" if r["at_cap"] is None else f"{r['at_cap']:.2f}"
        swing = "-" if r["lambda_swing"] is None else f"{r['lambda_swing']:.3f}"
        lines.append(f"| {r['method']} | {r['knob']}={r['value']:g} | {r['seeds']} | {cell(r, 'ua', '.3f')} | "
                     f"{cell(r, 'kl_to_original', '.1f')} | " + " | ".join(cell(r, k, ".3f") for k, _ in retain)
                     + f" | {cell(r, 'fid', '.2f')} | {cap} | {swing} |")
    best = " | ".join(f"best {label} (at)" for _, label in retain)
    lines += ["", f"Least damage at UA >= {UA_ERASED} (mean over seeds), per method: the point of lowest KL to the "
              f"original, and the best {' and '.join(label for _, label in retain)} and FID among the erasing points.",
              "", f"| method | erasing points | lowest KL (at) | {best} | best FID (at) |",
              "|---|---|---|" + "---|" * len(retain) + "---|"]
    for method in dict.fromkeys(r["method"] for r in rows):
        erasing = [r for r in rows if r["method"] == method and r["ua"] >= UA_ERASED]
        total = sum(r["method"] == method for r in rows)
        if not erasing:
            lines.append(f"| {method} | 0 of {total} | - | " + "- | " * len(retain) + "- |")
            continue

        def at(r):
            return f"{r['knob']}={r['value']:g}"

        kl = min(erasing, key=lambda r: r["kl_to_original"])
        fid = min(erasing, key=lambda r: r["fid"])
        kept = [max(erasing, key=lambda r: r[k]) for k, _ in retain]
        lines.append(f"| {method} | {len(erasing)} of {total} | {kl['kl_to_original']:.1f} ({at(kl)}) | "
                     + " | ".join(f"{r[k]:.3f} ({at(r)})" for r, (k, _) in zip(kept, retain))
                     + f" | {fid['fid']:.2f} ({at(fid)}) |")
    table = "\n".join(lines)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "frontier.md"), "w") as f:
        f.write(f"# Trade-off frontiers, {data['date']}\n\n```\n{data['command']}\n```\n\n{table}\n\n"
                f"![frontier](frontier.png)\n\n![duals](duals.png)\n")
    plot_frontier(rows, before, os.path.join(out, "frontier.png"), model)
    plot_duals(data["points"], os.path.join(out, "duals.png"))
    return table


def parse_values(items: list[str]) -> dict:
    """``--values ru=25,50 esd=1,2``: per-method values replacing the sweep's."""
    out = {}
    for item in items:
        method, sep, vals = item.partition("=")
        if not sep or method not in SWEEPS:
            raise SystemExit(f"--values: expected METHOD=V1,V2,... with METHOD one of {sorted(SWEEPS)}, got {item!r}")
        try:
            out[method] = tuple(float(v) for v in vals.split(","))
        except ValueError:
            raise SystemExit(f"--values: expected numbers after {method}=, got {vals!r}") from None
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("class", "text", "shapes"), default="class",
                        help="the embedded model (text: the digit's canonical prompt is forgotten; shapes: one concept)")
    parser.add_argument("--concept", nargs="+", default=["3"],
                        help="the forgotten digit(s) (class, text), or one shapes concept: an object, a style or "
                        "'style object'")
    parser.add_argument("--methods", nargs="+", default=list(SWEEPS), choices=list(SWEEPS))
    parser.add_argument("--values", nargs="*", default=[], help="METHOD=V1,V2,...: other values of a method's knob")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--per-class", type=int, default=50, help="class, text: evaluation samples per digit")
    parser.add_argument("--per-combo", type=int, default=None,
                        help="shapes: evaluation samples per combination (default: the shapes evaluator's)")
    parser.add_argument("--out", default=None, help="the report's folder (default: "
                        "bench/results/frontier/<model>-<concept>)")
    parser.add_argument("--runs", default=None, help="the points' cache (default: runs/frontier/<model>-<concept>)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--render", action="store_true", help="only redraw the report from --out/frontier.json")
    parser.add_argument("--cached", action="store_true", help="report the points of --methods/--values/--seeds "
                        "already run under --runs, run none of the others")
    args = parser.parse_args(argv)
    args.concept = parse_concept_arg(parser, args.model, args.concept)
    tag = args.model + "-" + "-".join(str(c).replace(" ", "_") for c in args.concept)
    args.out = args.out or os.path.join("bench", "results", "frontier", tag)
    if args.render:
        with open(os.path.join(args.out, "frontier.json")) as f:
            print(render(json.load(f), args.out))
        return 0
    args.values = parse_values(args.values)
    args.runs = args.runs or os.path.join("runs", "frontier", tag)
    if args.threads:
        torch.set_num_threads(args.threads)
    original, evaluator = load_model(args)
    before = public(evaluator.evaluate(original, evaluated(args.model, args.concept)))
    points = run_all(args, evaluator, original)
    data = {"date": datetime.date.today().isoformat(), "model": args.model, "concept": args.concept, "steps": args.steps,
            "seeds": args.seeds, "eval": evaluator.settings_dict(), "points": points,
            "before": {k: before[k] for k in metric_keys(args.model) if k != "kl_to_original"},
            "command": "python bench/frontier.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    write_json(os.path.join(args.out, "frontier.json"), data)
    print(render(data, args.out))
    return 0


def parse_concept_arg(parser, model: str, concept: list[str]) -> list:
    """``--concept``: digits 0-9 (class, text), or one shapes concept (its name, as the evaluator spells it)."""
    if model == "shapes":
        if len(concept) != 1:
            parser.error(f"--concept: the shapes model erases one concept at a time, got {concept}")
        return [shapes_concept_name(parser, "--concept", concept[0])]
    try:
        digits = [int(c) for c in concept]
    except ValueError:
        parser.error(f"--concept: expected digits 0-9, got {concept}")
    bad = [d for d in digits if not 0 <= d <= 9]
    if bad:
        parser.error(f"--concept: expected digits 0-9, got {bad}")
    return digits


def load_model(args):
    """``(original model, evaluator)`` of ``args.model``."""
    if args.model == "shapes":
        from unlearn_fast.eval.shapes_metrics import ShapesEvalSettings

        settings = None if args.per_combo is None else ShapesEvalSettings(per_combo=args.per_combo)
        _, original, evaluator = load_shapes(evaluation=settings)
        return original, evaluator
    original, scheduler = load_embedded(args.model)
    return original, embedded_evaluator(scheduler, EvalSettings(per_class=args.per_class), model=args.model)


if __name__ == "__main__":
    sys.exit(main())
