"""One table over several continual-unlearning reports: the last step of each method per sequence.

Reads the ``report.json`` that ``bench/continual.py`` wrote for each sequence and prints
(and writes, with ``--out``) a markdown table: per sequence and method, the lowest UA over
the erased classes, the retain accuracy (and its share of the original model's), the
neighbour accuracy and the Frechet distance after the last request, and whether issue 5's
acceptance holds (retain >= 90% of the original's, UA >= 0.95 on every erased class).

    python bench/continual_summary.py bench/results/continual/*/report.json --out bench/results/continual/README.md
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", nargs="+", help="report.json files of bench/continual.py")
    parser.add_argument("--out", default=None, help="write the table (with a title) to this markdown file")
    args = parser.parse_args(argv)
    reports = []
    for path in args.reports:
        with open(path) as f:
            reports.append(json.load(f))
    table = summary(reports)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write("# Continual unlearning on the embedded class model\n\n"
                    f"```\npython bench/continual_summary.py {' '.join(args.reports)}\n```\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
