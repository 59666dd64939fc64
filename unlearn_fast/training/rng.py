"""Seeds and RNG states of a run: derived per rank and stream, saved and restored exactly."""

from __future__ import annotations

import random

import numpy as np
import torch


def derive_seed(seed: int, rank: int, stream: int) -> int:
    """An independent seed for ``(seed, rank, stream)`` (streams: 1 data, 2 step, 3 pool, 4 real images)."""
    return int(np.random.SeedSequence([seed, rank, stream]).generate_state(1, np.uint64)[0] >> 1)


def rng_state(data_gen: torch.Generator, step_gen: torch.Generator) -> dict:
    py = random.getstate()
    npst = np.random.get_state()
    state = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [npst[0], torch.from_numpy(np.asarray(npst[1]).astype(np.int64)), int(npst[2]), int(npst[3]),
                  float(npst[4])],
        "torch": torch.get_rng_state(),
        "data": data_gen.get_state(),
        "step": step_gen.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, data_gen: torch.Generator, step_gen: torch.Generator) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"])
    data_gen.set_state(state["data"])
    step_gen.set_state(state["step"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
