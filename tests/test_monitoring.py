"""The alerts and the dashboards agree with the checks, the exporter's defaults and each other.

Both generators read ``larpix_dqm.exporter.monitoring.MixinConfig``. These tests read the generated files
(the committed ones, and ones generated from a changed configuration) and compare every
threshold that is a check's range or an exporter default with its source, every job selector
with the configured one, and every status value with the ``CheckStatus`` / ``ChannelStatus``
enums. Needs the pinned ``grafana-foundation-sdk`` (to generate dashboards in-process).
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from larpix_dqm.exporter.monitoring import MixinConfig
from larpix_dqm.exporter.quality.checks import DEFAULT_CHECKS, Check
from larpix_dqm.exporter.quality.status import ChannelStatus, CheckStatus
from larpix_dqm.exporter.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "alerts" / "larpix.rules.yml"
THRESHOLDS = ROOT / "alerts" / "thresholds.yaml"
DASHBOARD_JSON = ROOT / "dashboards" / "json"
PROMETHEUS_CONFIG = ROOT / "prometheus.yml"

#: Alerts whose threshold is a check's range or an exporter default:
#: alert -> (pattern capturing the threshold in its expression, where the value comes from).
ALERT_THRESHOLDS = {
    "LarpixSyncMissing": (r"larpix_io_group_sync_rate_hertz < (\S+)", ("sync", "error", 0)),
    "LarpixParityErrorRatioHigh": (r"(?m)^> (\S+)$", ("parity_error_ratio", "warning", 1)),
    "LarpixChipManySilentChannels": (r"\) > (\S+)\n", ("silent_fraction", "error", 1)),
    "LarpixChipNoisyChannels": (r"larpix_channel_hit_rate_hertz > (\S+)\)", "noisy_rate_hz"),
}
#: Dashboard panels whose threshold steps are a check's range or an exporter default:
#: (dashboard uid, panel title) -> (steps after the base step that come from the source, source).
PANEL_THRESHOLDS = {
    ("larpix-overview", "Sync rate ('S' syncs per second)"): (slice(1, 3), ("sync", "warning")),
    ("larpix-chips", "Hit rate / reference by tile"): (slice(1, 3), ("reference_rate_ratio", "warning")),
    ("larpix-chips", "Pedestal shift from reference by tile"): (slice(1, 3), ("reference_pedestal_shift", "warning")),
    ("larpix-chips", "Noisiest chip per tile"): (slice(1, 2), "noisy_rate_hz"),
}
JOB_MATCHER = re.compile(r"\bjob\s*(?:=~|!~|!=|=)\s*\"(?:[^\"\\]|\\.)*\"")
UP_SELECTOR = re.compile(r"(?<![\w:])up\b(\{[^}]*\})?")
STATUS_COMPARISON = re.compile(r"larpix_\w+_status(?:\{[^}]*\})?\)?\s*(==|>=|>)\s*(\d+)")
PROMQL_COMMENT = re.compile(r"#[^\n]*")
CHANNEL_STATUS_MATCHER = re.compile(r"\blarpix_chip_channels\{[^}]*\bstatus\s*=\s*\"([^\"]*)\"")
#: A matcher of larpix_check_chips's status label, which counts chips by CheckStatus.
CHECK_STATUS_MATCHER = re.compile(r"\blarpix_check_chips\{[^}]*\bstatus\s*=\s*\"([^\"]*)\"")


# --------------------------------------------------------------------------- loading


def load_script(path: Path, name: str) -> ModuleType:
    """Import a generator script (not part of the installed package) by its path."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def alert_generator() -> ModuleType:
    return load_script(ROOT / "alerts" / "generate.py", "larpix_alert_generator")


@pytest.fixture(scope="module")
def dashboard_generator() -> ModuleType:
    return load_script(ROOT / "dashboards" / "generate.py", "larpix_dashboard_generator")


def rules_of(text: str) -> dict[str, dict[str, Any]]:
    """Alerting rules of a rule file text, by alert name."""
    return {
        rule["alert"]: rule for group in yaml.safe_load(text)["groups"] for rule in group["rules"] if "alert" in rule
    }


def panels_of(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel of a dashboard, rows' nested panels included."""
    found = []
    for panel in dashboard.get("panels", []):
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def committed_dashboards() -> dict[str, dict[str, Any]]:
    return {path.stem: json.loads(path.read_text()) for path in sorted(DASHBOARD_JSON.glob("*.json"))}


def expressions(rules: dict[str, dict[str, Any]], dashboards: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    """``(where, PromQL)`` of every rule (comments removed) and every dashboard query and annotation."""
    found = [(f"alert {name}", PROMQL_COMMENT.sub("", rule["expr"])) for name, rule in rules.items()]
    for uid, dashboard in dashboards.items():
        for panel in panels_of(dashboard):
            found += [(f"{uid} '{panel['title']}'", t["expr"]) for t in panel.get("targets", []) if "expr" in t]
        found += [(f"{uid} annotation", a["expr"]) for a in dashboard["annotations"]["list"] if a.get("expr")]
    return found


# --------------------------------------------------------------------------- the comparison


def expected_value(source: tuple[Any, ...] | str, checks: tuple[Check, ...], noisy_rate_hz: float) -> Any:
    """The value a threshold must have: a check's range (or one end of it) or the noisy rate."""
    if source == "noisy_rate_hz":
        return noisy_rate_hz
    name, kind, *end = source
    limits = getattr(next(check for check in checks if check.name == name), kind)
    return limits[end[0]] if end else limits


def disagreements(
    rules: dict[str, dict[str, Any]],
    dashboards: dict[str, dict[str, Any]],
    checks: tuple[Check, ...],
    noisy_rate_hz: float,
    job_matcher: str,
) -> list[str]:
    """Every place where the rules or dashboards differ from the checks, the noisy rate or the job selector."""
    problems = []
    for alert, (pattern, source) in ALERT_THRESHOLDS.items():
        match = re.search(pattern, rules[alert]["expr"])
        expected = expected_value(source, checks, noisy_rate_hz)
        if match is None or float(match.group(1)) != expected:
            problems.append(f"alert {alert}: threshold {match and match.group(1)}, expected {expected} ({source})")
    panels = {(uid, panel["title"]): panel for uid, d in dashboards.items() for panel in panels_of(d)}
    for key, (steps, source) in PANEL_THRESHOLDS.items():
        values = [step["value"] for step in panels[key]["fieldConfig"]["defaults"]["thresholds"]["steps"]]
        expected = expected_value(source, checks, noisy_rate_hz)
        expected = list(expected) if isinstance(expected, tuple) else [expected]
        if values[steps] != expected:
            problems.append(f"panel {key}: threshold steps {values[steps]}, expected {expected} ({source})")
    for where, expr in expressions(rules, dashboards):
        for matcher in JOB_MATCHER.findall(expr):
            if matcher not in (job_matcher, 'job=~"$job"'):  # the site's selector, or Grafana's job variable
                problems.append(f"{where}: job matcher {matcher}, expected {job_matcher}")
        for selector in UP_SELECTOR.findall(expr):
            if job_matcher not in selector:
                problems.append(f"{where}: up{selector} does not select {job_matcher}")
    return problems


def changed_monitoring() -> MixinConfig:
    """A configuration unlike the defaults in every value the generators take from it."""
    changed = {
        "sync": {"warning": (0.8, 1.3), "error": (0.3, 3.0)},
        "parity_error_ratio": {"warning": (-float("inf"), 5e-3)},
        "silent_fraction": {"error": (-float("inf"), 0.7)},
        "reference_rate_ratio": {"warning": (0.25, 4.0)},
        "reference_pedestal_shift": {"warning": (-7.5, 7.5)},
    }
    checks = tuple(replace(check, **changed.get(check.name, {})) for check in DEFAULT_CHECKS)
    return MixinConfig(
        job_regex="dqm-.*",
        runbook_url="https://runbooks.example/larpix.md",
        exporter_url="http://daq-monitor:9000",
        checks=checks,
        noisy_rate_hz=25.0,
    )


# --------------------------------------------------------------------------- tests


def test_committed_rules_and_dashboards_agree_with_the_checks() -> None:
    problems = disagreements(
        rules_of(RULES.read_text()),
        committed_dashboards(),
        DEFAULT_CHECKS,
        Settings().noisy_rate_hz,
        'job=~".*larpix.*"',
    )
    assert problems == []


def test_generated_files_follow_a_changed_monitoring_configuration(
    alert_generator: ModuleType, dashboard_generator: ModuleType
) -> None:
    """Every shared value moves with the configuration: none is a second literal that merely equals it."""
    monitoring = changed_monitoring()
    rules = rules_of(alert_generator.render(alert_generator.load_thresholds(monitoring), monitoring, "test"))
    dashboards = {Path(name).stem: json.loads(text) for name, text in dashboard_generator.build_all(monitoring).items()}
    assert disagreements(rules, dashboards, monitoring.checks, 25.0, 'job=~"dqm-.*"') == []
    # ... and the committed files, made from the defaults, disagree with it in every value.
    stale = disagreements(rules_of(RULES.read_text()), committed_dashboards(), monitoring.checks, 25.0, 'job=~"dqm-.*"')
    # every check-derived threshold, plus the job matcher and the up{} selector of both alert
    # expressions (firing, absent) and both dashboards' Target up panels
    assert len(stale) == len(ALERT_THRESHOLDS) + len(PANEL_THRESHOLDS) + 2 * 4, "\n".join(stale)

    assert {rule["annotations"]["runbook_url"] for rule in rules.values()} == {
        f"https://runbooks.example/larpix.md#{name.lower()}" for name in rules
    }
    variables = {v["name"]: v for v in dashboards["larpix-pixelmaps"]["templating"]["list"]}
    assert variables["exporter_url"]["query"] == "http://daq-monitor:9000"


def test_the_job_selector_selects_the_shipped_scrape_jobs() -> None:
    """Prometheus anchors the regex: both exporter jobs of prometheus.yml match, Prometheus' own does not."""
    jobs = {job["job_name"] for job in yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"]}
    regex = MixinConfig().job_regex
    assert {job for job in jobs if re.fullmatch(regex, job)} == {"larpix", "larpix-per-pixel"}


def test_status_values_are_the_enums() -> None:
    """Every status comparison is a CheckStatus code, every status panel maps every CheckStatus,
    and every channel status matcher names a judged ChannelStatus; the per-chip table shows all."""
    rules = rules_of(RULES.read_text())
    dashboards = committed_dashboards()
    codes = {int(status) for status in CheckStatus}
    judged = {status.label for status in ChannelStatus.judged()}
    comparisons = []
    for where, expr in expressions(rules, dashboards):
        comparisons += [(where, op, int(value)) for op, value in STATUS_COMPARISON.findall(expr)]
        for label in CHANNEL_STATUS_MATCHER.findall(expr):
            assert label in judged, f"{where}: status={label!r} is not a judged ChannelStatus"
        for label in CHECK_STATUS_MATCHER.findall(expr):
            assert label in {status.label for status in CheckStatus}, f"{where}: status={label!r} is no CheckStatus"
    assert comparisons, "no status comparison found"
    assert all(value in codes for _, _, value in comparisons), comparisons
    error, warning = int(CheckStatus.ERROR), int(CheckStatus.WARNING)
    assert ("alert LarpixCheckError", "==", error) in comparisons
    assert ("alert LarpixCheckWarning", ">=", warning) in comparisons
    assert ("alert LarpixDetectorStatusError", ">=", error) in comparisons

    status_panels = [
        panel
        for dashboard in dashboards.values()
        for panel in panels_of(dashboard)
        if any(re.search(r"larpix_\w+_status\b", t.get("expr", "")) for t in panel.get("targets", []))
        and panel["type"] != "timeseries"
    ]
    assert len(status_panels) == 4, [panel["title"] for panel in status_panels]
    for panel in status_panels:
        defaults = panel["fieldConfig"]["defaults"]
        options = defaults["mappings"][0]["options"]
        assert {code: option["text"] for code, option in options.items()} == {
            str(int(status)): status.label.upper() for status in CheckStatus
        }, panel["title"]
        steps = [step["value"] for step in defaults["thresholds"]["steps"]]
        assert steps == [None, *sorted(codes)[1:]], panel["title"]

    table = next(p for p in panels_of(dashboards["larpix-chips"]) if p["title"] == "Channels by status per chip")
    columns = next(t for t in table["transformations"] if t["id"] == "organize")["options"]["renameByName"]
    assert set(columns.values()) == judged


def test_thresholds_file_holds_no_shared_threshold(alert_generator: ModuleType, tmp_path: Path) -> None:
    """A shared threshold has one source: the defaults file may not declare it again."""
    defaults = yaml.safe_load(THRESHOLDS.read_text())
    for section, key in alert_generator.SHARED:
        assert key not in (defaults.get(section) or {}), f"{section}.{key} is declared in thresholds.yaml"
    assert "job_regex" not in defaults["exporter_down"]

    defaults["parity_errors"]["max_ratio"] = 1e-3
    copy = tmp_path / "thresholds.yaml"
    copy.write_text(yaml.safe_dump(defaults))
    with pytest.raises(alert_generator.ThresholdError, match="'parity_errors.max_ratio' is the parity_error_ratio"):
        alert_generator.load_thresholds(MixinConfig(), copy)


def test_overriding_a_shared_threshold_names_the_check(tmp_path: Path) -> None:
    """A site may still override a shared threshold; the generator says which check it then differs from."""
    override = tmp_path / "site.yaml"
    override.write_text("sync_missing:\n  min_rate_hertz: 0.25\nparity_errors:\n  max_ratio: 0.001\n")
    result = subprocess.run(
        [sys.executable, str(ROOT / "alerts" / "generate.py"), "--thresholds", str(override), "--output", "-"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "larpix_io_group_sync_rate_hertz < 0.25" in rules_of(result.stdout)["LarpixSyncMissing"]["expr"]
    notes = result.stderr.strip().splitlines()
    assert len(notes) == 1, result.stderr  # the parity override equals its check: no note
    assert "'sync_missing.min_rate_hertz' is 0.25, but the sync check's error limit is 0.5" in notes[0]
