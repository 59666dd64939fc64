"""Robustness of every method's erasure: each unlearned model attacked, beside the original.

For each digit: trains every method exactly as ``bench/quality.py`` does (the demo's steps,
batch, learning rate, seed and per-method constants), RU once more with ``adversarial=True``
(``unlearn_fast.methods.adversarial``), and a continual model (``--continual-method`` over
``--continual-prefix`` then the digit); attacks each with every attack of ``--attacks`` (by
default the embedding attack, which the detector guides, and textual inversion, which reads
no classifier; the evaluator reads every ASR), and the original twice: from the digit's own
conditioning and from another digit's (``--init``, the attacks' own test). The conditioning
attacks leave the weights alone, so FID and retain accuracy are each model's, measured once.
Then the relearning attack (k = 4 and 16 images, ``--relearn-steps`` steps) on RU and
adversarial RU. Writes ``robustness.md`` (table and acceptance), ``robustness.json``,
``asr_vs_steps.png`` (ASR against attack steps per model) and ``relearn.png``.

Finished runs are reused (runs/robustness/...), so an interrupted benchmark resumes.

    python bench/robustness.py --digits 7 2 --threads 1 --out bench/results/robustness
    python bench/robustness.py --model shapes --concepts striped star --threads 1 --out bench/results/robustness-shapes

``--model shapes``: each concept (an object, a style, a combination) erased by every method as
``unlearn-fast demo --model shapes`` erases it and attacked the same way, with in- and
cross-domain retain accuracy (IRA, CRA) in place of the retain accuracy. Two rows are class
only: adversarial RU (its inner attack optimises one conditioning; a shapes concept is erased
through all of its prompts) and the continual model (the shapes continual runs are issue 16's).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from quality import method_config, shapes_concept_name  # noqa: E402

from unlearn_fast.attacks import AttackSettings, run_attack  # noqa: E402
from unlearn_fast.demo import DemoSettings  # noqa: E402
from unlearn_fast.eval.report import write_json  # noqa: E402
from unlearn_fast.training import train  # noqa: E402

#: model name -> (method, extra TrainConfig fields)
VARIANTS = {
    "ru": ("ru", {}),
    "ru+adversarial": ("ru", {"adversarial": True}),
    "esd": ("esd", {}),
    "lu": ("lu", {}),
    "fu": ("fu", {}),
    "ablation": ("ablation", {}),
    "neggrad": ("neggrad", {}),
}
#: the rows that run on the class model only (module docstring)
CLASS_ONLY = ("ru+adversarial",)
#: acceptance of issue 17 (adversarial RU against plain RU)
ASR_RATIO, FID_RATIO, RETAIN_DROP = 0.5, 1.3, 0.03


def _same_config(folder: str, config) -> bool:
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(os.path.join(folder, "final", "unlearn_info.json")) or not os.path.isfile(path):
        return False
    with open(path) as f:
        saved = json.load(f)
    want = json.loads(json.dumps(config.to_dict(), default=str))
    return {k: v for k, v in saved.items() if k != "resume"} == {k: v for k, v in want.items() if k != "resume"}


def folder_name(model: str, concept) -> str:
    """The runs' folder of a concept: ``d7`` (class, as before), ``shapes-striped``."""
    return f"d{concept}" if model == "class" else f"{model}-{str(concept).replace(' ', '_')}"


def train_variant(name: str, concept, steps: int, root: str, log, model: str = "class") -> tuple[str, float | None]:
    """``(final model folder, training seconds)``; a finished identical run is reused."""
    method, extra = VARIANTS[name]
    out = os.path.join(root, folder_name(model, concept), name.replace("+", "_"))
    config = method_config(method, [concept], steps=steps, output_dir=out, model=model, **extra)
    timing = os.path.join(out, "timing.json")
    if _same_config(out, config) and os.path.isfile(timing):
        with open(timing) as f:
            return os.path.join(out, "final"), json.load(f)["seconds"]
    log(f"[train] {name} forget {concept} ({steps} steps)")
    start = time.perf_counter()
    result = train(config)
    seconds = round(time.perf_counter() - start, 1)
    write_json(timing, {"seconds": seconds})
    return result.final_dir, seconds


def continual_model(digit: int, prefix: list[int], method: str, root: str, threads, log) -> tuple[str, float]:
    """The model after a continual run over ``prefix`` then ``digit`` (the last request's)."""
    from unlearn_fast.continual import run_continual
    from unlearn_fast.continual.settings import ContinualSettings

    out = os.path.join(root, f"d{digit}", f"continual_{method}")
    path = os.path.join(out, "report.json")
    sequence = [c for c in prefix if c != digit] + [digit]
    if not os.path.isfile(path):
        log(f"[continual] {method} over {sequence}")
        run_continual(ContinualSettings(sequence=sequence, methods=[method], out=out, threads=threads), log=log)
    with open(path) as f:
        report = json.load(f)
    run = report["methods"][method]
    return run["steps"][-1]["model_dir"], run["seconds"]


def attack(model_dir: str | None, concept, kind: str, out: str, *, init=None, steps=None, k=16, asr_every=20,
           threads=None, fid=True, log=print, model: str = "class") -> dict:
    """The attack's report; one written after the model, with the same settings, is reused."""
    settings = AttackSettings(model=model, model_path=model_dir, concept=str(concept), attack=kind, init=init,
                              steps=steps, k=k, asr_every=asr_every, fid=fid, out=out, threads=threads)
    path = os.path.join(out, "report.json")
    info = os.path.join(model_dir, "unlearn_info.json") if model_dir else None
    model_time = os.path.getmtime(info if os.path.isfile(info) else model_dir) if model_dir else 0.0
    if os.path.isfile(path) and os.path.getmtime(path) > model_time:
        with open(path) as f:
            rep = json.load(f)
        if rep["budget"]["steps"] == settings.attack_steps and rep.get("init") == init and (
                rep["budget"].get("keep", "last") == settings.keep or kind in ("relearn", "resurgence")) and (
                rep.get("fid") is not None or not fid):
            return rep
    return run_attack(settings, log=log)


def other_concept(model: str, concept, init_from: int):
    """The concept the original's second attack starts from: digit ``init_from`` (the next digit if
    equal); on the shapes model the next concept of the same kind (style, object)."""
    if model == "class":
        return str(init_from if init_from != concept else (concept + 1) % 10)
    from unlearn_fast.data.shapes import OBJECTS, STYLES
    from unlearn_fast.eval.shapes_metrics import parse_concept

    c = parse_concept(concept)
    if c.kind == "style":
        return STYLES[(c.style + 1) % len(STYLES)]
    return OBJECTS[(c.object + 1) % len(OBJECTS)] if c.kind == "object" else \
        f"{STYLES[c.style]} {OBJECTS[(c.object + 1) % len(OBJECTS)]}"


def run_concept(concept, args, log) -> dict:
    """Every row of one concept: trained, attacked, scored; the relearning curves of RU (and adversarial RU)."""
    model, root = args.model, args.runs
    att = os.path.join(args.runs, folder_name(model, concept), "attacks")
    init = other_concept(model, concept, args.init_from)
    rows = {"original": {"model_dir": None, "train_seconds": None},
            f"original, from {init}": {"model_dir": None, "train_seconds": None, "init": init}}
    for name in args.variants:
        if model != "class" and name in CLASS_ONLY:
            continue
        rows[name] = dict(zip(("model_dir", "train_seconds"), train_variant(name, concept, args.steps, root, log,
                                                                            model)))
    if model == "class" and args.continual_method != "none":
        cont = f"continual {args.continual_method}"
        rows[cont] = dict(zip(("model_dir", "train_seconds"),
                              continual_model(concept, args.continual_prefix, args.continual_method, root,
                                              args.threads, log)))
    scores = ("asr_before", "fid", "retain_acc") if model == "class" else ("asr_before", "fid", "ira", "cra")
    for name, row in rows.items():
        row["attacks"] = {}
        for i, kind in enumerate(args.attacks):
            folder = os.path.join(att, kind, name.replace(" ", "_").replace(",", ""))
            rep = attack(row["model_dir"], concept, kind, folder, init=row.get("init"), steps=args.attack_steps.get(kind),
                         asr_every=args.asr_every, threads=args.threads, fid=i == 0, log=log, model=model)
            row["attacks"][kind] = {key: rep.get(key) for key in ("asr_before", "asr", "asr_start", "seconds",
                                                                  "per_step_asr", "budget")}
            if i == 0:
                row.update({key: rep.get(key) for key in scores})
    relearn = {}
    for name in ("ru", "ru+adversarial"):
        if name not in rows:
            continue
        for k in (4, 16):
            rep = attack(rows[name]["model_dir"], concept, "relearn",
                         os.path.join(att, f"relearn_k{k}_{name.replace('+', '_')}"), steps=args.relearn_steps, k=k,
                         asr_every=10, threads=args.threads, fid=False, log=log, model=model)
            relearn[f"{name}, k={k}"] = {"per_step_asr": rep["per_step_asr"], "budget": rep["budget"]}
    key = {"digit": concept} if model == "class" else {"concept": concept}
    return {**key, "model": model, "models": rows, "relearn": relearn, "acceptance": acceptance(rows)}


def acceptance(rows: dict) -> dict | None:
    """Adversarial RU against RU (``None`` without both models). The ASR check that decides is the
    strongest attack's (each model's highest ASR over the attacks: the one an attacker would pick);
    the per-attack ratios are reported beside it (``per_attack``) and do not decide."""
    if "ru" not in rows or "ru+adversarial" not in rows:
        return None
    orig, ru, adv = rows["original"], rows["ru"], rows["ru+adversarial"]
    per_attack = {f"{kind}: adversarial ASR {adv['attacks'][kind]['asr']:.2f} <= {ASR_RATIO} x RU's "
                  f"{ru['attacks'][kind]['asr']:.2f}": adv["attacks"][kind]["asr"] <= ASR_RATIO * ru["attacks"][kind]["asr"]
                  for kind in ru["attacks"]}
    worst = {name: max(r["attacks"].items(), key=lambda kv: kv[1]["asr"]) for name, r in (("ru", ru), ("adv", adv))}
    (ru_kind, ru_att), (adv_kind, adv_att) = worst["ru"], worst["adv"]
    checks = {f"strongest attack: adversarial ASR {adv_att['asr']:.2f} ({adv_kind}) <= {ASR_RATIO} x RU's "
              f"{ru_att['asr']:.2f} ({ru_kind})": adv_att["asr"] <= ASR_RATIO * ru_att["asr"]}
    checks[f"adversarial FID {adv['fid']:.2f} <= {FID_RATIO} x original's {orig['fid']:.2f}"] = (
        adv["fid"] <= FID_RATIO * orig["fid"])
    drop = orig["retain_acc"] - adv["retain_acc"]
    checks[f"adversarial retain drop {drop * 100:.1f} <= {RETAIN_DROP * 100:.0f} points"] = drop <= RETAIN_DROP
    return {"checks": checks, "per_attack": per_attack, "pass": all(checks.values())}


def _title(d: dict) -> str:
    return f"digit {d['digit']}" if "digit" in d else f"concept {d['concept']!r}"


def _retain(d: dict) -> tuple[tuple[str, str], ...]:
    return (("retain_acc", "retain acc"),) if d.get("model", "class") == "class" else (("ira", "IRA"), ("cra", "CRA"))


def _f(v, fmt=".3f"):
    return "-" if v is None else format(v, fmt)


def render(data: dict, out: str) -> str:
    attacks = data["attacks"]
    budgets = "; ".join(f"{kind}: {data['budgets'][kind]}" for kind in attacks)
    lines = [f"Attacks ({budgets}); ASR read by the evaluator's classifier on {data['asr_samples']} samples "
             f"({data['asr_sampler']}); FID and retain accuracy of each model: {data['fid_samples']} samples per "
             f"retained digit (shapes: a sixth of that per combination). Methods trained as bench/quality.py "
             f"({data['steps']} steps, the demo's constants). UA = 1 - ASR before; for the original 'from' rows, "
             "ASR before is at the attack's first step (the other concept's conditioning).", ""]
    for d in data["digits"]:
        retain = _retain(d)
        lines += [f"## {_title(d).capitalize()}", "",
                  "| model | UA | " + " | ".join(f"ASR before, after {kind}" for kind in attacks) +
                  " | FID | " + " | ".join(label for _, label in retain) + " | train s | " +
                  " | ".join(f"{kind} s" for kind in attacks) + " |",
                  "|---|---|" + "---|" * len(attacks) + "---|" * (2 + len(retain)) + "---|" * len(attacks)]
        for name, r in d["models"].items():
            ua = "-" if r.get("init") else _f(1 - r["asr_before"])
            cells = []
            for kind in attacks:
                a = r["attacks"][kind]
                before = a["asr_start"] if r.get("init") else a["asr_before"]
                cells.append(f"{_f(before, '.2f')} -> **{_f(a['asr'], '.2f')}**")
            times = [_f(r["attacks"][kind]["seconds"], ".0f") for kind in attacks]
            lines.append(f"| {name} | {ua} | " + " | ".join(cells) + f" | {_f(r['fid'], '.2f')} | "
                         + " | ".join(_f(r.get(key)) for key, _ in retain)
                         + f" | {_f(r['train_seconds'], '.0f')} | " + " | ".join(times) + " |")
        acc = acceptance(d["models"])  # recomputed: a saved report is read under the current checks
        if acc:
            lines += ["", "Adversarial RU against RU: " + "; ".join(
                f"{k}: {'yes' if v else 'NO'}" for k, v in acc["checks"].items()) +
                f" -> {'PASS' if acc['pass'] else 'FAIL'}"]
            if acc.get("per_attack"):
                lines += ["", "Per attack (reported, not deciding): " + "; ".join(
                    f"{k}: {'yes' if v else 'no'}" for k, v in acc["per_attack"].items())]
        if d["relearn"]:
            lines += ["", "Relearning (ASR at fine-tuning step 0, 10, 50): " + "; ".join(
                f"{name}: " + ", ".join(f"{p['asr']:.2f}" for p in r["per_step_asr"] if p["step"] in (0, 10, 50))
                for name, r in d["relearn"].items())]
        lines.append("")
    table = "\n".join(lines)
    with open(os.path.join(out, "robustness.md"), "w") as f:
        f.write(f"# Robustness, {data['date']}\n\n```\n{data['command']}\n```\n\n{table}\n"
                "![ASR against attack steps](asr_vs_steps.png)\n\n![relearning](relearn.png)\n")
    plot(data, out)
    return table


def _style(ax, title: str, xlabel: str, legend_size: int) -> None:
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("ASR (evaluator)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # a concept without relearning curves draws an empty panel
        ax.legend(fontsize=legend_size)


def plot(data: dict, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, attacks = len(data["digits"]), data["attacks"]
    fig, axes = plt.subplots(len(attacks), n, figsize=(6 * n, 4 * len(attacks)), squeeze=False)
    for row, kind in zip(axes, attacks):
        for ax, d in zip(row, data["digits"]):
            for name, r in d["models"].items():
                steps, asr = zip(*[(p["step"], p["asr"]) for p in r["attacks"][kind]["per_step_asr"]])
                ax.plot(steps, asr, "--" if name.startswith("original") else "o-", ms=3, label=name)
            _style(ax, f"{_title(d)}: {kind} attack", "attack step", 7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "asr_vs_steps.png"), dpi=120)
    fig, axes = plt.subplots(1, n, figsize=(6 * n, 4), squeeze=False)
    for ax, d in zip(axes[0], data["digits"]):
        for name, r in d["relearn"].items():
            steps, asr = zip(*[(p["step"], p["asr"]) for p in r["per_step_asr"]])
            ax.plot(steps, asr, ("-" if "adversarial" in name else "--") + ("o" if "k=16" in name else "s"), ms=3,
                    label=name)
        _style(ax, f"{_title(d)}: relearning (fine-tuning on k images)", "fine-tuning step", 8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "relearn.png"), dpi=120)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("class", "shapes"), default="class")
    parser.add_argument("--digits", type=int, nargs="+", default=[7, 2], help="class model: the digits")
    parser.add_argument("--concepts", nargs="+", default=["striped", "star"],
                        help="shapes model: the concepts (objects, styles or 'style object')")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--attacks", nargs="+", default=["embedding", "inversion"], choices=["embedding", "inversion"])
    parser.add_argument("--embedding-steps", type=int, default=None, help="(default: the attack's)")
    parser.add_argument("--inversion-steps", type=int, default=None, help="(default: the attack's)")
    parser.add_argument("--asr-every", type=int, default=20, help="attack steps between ASR readings")
    parser.add_argument("--relearn-steps", type=int, default=50)
    parser.add_argument("--init-from", type=int, default=1,
                        help="the digit the original's second attack starts from (the next digit if equal)")
    parser.add_argument("--continual-method", default="lacu",
                        help="the continual row's method (none: no continual row)")
    parser.add_argument("--continual-prefix", type=int, nargs="+", default=[5],
                        help="requests of the continual run before the digit")
    parser.add_argument("--steps", type=int, default=None, help="unlearning steps (default: the demo's)")
    parser.add_argument("--runs", default="runs/robustness")
    parser.add_argument("--out", default="bench/results/robustness")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--render", metavar="JSON", default=None, help="only redraw from a robustness.json")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if args.render:
        with open(args.render) as f:
            print(render(json.load(f), args.out))
        return 0
    args.steps = args.steps or DemoSettings().steps
    args.attack_steps = {"embedding": args.embedding_steps, "inversion": args.inversion_steps}
    if args.model == "shapes":
        concepts = [shapes_concept_name(parser, "--concepts", c) for c in args.concepts]
    else:
        concepts = args.digits
    digits = [run_concept(c, args, print) for c in concepts]
    first = digits[0]["models"]["original"]
    data = {"date": datetime.date.today().isoformat(), "attacks": args.attacks,
            "budgets": {kind: first["attacks"][kind]["budget"] for kind in args.attacks},
            "asr_samples": AttackSettings().samples, "fid_samples": AttackSettings().fid_per_class,
            "asr_sampler": f"DDIM {AttackSettings().eval_steps} steps, seed 1234", "steps": args.steps,
            "digits": digits,  # one entry per digit or shapes concept (the key kept from the class-only reports)
            "command": "python bench/robustness.py " + " ".join(
                argv if argv is not None else sys.argv[1:])}
    write_json(os.path.join(args.out, "robustness.json"), data)
    print(render(data, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
