"""Builds unlearn_fast._C: the C++ CPU kernel always, the CUDA kernel when it can.

The CUDA part is built when torch is a CUDA build and nvcc is found (CUDA_HOME), or when
UNLEARN_FAST_CUDA=1 forces it; UNLEARN_FAST_CUDA=0 skips it. No GPU is needed to build.
torch must already be installed: use `pip install --no-build-isolation -e .` so the
extension is compiled against the torch it will run with.
"""

import glob
import os
import sys

from setuptools import setup

try:
    import torch
    from torch.utils import cpp_extension
except ImportError:  # pragma: no cover - a build-time message
    sys.exit(
        "unlearn_fast: torch must be installed before building the extension; "
        "install torch>=2.6, then run `pip install --no-build-isolation -e .`"
    )


def want_cuda() -> bool:
    flag = os.environ.get("UNLEARN_FAST_CUDA", "auto").lower()
    if flag in ("0", "false", "no", "off"):
        print("unlearn_fast: UNLEARN_FAST_CUDA=0, skipping the CUDA kernel")
        return False
    has_toolkit = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    if flag in ("1", "true", "yes", "on"):
        if not has_toolkit:
            sys.exit("unlearn_fast: UNLEARN_FAST_CUDA=1 but torch is not a CUDA build or nvcc (CUDA_HOME) is missing")
        return True
    if not has_toolkit:
        why = "torch is a CPU-only build" if torch.version.cuda is None else "nvcc not found (set CUDA_HOME)"
        print(f"unlearn_fast: building the CPU kernel only ({why}); the 'cuda' backend will be unavailable")
    return has_toolkit


def extensions():
    cpu_sources = sorted(glob.glob("csrc/*.cpp"))
    # torch picks the C++ standard it needs (C++17, or C++20 from 2.14). -g0 overrides the -g
    # of Python's default flags: the debug info is 96% of the library (19.5 MB against 0.75 MB).
    cxx = ["-O3", "-g0"]
    link = []
    if torch._C.has_openmp and sys.platform.startswith("linux"):
        # at::parallel_for is an inline OpenMP loop: without -fopenmp it compiles to a serial
        # loop and the kernel runs on one thread whatever torch.set_num_threads says. The
        # extension's libgomp.so.1 resolves to the one torch has already loaded (same soname),
        # so torch's thread count and thread pool are the ones used.
        cxx.append("-fopenmp")
        link.append("-fopenmp")
    if want_cuda():
        sources = cpu_sources + sorted(glob.glob("csrc/cuda/*.cu"))
        nvcc = ["-O3", "--use_fast_math", "-lineinfo"]
        ext = cpp_extension.CUDAExtension(
            "unlearn_fast._C", sources, extra_compile_args={"cxx": cxx, "nvcc": nvcc},
            extra_link_args=link,
        )
    else:
        ext = cpp_extension.CppExtension(
            "unlearn_fast._C", cpu_sources, extra_compile_args={"cxx": cxx}, extra_link_args=link
        )
    return [ext]


setup(
    ext_modules=extensions(),
    cmdclass={"build_ext": cpp_extension.BuildExtension},
)
