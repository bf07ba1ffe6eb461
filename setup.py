"""Builds the package as pyproject.toml declares it, plus what only a build can add: the git revision built
from (exporter/REVISION, for build_info) and the site files (exporter/site/, for ``larpix-dqm mixin``)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


def _site_files() -> list[Path]:
    """exporter.mixin.site_files of this source tree, read without importing the exporter (and numpy)."""
    spec = importlib.util.spec_from_file_location("larpix_dqm_mixin", HERE / "exporter" / "mixin.py")
    assert spec is not None and spec.loader is not None
    mixin = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mixin)
    return mixin.site_files(HERE)


def _revision() -> str:
    """``git describe`` of the source tree, else $BUILD_REVISION (a Docker build argument), else ""."""
    try:
        done = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"],
            cwd=HERE,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("BUILD_REVISION", "")
    return done.stdout.strip()


class BuildWithSiteFiles(build_py):
    """build_py that also writes exporter/REVISION and copies the site files into exporter/site/."""

    def run(self) -> None:
        super().run()
        package = Path(self.build_lib) / "exporter"
        revision = _revision()
        if revision:
            (package / "REVISION").write_text(revision + "\n")
        for relative in _site_files():
            target = package / "site" / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(HERE / relative, target)


setup(cmdclass={"build_py": BuildWithSiteFiles})
