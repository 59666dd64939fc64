"""How the shapes classifiers read styles when the colours fade: held-out images desaturated towards their luminance.

    python bench/shapes_desaturation.py [--classifier W.safetensors] [--detector W.safetensors]

Prints each classifier's object accuracy and per-style accuracy at saturation x1, x0.7, x0.5
and x0.3 (bench/results/shapes_ddpm/check16500.md says why: the shipped pair reads faded solids
as gradients).
"""

from __future__ import annotations

import argparse

import torch

from unlearn_fast.data.shapes import STYLES, desaturate, load_split
from unlearn_fast.eval.shapes_classifier import load_shapes_classifier, load_shapes_detector


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classifier", default=None, help="evaluator weights (default: the shipped one)")
    ap.add_argument("--detector", default=None, help="detector weights (default: the shipped one)")
    args = ap.parse_args()
    x, o, s = load_split("heldout")
    pairs = [("evaluator", load_shapes_classifier(args.classifier) if args.classifier else load_shapes_classifier()),
             ("detector", load_shapes_classifier(args.detector) if args.detector else load_shapes_detector())]
    for name, clf in pairs:
        for f in (1.0, 0.7, 0.5, 0.3):
            po, ps = clf.predict(desaturate(x, f))
            per = " ".join(f"{st}:{float((ps[s == k] == k).float().mean()):.3f}" for k, st in enumerate(STYLES))
            print(f"{name} saturation x{f:g}: object {float((po == o).float().mean()):.3f}; style {per}")


if __name__ == "__main__":
    main()
