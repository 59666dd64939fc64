"""The continual report: the acceptance check, the markdown table and the plot.

The report is a JSON dict: ``sequence``, ``settings``, ``original`` (the original model's
metrics, per step of the sequence) and ``methods`` (per method, ``steps``: one record per
request, as ``strategies.PerRequest`` writes them).
"""

from __future__ import annotations

import json
import os

PLOT_METRICS = (("ua", "UA over erased classes (mean)"), ("ua_min", "UA, lowest erased class"),
                ("retain_acc", "retain accuracy"),
                ("neighbor_acc", "neighbour accuracy"), ("fid", "Frechet distance (features)"))
#: the shapes model's panels: in-domain and cross-domain retain instead of the neighbours
SHAPES_PLOT_METRICS = (("ua", "UA over erased concepts (mean)"), ("ua_min", "UA, lowest erased concept"),
                       ("ira", "in-domain retain (IRA)"), ("cra", "cross-domain retain (CRA)"),
                       ("fid", "Frechet distance (features)"))


#: what "retain" means in the acceptance, per model kind: the retained classes' accuracy, or on
#: the shapes model the in-domain and cross-domain retain accuracies (both must hold)
RETAIN_KEYS = {"class": ("retain_acc",), "text": ("retain_acc",), "shapes": ("ira", "cra")}


def acceptance(report: dict, method: str | None = None, retain_ratio: float = 0.9, ua_min: float = 0.95,
               fid_ratio_max: float = 2.0) -> dict | None:
    """The acceptance check of ``method`` (default: the default continual method if it ran, else
    the first) after every request: UA at least ``ua_min`` on every concept erased so
    far and each retain metric (``RETAIN_KEYS``: retain accuracy; shapes: IRA and CRA) at least
    ``retain_ratio`` of the original model's on the same erased set (``original.per_step``);
    after the last request, FID at most ``fid_ratio_max`` times the original's. ``passed``: every
    step passes and the final FID does; the top-level numbers are the last step's."""
    from .strategies import DEFAULT_METHOD

    methods = report["methods"]
    kind = report.get("settings", {}).get("model_kind", "class")
    method = method or (DEFAULT_METHOD if DEFAULT_METHOD in methods else next(iter(methods), None))
    if method not in methods:
        return None
    orig_steps = {s["step"]: s for s in report["original"]["per_step"]}
    per_step = []
    for s in methods[method]["steps"]:
        rec = {"step": s["step"], "ua_min": s["ua_min"]}
        ok_retain = True
        for key in RETAIN_KEYS[kind]:
            orig = orig_steps[s["step"]][key]
            ok = s[key] >= retain_ratio * orig
            rec.update({key: s[key], f"original_{key}": orig, f"{key}_ratio": s[key] / orig if orig else None,
                        f"{key}_ok": ok})
            ok_retain = ok_retain and ok
        ok_ua = s["ua_min"] >= ua_min
        rec.update(retain_ok=ok_retain, ua_ok=ok_ua, passed=ok_retain and ok_ua)
        if kind != "shapes":  # the names the class reports have always used
            rec["retain_ratio"] = rec.pop("retain_acc_ratio")
        per_step.append(rec)
    last = per_step[-1]
    fid, fid0 = methods[method]["steps"][-1].get("fid"), report["original"].get("fid")
    fid_ratio = fid / fid0 if fid is not None and fid0 else None
    fid_ok = fid_ratio is not None and fid_ratio <= fid_ratio_max
    return {"method": method, **{k: v for k, v in last.items() if k != "step"}, "steps": per_step,
            "fid_ratio": fid_ratio, "fid_ok": fid_ok,
            "passed": all(p["passed"] for p in per_step) and fid_ok,
            "failed_steps": [p["step"] for p in per_step if not p["passed"]]}


def write_report(report: dict, path: str, out: str) -> None:
    """The JSON report at ``path``; ``table.md`` and ``continual.png`` in the folder ``out``."""
    from ..eval.report import write_json

    write_json(path, report)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(markdown_table(report) + "\n")
    plot(report, os.path.join(out, "continual.png"))


def _f(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def _eval_line(ev: dict) -> str:
    if "per_combo" in ev:
        return (f"{ev['per_combo']} samples per combination, at least {ev['min_concept']} per erased concept, "
                f"DDIM {ev['steps']} steps, guidance {ev['guidance']}, seed {ev['seed']}")
    return (f"{ev['per_class']} samples per class, DDIM {ev['steps']} steps, guidance {ev['guidance']}, "
            f"seed {ev['seed']}")


def markdown_table(report: dict) -> str:
    """Per-step metrics of every method (markdown), with the original model's reference."""
    kind = report.get("settings", {}).get("model_kind", "class")
    cols = [("ua", "UA (mean)"), ("ua_min", "UA (min)"), ("retain_acc", "retain acc")] + (
        [("ira", "IRA"), ("cra", "CRA")] if kind == "shapes" else [("neighbor_acc", "neighbour acc")])
    lines = [
        f"Sequence {report['sequence']}; {report['settings']['steps_per_request']} steps per request, batch "
        f"{report['settings']['batch_size']}; evaluation: {_eval_line(report['settings']['eval'])}.",
        "",
        "| method | step | erased | " + " | ".join(title for _, title in cols) + " | FID |",
        "|---|---|---|" + "---|" * (len(cols) + 1),
    ]
    o = report["original"]
    for s in o["per_step"]:
        fid = _f2(o["fid"]) if s["step"] == len(report["sequence"]) else "-"
        values = [_f(s.get(k)) for k, _ in cols]
        lines.append(f"| original | {s['step']} | {','.join(map(str, report['sequence'][:s['step']]))} | "
                     + " | ".join(values) + f" | {fid} |")
    for method, res in report["methods"].items():
        for s in res["steps"]:
            lines.append(f"| {method} | {s['step']} | {','.join(map(str, s['erased']))} | "
                         + " | ".join(_f(s.get(k)) for k, _ in cols) + f" | {_f2(s['fid'])} |")
    acc = report.get("acceptance")
    if acc:
        failed = acc.get("failed_steps", [])
        why = ([f"at step {','.join(map(str, failed))}"] if failed else []) + (
            ["final FID"] if acc.get("fid_ok") is False else [])
        fid = f", final FID {acc['fid_ratio']:.2f}x the original's" if acc.get("fid_ratio") is not None else ""
        keys = RETAIN_KEYS[kind]
        names = " and ".join("retain" if k == "retain_acc" else k.upper() for k in keys)
        ratio = lambda k: acc.get("retain_ratio") if k == "retain_acc" else acc.get(f"{k}_ratio")  # noqa: E731
        last = ", ".join(f"{'retain' if k == 'retain_acc' else k.upper()} {acc[k]:.3f} = {ratio(k):.1%} of "
                         f"{acc['original_' + k]:.3f}" for k in keys)
        lines += ["", f"Acceptance ({acc['method']}, after every request: min UA >= 0.95 and {names} >= 90% of the "
                      f"original's; final FID at most 2x the original's): "
                      f"{'passed' if acc['passed'] else 'FAILED ' + ' and '.join(why)}; "
                      f"last step: {last}, min UA {acc['ua_min']:.3f}{fid}."]
    return "\n".join(lines)


def _f2(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def plot(report: dict, path: str) -> None:
    """PNG: UA, retain accuracy, neighbour accuracy and FID against the step, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(report["sequence"])
    panels = SHAPES_PLOT_METRICS if report["settings"].get("model_kind") == "shapes" else PLOT_METRICS
    fig, axes = plt.subplots(1, len(panels), figsize=(3.8 * len(panels), 3.6))
    for ax, (key, title) in zip(axes, panels):
        o = report["original"]
        if key in ("retain_acc", "neighbor_acc", "ira", "cra"):
            ax.plot([s["step"] for s in o["per_step"]], [s[key] for s in o["per_step"]], "k--", lw=1,
                    label="original")
        elif key == "fid":
            ax.axhline(o["fid"], color="k", ls="--", lw=1, label="original (final retained set)")
        for method, res in report["methods"].items():
            xs = [s["step"] for s in res["steps"]]
            ys = [s[key] for s in res["steps"]]
            if len(xs) == 1 and n > 1:  # one model for the whole sequence (simultaneous): a point, not a line
                ax.plot(xs, ys, "*", ms=12, label=method)
            else:
                ax.plot(xs, ys, "o-", label=method)
        ax.set_title(title)
        ax.set_xlabel("request")
        ax.set_xticks(range(1, n + 1))
        ax.grid(alpha=0.3)
    axes[2].legend(fontsize=8)
    fig.suptitle(f"continual unlearning of {report['sequence']}")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def load_report(path: str) -> dict:
    with open(path) as f:
        return json.load(f)
