"""Small models shared by the tests (importable from every test module: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

from unlearn_fast.models import ConditionedModel

T = 1000  # timesteps of the test schedulers
SHAPE = (2, 3, 3)  # sample shape of TinyModel
N_COND = 6  # TinyModel conditions: 0, 1, 2 concepts; 3, 4 other conditions; 5 null / anchor
NULL = 5
DT = torch.float64


class TinyModel(ConditionedModel):
    """eps(x, t, c) = a_c * x + b_c + s_c * tanh(x) * t / T: differentiable in every parameter;
    records the inputs of every ``predict`` call in ``seen``."""

    def __init__(self, seed: int, frozen: bool = False):
        g = torch.Generator().manual_seed(seed)
        self.module = nn.Module()
        self.module.a = nn.Parameter(1 + 0.3 * torch.randn(N_COND, generator=g, dtype=DT))
        self.module.b = nn.Parameter(torch.randn(N_COND, *SHAPE, generator=g, dtype=DT))
        self.module.s = nn.Parameter(torch.randn(N_COND, generator=g, dtype=DT))
        self.module.requires_grad_(not frozen)
        self.conditions = [str(i) for i in range(N_COND)]
        self.null_id = NULL
        self.seen = []

    def predict(self, x_t, t, cond_ids):
        self.seen.append((x_t.detach().clone(), t.clone(), cond_ids.clone()))
        return self.eps(x_t, t, cond_ids)

    def eps(self, x_t, t, c):
        m = self.module
        view = (-1,) + (1,) * len(SHAPE)
        return (m.a[c].view(view) * x_t + m.b[c] + m.s[c].view(view) * torch.tanh(x_t) * (t.to(DT) / T).view(view))


def tiny_class_unet(seed: int = 0, *, classes: int = 11, size: int = 8):
    """A tiny class-conditional UNet2DModel at ``size`` x ``size`` (11 classes, 10 = null, by default)."""
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(sample_size=size, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                       attention_head_dim=8, norm_num_groups=4, num_class_embeds=classes)


# --- subprocesses (DDP ranks, killed runs) --------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]


def subprocess_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1")
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(script: str, world: int = 2, timeout: int = 300) -> list[str]:
    """Run ``script`` (python source) as ``world`` DDP ranks on the CPU (gloo); returns their logs
    and fails the test with them when a rank fails."""
    port = str(free_port())
    procs = []
    for rank in range(world):
        env = subprocess_env()
        env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        procs.append(subprocess.Popen([sys.executable, "-c", script], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    try:
        logs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:  # a rank stuck in a collective after the other failed
            if p.poll() is None:
                p.kill()
                p.wait()
    assert all(p.returncode == 0 for p in procs), "\n".join(log[-3000:] for log in logs)
    return logs


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
