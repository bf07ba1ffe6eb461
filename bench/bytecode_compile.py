"""Byte-compiling the package before timing whole processes, as ``pip install`` does (for the bench scripts)."""

from __future__ import annotations

import compileall
import os
from pathlib import Path

import larpix_dqm


def compile_package() -> str:
    """Byte-compile the package into ``__pycache__`` beside its sources (ignored by git), so whole processes load
    its modules as users' do; an editable install under ``PYTHONDONTWRITEBYTECODE`` (set on this machine) compiles
    every module it imports from source in every process instead (0.1-0.15 s of a ``once --no-plots``, 0.24 s under
    cProfile of a ``once`` with plots). Returns what was done, to print."""
    root = Path(larpix_dqm.__file__).parent
    packages = [p.resolve() for p in root.iterdir() if (p / "__init__.py").exists()]  # the sub-packages are links
    for folder in (root, *packages):
        compileall.compile_dir(folder, quiet=1)
    unset = "PYTHONDONTWRITEBYTECODE" not in os.environ
    return f"package byte-compiled as pip install does (PYTHONDONTWRITEBYTECODE {'unset' if unset else 'set'} here)"
