"""Continual-unlearning comparison on the embedded class model: LACU against the baselines.

Runs ``unlearn_fast.continual`` for the given methods on one request sequence, then
writes the JSON report, the markdown table (``table.md``) and the plot (``continual.png``)
to ``--results`` (default ``bench/results/continual``); the per-request models go to
``--runs`` (default ``runs/continual``, not versioned).

    python bench/continual.py --sequence 3,8,5,1,9 --methods lacu,naive --threads 1

Settings: 100 optimizer steps per request at batch 32 (RU at ``continual.NAIVE_RU`` for
``naive``/``l2``/``simultaneous``; LACU at ``continual.LacuSettings``, its duals at
``continual.ConstrainedSettings`` for ``constrained``), evaluation with 100 samples per class
(the reports of 2026-11-24 used 50), DDIM 20 steps, no guidance (``--per-class``, ``--eval-steps``). About 2
minutes per request and method on one CPU core.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from unlearn_fast.continual import (  # noqa: E402
    CONTINUAL_METHODS, ContinualSettings, LacuSettings, acceptance, load_report, markdown_table, run_continual,
    write_report,
)
from unlearn_fast.eval.metrics import EvalSettings  # noqa: E402


def merge_reports(report: dict, path: str) -> dict:
    """``report`` plus the methods of the report at ``path`` that it lacks (same sequence,
    evaluation and original model), each marked with the command that produced it."""
    old = load_report(path)
    if old["sequence"] != report["sequence"] or old["settings"]["eval"] != report["settings"]["eval"] \
            or old["original"]["per_class_acc"] != report["original"]["per_class_acc"]:
        raise SystemExit(f"--merge: {path} has another sequence, evaluation or original model")
    for method, res in old["methods"].items():
        if method not in report["methods"]:
            report["methods"][method] = {**res, "merged_from": old.get("command", path)}
            if method == "l2":
                report["settings"]["l2_anchor"] = old["settings"]["l2_anchor"]
    report["settings"]["merged"] = {"report": os.path.relpath(path, ROOT), "command": old.get("command"),
                                    "settings": old["settings"]}
    report["methods"] = dict(sorted(report["methods"].items(), key=lambda kv: CONTINUAL_METHODS.index(kv[0])))
    report["acceptance"] = acceptance(report)
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sequence", default="3,8,5,1,9", help="classes to erase, in order")
    parser.add_argument("--methods", default="lacu,naive", help=f"some of {', '.join(CONTINUAL_METHODS)}")
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps per request")
    parser.add_argument("--per-class", type=int, default=100, help="evaluation samples per class")
    parser.add_argument("--eval-steps", type=int, default=20, help="DDIM steps of the evaluation sampler")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target-check", default=LacuSettings.target_check, choices=["none", "detector"],
                        help="LACU's target rule (LacuSettings.target_check)")
    parser.add_argument("--max-confusion", type=float, default=LacuSettings.max_confusion)
    parser.add_argument("--lam-pres", type=float, default=LacuSettings.lam_pres, help="LACU's replay weight")
    parser.add_argument("--lacu-lr", type=float, default=LacuSettings.lr, help="LACU's learning rate")
    parser.add_argument("--replay", type=int, default=LacuSettings.replay, help="LACU's nearest retained classes replayed")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", default=os.path.join(ROOT, "runs", "continual"))
    parser.add_argument("--results", default=os.path.join(ROOT, "bench", "results", "continual"))
    parser.add_argument("--merge", default=None, metavar="REPORT",
                        help="an earlier report of the same sequence and evaluation: its methods not run now are "
                             "added to the table and plot (e.g. keep the baselines while re-running lacu)")
    parser.add_argument("--reuse", default=None, metavar="REPORT",
                        help="run nothing: take this report (its own command kept), merge --merge into it and write "
                             "it to --results")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    settings = ContinualSettings(
        sequence=[int(c) for c in args.sequence.split(",")], methods=args.methods.split(","), steps=args.steps,
        seed=args.seed, out=args.runs, report=os.path.join(args.runs, "report.json"),
        eval=EvalSettings(per_class=args.per_class, steps=args.eval_steps, guidance=1.0),
        lacu=LacuSettings(target_check=args.target_check, max_confusion=args.max_confusion, lam_pres=args.lam_pres,
                          lr=args.lacu_lr, replay=args.replay),
        threads=args.threads)
    start = time.perf_counter()
    if args.reuse:  # a report written earlier by this script, e.g. from a run with --results elsewhere
        report = load_report(args.reuse)
    else:
        report = run_continual(settings)
        report["command"] = "python bench/continual.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.merge:
        report = merge_reports(report, args.merge)
    write_report(report, os.path.join(args.results, "report.json"), args.results)
    print()
    print(markdown_table(report))
    print(f"\n{time.perf_counter() - start:.0f} s; results in {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
