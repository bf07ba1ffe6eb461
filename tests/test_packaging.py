"""Packaging and deployment: declared dependencies, one version, metadata, the build revision, the mixin,
the Dockerfile and the systemd unit.

The wheel itself is built, installed in a fresh venv and run from outside the checkout by
scripts/check_wheel.sh (a step of scripts/test.sh).
"""

from __future__ import annotations

import ast
import email.parser
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
import tomllib
import yaml
from helpers import require_binary

import larpix_dqm.exporter
from larpix_dqm.exporter.cli import run
from larpix_dqm.exporter.mixin import SITE_FILES, site_files, site_root

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
        if name not in sys.stdlib_module_names and name not in ("larpix_dqm", "dashboards", "__future__")
    }
    needed = {_requirement_name(dist) for name in third_party for dist in distributions.get(name, [name])}
    assert sorted(needed - declared - optional) == [], "imported but not declared in pyproject.toml"
    assert "pyarrow" in {_requirement_name(r) for r in PYPROJECT["project"]["optional-dependencies"]["parquet"]}
    test_extra = {_requirement_name(r) for r in PYPROJECT["project"]["optional-dependencies"]["test"]}
    assert {"mypy", "pytest", "ruff"} <= test_extra


def test_one_version_an_spdx_licence_and_type_information():
    assert PYPROJECT["project"]["dynamic"] == ["version"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "larpix_dqm.exporter.__version__"}
    assert PYPROJECT["project"]["license"] == "MIT" and (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert (ROOT / "exporter" / "py.typed").exists() and (ROOT / "plots" / "py.typed").exists()
    assert re.fullmatch(r"\d+\.\d+\.\d+", larpix_dqm.exporter.__version__)


def test_classifiers_and_project_urls_agree_with_the_package_and_the_image_labels():
    project = PYPROJECT["project"]
    classifiers = project["classifiers"]
    assert "Typing :: Typed" in classifiers and (ROOT / "exporter" / "py.typed").exists()
    assert not [c for c in classifiers if c.startswith("License ::")], "the SPDX `license` says it (PEP 639)"
    lowest = re.fullmatch(r">=3\.(\d+)", project["requires-python"])
    assert lowest is not None
    versions = sorted(int(c.rsplit(".", 1)[1]) for c in classifiers if re.fullmatch(r".*Python :: 3\.\d+", c))
    assert versions and versions[0] == int(lowest[1])
    dockerfile = (ROOT / "Dockerfile").read_text()
    labels = dict(re.findall(r'org\.opencontainers\.image\.(source|documentation)="([^"]+)"', dockerfile))
    urls = project["urls"]
    assert urls["Source"] == labels["source"] and urls["Documentation"] == labels["documentation"]
    assert all(url.startswith(labels["source"] + "/") for name, url in urls.items() if name != "Source")


def _git_revision() -> str:
    return subprocess.run(
        ["git", "describe", "--always", "--dirty", "--abbrev=12"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()


def _python_m_build(source: Path, outdir: Path, *options: str) -> None:
    """``python -m build`` run from ``outdir`` (a ./build folder in the checkout would hide the build package)."""
    outdir.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [sys.executable, "-m", "build", *options, "--outdir", str(outdir), str(source)],
        cwd=outdir,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.external
def test_python_m_build_records_the_revision_in_the_sdist_and_every_wheel_built_from_it(tmp_path):
    """PyPA's ``python -m build`` makes the sdist from the checkout, then the wheel from the unpacked sdist,
    where git cannot tell the revision: the sdist records it, and the wheel (with its metadata) carries it,
    also when the sdist is unpacked inside another git checkout."""
    revision = _git_revision()
    _python_m_build(ROOT, tmp_path / "dist")
    (sdist,), (wheel,) = (sorted((tmp_path / "dist").glob(pattern)) for pattern in ("*.tar.gz", "*.whl"))
    top = f"larpix_dqm-{larpix_dqm.exporter.__version__}"
    with tarfile.open(sdist) as tar:
        recorded = tar.extractfile(f"{top}/larpix_dqm/exporter/REVISION").read().decode().strip()  # type: ignore[union-attr]
        tar.extractall(tmp_path / "other", filter="data")
    with zipfile.ZipFile(wheel) as whl:
        carried = whl.read("larpix_dqm/exporter/REVISION").decode().strip()
        tops = {name.split("/")[0] for name in whl.namelist()}
        assert tops == {"larpix_dqm", f"{top}.dist-info"}  # one import package: no top-level exporter or plots
        assert {"larpix_dqm/exporter/cli.py", "larpix_dqm/plots/base.py", "larpix_dqm/py.typed"} <= set(whl.namelist())
        meta = email.parser.Parser().parsestr(whl.read(f"{top}.dist-info/METADATA").decode())
    assert recorded == carried == revision != "unknown"
    assert meta.get_all("Classifier") == PYPROJECT["project"]["classifiers"]
    assert meta.get_all("Project-URL") == [f"{name}, {url}" for name, url in PYPROJECT["project"]["urls"].items()]
    # the sdist unpacked inside another git checkout: the revision it recorded, not that checkout's
    other = ["git", "-C", str(tmp_path / "other"), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run(["git", "init", "-q", str(tmp_path / "other")], check=True)
    subprocess.run([*other, "commit", "-q", "--allow-empty", "-m", "another project"], check=True)
    _python_m_build(tmp_path / "other" / top, tmp_path / "again", "--wheel")
    (again,) = (tmp_path / "again").glob("*.whl")
    with zipfile.ZipFile(again) as whl:
        assert whl.read("larpix_dqm/exporter/REVISION").decode().strip() == revision


@pytest.mark.external
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
    # the alerts, not the recording rules (no annotations)
    alerts = [rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule]
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


@pytest.mark.external
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
