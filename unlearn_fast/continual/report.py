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


def acceptance(report: dict, method: str | None = None, retain_ratio: float = 0.9, ua_min: float = 0.95,
               fid_ratio_max: float = 2.0) -> dict | None:
    """The acceptance check of ``method`` (default: the default continual method if it ran, else
    the first) after every request: UA at least ``ua_min`` on every class erased so far and
    retain accuracy at least ``retain_ratio`` of the original model's on the same retained
    classes (``original.per_step``); after the last request, FID at most ``fid_ratio_max``
    times the original's. ``passed``: every step passes and the final FID does; the top-level
    numbers are the last step's."""
    from .strategies import DEFAULT_METHOD

    methods = report["methods"]
    method = method or (DEFAULT_METHOD if DEFAULT_METHOD in methods else next(iter(methods), None))
    if method not in methods:
        return None
    orig_steps = {s["step"]: s for s in report["original"]["per_step"]}
    per_step = []
    for s in methods[method]["steps"]:
        orig = orig_steps[s["step"]]["retain_acc"]
        ratio = s["retain_acc"] / orig if orig else None
        ok_retain, ok_ua = s["retain_acc"] >= retain_ratio * orig, s["ua_min"] >= ua_min
        per_step.append({"step": s["step"], "ua_min": s["ua_min"], "retain_acc": s["retain_acc"],
                         "original_retain_acc": orig, "retain_ratio": ratio, "retain_ok": ok_retain, "ua_ok": ok_ua,
                         "passed": ok_retain and ok_ua})
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


def markdown_table(report: dict) -> str:
    """Per-step metrics of every method (markdown), with the original model's reference."""
    ev = report["settings"]["eval"]
    lines = [
        f"Sequence {report['sequence']}; {report['settings']['steps_per_request']} steps per request, batch "
        f"{report['settings']['batch_size']}; evaluation: {ev['per_class']} samples per class, DDIM {ev['steps']} "
        f"steps, guidance {ev['guidance']}, seed {ev['seed']}.",
        "",
        "| method | step | erased | UA (mean) | UA (min) | retain acc | neighbour acc | FID |",
        "|---|---|---|---|---|---|---|---|",
    ]
    o = report["original"]
    for s in o["per_step"]:
        fid = _f2(o["fid"]) if s["step"] == len(report["sequence"]) else "-"
        lines.append(f"| original | {s['step']} | {','.join(map(str, report['sequence'][:s['step']]))} | "
                     f"{s['ua']:.3f} | - | {s['retain_acc']:.3f} | {_f(s['neighbor_acc'])} | {fid} |")
    for method, res in report["methods"].items():
        for s in res["steps"]:
            lines.append(f"| {method} | {s['step']} | {','.join(map(str, s['erased']))} | {s['ua']:.3f} | "
                         f"{s['ua_min']:.3f} | {s['retain_acc']:.3f} | {_f(s['neighbor_acc'])} | {_f2(s['fid'])} |")
    acc = report.get("acceptance")
    if acc:
        failed = acc.get("failed_steps", [])
        why = ([f"at step {','.join(map(str, failed))}"] if failed else []) + (
            ["final FID"] if acc.get("fid_ok") is False else [])
        fid = f", final FID {acc['fid_ratio']:.2f}x the original's" if acc.get("fid_ratio") is not None else ""
        lines += ["", f"Acceptance ({acc['method']}, after every request: min UA >= 0.95 and retain >= 90% of the "
                      f"original's; final FID at most 2x the original's): "
                      f"{'passed' if acc['passed'] else 'FAILED ' + ' and '.join(why)}; "
                      f"last step: retain {acc['retain_acc']:.3f} = {acc['retain_ratio']:.1%} of "
                      f"{acc['original_retain_acc']:.3f}, min UA {acc['ua_min']:.3f}{fid}."]
    return "\n".join(lines)


def _f2(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def plot(report: dict, path: str) -> None:
    """PNG: UA, retain accuracy, neighbour accuracy and FID against the step, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(report["sequence"])
    fig, axes = plt.subplots(1, len(PLOT_METRICS), figsize=(3.8 * len(PLOT_METRICS), 3.6))
    for ax, (key, title) in zip(axes, PLOT_METRICS):
        o = report["original"]
        if key in ("retain_acc", "neighbor_acc"):
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
