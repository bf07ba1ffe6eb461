"""Builds the package as pyproject.toml declares it, and records the git revision built from (exporter/REVISION)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildWithRevision(build_py):
    """build_py that also writes ``git describe`` of the source tree into the package, when there is one."""

    def run(self) -> None:
        super().run()
        try:
            done = subprocess.run(
                ["git", "describe", "--always", "--dirty", "--abbrev=12"],
                cwd=Path(__file__).parent,
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            )
        except (OSError, subprocess.SubprocessError):
            return
        if done.stdout.strip():
            (Path(self.build_lib) / "exporter" / "REVISION").write_text(done.stdout.strip() + "\n")


setup(cmdclass={"build_py": BuildWithRevision})
