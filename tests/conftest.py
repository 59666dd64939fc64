"""Test set-up: Triton runs under its interpreter when there is no GPU.

TRITON_INTERPRET must be set before triton is first imported (unlearn_fast imports it),
so this happens at the top of conftest, which pytest loads first.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(min(2, torch.get_num_threads()))
