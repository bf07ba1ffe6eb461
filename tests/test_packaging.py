"""Packaging and deployment: declared dependencies, one version, the mixin, the Dockerfile and the systemd unit.

The wheel itself is built, installed in a fresh venv and run from outside the checkout by
scripts/check_wheel.sh (a step of scripts/test.sh).
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import tomllib
import yaml
from helpers import require_binary

import exporter
from exporter.cli import run
from exporter.mixin import SITE_FILES, site_files, site_root

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _requirement_name(requirement: str) -> str:
    return re.split(r"[<>=!~ ;\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_every_imported_distribution_is_declared():
    declared = {_requirement_name(r) for r in PYPROJECT["project"]["dependencies"]}
    optional = {_requirement_name(r) for extra in PYPROJECT["project"]["optional-dependencies"].values() for r in extra}
    distributions = metadata.packages_distributions()
    imported: set[str] = set()
    for path in [*(ROOT / "exporter").rglob("*.py"), *(ROOT / "plots").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = {
        name
        for name in imported
        if name not in sys.stdlib_module_names and name not in ("exporter", "plots", "dashboards", "__future__")
    }
    needed = {_requirement_name(dist) for name in third_party for dist in distributions.get(name, [name])}
    assert sorted(needed - declared - optional) == [], "imported but not declared in pyproject.toml"
    assert "pyarrow" in {_requirement_name(r) for r in PYPROJECT["project"]["optional-dependencies"]["parquet"]}
    test_extra = {_requirement_name(r) for r in PYPROJECT["project"]["optional-dependencies"]["test"]}
    assert {"mypy", "pytest", "ruff"} <= test_extra


def test_one_version_an_spdx_licence_and_type_information():
    assert PYPROJECT["project"]["dynamic"] == ["version"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "exporter.__version__"}
    assert PYPROJECT["project"]["license"] == "MIT" and (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert (ROOT / "exporter" / "py.typed").exists() and (ROOT / "plots" / "py.typed").exists()
    assert re.fullmatch(r"\d+\.\d+\.\d+", exporter.__version__)


@pytest.mark.e2e
def test_mixin_writes_the_site_files_for_a_site(tmp_path, monkeypatch, capsys):
    out = tmp_path / "mixin"
    argv = ["larpix-dqm", "mixin", "-o", str(out), "--job-selector", "dqm-(live|test)"]
    monkeypatch.setattr(sys, "argv", [*argv, "--runbook-url", "https://wiki.example/RUNBOOK.md"])
    with pytest.raises(SystemExit) as done:
        run()
    assert done.value.code == 0, capsys.readouterr().err
    written = {p.relative_to(out) for p in out.rglob("*") if p.is_file()}
    assert written == set(site_files(site_root()))
    for pattern in SITE_FILES:  # every listed kind of file exists in the checkout and was written
        assert any(p.match(pattern) for p in written), pattern
    rules = yaml.safe_load((out / "alerts" / "larpix.rules.yml").read_text())
    alerts = [rule for group in rules["groups"] for rule in group["rules"]]
    assert all(a["annotations"]["runbook_url"].startswith("https://wiki.example/RUNBOOK.md#") for a in alerts)
    assert any('job=~"dqm-(live|test)"' in a["expr"] for a in alerts)
    overview = (out / "dashboards" / "json" / "larpix-overview.json").read_text()
    assert 'job=~\\"dqm-(live|test)\\"' in overview and ".*larpix.*" not in overview
    promtool = require_binary("promtool")
    check = subprocess.run([promtool, "check", "rules", str(out / "alerts" / "larpix.rules.yml")], capture_output=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_dockerfile_pins_dependencies_labels_the_image_and_probes_with_the_configured_settings():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert (
        'HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 CMD ["larpix-dqm", "healthcheck"]'
        in (dockerfile)
    )
    for label in ("title", "description", "licenses", "source", "version", "revision"):
        assert f"org.opencontainers.image.{label}=" in dockerfile, label
    assert "pip install --constraint deploy/requirements.lock ." in dockerfile
    lock = {
        _requirement_name(line): line
        for line in (ROOT / "deploy" / "requirements.lock").read_text().splitlines()
        if line and not line.startswith("#")
    }
    assert all("==" in line for line in lock.values())
    for requirement in PYPROJECT["project"]["dependencies"]:
        assert _requirement_name(requirement) in lock, f"{requirement} is not pinned in deploy/requirements.lock"


@pytest.mark.e2e
def test_systemd_unit_verifies_and_is_hardened(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing: apt-get install systemd")
    unit = (ROOT / "deploy" / "larpix-dqm.service").read_text()
    for setting in (
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "ReadOnlyPaths=/data/larpix",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
        "RestartPreventExitStatus=2",
    ):
        assert setting in unit, setting
    copy = tmp_path / "larpix-dqm.service"  # the binary exists only once installed: point at one that does
    copy.write_text(unit.replace("/opt/larpix-dqm/bin/larpix-dqm", sys.executable))
    result = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True)
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr
