"""What this build of the exporter is: version, git revision and Python version, for build_info."""

from __future__ import annotations

import functools
import platform
import subprocess
from pathlib import Path

from larpix_dqm.exporter import __version__

#: Written into the package by the build (setup.py): from a git checkout, or as the sdist built from one recorded it.
REVISION_FILE = Path(__file__).with_name("REVISION")


@functools.cache
def revision() -> str:
    """The git revision built from (or of the checkout run from), else "unknown"."""
    if REVISION_FILE.is_file():
        return REVISION_FILE.read_text().strip() or "unknown"
    source = Path(__file__).resolve().parent.parent
    if not (source / ".git").exists():
        return "unknown"
    try:
        done = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"],
            cwd=source,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip() or "unknown"


def build_labels() -> dict[str, str]:
    """The labels of larpix_exporter_build_info."""
    return {"version": __version__, "revision": revision(), "pythonversion": platform.python_version()}
