"""Triton kernels of unlearn_fast (installed as ``unlearn_fast.kernels``)."""
