"""The shapes demo's acceptance: RU at the demo's defaults on every object, every style and four combinations.

Runs ``unlearn_fast.demo.run_demo`` (the code path of ``unlearn-fast demo --model shapes``, at its
defaults) once per concept and checks issue 15's bar on each: UA >= 0.95, IRA and CRA at most
3 points below the original's, FID at most 1.3x the original's, the demo's wall time at most
3 minutes; the paraphrase UA is reported beside it. Resumable: a concept whose
``RUNS/<concept>/report.json`` exists is read back, not run again (``--fresh`` runs it again),
so the table can be filled over several sessions. Writes ``acceptance.md`` and
``acceptance.json`` to ``--results`` after every concept.

    python bench/shapes_acceptance.py --threads 1 --runs runs/shapes-acceptance
    python bench/shapes_acceptance.py --concepts striped,star --threads 2
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from unlearn_fast.data.shapes import OBJECTS, STYLES  # noqa: E402
from unlearn_fast.demo import DemoSettings, run_demo  # noqa: E402

UA_MIN, DROP_MAX, FID_RATIO_MAX, SECONDS_MAX = 0.95, 0.03, 1.3, 180.0
#: the four combinations of the table, chosen before any of them was run (one per object row of a
#: different style, none of them a concept used while tuning)
COMBOS = ("hollow star", "striped circle", "dotted heart", "checkered arrow")
DEFAULT_CONCEPTS = OBJECTS + STYLES + COMBOS


def check(report: dict) -> dict:
    b, a = report["before"], report["after"]
    row = {"forget": report["forget"], "kind": report["concept_kind"], "ua_before": b["ua"], "ua": a["ua"],
           "ua_paraphrase": a.get("ua_paraphrase"), "ira_before": b["ira"], "ira": a["ira"], "cra_before": b["cra"],
           "cra": a["cra"], "fid_before": b["fid"], "fid": a["fid"], "fid_ratio": a["fid"] / b["fid"],
           "target": (report.get("target") or {}).get("target"), "train_seconds": report["train_seconds"],
           "seconds": report["seconds"]}
    row["ira_drop"], row["cra_drop"] = b["ira"] - a["ira"], b["cra"] - a["cra"]
    row["quality_ok"] = (row["ua"] >= UA_MIN and row["ira_drop"] <= DROP_MAX + 1e-12
                         and row["cra_drop"] <= DROP_MAX + 1e-12 and row["fid_ratio"] <= FID_RATIO_MAX)
    row["time_ok"] = row["seconds"] <= SECONDS_MAX
    row["passed"] = row["quality_ok"] and row["time_ok"]
    return row


def markdown(rows: list[dict], settings: dict, threads) -> str:
    ev, train = settings["eval"], settings["train"]
    lines = [
        f"# Shapes demo acceptance, {datetime.date.today().isoformat()}", "",
        f"Command: `python bench/shapes_acceptance.py {' '.join(sys.argv[1:])}` on {platform.node() or 'this machine'}"
        f" ({os.cpu_count()} cores, {threads} torch threads, no GPU).", "",
        f"Each row is one `unlearn-fast demo --model shapes --forget CONCEPT` run at the demo's defaults: "
        f"{train['method']} {train['method_kwargs']}, {train['max_steps']} steps, batch {train['batch_size']}, "
        f"lr {train['lr']}, data {train['data']}, mapping target {settings.get('map_to')}; evaluation "
        f"{ev['per_combo']} samples per combination and at least {ev['min_concept']} of the concept, DDIM "
        f"{ev['steps']} steps, guidance {ev['guidance']}, seed {ev['seed']}; paraphrase UA on "
        f"{ev['paraphrase_samples']} samples of the held-out paraphrases. Bar: UA >= {UA_MIN}, IRA and CRA at "
        f"most {DROP_MAX:.2f} below the original's, FID at most {FID_RATIO_MAX}x, at most {SECONDS_MAX:.0f} s.", "",
        "| concept | target | UA before | UA after | para UA | IRA before | IRA after | CRA before | CRA after "
        "| FID before | FID after | ratio | train s | demo s | quality | time |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        para = "-" if r["ua_paraphrase"] is None else f"{r['ua_paraphrase']:.2f}"
        lines.append(
            f"| {r['forget']} | {r['target'] or '-'} | {r['ua_before']:.2f} | {r['ua']:.3f} | {para} | "
            f"{r['ira_before']:.3f} | {r['ira']:.3f} | {r['cra_before']:.3f} | {r['cra']:.3f} | {r['fid_before']:.2f} | "
            f"{r['fid']:.2f} | {r['fid_ratio']:.2f} | {r['train_seconds']:.0f} | {r['seconds']:.0f} | "
            f"{'pass' if r['quality_ok'] else 'FAIL'} | {'pass' if r['time_ok'] else 'FAIL'} |")
    n_q = sum(r["quality_ok"] for r in rows)
    n_t = sum(r["time_ok"] for r in rows)
    lines += ["", f"{n_q} of {len(rows)} concepts pass the quality bar, {n_t} the 3-minute bar."]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concepts", default=",".join(DEFAULT_CONCEPTS),
                        help="concepts, comma separated (default: the 8 objects, 6 styles and 4 combinations)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--runs", default=os.path.join(ROOT, "runs", "shapes-acceptance"))
    parser.add_argument("--results", default=os.path.join(ROOT, "bench", "results", "acceptance", "shapes"))
    parser.add_argument("--fresh", action="store_true", help="run again the concepts that have a report")
    args = parser.parse_args(argv)
    os.makedirs(args.results, exist_ok=True)
    rows, settings = [], None
    for concept in [c.strip() for c in args.concepts.split(",") if c.strip()]:
        out = os.path.join(args.runs, concept.replace(" ", "-"))
        path = os.path.join(out, "report.json")
        if os.path.isfile(path) and not args.fresh:
            with open(path) as f:
                report = json.load(f)
        else:
            report = run_demo(DemoSettings(forget=[concept], model="shapes", out=out, threads=args.threads))
        settings = report["settings"]
        rows.append(check(report))
        print(json.dumps(rows[-1]), flush=True)
        with open(os.path.join(args.results, "acceptance.md"), "w") as f:  # rewritten after each concept
            f.write(markdown(rows, settings, args.threads) + "\n")
        with open(os.path.join(args.results, "acceptance.json"), "w") as f:
            json.dump({"rows": rows, "settings": settings, "date": datetime.date.today().isoformat()}, f, indent=1)
    return 0 if rows and all(r["passed"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
