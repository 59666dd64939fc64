"""PNG plots from the kernel benchmark's long CSV (bench/bench_kernels.py --csv).

One figure per (kernel, device): left, the full (forward + backward) p50 time of each
provider at each size (log scale, p20-p80 as error bars); right, each provider's achieved
bytes/s as a fraction of a plain copy of the same bytes on the same device.

    python bench/plot_kernels.py bench/results/cpu/kernels.csv --out bench/results/cpu
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections import defaultdict


def load(path: str) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def plot(rows: list[dict], out_dir: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = defaultdict(list)
    for r in rows:
        groups[(r["kernel"], r["device"], r["date"])].append(r)
    written = []
    for (kernel, device, date), sel in groups.items():
        sizes = list(dict.fromkeys(r["size"] for r in sel))
        full = {(r["provider"], r["size"]): r for r in sel if r["mode"] == "full" and r["metric"] == "ms"}
        providers = list(dict.fromkeys(p for p, _ in full))
        fig, (ax_t, ax_bw) = plt.subplots(1, 2, figsize=(12, 4.5))
        width = 0.8 / len(providers)
        for i, provider in enumerate(providers):
            xs, ys, lo, hi, frac = [], [], [], [], []
            for j, size in enumerate(sizes):
                r = full.get((provider, size))
                if r is None:
                    continue
                p20, p50, p80 = float(r["p20"]), float(r["p50"]), float(r["p80"])
                xs.append(j + (i - (len(providers) - 1) / 2) * width)
                ys.append(p50)
                lo.append(p50 - p20)
                hi.append(p80 - p50)
                copy = full.get(("copy", size))
                frac.append(float(copy["p50"]) / p50 if copy else float("nan"))
            color = f"C{i}"  # one color per provider in both panels
            ax_t.bar(xs, ys, width, yerr=[lo, hi], label=provider, capsize=2, color=color)
            if provider not in ("copy", "autograd-floor"):  # no bytes of its own
                ax_bw.bar(xs, frac, width, label=provider, color=color)
        for ax in (ax_t, ax_bw):
            ax.set_xticks(range(len(sizes)))
            ax.set_xticklabels(sizes, rotation=30, ha="right", fontsize=8)
            ax.grid(alpha=0.3, axis="y")
        ax_t.set_yscale("log")
        ax_t.set_ylabel("forward + backward, ms (p50; bars p20-p80)")
        ax_bw.set_ylabel("fraction of copy bandwidth")
        ax_bw.axhline(1.0, color="k", lw=0.8)
        ax_t.legend(fontsize=8)
        ax_bw.legend(fontsize=8)
        fig.suptitle(f"{kernel} on {device} ({date})")
        fig.tight_layout()
        name = f"{kernel}_{device}_{date}.png".replace(" ", "-").replace("/", "-")
        path = os.path.join(out_dir, name)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("csv", help="a CSV written by bench/bench_kernels.py --csv")
    parser.add_argument("--out", default=None, help="folder for the PNGs (default: the CSV's folder)")
    args = parser.parse_args(argv)
    out = args.out or os.path.dirname(os.path.abspath(args.csv))
    os.makedirs(out, exist_ok=True)
    for path in plot(load(args.csv), out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
