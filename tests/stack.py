"""The real monitoring stack on loopback, for end-to-end tests (``tests/test_stack.py``).

Context managers (built on ``helpers.running_process``, like the exporter and Alertmanager
there) start the simulator and Prometheus on 127.0.0.1 with their own temporary directory and
a log file, wait until they answer, and always stop them when the ``with`` block ends, however
it ends: SIGTERM (SIGINT for the simulator, so it closes its HDF5 file), then SIGKILL if it has
not exited within a timeout. Nothing here is a pytest fixture, so a test decides the order in
which things start (and, through ``contextlib.ExitStack``, stop).

Also: config builders that derive the test's Prometheus and Alertmanager configs from the
shipped ``prometheus.yml`` and ``alertmanager.yml`` (only addresses and intervals change),
a webhook receiver collecting Alertmanager's notifications, Prometheus HTTP API helpers,
and a cut of the packaged module layout that keeps the per-pixel series small.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml
from helpers import Process, http_get, larpix_dqm, require_binary, running_alertmanager, running_process

ROOT = Path(__file__).resolve().parents[1]
GENERATE_RULES = ROOT / "alerts" / "generate.py"


# --------------------------------------------------------------------------- processes


@contextlib.contextmanager
def running_simulator(outdir: Path, log: Path, *args: str) -> Iterator[Process]:
    """``larpix-dqm simulate OUTDIR`` live (one second of data per second) until the block ends.

    Stopped with SIGINT, which the command handles by closing its file cleanly.
    """
    cmd = larpix_dqm("simulate", str(outdir), *args)
    with running_process("simulator", cmd, log, stop_signal=signal.SIGINT) as proc:
        yield proc


def write_backlog(outdir: Path, start_time: int, seconds: int, *args: str) -> None:
    """Write ``seconds`` seconds of simulated data starting at ``start_time`` (``--fast``)."""
    cmd = larpix_dqm("simulate", str(outdir), "--fast", "--start-time", str(start_time), "--seconds", str(seconds))
    result = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"simulator backlog failed:\n{result.stdout}{result.stderr}"


@contextlib.contextmanager
def running_prometheus(config: Mapping[str, Any], workdir: Path, address: str) -> Iterator[Process]:
    """A real Prometheus with ``config`` listening on ``address``, data in ``workdir``/data."""
    config_file = workdir / "prometheus.yml"
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text(yaml.safe_dump(dict(config), sort_keys=False))
    cmd = [
        require_binary("prometheus"),
        f"--config.file={config_file}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address={address}",
    ]
    ready = lambda: http_get(f"http://{address}/-/ready").startswith(b"Prometheus")  # noqa: E731
    with running_process("prometheus", cmd, workdir / "prometheus.log", ready) as proc:
        yield proc


# --------------------------------------------------------------------------- webhook receiver


class WebhookReceiver:
    """Collects the JSON bodies Alertmanager POSTs to its webhook receivers."""

    def __init__(self, server: ThreadingHTTPServer) -> None:
        self._server = server
        self._lock = threading.Lock()
        self._posts: list[tuple[str, dict[str, Any]]] = []

    @property
    def url(self) -> str:
        """Base URL (no path) of the receiver."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def record(self, path: str, body: dict[str, Any]) -> None:
        with self._lock:
            self._posts.append((path, body))

    @property
    def posts(self) -> list[tuple[str, dict[str, Any]]]:
        """Every notification so far as (request path, JSON body)."""
        with self._lock:
            return list(self._posts)

    def alerts(self) -> list[tuple[str, dict[str, Any]]]:
        """Every alert of every notification so far, as (request path, alert)."""
        return [(path, alert) for path, body in self.posts for alert in body.get("alerts", [])]


@contextlib.contextmanager
def running_receiver() -> Iterator[WebhookReceiver]:
    """A webhook receiver on 127.0.0.1:<free port> in a thread; shut down on exit."""
    holder: list[WebhookReceiver] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            try:
                holder[0].record(self.path, json.loads(body))
            except ValueError:
                holder[0].record(self.path, {"unparsable": body.decode(errors="replace")})
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            """Quiet: the test reports what it received."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    holder.append(WebhookReceiver(server))
    thread = threading.Thread(target=server.serve_forever, name="webhook-receiver", daemon=True)
    thread.start()
    try:
        yield holder[0]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


# --------------------------------------------------------------------------- configs


class Launcher:
    """Enters programs' context managers on one ExitStack (stopped in reverse order, however the block ends) and
    keeps the Processes they yield, whose logs a failure message shows."""

    def __init__(self, exits: contextlib.ExitStack, processes: list[Process]) -> None:
        self.exits = exits
        self.processes = processes

    def __call__(self, manager: contextlib.AbstractContextManager) -> Any:
        value = self.exits.enter_context(manager)
        if isinstance(value, Process):
            self.processes.append(value)
        return value


def start_alerting(start: Launcher, workdir: Path) -> tuple[WebhookReceiver, str]:
    """The webhook receiver, and an Alertmanager with the shipped alertmanager.yml posting to it (its address)."""
    receiver = start(running_receiver())
    config = alertmanager_config(ROOT / "alertmanager.yml", receiver.url)
    return receiver, start(running_alertmanager(config, workdir / "alertmanager")).address


def generate_rules(overrides: Mapping[str, Mapping[str, Any]], workdir: Path) -> Path:
    """A rule file from ``alerts/generate.py`` with ``overrides`` merged over the defaults."""
    workdir.mkdir(parents=True, exist_ok=True)
    thresholds = workdir / "thresholds.yaml"
    thresholds.write_text(yaml.safe_dump({k: dict(v) for k, v in overrides.items()}))
    rules = workdir / "larpix.rules.yml"
    cmd = [sys.executable, str(GENERATE_RULES), "--thresholds", str(thresholds), "--output", str(rules)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"alerts/generate.py failed:\n{result.stdout}{result.stderr}"
    return rules


def prometheus_config(
    shipped: Path,
    rule_file: Path,
    alertmanager: str,
    addresses: Mapping[str, str],
    interval: str = "1s",
    job_intervals: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The shipped ``prometheus.yml`` for a test: same jobs, params, relabelling and limits.

    Changed: every scrape/evaluation interval becomes ``interval`` (or ``job_intervals[job]``;
    scrape timeouts equal the interval), the rule files become ``rule_file``, the
    Alertmanager becomes ``alertmanager``, and every target is mapped through ``addresses``
    (compose service address -> loopback address; an unmapped target is an error).
    """
    config = yaml.safe_load(shipped.read_text(encoding="utf-8"))
    config.setdefault("global", {}).update(scrape_interval=interval, evaluation_interval=interval)
    config["global"].pop("scrape_timeout", None)
    config["rule_files"] = [str(rule_file)]
    config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
    for job in config["scrape_configs"]:
        job_interval = (job_intervals or {}).get(job["job_name"], interval)
        job["scrape_interval"] = job["scrape_timeout"] = job_interval
        for static in job.get("static_configs", []):
            unknown = [t for t in static["targets"] if t not in addresses]
            if unknown:
                raise ValueError(f"job {job['job_name']}: no test address for targets {unknown}")
            static["targets"] = [addresses[t] for t in static["targets"]]
    return config


def alertmanager_config(
    shipped: Path, receiver_url: str, group_wait: str = "1s", group_interval: str = "1s"
) -> dict[str, Any]:
    """The shipped ``alertmanager.yml`` with its webhook URLs pointed at ``receiver_url``.

    Each URL keeps its path (``/pager``, ``/ticket``), so the receiver sees which route an
    alert took. ``group_wait``/``group_interval`` are shortened on every route; the routing
    tree, matchers, grouping, receivers and inhibition rules are the shipped ones. A receiver
    with another kind of integration (e-mail, Slack...) cannot be redirected: error.
    """
    config = yaml.safe_load(shipped.read_text(encoding="utf-8"))
    for receiver in config["receivers"]:
        kinds = {key for key in receiver if key.endswith("_configs")}
        if kinds - {"webhook_configs"}:
            raise ValueError(f"receiver {receiver['name']}: cannot redirect {sorted(kinds)} to the test receiver")
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = receiver_url + urllib.parse.urlsplit(hook["url"]).path

    def shorten(route: dict[str, Any], top: bool) -> None:
        for key, value in (("group_wait", group_wait), ("group_interval", group_interval)):
            if top or key in route:
                route[key] = value
        for child in route.get("routes", []):
            shorten(child, False)

    shorten(config["route"], True)
    return config


def cut_layout(source: Path, keep: Mapping[int, Iterable[int] | None], out: Path) -> Path:
    """Write a multi-tile layout holding only the tiles in ``keep`` (tile -> chip ids, None: all).

    The per-pixel series of a full 16-tile module are ~235k; a cut keeps the per-pixel scrape
    of an end-to-end test small while chips keep their real io_group/io_channel/tile.
    """
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    doc = yaml.load(source.read_text(encoding="utf-8"), Loader=loader)
    for key in ("tile_chip_to_io", "tile_positions", "tile_orientations", "tile_indeces"):
        if key in doc:
            doc[key] = {tile: value for tile, value in doc[key].items() if tile in keep}
    for tile, chips in keep.items():
        if tile not in doc["tile_chip_to_io"]:
            raise ValueError(f"{source}: no tile {tile}")
        if chips is not None:
            wanted = set(chips)
            doc["tile_chip_to_io"][tile] = {c: io for c, io in doc["tile_chip_to_io"][tile].items() if c in wanted}
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    out.write_text(yaml.dump(doc, Dumper=dumper), encoding="utf-8")
    return out


# --------------------------------------------------------------------------- HTTP APIs


class PromQLError(Exception):
    """Prometheus answered a query with an error (bad expression, timeout...)."""


def _api(url: str, params: Mapping[str, str | list[str]] | None = None) -> Any:
    """``data`` of a Prometheus HTTP API answer; PromQLError when its status is not success."""
    try:
        body = json.loads(http_get(url, params))
    except urllib.error.HTTPError as err:  # 400/422 carry the error as JSON too
        body = json.loads(err.read() or b"{}")
    if body.get("status") != "success":
        raise PromQLError(f"{body.get('errorType')}: {body.get('error')}")
    return body["data"]


def query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    """Instant query: the result as a list (a scalar or string result is one element)."""
    data = _api(f"http://{prometheus}/api/v1/query", {"query": expr})
    result = data["result"]
    return result if data["resultType"] in ("vector", "matrix") else [{"value": result}]


def label_values(prometheus: str, label: str, match: str | None = None) -> list[str]:
    """Values of ``label`` (over series matching ``match``), like Grafana's ``label_values``."""
    params = {"match[]": [match]} if match else None
    return _api(f"http://{prometheus}/api/v1/label/{urllib.parse.quote(label)}/values", params)


def alerts(prometheus: str) -> list[dict[str, Any]]:
    """Prometheus' active (pending and firing) alerts, from ``/api/v1/alerts``."""
    return _api(f"http://{prometheus}/api/v1/alerts")["alerts"]
