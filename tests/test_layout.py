"""The checkout's layout: run from the repository root (as the tests and the demo are), a
top-level Python package would shadow an installed module of the same name. A ``kernels/``
folder did: transformers imports the Hugging Face ``kernels`` package when it is installed,
found ours first and failed to import diffusers' LoRA loader."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_only_top_level_package_is_unlearn_fast():
    packages = sorted(p.name for p in ROOT.iterdir()
                      if p.is_dir() and not p.name.startswith(".") and (p / "__init__.py").exists())
    assert packages == ["unlearn_fast"], packages


def test_no_top_level_module_file():
    allowed = {"setup.py"}
    modules = sorted(p.name for p in ROOT.glob("*.py") if p.name not in allowed)
    assert modules == [], modules
