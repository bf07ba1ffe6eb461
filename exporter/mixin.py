"""The files a site deploys beside the exporter (rules, dashboards, runbook, examples), and writing them out.

``SITE_FILES`` lists them once, as paths in the repository. The wheel carries them under
``exporter/site/`` (setup.py copies them at build time); ``larpix-dqm mixin`` writes them into a
folder with the alert rules and dashboards regenerated for the site's job selector and runbook URL.
This module imports only the standard library at its top, so setup.py can read ``SITE_FILES``.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from larpix_dqm.exporter.monitoring import MixinConfig

#: Repository paths (globs) of the site files, also their paths under ``larpix-dqm mixin -o DIR``.
SITE_FILES = (
    "alerts/larpix.rules.yml",
    "alerts/thresholds.yaml",
    "alerts/generate.py",
    "alertmanager.yml",
    "prometheus.yml",
    "docker-compose.yml",
    "RUNBOOK.md",
    "dashboards/*.py",
    "dashboards/json/*.json",
    "dashboards/provisioning/*/*.yml",
    "deploy/*",
    "deploy/scale/*",
)
PACKAGED = Path(__file__).with_name("site")


class MixinError(ValueError):
    """The mixin cannot be written as asked; the message says why."""


def site_root() -> Path:
    """Where the site files are: the copy in an installed package, else this checkout."""
    return PACKAGED if PACKAGED.is_dir() else Path(__file__).resolve().parent.parent


def site_files(root: Path) -> list[Path]:
    """Every site file under ``root``, relative to it."""
    return sorted({path.relative_to(root) for pattern in SITE_FILES for path in root.glob(pattern) if path.is_file()})


def _module(path: Path, name: str) -> ModuleType:
    """Import a generator script of the site files (alerts/generate.py, dashboards/generate.py) by its path."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise MixinError(f"{path}: cannot be loaded")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dashboards(root: Path, monitoring: MixinConfig) -> dict[str, str] | None:
    """The dashboards for ``monitoring`` as {file name: JSON}, or None without the Grafana Foundation SDK."""
    if importlib.util.find_spec("grafana_foundation_sdk") is None:
        return None
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))  # the generator imports its modules as the package ``dashboards``
    generator = _module(root / "dashboards" / "generate.py", "larpix_dqm_dashboards_generate")
    return generator.build_all(monitoring)


def write_mixin(output: Path, monitoring: MixinConfig) -> list[Path]:
    """Write the site files into ``output``, rules and dashboards for ``monitoring``; return the files written."""
    from larpix_dqm.exporter.monitoring import MixinConfig

    root = site_root()
    alerts = _module(root / "alerts" / "generate.py", "larpix_dqm_alerts_generate")
    thresholds = alerts.load_thresholds(monitoring, root / "alerts" / "thresholds.yaml")
    rules = alerts.render(thresholds, monitoring, f"larpix-dqm mixin (job selector {monitoring.job_regex!r})")
    dashboards = _dashboards(root, monitoring)
    if dashboards is None and monitoring.job_regex != MixinConfig().job_regex:
        raise MixinError(
            "dashboards for another job selector need the Grafana Foundation SDK: pip install 'larpix-dqm[mixin]'"
        )
    written = []
    for relative in site_files(root):
        target = output / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / relative, target)
        written.append(target)
    (output / "alerts" / "larpix.rules.yml").write_text(rules)
    for name, body in (dashboards or {}).items():
        (output / "dashboards" / "json" / name).write_text(body)
    return written
