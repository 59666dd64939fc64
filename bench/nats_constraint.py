"""RU's constraint in nats (unlearn_fast/methods/nats.py): how noisy its running estimate is, and what the probe costs.

    python bench/nats_constraint.py [--digit 3] [--images 4] [--threads 1]

1. Noise: the class model's chain KL between its prediction for ``--digit`` and its
   unconditional one, every one of the 1000 timesteps evaluated on ``--images`` training
   images; then 3000 simulated steps of 16 uniform draws each (running mean with the duals'
   weight 0.2), with no timestep probed, the last one, and the four the method probes.
2. Cost: one RU step (32 samples: 16 of the digit, 16 others; loss and backward) with
   ``bound_units="weighted"`` and ``"nats"``, interleaved, median of 10 repeats each.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from unlearn_fast.data.mnist import load_split
from unlearn_fast.engine import UnlearningObjective
from unlearn_fast.methods import ReverseKLUnlearning
from unlearn_fast.methods.base import FORGET, RETAIN, Batch
from unlearn_fast.models_zoo import load_embedded
from unlearn_fast.schedules import timestep_weights


@torch.no_grad()
def per_timestep_distances(model, scheduler, x0, cond: int) -> np.ndarray:
    """``d[t, j] = ||eps(x_t, cond) - eps(x_t, null)||^2`` for every t and image j."""
    T, n = scheduler.config.num_train_timesteps, len(x0)
    d = np.zeros((T, n))
    for start in range(0, T, 50):
        ts = torch.arange(start, min(start + 50, T)).repeat_interleave(n)
        xx = x0.repeat(len(ts) // n, 1, 1, 1)
        x_t = scheduler.add_noise(xx, torch.randn_like(xx), ts)
        a = model.predict(x_t, ts, torch.full((len(ts),), cond))
        b = model.predict(x_t, ts, torch.full((len(ts),), model.null_id))
        d[start:start + len(ts) // n] = ((a - b) ** 2).flatten(1).sum(1).view(-1, n).numpy()
    return d


def simulate(w, d, probed, rng, n=16, steps=3000, ema=0.2):
    T = len(w)
    probed = np.asarray(probed, dtype=int)
    est, out = None, []
    for _ in range(steps):
        t, j = rng.integers(0, T, n), rng.integers(0, d.shape[1], n)
        g = np.where(np.isin(t, probed), 0.0, T * w[t] * d[t, j]).mean()
        g += sum(w[h] * d[h, rng.integers(0, d.shape[1])] for h in probed)
        est = g if est is None else (1 - ema) * est + ema * g
        out.append(est)
    out = np.array(out[100:])
    return out.mean(), out.std()


def step_cost(model, scheduler, x, y, digit, repeats=10):
    f, r = x[y == digit][:16], x[y != digit][:16]
    batch = Batch(torch.cat([f, r]), torch.cat([torch.full((16,), digit), y[y != digit][:16]]),
                  torch.tensor([FORGET] * 16 + [RETAIN] * 16), n_forget=16)
    objectives = {u: UnlearningObjective(model, scheduler, ReverseKLUnlearning(
        [digit], model.null_id, num_conditions=11, bound=40.0 if u == "nats" else 0.05, bound_units=u,
        retain_weight=10.0)) for u in ("weighted", "nats")}
    times = {u: [] for u in objectives}
    g = torch.Generator().manual_seed(0)
    for rep in range(repeats + 2):
        for u, o in objectives.items():
            start = time.perf_counter()
            loss, _ = o.loss(batch, g)
            loss.backward()
            model.module.zero_grad(set_to_none=True)
            if rep >= 2:  # two warm-up rounds
                times[u].append(time.perf_counter() - start)
    return {u: statistics.median(v) for u, v in times.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--digit", type=int, default=3)
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, scheduler = load_embedded("class")
    x, y = load_split("train")
    w = timestep_weights(scheduler, "kl").double().numpy()
    d = per_timestep_distances(model, scheduler, x[y == args.digit][:args.images], args.digit)
    chain = (w[:, None] * d).mean(1)
    print(f"digit {args.digit} vs null: chain KL {chain.sum():.2f} nats, {chain[-1] / chain.sum():.0%} at the last step "
          f"({args.images} images per timestep)")
    rng = np.random.default_rng(0)
    heaviest = sorted(np.argsort(w)[-4:].tolist())
    for probed in ([], [len(w) - 1], heaviest):
        mean, std = simulate(w, d, probed, rng)
        print(f"probed {probed or 'none'}: running estimate mean {mean:.2f} std {std:.2f} nats")
    cost = step_cost(model, scheduler, x, y, args.digit)
    print(f"one RU step (32 samples, loss + backward, {args.threads} thread(s)): weighted {cost['weighted'] * 1e3:.1f} ms, "
          f"nats {cost['nats'] * 1e3:.1f} ms, ratio {cost['nats'] / cost['weighted']:.2f}")


if __name__ == "__main__":
    main()
