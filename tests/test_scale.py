"""The distributed path on real engines (issue 22 items 3 and 5): shards, agents, central stores.

One simulated run of a three-io_group detector (``deploy/scale/layout-3-io-groups.yaml``), three
exporters (``--io-groups 1``, ``2``, ``3``) on the same directory, and two Prometheus in agent
mode (``--enable-feature=agent``, the shipped ``deploy/scale/prometheus-agent-{a,b}.yml``): host A
scrapes shards 1 and 2, host B shard 3. Each agent remote-writes to both central stores at once:

- a central Prometheus (``--web.enable-remote-write-receiver``, the shipped
  ``deploy/scale/prometheus-central.yml``) evaluating the rules and alerting;
- VictoriaMetrics single-node with vmalert evaluating the same rule file over it.

Both send their alerts to one real Alertmanager (the shipped ``alertmanager.yml``, webhooks
pointed at a receiver); the label ``central`` (an external label of each) says which store an
alert came from, and every check is made for both. Everything runs on 127.0.0.1 with free ports
and is stopped when the test ends, however it ends.

1. A healthy backlog of one window (so chip 3-1-11 was alive), then a live simulator with chip
   3-1-11 silent: LarpixChipSilent pages from both stores, with the instance of exporter 3 and
   io_group 3, and nothing pages for another chip.
2. The detector-wide rules over the shards: ``job:larpix_detector_status:max`` is the worst
   status of the three exporters (shard 3's), ``job:larpix_chip_dead:sum`` is 1 and three
   io_groups are served.
3. ``kill -9`` of exporter 3: LarpixExporterDown fires for its instance and no other, and the
   other two shards' counters keep growing in both stores.
4. Exporter 3 restarts on the same port with the same state directory: its counters continue
   (``resets()`` over the whole test is 0 in both stores: no reset, so no rate spike).

Rule ``for:`` overrides (``alerts/generate.py``): LarpixChipSilent 5s and LarpixExporterDown 10s,
so the test takes seconds; every other alert keeps its production ``for:``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import stack
import yaml
from helpers import (
    Process,
    free_port,
    http_get,
    require_binary,
    running_exporter,
    running_process,
    wait_for,
)

pytestmark = pytest.mark.external

ROOT = Path(__file__).resolve().parents[1]
SCALE = ROOT / "deploy" / "scale"
LAYOUT = SCALE / "layout-3-io-groups.yaml"
DEAD_CHIP = {"io_group": "3", "io_channel": "1", "chip_id": "11"}
WINDOW_SECONDS = 10
RULE_OVERRIDES = {"chip_silent": {"for": "5s"}, "exporter_down": {"for": "10s"}}
CENTRALS = ("prometheus", "victoriametrics")


# --------------------------------------------------------------------------- configs


def agent_config(host: str, addresses: Mapping[str, str], interval: str = "1s") -> dict[str, Any]:
    """The shipped ``deploy/scale/prometheus-agent-HOST.yml`` for a test: every scrape target and
    remote-write URL mapped through ``addresses`` (compose name -> loopback; an unmapped one is
    an error), scrapes every ``interval``, a 1 s batch deadline. Jobs and queues as shipped."""
    config = yaml.safe_load((SCALE / f"prometheus-agent-{host}.yml").read_text(encoding="utf-8"))
    assert "rule_files" not in config and "alerting" not in config, "agent mode evaluates no rules"
    config["global"] = {"scrape_interval": interval, "scrape_timeout": interval}

    def mapped(name: str) -> str:
        if name not in addresses:
            raise ValueError(f"prometheus-agent-{host}.yml: no test address for {name}")
        return addresses[name]

    for job in config["scrape_configs"]:
        for static in job["static_configs"]:
            static["targets"] = [mapped(t) for t in static["targets"]]
    for write in config["remote_write"]:
        host_port = urllib.parse.urlsplit(write["url"]).netloc
        write["url"] = write["url"].replace(host_port, mapped(host_port), 1)
        write["queue_config"] = {**write.get("queue_config", {}), "batch_send_deadline": "1s"}
    return config


def central_config(rules: Path, alertmanager: str, address: str, interval: str = "1s") -> dict[str, Any]:
    """The shipped central Prometheus config: rules, Alertmanager and self-scrape on loopback."""
    config = yaml.safe_load((SCALE / "prometheus-central.yml").read_text(encoding="utf-8"))
    config["global"]["evaluation_interval"] = interval
    config["global"]["external_labels"]["central"] = "prometheus"
    config["rule_files"] = [str(rules)]
    config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": [address]}]
    job["scrape_interval"] = job["scrape_timeout"] = interval
    return config


# --------------------------------------------------------------------------- servers


@contextlib.contextmanager
def running_server(
    name: str, cmd: list[str], workdir: Path, ready_url: str, ready_prefix: bytes, address: str
) -> Iterator[Process]:
    """``cmd`` with its output in ``workdir``/``name``.log, ready when ``ready_url`` answers ``ready_prefix``."""
    workdir.mkdir(parents=True, exist_ok=True)
    ready = lambda: http_get(ready_url).startswith(ready_prefix)  # noqa: E731
    with running_process(name, cmd, workdir / f"{name}.log", ready, address=address) as proc:
        yield proc


def running_prometheus(
    name: str, config: Mapping[str, Any], workdir: Path, address: str, *flags: str
) -> contextlib.AbstractContextManager[Process]:
    """A real Prometheus (server or, with ``--enable-feature=agent``, agent) with ``config``."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_file = workdir / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(dict(config), sort_keys=False))
    storage = "--storage.agent.path" if "--enable-feature=agent" in flags else "--storage.tsdb.path"
    cmd = [
        require_binary("prometheus"),
        f"--config.file={config_file}",
        f"{storage}={workdir / 'data'}",
        f"--web.listen-address={address}",
        *flags,
    ]
    return running_server(name, cmd, workdir, f"http://{address}/-/ready", b"Prometheus", address)


def running_victoria_metrics(workdir: Path, address: str) -> contextlib.AbstractContextManager[Process]:
    """VictoriaMetrics single-node; queries see samples at once (no 30 s latency offset, no cache)."""
    cmd = [
        require_binary("victoria-metrics"),
        f"-storageDataPath={workdir / 'data'}",
        f"-httpListenAddr={address}",
        "-search.latencyOffset=0s",
        "-search.disableCache",
        "-retentionPeriod=1d",
    ]
    return running_server("victoria-metrics", cmd, workdir, f"http://{address}/health", b"OK", address)


def running_vmalert(
    rules: Path, store: str, alertmanager: str, workdir: Path, address: str
) -> contextlib.AbstractContextManager[Process]:
    """vmalert evaluating ``rules`` over VictoriaMetrics at ``store`` (recording rules and alert
    state written back to it), alerts to ``alertmanager``, as docs/scale.md runs it."""
    cmd = [
        require_binary("vmalert"),
        f"-rule={rules}",
        f"-datasource.url=http://{store}",
        f"-remoteWrite.url=http://{store}",
        f"-remoteRead.url=http://{store}",
        f"-notifier.url=http://{alertmanager}",
        "-external.label=monitor=larpix-dqm",
        "-external.label=central=victoriametrics",
        "-evaluationInterval=1s",
        "-remoteWrite.flushInterval=1s",
        f"-httpListenAddr={address}",
    ]
    return running_server("vmalert", cmd, workdir, f"http://{address}/health", b"OK", address)


# --------------------------------------------------------------------------- queries


def values(store: str, expr: str) -> dict[str, float]:
    """An instant vector as {instance (or ''): value}; several series of one instance: error."""
    out: dict[str, float] = {}
    for series in stack.query(store, expr):
        instance = series["metric"].get("instance", "")
        assert instance not in out, f"{expr}: several series for instance {instance!r}"
        out[instance] = float(series["value"][1])
    return out


class Diagnostics:
    """What a failure message needs: each store's alerts, the receiver's posts, process logs."""

    def __init__(self) -> None:
        self.alert_sources: dict[str, str] = {}
        self.receiver: stack.WebhookReceiver | None = None
        self.processes: list[Process] = []

    def __call__(self) -> str:
        parts = []
        for name, address in self.alert_sources.items():
            try:
                lines = sorted(
                    f"{a.get('state')} {a['labels'].get('alertname')} "
                    + ",".join(f"{k}={v}" for k, v in sorted(a["labels"].items()) if k != "alertname")
                    for a in stack.alerts(address)
                )
            except Exception as err:  # report, never mask the original failure
                lines = [f"(cannot read alerts: {err!r})"]
            parts.append(f"{name} alerts:\n  " + ("\n  ".join(lines) or "(none)"))
        if self.receiver is not None:
            parts.append(f"receiver ({len(self.receiver.posts)} posts):\n{json.dumps(self.receiver.posts)[-4000:]}")
        for proc in self.processes:
            status = "running" if proc.popen.poll() is None else f"exited {proc.popen.returncode}"
            parts.append(f"--- {proc.name} ({status}), last lines of {proc.log.name}:\n{proc.tail(10)}")
        return "\n".join(parts)


def firing(receiver: stack.WebhookReceiver, alertname: str) -> dict[str, set[str]]:
    """{central store: instances} of ``alertname``'s firing notifications so far."""
    out: dict[str, set[str]] = {}
    for _, alert in receiver.alerts():
        labels = alert["labels"]
        if labels.get("alertname") == alertname and alert.get("status") == "firing":
            out.setdefault(labels.get("central", "?"), set()).add(labels.get("instance", ""))
    return out


# --------------------------------------------------------------------------- the test


def test_three_shards_two_agents_central_prometheus_and_victoria_metrics(tmp_path: Path) -> None:
    started = time.monotonic()
    data = tmp_path / "data"
    data.mkdir()
    rules = stack.generate_rules(RULE_OVERRIDES, tmp_path / "rules")
    # The chip was alive: one window of healthy data ending now.
    stack.write_backlog(data, int(time.time()) - WINDOW_SECONDS, WINDOW_SECONDS, "--geometry", str(LAYOUT))
    diagnostics = Diagnostics()

    with contextlib.ExitStack() as exits:
        start = stack.Launcher(exits, diagnostics.processes)
        receiver, alertmanager = stack.start_alerting(start, tmp_path)
        diagnostics.receiver = receiver

        # The central stores and their rule engines.
        central = f"127.0.0.1:{free_port()}"
        start(
            running_prometheus(
                "central-prometheus",
                central_config(rules, alertmanager, central),
                tmp_path / "central",
                central,
                "--web.enable-remote-write-receiver",
            )
        )
        vm = f"127.0.0.1:{free_port()}"
        start(running_victoria_metrics(tmp_path / "victoria-metrics", vm))
        vmalert = f"127.0.0.1:{free_port()}"
        start(running_vmalert(rules, vm, alertmanager, tmp_path / "vmalert", vmalert))
        stores = {"prometheus": central, "victoriametrics": vm}
        diagnostics.alert_sources = {"central Prometheus": central, "vmalert": vmalert}

        # Three shards of one run, each its own state directory and port (kept for the restart).
        ports = {g: free_port() for g in (1, 2, 3)}
        instances = {g: f"127.0.0.1:{port}" for g, port in ports.items()}

        def exporter(g: int, log: str = "") -> contextlib.AbstractContextManager[Process]:
            args = [
                *("-i", str(data), "--io-groups", str(g), "--geometry", str(LAYOUT)),
                *("--interval", "0.2", "--window", str(WINDOW_SECONDS)),
            ]
            env = {"LARPIX_DQM_STATE_DIR": str(tmp_path / f"state-{g}")}
            return running_exporter(args, port=ports[g], env=env, log=tmp_path / f"exporter-{g}{log}.log")

        exporters = {g: start(exporter(g)) for g in (1, 2, 3)}

        # Two hosts: agent A scrapes shards 1 and 2, agent B shard 3; both write to both stores.
        addresses = {f"exporter-io{g}:9767": instances[g] for g in (1, 2, 3)}
        addresses.update({"prometheus-central:9090": central, "victoria-metrics:8428": vm})
        for host in ("a", "b"):
            address = f"127.0.0.1:{free_port()}"
            config = agent_config(host, addresses)
            start(
                running_prometheus(
                    f"agent-{host}", config, tmp_path / f"agent-{host}", address, "--enable-feature=agent"
                )
            )

        # --- every shard's data reaches both stores; the dead-to-be chip is alive
        chip = ",".join(f'{k}="{v}"' for k, v in DEAD_CHIP.items())
        for name, store in stores.items():
            wait_for(
                lambda store=store: (
                    set(values(store, f'larpix_chip_hit_rate_hertz{{job="larpix",{chip}}} > 0')) == {instances[3]}
                ),
                45,
                f"{name} stores a non-zero hit rate for chip 3-1-11 from exporter 3",
                diagnostics,
            )
            served = wait_for(
                lambda store=store: values(store, "job:larpix_exporter_io_groups_served:count").get("") == 3,
                30,
                f"{name}: three io_groups served (recording rule)",
                diagnostics,
            )
            assert served
        print(f"data in both stores after {time.monotonic() - started:.1f} s")

        # --- the chip dies
        sim_args = ("--geometry", str(LAYOUT), "--silent-chip", "3-1-11", "--seed", "7")
        start(stack.running_simulator(data, tmp_path / "simulator.log", *sim_args))

        def chip_firing() -> bool:
            return all(
                any(
                    a["labels"].get("alertname") == "LarpixChipSilent" and a.get("state") == "firing"
                    for a in stack.alerts(at)
                )
                for at in diagnostics.alert_sources.values()
            )

        def chip_paged() -> bool:
            return set(firing(receiver, "LarpixChipSilent")) == set(CENTRALS)

        # proving the chip dead takes its statistics' time (longer on a busy machine); notifying, seconds
        wait_for(chip_firing, 150, "LarpixChipSilent firing in both rule engines", diagnostics, interval=0.5)
        wait_for(chip_paged, 45, "LarpixChipSilent notified from both central stores", diagnostics, interval=0.5)
        print(f"dead chip paged after {time.monotonic() - started:.1f} s")
        pages = [(path, a) for path, a in receiver.alerts() if a["labels"].get("alertname") == "LarpixChipSilent"]
        for path, alert in pages:
            labels = alert["labels"]
            assert {k: labels.get(k) for k in DEAD_CHIP} == DEAD_CHIP, f"another chip paged: {labels}\n{diagnostics()}"
            assert labels.get("instance") == instances[3] and labels.get("job") == "larpix", labels
            assert labels.get("severity") == "critical" and path == "/pager", (path, labels)

        # --- the detector-wide rules: the worst of all shards, one dead chip, in both stores
        for name, store in stores.items():

            def detector_is_worst(store: str = store) -> bool:
                shards = values(store, 'larpix_detector_status{job="larpix"}')
                detector = values(store, "job:larpix_detector_status:max")
                return set(shards) == set(instances.values()) and detector == {"": max(shards.values())}

            wait_for(detector_is_worst, 20, f"{name}: detector status is the worst shard's", diagnostics)
            shards = values(store, 'larpix_detector_status{job="larpix"}')
            assert shards[instances[3]] == max(shards.values()) > 0, f"{name}: {shards}"
            assert values(store, "job:larpix_chip_dead:sum") == {"": 1.0}, name

        # --- kill -9 of exporter 3: down for its instance only; the others keep flowing
        ingested = "sum by (instance) (larpix_exporter_packets_ingested_total)"
        before = {name: values(store, ingested) for name, store in stores.items()}
        exporters[3].popen.kill()
        exporters[3].popen.wait()
        killed = time.monotonic()

        def exporter_down_paged() -> bool:
            return all(instances[3] in firing(receiver, "LarpixExporterDown").get(c, ()) for c in CENTRALS)

        wait_for(exporter_down_paged, 45, "LarpixExporterDown for exporter 3 from both stores", diagnostics)
        # no other exporter paged down; the rule's absent(up) clause (no instance) may have paged while a
        # store had no sample yet, at the stack's start on a busy machine (the tests' `for:` is shortened)
        paged = set().union(*firing(receiver, "LarpixExporterDown").values())
        assert paged - {""} == {instances[3]}, f"{paged}\n{diagnostics()}"
        print(f"exporter down paged {time.monotonic() - killed:.1f} s after the kill")
        for name, store in stores.items():

            def others_flow(store: str = store, name: str = name) -> bool:
                now = values(store, ingested)
                return all(now.get(instances[g], 0) > before[name][instances[g]] for g in (1, 2))

            wait_for(others_flow, 20, f"{name}: shards 1 and 2 keep ingesting", diagnostics)
        down = [
            a["labels"]
            for a in stack.alerts(central) + stack.alerts(vmalert)
            if a["labels"].get("alertname") == "LarpixExporterDown"
        ]
        assert {labels.get("instance") for labels in down} == {instances[3]}, f"{down}\n{diagnostics()}"

        # --- restart with the same port and state directory: the counters continue
        last = before["prometheus"][instances[3]]
        exporters[3] = start(exporter(3, "-restarted"))
        for name, store in stores.items():
            wait_for(
                lambda store=store: values(store, ingested).get(instances[3], 0) > last,
                30,
                f"{name}: exporter 3's counter grows again after the restart",
                diagnostics,
            )
            for family in (
                "larpix_exporter_packets_ingested_total",
                "larpix_packets_total",
                "larpix_chip_packets_total",
            ):
                resets = values(store, f'max(resets({family}{{instance="{instances[3]}"}}[10m]))')
                assert resets == {"": 0.0}, f"{name}: {family} of exporter 3 was reset: {resets}\n{diagnostics()}"
        # From the stores' side a restart without state, re-reading the whole run, looks the same:
        # the checkpoint is what must have been used.
        restored = [line for line in exporters[3].log.read_text().splitlines() if 'msg="restored ' in line]
        assert restored, f"exporter 3 did not restore its checkpoint:\n{exporters[3].tail()}"
        print(f"done after {time.monotonic() - started:.1f} s")

    running_after = [p.name for p in diagnostics.processes if p.popen.poll() is None]
    assert not running_after, f"still running after the test: {running_after}"


# --------------------------------------------------------------------------- the shipped files


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=60, cwd=ROOT)


@pytest.mark.parametrize("host", ["a", "b"])
def test_agent_configs_are_valid_agent_configs(host: str) -> None:
    """``promtool check config --agent``; agent mode refuses rule_files and alerting."""
    result = _run(require_binary("promtool"), "check", "config", "--agent", str(SCALE / f"prometheus-agent-{host}.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_central_config_is_valid_with_the_repo_rules(tmp_path: Path) -> None:
    """prometheus-central.yml, its rule glob pointed at the repo's alerts/ (mounted at
    /etc/prometheus/rules as for prometheus.yml), is a config Prometheus accepts."""
    config = yaml.safe_load((SCALE / "prometheus-central.yml").read_text(encoding="utf-8"))
    mount = "/etc/prometheus/rules/"
    assert all(pattern.startswith(mount) for pattern in config["rule_files"]), config["rule_files"]
    config["rule_files"] = [str(ROOT / "alerts" / pattern[len(mount) :]) for pattern in config["rule_files"]]
    copy = tmp_path / "prometheus-central.yml"
    copy.write_text(yaml.safe_dump(config))
    result = _run(require_binary("promtool"), "check", "config", str(copy))
    assert result.returncode == 0 and "larpix.rules.yml" in result.stdout, result.stdout + result.stderr


def test_vmagent_config_and_vmalert_rules_are_accepted() -> None:
    """vmagent reads the shipped scrape config and vmalert the shipped rules (``-dryRun``)."""
    result = _run(require_binary("vmagent"), f"-promscrape.config={SCALE / 'vmagent.yml'}", "-dryRun")
    assert result.returncode == 0, result.stdout + result.stderr
    result = _run(require_binary("vmalert"), f"-rule={ROOT / 'alerts' / '*.rules.yml'}", "-dryRun")
    assert result.returncode == 0, result.stdout + result.stderr
    agent_b = yaml.safe_load((SCALE / "prometheus-agent-b.yml").read_text(encoding="utf-8"))
    vmagent = yaml.safe_load((SCALE / "vmagent.yml").read_text(encoding="utf-8"))
    assert vmagent["scrape_configs"] == agent_b["scrape_configs"], "vmagent.yml is host B's alternative agent"


def test_compose_profile_multi_is_the_same_topology(tmp_path: Path) -> None:
    """``docker-compose --profile multi config`` (no Docker engine needed): three shards on one
    run, host A's agent over shards 1 and 2, host B's over shard 3, both central stores, every
    shipped file mounted from deploy/scale/ and alerts/."""
    compose = require_binary("docker-compose")
    shutil.copy(ROOT / "docker-compose.yml", tmp_path / "docker-compose.yml")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LARPIX_", "COMPOSE_"))}
    result = subprocess.run(
        [compose, "-f", "docker-compose.yml", "--profile", "multi", "config"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    layout = f"{tmp_path}/deploy/scale/layout-3-io-groups.yaml:/etc/larpix/layout-3-io-groups.yaml:ro"
    for g in (1, 2, 3):
        shard = services[f"exporter-io{g}"]
        assert shard["environment"]["LARPIX_DQM_IO_GROUPS"] == str(g)
        assert shard["environment"]["PIXEL_GEOMETRY_PATH"] == "/etc/larpix/layout-3-io-groups.yaml"
        assert {"larpix-multi-data:/data:ro", layout} <= set(shard["volumes"])
    assert "--silent-chip" in services["simulator-multi"]["command"]
    for host, shards in (("a", {"exporter-io1", "exporter-io2"}), ("b", {"exporter-io3"})):
        agent = services[f"agent-{host}"]
        assert "--enable-feature=agent" in agent["command"] and set(agent["depends_on"]) == shards
        mounted = f"{tmp_path}/deploy/scale/prometheus-agent-{host}.yml:/etc/prometheus/prometheus-agent.yml:ro"
        assert mounted in agent["volumes"]
        config = yaml.safe_load((SCALE / f"prometheus-agent-{host}.yml").read_text(encoding="utf-8"))
        assert {
            t.split(":")[0] for job in config["scrape_configs"] for s in job["static_configs"] for t in s["targets"]
        } == shards
        assert {urllib.parse.urlsplit(w["url"]).netloc for w in config["remote_write"]} == {
            "prometheus-central:9090",
            "victoria-metrics:8428",
        }
    assert "--web.enable-remote-write-receiver" in services["prometheus-central"]["command"]
    assert f"{tmp_path}/alerts:/etc/prometheus/rules:ro" in services["prometheus-central"]["volumes"]
    vmalert = services["vmalert"]["command"]
    assert (
        "-rule=/etc/vmalert/rules/*.rules.yml" in vmalert and "-datasource.url=http://victoria-metrics:8428" in vmalert
    )
    assert {"victoria-metrics", "alertmanager"} <= set(services)


def test_docs_scale_shows_every_shipped_config_file_as_it_is() -> None:
    """docs/scale.md quotes each configuration file of deploy/scale/ whole, as shipped."""
    doc = (ROOT / "docs" / "scale.md").read_text(encoding="utf-8")
    for path in sorted(SCALE.glob("*.yml")):
        relative = path.relative_to(ROOT).as_posix()
        quoted = f"`{relative}`"
        assert quoted in doc, f"docs/scale.md does not name {relative}"
        block = "```yaml\n" + path.read_text(encoding="utf-8").rstrip("\n") + "\n```"
        assert block in doc, f"docs/scale.md does not quote {relative} as shipped"
