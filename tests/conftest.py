"""Test set-up: Triton runs under its interpreter when there is no GPU.

TRITON_INTERPRET must be set before triton is first imported (unlearn_fast imports it),
so this happens at the top of conftest, which pytest loads first.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(min(2, torch.get_num_threads()))


import pytest  # noqa: E402


@pytest.fixture
def one_thread():
    """One intra-op thread, as in the subprocesses: bit-identity across processes needs the
    same thread count, and the machine running the tests may be busy."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def class_dir(tmp_path_factory) -> str:
    """A tiny class-conditional UNet2DModel folder (safetensors, 11 classes, 10 = null) with its scheduler."""
    from diffusers import DDPMScheduler
    from helpers import T, tiny_class_unet

    path = tmp_path_factory.mktemp("tiny_class")
    tiny_class_unet().save_pretrained(path)
    DDPMScheduler(num_train_timesteps=T).save_pretrained(path)
    return str(path)


try:  # pytest-benchmark (the [test] extra); without it the kernel benchmarks still run once, as checks
    import pytest_benchmark  # noqa: F401
except ImportError:
    def pytest_addoption(parser):
        parser.addoption("--benchmark-disable", action="store_true", help="(pytest-benchmark is not installed)")

    class _RunOnce:
        def __init__(self):
            self.extra_info = {}

        def __call__(self, fn, *args, **kwargs):
            return fn(*args, **kwargs)

    @pytest.fixture
    def benchmark():
        return _RunOnce()
