"""Tests of the alerting assets: rules, promtool unit tests, Alertmanager config, runbook.

promtool, amtool and Alertmanager are required: when one is missing the test fails with a
message saying what to install (nothing here is skipped).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import require_binary, running_alertmanager, wait_for

ROOT = Path(__file__).resolve().parents[1]
ALERTS = ROOT / "alerts"
RULES = ALERTS / "larpix.rules.yml"
THRESHOLDS = ALERTS / "thresholds.yaml"
GENERATE = ALERTS / "generate.py"
AM_CONFIG = ROOT / "alertmanager.yml"
RUNBOOK = ROOT / "RUNBOOK.md"
METRICS_DOC = ROOT / "docs" / "metrics.md"
RUNBOOK_URL = "https://github.com/larpix-dqm/larpix-dqm/blob/main/RUNBOOK.md#"
RECEIVER = {"critical": "pager", "warning": "ticket", "info": "null"}


def _run(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a command from the repository root, capturing text output."""
    return subprocess.run(
        [str(a) for a in args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _rules() -> list[dict[str, Any]]:
    """The alerting rules of the committed rule file."""
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def _rule(name: str, text: str | None = None) -> dict[str, Any]:
    """One alerting rule by name, from ``text`` (a rule file) or the committed file."""
    doc = yaml.safe_load(text) if text is not None else {"groups": [{"rules": _rules()}]}
    for group in doc["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == name:
                return rule
    raise AssertionError(f"no alert {name}")


ALERT_NAMES = [rule["alert"] for rule in _rules()]


# --------------------------------------------------------------------------- promtool


@pytest.mark.e2e
def test_rules_pass_promtool_check_with_lint() -> None:
    promtool = require_binary("promtool")
    help_text = _run(promtool, "check", "rules", "--help")
    flags = ["--lint=all", "--lint-fatal"] if "--lint-fatal" in help_text.stdout + help_text.stderr else []
    result = _run(promtool, "check", "rules", *flags, RULES)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert f"SUCCESS: {len(ALERT_NAMES)} rules found" in output
    assert "warning" not in output.lower(), output


@pytest.mark.e2e
def test_promtool_unit_tests_pass() -> None:
    promtool = require_binary("promtool")
    files = sorted(ALERTS.glob("tests/*.yml"))
    assert files, "no promtool unit tests in alerts/tests/"
    result = _run(promtool, "test", "rules", *files)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert output.count("SUCCESS") == len(files), output


def test_every_alert_has_firing_and_silent_unit_tests() -> None:
    firing: set[str] = set()
    silent: set[str] = set()
    for path in ALERTS.glob("tests/*.yml"):
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        for test in doc["tests"]:
            for case in test.get("alert_rule_test", []):
                (firing if case.get("exp_alerts") else silent).add(case["alertname"])
                for alert in case.get("exp_alerts") or []:
                    labels = alert.get("exp_labels", {})
                    annotations = alert.get("exp_annotations", {})
                    assert "severity" in labels, (path.name, case["alertname"])
                    assert set(annotations) == {"summary", "description", "runbook_url"}, (
                        path.name,
                        case["alertname"],
                    )
    assert sorted(set(ALERT_NAMES) - firing) == [], "alerts without a firing test"
    assert sorted(set(ALERT_NAMES) - silent) == [], "alerts without a must-not-fire test"


# --------------------------------------------------------------------------- conventions


def test_rules_follow_monitoring_mixin_conventions() -> None:
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    assert [group["name"] for group in doc["groups"]] == ["larpix"]
    assert len(set(ALERT_NAMES)) == len(ALERT_NAMES), "duplicate alert names"
    for rule in _rules():
        name = rule["alert"]
        assert re.fullmatch(r"Larpix(?:[A-Z][a-z0-9]*)+", name), name
        assert set(rule["labels"]) == {"severity"}, name
        assert rule["labels"]["severity"] in RECEIVER, name
        assert list(rule["annotations"]) == ["summary", "description", "runbook_url"], name
        assert rule["annotations"]["runbook_url"] == RUNBOOK_URL + name.lower(), name


def test_expected_alerts_exist() -> None:
    expected = {
        "LarpixExporterDown": "critical",
        "LarpixDataStale": "critical",
        "LarpixIngestLagHigh": "warning",
        "LarpixReadErrors": "warning",
        "LarpixChipSilent": "critical",
        "LarpixChipManySilentChannels": "warning",
        "LarpixChipNoisyChannels": "warning",
        "LarpixTileManySilentChips": "warning",
        "LarpixParityErrorRatioHigh": "warning",
        "LarpixFifoFull": "warning",
        "LarpixSyncMissing": "critical",
        "LarpixSyncOffset": "warning",
        "LarpixClockOffset": "warning",
        "LarpixDetectorStatusError": "critical",
        "LarpixCheckError": "warning",
        "LarpixCheckWarning": "info",
    }
    assert {rule["alert"]: rule["labels"]["severity"] for rule in _rules()} == expected


def test_check_warning_follows_check_error() -> None:
    """LarpixCheckWarning reads LarpixCheckError's ALERTS series: the error rule must be
    evaluated first (same group, earlier), or the warning lags one evaluation behind."""
    assert ALERT_NAMES.index("LarpixCheckError") < ALERT_NAMES.index("LarpixCheckWarning")
    assert 'ALERTS{alertname="LarpixCheckError", alertstate="firing"}' in _rule("LarpixCheckWarning")["expr"]


def _github_anchor(heading: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def test_runbook_has_a_section_per_alert() -> None:
    text = RUNBOOK.read_text(encoding="utf-8")
    anchors = {_github_anchor(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.MULTILINE)}
    for rule in _rules():
        anchor = rule["annotations"]["runbook_url"].rsplit("#", 1)[1]
        assert anchor in anchors, f"RUNBOOK.md has no section for #{anchor}"


def test_rules_use_only_documented_metrics() -> None:
    documented = set(re.findall(r"\blarpix_[a-z0-9_]+", METRICS_DOC.read_text(encoding="utf-8")))
    for rule in _rules():
        for metric in re.findall(r"\blarpix_[a-z0-9_]+", rule["expr"]):
            base = re.sub(r"_(bucket|sum|count)$", "", metric)
            assert metric in documented or base in documented, (rule["alert"], metric)


def test_every_threshold_key_is_commented() -> None:
    previous = ""
    for number, line in enumerate(THRESHOLDS.read_text(encoding="utf-8").splitlines(), 1):
        stripped = line.strip()
        if not stripped:
            continue
        if not stripped.startswith("#"):
            assert previous.startswith("#"), f"thresholds.yaml:{number}: {stripped!r} has no comment"
        previous = stripped


# --------------------------------------------------------------------------- generate.py


def _generate(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return _run(sys.executable, GENERATE, *args)


@pytest.mark.e2e
def test_committed_rules_are_up_to_date() -> None:
    result = _generate("--output", "-")
    assert result.returncode == 0, result.stderr
    assert result.stdout == RULES.read_text(encoding="utf-8"), (
        "alerts/larpix.rules.yml is stale: run python alerts/generate.py"
    )
    check = _generate("--check")
    assert check.returncode == 0, check.stderr


@pytest.mark.e2e
def test_override_changes_thresholds(tmp_path: Path) -> None:
    override = tmp_path / "site.yaml"
    override.write_text(
        "chip_noisy_channels:\n  min_count: 8\n  rate_hertz: 50\n"
        "parity_errors:\n  max_ratio: 1e-2\n"  # YAML 1.1 reads this as a string: accepted
        "sync_missing:\n  for: 2m\n",
        encoding="utf-8",
    )
    output = tmp_path / "site.rules.yml"
    result = _generate("--thresholds", override, "--output", output)
    assert result.returncode == 0, result.stderr
    text = output.read_text(encoding="utf-8")

    noisy = _rule("LarpixChipNoisyChannels", text)
    assert '{status="noisy"}) >= 8' in noisy["expr"]
    assert "(larpix_channel_hit_rate_hertz > 50) >= 8" in noisy["expr"]
    assert "threshold 8 channels" in noisy["annotations"]["description"]
    assert _rule("LarpixParityErrorRatioHigh", text)["expr"].endswith("> 0.01")
    assert _rule("LarpixSyncMissing", text)["for"] == "2m"
    # Keys not in the override keep their defaults.
    assert _rule("LarpixChipNoisyChannels", text)["for"] == "15m"
    assert _rule("LarpixDataStale", text) == _rule("LarpixDataStale")
    assert f"+ {override}" in text.splitlines()[1]

    promtool = require_binary("promtool")
    check = _run(promtool, "check", "rules", output)
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("content", "key"),
    [
        ("chip_silnt:\n  for: 5m\n", "chip_silnt"),
        ("chip_silent:\n  fro: 5m\n", "chip_silent.fro"),
        ("sync_offset:\n  quantile: 0.99\n  max_abs_ticks: 100\n", "sync_offset.max_abs_ticks"),
    ],
)
def test_override_unknown_key_is_rejected(tmp_path: Path, content: str, key: str) -> None:
    override = tmp_path / "bad.yaml"
    override.write_text(content, encoding="utf-8")
    output = tmp_path / "out.yml"
    result = _generate("--thresholds", override, "--output", output)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"unknown key '{key}'" in lines[0]
    assert str(override) in lines[0]
    assert not output.exists()


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("content", "key"),
    [
        ("chip_silent:\n  for: five minutes\n", "chip_silent.for"),
        ("parity_errors:\n  max_ratio: 2\n", "parity_errors.max_ratio"),
        ("chip_noisy_channels:\n  min_count: 2.5\n", "chip_noisy_channels.min_count"),
        ("fifo_full:\n  window: 0s\n", "fifo_full.window"),
        ("data_stale: 300\n", "data_stale"),
    ],
)
def test_override_bad_value_is_rejected(tmp_path: Path, content: str, key: str) -> None:
    override = tmp_path / "bad.yaml"
    override.write_text(content, encoding="utf-8")
    result = _generate("--thresholds", override, "--output", tmp_path / "out.yml")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"'{key}'" in lines[0] and str(override) in lines[0]


# --------------------------------------------------------------------------- Alertmanager


@pytest.mark.e2e
def test_amtool_check_config() -> None:
    amtool = require_binary("amtool")
    result = _run(amtool, "check-config", AM_CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def _route(*labels: str) -> str:
    amtool = require_binary("amtool")
    result = _run(amtool, "config", "routes", "test", "--config.file", AM_CONFIG, *labels)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip()


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["severity=critical", "alertname=LarpixChipSilent", "io_group=1"], "pager"),
        (["severity=critical", "alertname=LarpixExporterDown"], "pager"),
        (["severity=warning", "alertname=LarpixFifoFull", "io_group=2", "chip_id=11"], "ticket"),
        (["severity=info", "alertname=LarpixSomethingInformative", "io_group=1"], "null"),
        (["alertname=SomeAlertWithoutSeverity"], "ticket"),
        (["severity=unknown", "alertname=SomeAlert"], "ticket"),
    ],
)
def test_routes(labels: list[str], receiver: str) -> None:
    assert _route(*labels) == receiver


@pytest.mark.e2e
@pytest.mark.parametrize("name", ALERT_NAMES)
def test_every_alert_routes_by_its_severity(name: str) -> None:
    severity = _rule(name)["labels"]["severity"]
    assert _route(f"alertname={name}", f"severity={severity}", "io_group=1") == RECEIVER[severity]


def _http(url: str, payload: Any = None) -> Any:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        body = response.read()
    return json.loads(body) if body else None


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throw-away Alertmanager running alertmanager.yml on a free local port; yields its URL."""
    config = yaml.safe_load(AM_CONFIG.read_text(encoding="utf-8"))
    with running_alertmanager(config, tmp_path_factory.mktemp("alertmanager")) as proc:
        yield f"http://{proc.address}"


def _alert(**labels: str) -> dict[str, Any]:
    now = datetime.now(timezone.utc)
    stamp = "%Y-%m-%dT%H:%M:%S.000Z"
    return {
        "labels": labels,
        "annotations": {},
        "startsAt": now.strftime(stamp),
        "endsAt": (now + timedelta(hours=1)).strftime(stamp),
    }


def _states(url: str, expected: dict[str, str]) -> dict[str, str]:
    """Poll until every alert named in ``expected`` (by its ``case`` label) has that state; the states seen last."""

    def current() -> dict[str, str]:
        return {a["labels"]["case"]: a["status"]["state"] for a in _http(f"{url}/api/v2/alerts")}

    def settled() -> dict[str, str] | None:
        states = current()
        return states if all(states.get(case) == state for case, state in expected.items()) else None

    try:
        return wait_for(settled, timeout=15, what="alert states")
    except AssertionError:  # not settled: the caller's assertion shows the difference
        return current()


@pytest.mark.e2e
def test_inhibition_rules(alertmanager: str) -> None:
    chip = {"job": "larpix", "io_group": "1", "io_channel": "5", "chip_id": "11"}
    alerts = [
        # a:1 has stale data: its chip and tile alerts are muted, its sync alert is not.
        _alert(case="a-stale", alertname="LarpixDataStale", severity="critical", job="larpix", instance="a:1"),
        _alert(case="a-chip", alertname="LarpixChipSilent", severity="critical", instance="a:1", **chip),
        _alert(
            case="a-tile",
            alertname="LarpixTileManySilentChips",
            severity="warning",
            job="larpix",
            instance="a:1",
            io_group="1",
            tile="3",
        ),
        _alert(
            case="a-sync", alertname="LarpixSyncOffset", severity="warning", job="larpix", instance="a:1", io_group="1"
        ),
        # a:1's per-pixel scrape job: same exporter, so muted too.
        _alert(
            case="a-pixel",
            alertname="LarpixChipNoisyChannels",
            severity="warning",
            instance="a:1",
            **{**chip, "job": "larpix-per-pixel"},
        ),
        # a:1's check alerts carry chip_id (chip-scope checks): muted like the other chip alerts.
        _alert(
            case="a-check-error",
            alertname="LarpixCheckError",
            severity="warning",
            instance="a:1",
            check="hit_rate_ratio",
            **chip,
        ),
        _alert(
            case="a-check-warning",
            alertname="LarpixCheckWarning",
            severity="info",
            instance="a:1",
            check="pedestal",
            **chip,
        ),
        # b:1 is another exporter: a:1's staleness must not mute it.
        _alert(case="b-chip", alertname="LarpixChipSilent", severity="critical", instance="b:1", **chip),
        _alert(
            case="b-check-error",
            alertname="LarpixCheckError",
            severity="warning",
            instance="b:1",
            check="hit_rate_ratio",
            **chip,
        ),
        # b:1's detector page has no chip or tile label: only the rule's staleness guard
        # keeps it quiet for a stale exporter, Alertmanager never mutes it.
        _alert(
            case="b-detector",
            alertname="LarpixDetectorStatusError",
            severity="critical",
            job="larpix",
            instance="b:1",
        ),
        # c:1: a dead chip mutes its own many-silent-channels ticket, not another chip's.
        _alert(case="c-silent", alertname="LarpixChipSilent", severity="critical", instance="c:1", **chip),
        _alert(case="c-channels", alertname="LarpixChipManySilentChannels", severity="warning", instance="c:1", **chip),
        _alert(
            case="c-other-chip",
            alertname="LarpixChipManySilentChannels",
            severity="warning",
            instance="c:1",
            **{**chip, "chip_id": "12"},
        ),
        # d:1: critical mutes warning of the same alert on the same chip.
        _alert(case="d-crit", alertname="LarpixParityErrorRatioHigh", severity="critical", instance="d:1", **chip),
        _alert(case="d-warn", alertname="LarpixParityErrorRatioHigh", severity="warning", instance="d:1", **chip),
    ]
    _http(f"{alertmanager}/api/v2/alerts", alerts)
    expected = {
        "a-stale": "active",
        "a-chip": "suppressed",
        "a-tile": "suppressed",
        "a-pixel": "suppressed",
        "a-sync": "active",
        "a-check-error": "suppressed",
        "a-check-warning": "suppressed",
        "b-chip": "active",
        "b-check-error": "active",
        "b-detector": "active",
        "c-silent": "active",
        "c-channels": "suppressed",
        "c-other-chip": "active",
        "d-crit": "active",
        "d-warn": "suppressed",
    }
    assert _states(alertmanager, expected) == expected

    # No larpix target at all (absent(): no job/instance labels): every chip alert is muted.
    _http(
        f"{alertmanager}/api/v2/alerts",
        [_alert(case="absent", alertname="LarpixExporterDown", severity="critical")],
    )
    expected = {
        "a-stale": "active",
        "a-chip": "suppressed",
        "a-tile": "suppressed",
        "a-pixel": "suppressed",
        "a-sync": "active",
        "a-check-error": "suppressed",
        "a-check-warning": "suppressed",
        "b-chip": "suppressed",
        "b-check-error": "suppressed",
        "b-detector": "active",
        "c-silent": "suppressed",
        "c-channels": "suppressed",
        "c-other-chip": "suppressed",
        "d-crit": "suppressed",
        "d-warn": "suppressed",
        "absent": "active",
    }
    assert _states(alertmanager, expected) == expected
