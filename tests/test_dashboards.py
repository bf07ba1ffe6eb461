"""Checks of the generated Grafana dashboards and of the compose stack's configuration.

- the committed ``dashboards/json/*.json`` are what ``dashboards/generate.py`` produces;
- every PromQL expression in them parses (``promtool check rules``);
- they only use metric names documented in ``docs/metrics.md`` (plus ``up`` and ``ALERTS``)
  and only known label names;
- ``docker-compose.yml`` and ``prometheus.yml`` are valid (``docker-compose config``,
  ``promtool check config``).

Needs the ``promtool`` and ``docker-compose`` binaries (Debian packages ``prometheus`` and
``docker-compose``) and, for the staleness check, the pinned ``grafana-foundation-sdk``.
A missing tool fails the test with a message saying what to install: nothing is skipped.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from helpers import require_binary

ROOT = Path(__file__).resolve().parents[1]
GENERATE = ROOT / "dashboards" / "generate.py"
JSON_DIR = ROOT / "dashboards" / "json"
METRICS_DOC = ROOT / "docs" / "metrics.md"
COMPOSE_FILE = ROOT / "docker-compose.yml"
PROMETHEUS_CONFIG = ROOT / "prometheus.yml"

EXPECTED_UIDS = {"larpix-overview", "larpix-chips", "larpix-exporter", "larpix-pixelmaps"}
# Series Prometheus itself makes, usable in dashboards besides the exporter's metrics.
PROMETHEUS_METRICS = {"up", "ALERTS"}
# Labels that Prometheus adds (target, histogram buckets, alerts) besides documented ones.
PROMETHEUS_LABELS = {"__name__", "job", "instance", "le", "alertname", "alertstate", "severity"}
CHIP_LABELS = {"io_group", "io_channel", "chip_id"}

PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool"}
PROMQL_KEYWORDS |= {"offset", "inf", "nan", "start", "end"}
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
IDENTIFIER = re.compile(r"(?<![A-Za-z0-9_:.])[A-Za-z_:][A-Za-z0-9_:]*")
MATCHER_LABEL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(.*),\s*)?([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*$", re.S)

# Grafana's built-in interval variables, replaced by something promtool accepts.
GRAFANA_INTERVALS = {"__rate_interval": "1m", "__interval": "1m", "__range": "1h", "__range_s": "3600"}
GRAFANA_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)(?::\w+)?\]\]")


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kwargs)


# --------------------------------------------------------------------------- loading


def load_dashboards() -> dict[str, dict]:
    files = sorted(JSON_DIR.glob("*.json"))
    assert files, f"no dashboards in {JSON_DIR}: run `python dashboards/generate.py`"
    return {path.stem: json.loads(path.read_text()) for path in files}


def iter_panels(panels: list[dict]) -> Iterator[dict]:
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels", []))


def expressions(dashboard: dict) -> Iterator[tuple[str, str]]:
    """Yield ``(where, PromQL)`` for every query of a dashboard: panel targets,
    annotations and the series selectors of ``label_values(...)`` variables."""
    uid = dashboard["uid"]
    for panel in iter_panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            if "expr" in target:
                yield f"{uid} panel {panel.get('id')} '{panel.get('title')}' ref {target.get('refId')}", target["expr"]
    for annotation in dashboard.get("annotations", {}).get("list", []):
        if annotation.get("expr"):
            yield f"{uid} annotation '{annotation['name']}'", annotation["expr"]
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        q = variable["query"]
        q = q.get("query", "") if isinstance(q, dict) else q
        match = LABEL_VALUES.match(q)
        if match is None:
            yield f"{uid} variable {variable['name']}", q
        elif match.group(1):
            yield f"{uid} variable {variable['name']}", match.group(1)


def all_expressions() -> list[tuple[str, str]]:
    found = [item for dashboard in load_dashboards().values() for item in expressions(dashboard)]
    assert found, "the dashboards contain no PromQL expressions"
    return found


def substitute_variables(expr: str) -> str:
    """Replace Grafana template variables with concrete values promtool accepts."""

    def value(match: re.Match) -> str:
        name = next(group for group in match.groups() if group)
        return GRAFANA_INTERVALS.get(name, "1")

    return GRAFANA_VARIABLE.sub(value, expr)


def markdown_table(text: str, header: tuple[str, ...]) -> list[list[str]]:
    """Body rows (lists of stripped cells) of the first Markdown table whose header row
    starts with the cells ``header``; fails when there is none."""
    rows: list[list[str]] | None = None
    for line in text.splitlines():
        if not line.startswith("|"):
            if rows is not None:
                break
            continue
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
        if rows is None:
            if tuple(cells[: len(header)]) == header:
                rows = []
        elif not all(set(cell) <= set("-: ") for cell in cells):
            rows.append(cells)
    assert rows, f"no table with header {header} in the document"
    return rows


def documented_metrics() -> tuple[set[str], set[str]]:
    """Metric names (histograms expanded to _bucket/_sum/_count) and label names of docs/metrics.md."""
    names: set[str] = set()
    labels: set[str] = set()
    for cells in markdown_table(METRICS_DOC.read_text(), ("name", "type", "labels")):
        if len(cells) < 3:
            continue
        metric_names = re.findall(r"`([a-zA-Z_:][a-zA-Z0-9_:]*)`", cells[0])
        names.update(metric_names)
        if cells[1].startswith("histogram"):
            names.update(f"{name}{suffix}" for name in metric_names for suffix in ("_bucket", "_sum", "_count"))
        for label in cells[2].split(","):
            label = label.strip().split("=")[0].strip()
            if label == "chip":
                labels |= CHIP_LABELS
            elif label:
                labels.add(label)
    assert names, f"found no metrics table in {METRICS_DOC}"
    for cells in markdown_table(METRICS_DOC.read_text(), ("record", "labels")):  # the recording rules' series
        names.update(re.findall(r"`([a-zA-Z_:][a-zA-Z0-9_:]*)`", cells[0]))
    return names, labels


def promql_names(expr: str) -> tuple[set[str], set[str]]:
    """Return ``(metric names, label names)`` used by a PromQL expression.

    A small lexer, enough for the dashboards' PromQL: strings, label matchers, ranges and
    grouping clauses are removed; identifiers left over that are not followed by ``(``
    (functions, aggregations) and are not keywords are metric names.
    """
    text = STRING.sub('""', expr)
    labels: set[str] = set()
    for matchers in re.findall(r"\{([^}]*)\}", text):
        labels.update(MATCHER_LABEL.findall(matchers))
    for grouping in GROUPING.findall(text):
        labels.update(label.strip() for label in grouping.split(",") if label.strip())
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = GROUPING.sub(" ", text)
    metrics = set()
    for match in IDENTIFIER.finditer(text):
        name = match.group(0)
        if text[match.end() :].lstrip().startswith("(") or name.lower() in PROMQL_KEYWORDS:
            continue
        metrics.add(name)
    return metrics, labels


# --------------------------------------------------------------------------- tests


@pytest.mark.external
def test_committed_json_is_up_to_date(tmp_path: Path) -> None:
    result = run([sys.executable, str(GENERATE), "--out", str(tmp_path)], cwd=ROOT)
    if result.returncode != 0:
        pytest.fail(f"dashboards/generate.py failed (exit {result.returncode}):\n{result.stdout}{result.stderr}")
    generated = {path.name: path.read_bytes() for path in tmp_path.glob("*.json")}
    committed = {path.name: path.read_bytes() for path in JSON_DIR.glob("*.json")}
    hint = "run `python dashboards/generate.py` and commit dashboards/json/"
    assert sorted(generated) == sorted(committed), f"dashboard files differ from the generated set: {hint}"
    stale = sorted(name for name in generated if generated[name] != committed[name])
    assert not stale, f"stale dashboards {stale}: {hint}"


def test_dashboards_have_the_required_shape() -> None:
    dashboards = load_dashboards()
    assert set(dashboards) == EXPECTED_UIDS
    for name, dashboard in dashboards.items():
        assert dashboard["uid"] == name, f"{name}.json has uid {dashboard['uid']!r}"
        assert dashboard["title"]
        assert dashboard["tags"] == ["larpix"]
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        assert variables["io_group"]["type"] == "query"
        assert (
            variables["io_group"]["query"]
            == 'label_values(larpix_packets_total{job=~"$job", instance=~"$instance"}, io_group)'
        )
        # the Prometheus target labels select one exporter (shard), several, or all of them
        assert list(variables)[1:4] == ["job", "instance", "io_group"], list(variables)
        for target in ("job", "instance"):
            assert variables[target]["multi"] and variables[target]["includeAll"], (name, target)
        assert variables["instance"]["query"] == 'label_values(up{job=~".*larpix.*", job=~"$job"}, instance)'
        for where, expr in expressions(dashboard):
            # every query of the exporters' series is on the selected ones (recording rules: per job)
            if re.search(r"(?<![:\w])larpix_\w+", expr) and "up{" not in expr and " variable " not in where:
                assert "$instance" in expr and "$job" in expr, (name, where, expr)
        assert variables["io_group"]["datasource"]["uid"] == "${datasource}"
        ids = [panel["id"] for panel in iter_panels(dashboard["panels"])]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        for panel in iter_panels(dashboard["panels"]):
            if panel.get("targets"):
                assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
                refs = [target["refId"] for target in panel["targets"]]
                assert all(refs) and len(refs) == len(set(refs)), f"{name} '{panel['title']}': bad refIds {refs}"
    exporter_url = {v["name"]: v for v in dashboards["larpix-pixelmaps"]["templating"]["list"]}["exporter_url"]
    assert exporter_url["type"] in {"textbox", "constant"}
    assert exporter_url["query"] == "http://localhost:9767"
    contents = [
        p["options"]["content"] for p in iter_panels(dashboards["larpix-pixelmaps"]["panels"]) if p["type"] == "text"
    ]
    assert any('src="${exporter_url}/plots/AnodeOverview.png' in c for c in contents)
    assert any("/plots/PixelMap_${io_group}_1.png" in c for c in contents)
    assert all(
        p["options"]["mode"] == "html"
        for p in iter_panels(dashboards["larpix-pixelmaps"]["panels"])
        if p["type"] == "text"
    )


def test_status_and_reference_panels() -> None:
    """The overview opens with the detector status (UNKNOWN/OK/WARNING/ERROR), io_group and tile
    status; the chips dashboard has the non-ok checks and a Reference row with the three
    reference gauges."""
    dashboards = load_dashboards()
    overview = dashboards["larpix-overview"]["panels"]
    assert overview[0]["type"] == "row" and overview[0]["title"] == "Detector status"
    top = overview[1 : next(i for i, p in enumerate(overview) if i and p["type"] == "row")]
    exprs = {p["type"]: p["targets"][0]["expr"] for p in top}
    assert "larpix_detector_status" in exprs["stat"]
    assert any("larpix_io_group_status" in p["targets"][0]["expr"] for p in top)
    assert any("larpix_tile_status" in p["targets"][0]["expr"] for p in top)
    for panel in top:
        options = panel["fieldConfig"]["defaults"]["mappings"][0]["options"]
        assert {k: (v["text"], v["color"]) for k, v in options.items()} == {
            "-1": ("UNKNOWN", "#8e8e8e"),
            "0": ("OK", "green"),
            "1": ("WARNING", "yellow"),
            "2": ("ERROR", "red"),
        }, panel["title"]

    chips = list(iter_panels(dashboards["larpix-chips"]["panels"]))
    targets = [target["expr"] for panel in chips for target in panel.get("targets", [])]
    assert any(re.search(r"larpix_check_status\{[^}]*\} > 0", expr) for expr in targets)
    rows = [i for i, p in enumerate(chips) if p["type"] == "row"]
    start = next(i for i in rows if chips[i]["title"] == "Reference")
    end = next((i for i in rows if i > start), len(chips))
    reference = " ".join(t["expr"] for p in chips[start + 1 : end] for t in p.get("targets", []))
    for name in ("rate_ratio", "pedestal_shift", "rate_chi2"):
        assert f"larpix_chip_reference_{name}" in reference


@pytest.mark.external
def test_every_expression_parses_with_promtool(tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    rules, where = [], {}
    for number, (origin, expr) in enumerate(all_expressions()):
        record = f"dashboard:expr_{number}"
        where[record] = origin
        rules.append({"record": record, "expr": substitute_variables(expr)})
    assert not [r for r in rules if "$" in r["expr"]], "template variables left after substitution"
    rules_file = tmp_path / "dashboard-exprs.rules.yml"
    rules_file.write_text(json.dumps({"groups": [{"name": "dashboards", "rules": rules}]}, indent=2))
    result = run([promtool, "check", "rules", str(rules_file)])
    if result.returncode != 0:
        output = result.stdout + result.stderr
        failed = [r for r in rules if f'"{r["record"]}"' in output] or rules
        listing = "\n".join(f"  {r['record']}: {where[r['record']]}:\n    {r['expr']}" for r in failed)
        pytest.fail(f"promtool rejected dashboard PromQL:\n{output}\nexpressions:\n{listing}")


def test_only_documented_metrics_and_labels_are_used() -> None:
    metrics, labels = documented_metrics()
    allowed_metrics = metrics | PROMETHEUS_METRICS
    allowed_labels = labels | PROMETHEUS_LABELS
    problems = []
    for origin, expr in all_expressions():
        used_metrics, used_labels = promql_names(expr)
        if not used_metrics and "time()" not in expr:
            problems.append(f"{origin}: no metric found in {expr!r}")
        for name in sorted(used_metrics - allowed_metrics):
            problems.append(f"{origin}: metric {name!r} is not in docs/metrics.md")
        for name in sorted(used_labels - allowed_labels):
            problems.append(f"{origin}: label {name!r} is not in docs/metrics.md")
    assert not problems, "\n".join(problems)


def test_promql_lexer_finds_metrics_and_labels() -> None:
    metrics, labels = promql_names(
        'topk(10, sum by (tile) (rate(larpix_chip_packets_total{io_group=~"1|2", x="a{b}"}[5m] offset 1h))'
        " * on(instance, chip_id) group_left(tile) larpix_chip_info) > bool 1e7"
        " or histogram_quantile(0.99, larpix_adc_bucket) unless up"
    )
    assert metrics == {"larpix_chip_packets_total", "larpix_chip_info", "larpix_adc_bucket", "up"}
    assert labels == {"tile", "io_group", "x", "instance", "chip_id"}
    assert (
        substitute_variables('rate(x{a=~"$io_group",b="${tile:csv}"}[$__rate_interval])') == 'rate(x{a=~"1",b="1"}[1m])'
    )


def _documented_range(cell: str) -> tuple[float, float]:
    """``0.05 to 5``, ``≤ 0.1``, ``≥ 3`` or ``any`` (the Checks table's range cells)."""
    cell = cell.replace("\u2212", "-")
    if cell == "any":
        return (-math.inf, math.inf)
    if cell.startswith("≤ "):
        return (-math.inf, float(cell[2:]))
    if cell.startswith("≥ "):
        return (float(cell[2:]), math.inf)
    low, sep, high = cell.partition(" to ")
    assert sep, f"range cell {cell!r}: expected 'LOW to HIGH', '≤ HIGH', '≥ LOW' or 'any'"
    return (float(low), float(high))


def test_checks_table_matches_the_default_checks() -> None:
    """docs/metrics.md's Checks table is larpix_dqm.exporter.quality.checks.DEFAULT_CHECKS, row for row."""
    from larpix_dqm.exporter.quality.checks import DEFAULT_CHECKS

    reference_note = " (only with `serve --reference FILE`)"
    documented = [
        (cells[0].strip("`"), cells[1], cells[2], _documented_range(cells[3]), _documented_range(cells[4]), cells[5])
        for cells in markdown_table(METRICS_DOC.read_text(), ("check", "scope", "unit"))
    ]
    expected = [
        (c.name, c.scope, c.unit, c.warning, c.error, c.meaning + (reference_note if c.needs_reference else ""))
        for c in DEFAULT_CHECKS
    ]
    assert documented == expected, (
        "docs/metrics.md's Checks table differs from exporter/quality/checks.py DEFAULT_CHECKS"
    )


class _PlotSource:
    """The plot manager as FamilyBuilder's exporter families see it: one plot drawn once."""

    store = None

    def status(self) -> dict:
        plugin = {"renders": 1, "failures": 0, "last_error": "", "disabled": False}
        return {"plugins": {"PixelMap": plugin}, "last_cycle_seconds": 0.5, "cycles": 1, "dropped_packets": 0}


def test_metrics_doc_lists_exactly_the_served_families(tile_geometry, tmp_path: Path) -> None:
    """Every family the exporter can serve (per-pixel, checks, reference, plots) has a row in
    docs/metrics.md, and every documented larpix_ metric is served by one."""
    from helpers import START

    from larpix_dqm.exporter import Monitor
    from larpix_dqm.exporter.metrics.families import FamilyBuilder
    from larpix_dqm.exporter.metrics.health import Health
    from larpix_dqm.exporter.quality.reference import Reference
    from larpix_dqm.exporter.reading.decode import decode_messages
    from larpix_dqm.exporter.simulate import SimulationConfig, Simulator
    from larpix_dqm.exporter.web.pages import plot_families

    def monitor(**kw) -> Monitor:
        mon = Monitor(tile_geometry, **kw)
        sim = Simulator(tile_geometry, SimulationConfig(seed=1, periodic_trigger_hz=2.0))  # + the pedestal families
        for second in range(5):
            mon.feed(decode_messages(*sim.second(START + second)).packets)
        return mon

    reference = tmp_path / "reference.npz"
    Reference.from_snapshot(monitor(window=10**6, window_bins=1).update().snapshot, ["test"]).save(reference)
    state = monitor(reference=reference).update()
    families = FamilyBuilder().families(state.snapshot, Health(), per_pixel=True, evaluation=state)
    families += plot_families(_PlotSource())
    served = {f.name + "_total" if f.type == "counter" else f.name for f in families}
    served.add("larpix_exporter_scrape_duration_seconds")  # added by exporter/web/server.py to every scrape
    documented = {name for name in documented_metrics()[0] if name.startswith("larpix_")}
    documented -= {f"{f.name}{s}" for f in families if f.type == "histogram" for s in ("_bucket", "_sum", "_count")}
    assert sorted(served - documented) == [], "served but not documented in docs/metrics.md"
    assert sorted(documented - served) == [], "documented in docs/metrics.md but not served"


@pytest.mark.external
def test_docker_compose_config_is_valid(tmp_path: Path) -> None:
    compose = require_binary("docker-compose")
    shutil.copy(COMPOSE_FILE, tmp_path / "docker-compose.yml")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LARPIX_", "COMPOSE_"))}
    result = run([compose, "-f", "docker-compose.yml", "config", "-q"], cwd=tmp_path, env=env)
    assert result.returncode == 0, f"docker-compose config failed:\n{result.stdout}{result.stderr}"

    # Default: simulated data in the named volume shared by the exporter and the simulator.
    result = run([compose, "-f", "docker-compose.yml", "--profile", "sim", "config"], cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert {"exporter", "simulator", "prometheus", "alertmanager", "grafana"} <= set(config["services"])
    assert "larpix-sim-data:/data:ro" in config["services"]["exporter"]["volumes"]
    assert "larpix-sim-data:/data:rw" in config["services"]["simulator"]["volumes"]

    # Real data: one variable switches the exporter to a host directory.
    env["LARPIX_DATA_DIR"] = "/srv/daq/live"
    result = run([compose, "-f", "docker-compose.yml", "config"], cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert "/srv/daq/live:/data:ro" in config["services"]["exporter"]["volumes"]


@pytest.mark.external
def test_prometheus_config_is_valid() -> None:
    promtool = require_binary("promtool")
    result = run([promtool, "check", "config", str(PROMETHEUS_CONFIG)], cwd=ROOT)
    assert result.returncode == 0, f"promtool check config failed:\n{result.stdout}{result.stderr}"
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["larpix"]["scrape_interval"] == "15s"
    per_pixel = jobs["larpix-per-pixel"]
    assert per_pixel["params"] == {"per_pixel": ["1"]}
    assert (per_pixel["scrape_interval"], per_pixel["scrape_timeout"], per_pixel["sample_limit"]) == (
        "60s",
        "30s",
        300000,
    )


@pytest.mark.external
def test_prometheus_config_loads_the_repo_alert_rules(tmp_path: Path) -> None:
    """prometheus.yml's rule_files glob, pointed at the repo's alerts/ (mounted at
    /etc/prometheus/rules in compose), yields rule files Prometheus accepts."""
    promtool = require_binary("promtool")
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    mount = "/etc/prometheus/rules/"
    assert all(pattern.startswith(mount) for pattern in config["rule_files"]), config["rule_files"]
    config["rule_files"] = [str(ROOT / "alerts" / pattern[len(mount) :]) for pattern in config["rule_files"]]
    copy = tmp_path / "prometheus.yml"
    copy.write_text(yaml.safe_dump(config))
    result = run([promtool, "check", "config", str(copy)])
    assert result.returncode == 0, f"promtool check config (with alerts/) failed:\n{result.stdout}{result.stderr}"
