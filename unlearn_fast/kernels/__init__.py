"""Triton kernels of unlearn_fast and their launchers."""
