"""One table over several continual-unlearning reports: the last step of each method per sequence.

Reads the ``report.json`` that ``bench/continual.py`` wrote for each sequence and prints
(and writes, with ``--out``) a markdown table: per sequence and method, the lowest UA over
the erased classes, the retain accuracy (and its share of the original model's), the
neighbour accuracy and the Frechet distance after the last request, and whether issue 5's
acceptance holds (retain >= 90% of the original's, UA >= 0.95 on every erased class).

    python bench/continual_summary.py bench/results/continual/*/report.json --out bench/results/continual/README.md
    python bench/continual_summary.py REPORT... --per-request   # pass/fail after every request
"""

from __future__ import annotations

import argparse
import json
import sys


def rows(report: dict) -> list[str]:
    seq = ",".join(map(str, report["sequence"]))
    orig = report["original"]
    out = [f"| {seq} | original | - | {orig['retain_acc']:.3f} | 100% | {orig['neighbor_acc']:.3f} | "
           f"{orig['fid']:.2f} | |"]
    for method, res in report["methods"].items():
        last = res["steps"][-1]
        share = last["retain_acc"] / orig["retain_acc"]
        ok = share >= 0.9 and last["ua_min"] >= 0.95
        out.append(f"| {seq} | {method} | {last['ua_min']:.2f} | {last['retain_acc']:.3f} | {share:.1%} | "
                   f"{last['neighbor_acc']:.3f} | {last['fid']:.2f} | {'yes' if ok else 'no'} |")
    return out


def summary(reports: list[dict]) -> str:
    ev = reports[0]["settings"]["eval"]
    lines = [
        "After the last of 5 requests, per sequence and method (every step: each sequence's `table.md`). "
        f"{reports[0]['settings']['steps_per_request']} steps per request; evaluation {ev['per_class']} samples "
        f"per class, DDIM {ev['steps']} steps, guidance {ev['guidance']}, seed {ev['seed']}. "
        "Acceptance (issue 5): UA >= 0.95 on every erased class and retain accuracy >= 90% of the original's.",
        "",
        "| sequence | method | lowest UA | retain acc | of original | neighbour acc | FID | acceptance |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for report in reports:
        lines += rows(report)
    return "\n".join(lines)


def request_grid(reports: list[dict]) -> str:
    """Pass/fail after every request, per sequence and method (UA >= 0.95 on every class erased
    so far, retain >= 90% of the original's on the same retained classes), and the final FID
    against the original's (at most 2x): issue 16's acceptance, read by
    ``unlearn_fast.continual.acceptance``."""
    from unlearn_fast.continual import acceptance

    n = max(len(r["sequence"]) for r in reports)
    lines = ["| sequence | method | " + " | ".join(f"r{i}" for i in range(1, n + 1))
             + " | lowest UA (any request) | lowest retain share | final FID / original | passed |",
             "|---|---|" + "---|" * n + "---|---|---|---|"]
    for report in reports:
        seq = ",".join(map(str, report["sequence"]))
        for method in report["methods"]:
            acc = acceptance(report, method)
            marks = []
            for p in acc["steps"]:
                why = ", ".join(name for name, ok in (("UA", p["ua_ok"]), ("retain", p["retain_ok"])) if not ok)
                marks.append("pass" if p["passed"] else f"**fail** ({why})")
            marks += [""] * (n - len(marks))
            ratio = "-" if acc["fid_ratio"] is None else f"{acc['fid_ratio']:.2f}x"
            lines.append(f"| {seq} | {method} | " + " | ".join(marks)
                         + f" | {min(p['ua_min'] for p in acc['steps']):.2f}"
                         + f" | {min(p['retain_ratio'] for p in acc['steps']):.1%} | {ratio}"
                         + f" | {'**yes**' if acc['passed'] else 'no'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", nargs="+", help="report.json files of bench/continual.py")
    parser.add_argument("--out", default=None, help="write the table (with a title) to this markdown file")
    parser.add_argument("--per-request", action="store_true",
                        help="print the pass/fail grid after every request (issue 16's acceptance) instead")
    args = parser.parse_args(argv)
    reports = []
    for path in args.reports:
        with open(path) as f:
            reports.append(json.load(f))
    if args.per_request:
        print(request_grid(reports))
        return 0
    table = summary(reports)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write("# Continual unlearning on the embedded class model\n\n"
                    f"```\npython bench/continual_summary.py {' '.join(args.reports)}\n```\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
