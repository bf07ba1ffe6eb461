"""Builds the package as pyproject.toml declares it, plus what only a build can add: the git revision built
from (exporter/REVISION, for build_info; recorded in the sdist too, so that a wheel built from the sdist, as
``python -m build`` does, carries it) and the site files (exporter/site/, for ``larpix-dqm mixin``)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent
#: Where the revision goes, in the sdist and in the package (larpix_dqm.exporter.build reads it).
REVISION = Path("larpix_dqm") / "exporter" / "REVISION"


def _site_files() -> list[Path]:
    """exporter/mixin.py's site_files of this source tree, read without importing the exporter (and numpy)."""
    spec = importlib.util.spec_from_file_location("larpix_dqm_mixin", HERE / "larpix_dqm" / "exporter" / "mixin.py")
    assert spec is not None and spec.loader is not None
    mixin = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mixin)
    return mixin.site_files(HERE)


def _revision() -> str:
    """``git describe`` of this tree when it is a git checkout, else the revision its sdist recorded, else
    $BUILD_REVISION (a Docker build argument), else ""."""
    if (HERE / ".git").exists():  # this tree's own: not that of a checkout an unpacked sdist happens to sit in
        try:
            done = subprocess.run(
                ["git", "describe", "--always", "--dirty", "--abbrev=12"],
                cwd=HERE,
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            )
            return done.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    if (HERE / REVISION).is_file():
        return (HERE / REVISION).read_text().strip()
    return os.environ.get("BUILD_REVISION", "")


class SdistWithRevision(sdist):
    """sdist that records the revision in exporter/REVISION, where the wheel built from it finds it."""

    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        super().make_release_tree(base_dir, files)
        revision = _revision()
        if revision:  # a new file: the release tree's others are hard links to the source files
            (Path(base_dir) / REVISION).write_text(revision + "\n")


class BuildWithSiteFiles(build_py):
    """build_py that also writes exporter/REVISION and copies the site files into exporter/site/."""

    def run(self) -> None:
        super().run()
        package = Path(self.build_lib) / "larpix_dqm" / "exporter"
        revision = _revision()
        if revision:
            (Path(self.build_lib) / REVISION).write_text(revision + "\n")
        for relative in _site_files():
            target = package / "site" / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(HERE / relative, target)


setup(cmdclass={"build_py": BuildWithSiteFiles, "sdist": SdistWithRevision})
