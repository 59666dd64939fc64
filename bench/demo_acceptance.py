"""The demo's acceptance for every digit: RU on the embedded model, one digit at a time.

Runs ``unlearn_fast.demo.run_demo`` (the code path of ``unlearn-fast demo``, at its
defaults) once per digit and checks issue 4's acceptance on each: UA >= 0.99, retain
accuracy at most 2 points below the original's, Frechet distance at most 1.25x the
original's. Writes ``acceptance.md`` and ``acceptance.json`` to ``--results``; the wall
time of each demo run is reported too (the run benchmark of bench/README.md).

    python bench/demo_acceptance.py --digits 0-9 --threads 2
    python bench/demo_acceptance.py --model text --digits 0-9
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from unlearn_fast.demo import DemoSettings, run_demo  # noqa: E402

UA_MIN, RETAIN_DROP_MAX, FID_RATIO_MAX = 0.99, 0.02, 1.25


def parse_digits(text: str) -> list[int]:
    if "-" in text:
        lo, hi = (int(x) for x in text.split("-"))
        return list(range(lo, hi + 1))
    return [int(x) for x in text.split(",")]


def check(report: dict) -> dict:
    b, a = report["before"], report["after"]
    row = {"forget": report["forget"], "ua_before": b["ua"], "ua": a["ua"], "retain_before": b["retain_acc"],
           "retain": a["retain_acc"], "retain_drop": b["retain_acc"] - a["retain_acc"], "fid_before": b["fid"],
           "fid": a["fid"], "fid_ratio": a["fid"] / b["fid"], "neighbor_before": b["neighbor_acc"],
           "neighbor": a["neighbor_acc"], "train_seconds": report["train_seconds"], "seconds": report["seconds"]}
    row["passed"] = row["ua"] >= UA_MIN and row["retain_drop"] <= RETAIN_DROP_MAX + 1e-12 \
        and row["fid_ratio"] <= FID_RATIO_MAX
    return row


def markdown(rows: list[dict], args, settings: dict) -> str:
    ev = settings["eval"]
    lines = [
        f"# Demo acceptance per digit ({args.model} model), {datetime.date.today().isoformat()}", "",
        f"Command: `python bench/demo_acceptance.py {' '.join(sys.argv[1:])}` on {platform.node() or 'this machine'}"
        f" ({os.cpu_count()} cores, {settings['threads']} torch threads, no GPU).", "",
        f"Each row is one `unlearn-fast demo --model {args.model} --forget D` run at the demo's defaults: RU "
        f"{settings['train']['method_kwargs']}, {settings['train']['max_steps']} steps, batch "
        f"{settings['train']['batch_size']}, lr {settings['train']['lr']}; "
        f"evaluation {ev['per_class']} samples per digit, DDIM {ev['steps']} steps, guidance {ev['guidance']}, "
        f"seed {ev['seed']}. Acceptance: UA >= {UA_MIN}, retain drop <= {RETAIN_DROP_MAX:.2f}, "
        f"Frechet ratio <= {FID_RATIO_MAX}.", "",
        "| forget | UA before | UA after | retain before | retain after | drop | neighbour before | neighbour after "
        "| FID before | FID after | ratio | train s | demo s | pass |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {','.join(map(str, r['forget']))} | {r['ua_before']:.2f} | {r['ua']:.2f} | {r['retain_before']:.3f} | "
            f"{r['retain']:.3f} | {r['retain_drop']:+.3f} | {r['neighbor_before']:.2f} | {r['neighbor']:.2f} | "
            f"{r['fid_before']:.2f} | {r['fid']:.2f} | {r['fid_ratio']:.2f} | {r['train_seconds']:.0f} | "
            f"{r['seconds']:.0f} | {'yes' if r['passed'] else 'NO'} |")
    n_pass = sum(r["passed"] for r in rows)
    secs = sorted(r["seconds"] for r in rows)
    lines += ["", f"{n_pass} of {len(rows)} digits pass. Demo wall time (evaluate, unlearn, evaluate): "
                  f"median {secs[len(secs) // 2]:.0f} s, max {secs[-1]:.0f} s."]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--digits", default="0-9", help="digits to forget, one run each: '0-9' or '1,3,7'")
    parser.add_argument("--model", default="class", choices=["class", "text"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--per-class", type=int, default=None, help="evaluation samples per digit (default: the demo's)")
    parser.add_argument("--runs", default=os.path.join(ROOT, "runs", "acceptance"))
    parser.add_argument("--results", default=None, help="default: bench/results/acceptance/<model>")
    args = parser.parse_args(argv)
    results = args.results or os.path.join(ROOT, "bench", "results", "acceptance", args.model)
    os.makedirs(results, exist_ok=True)
    rows, settings = [], None
    for digit in parse_digits(args.digits):
        out = os.path.join(args.runs, f"{args.model}-{digit}")
        settings_ = DemoSettings(forget=[digit], model=args.model, out=out, threads=args.threads)
        if args.per_class:
            settings_.eval.per_class = args.per_class
        report = run_demo(settings_)
        settings = report["settings"]
        rows.append(check(report))
        print(json.dumps(rows[-1]), flush=True)
        with open(os.path.join(results, "acceptance.md"), "w") as f:  # rewritten after each digit
            f.write(markdown(rows, args, settings) + "\n")
    with open(os.path.join(results, "acceptance.json"), "w") as f:
        json.dump({"rows": rows, "settings": settings, "torch": torch.__version__,
                   "date": datetime.date.today().isoformat()}, f, indent=1)
    print(markdown(rows, args, settings))
    return 0 if all(r["passed"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
