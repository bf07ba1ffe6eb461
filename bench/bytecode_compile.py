"""Byte-compiling the package before timing whole processes, as ``pip install`` does (for the bench scripts)."""

from __future__ import annotations

import compileall
import os
from pathlib import Path

import larpix_dqm


def compile_package() -> str:
    """Byte-compile the package, so whole processes load its modules as users' do; an editable install under
    ``PYTHONDONTWRITEBYTECODE`` (set on this machine) compiles every module it imports from source in every process
    instead (0.1-0.25 s of a start-up). Returns what was done, to print."""
    root = Path(larpix_dqm.__file__).parent
    for folder in (root, *(p.resolve() for p in root.iterdir() if p.is_dir())):  # the sub-packages are links
        compileall.compile_dir(folder, quiet=1)
    unset = "PYTHONDONTWRITEBYTECODE" not in os.environ
    return f"package byte-compiled as pip install does (PYTHONDONTWRITEBYTECODE {'unset' if unset else 'set'} here)"
