"""Helpers shared by the tests: simulated files, free ports, scraping, a running ``serve``."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from exporter.reading.packets import PACKET_TYPE_NAMES
from exporter.simulate import Faults, SimulationConfig, Simulator, Truth, write_run

START = 1_700_000_000


#: Debian package providing each program the tests run.
DEBIAN_PACKAGE = {
    "prometheus": "prometheus",
    "promtool": "prometheus",
    "prometheus-alertmanager": "prometheus-alertmanager",
    "alertmanager": "prometheus-alertmanager",
    "amtool": "prometheus-alertmanager",
    "docker-compose": "docker-compose",
    "chromium": "chromium",
}


def require_binary(*names: str) -> str:
    """Path of the first of ``names`` on PATH; fail the test (never skip) when none is."""
    import pytest

    for name in names:
        path = shutil.which(name)
        if path is not None:
            return path
    package = DEBIAN_PACKAGE.get(names[-1], names[-1])
    pytest.fail(f"{' / '.join(names)} not found on PATH: install it (Debian: apt-get install {package})")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def simulate_files(
    geometry, outdir: Path, seconds: int, fmt: str = "raw", faults: Faults | None = None, start: int = START, **kw
) -> tuple[list[Path], Truth]:
    """Write a backlog run and return its files and the exact truth."""
    truth = Truth()
    sim = Simulator(geometry, SimulationConfig(seed=kw.pop("seed", 1), **kw), faults)
    paths = write_run(sim, outdir, fmt, seconds, realtime=False, start_time=start, truth=truth)
    return paths, truth


def scrape(port: int, path: str = "/metrics", timeout: float = 10.0) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as resp:
        return resp.read().decode()


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.2, give_up_on: type[Exception] | None = None):
    """Poll ``predicate`` until it returns a truthy value or the timeout passes.

    Exceptions from ``predicate`` count as "not yet", except ``give_up_on``, which propagates.
    """
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except Exception as err:
            if give_up_on is not None and isinstance(err, give_up_on):
                raise
            last = err
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last value: {last!r})")


@contextlib.contextmanager
def running_serve(
    args: list[str],
    port: int,
    env: dict | None = None,
    wrapper: list[str] | None = None,
    ready_path: str | None = "/-/healthy",
) -> Iterator[subprocess.Popen]:
    """Run ``larpix-dqm serve`` in a subprocess on 127.0.0.1:port; always stopped afterwards.

    Its output goes to the file ``proc.log_path``; checkpoints to a fresh temporary state directory
    unless ``env`` sets LARPIX_DQM_STATE_DIR; ``wrapper`` is a command prefix (e.g. setpriv);
    ``ready_path=None`` waits for the port instead of an HTTP answer (TLS, basic auth).
    """
    cmd = [*(wrapper or []), sys.executable, "-m", "exporter.cli", "serve"]
    cmd += ["--listen-address", "127.0.0.1", "--port", str(port), *args]
    env = {"LARPIX_DQM_STATE_DIR": tempfile.mkdtemp(prefix="larpix-dqm-state-"), **(env or {})}
    log = tempfile.NamedTemporaryFile(prefix="larpix-dqm-serve-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env})
    proc.log_path = Path(log.name)  # type: ignore[attr-defined]  # tests read what the exporter logged
    log.close()
    try:

        def healthy() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"serve exited with {proc.returncode}: {proc.log_path.read_text()[-2000:]}")
            if ready_path is None:  # TLS or auth in front: wait until the port accepts connections
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return True
            return scrape(port, ready_path) == "OK\n"

        wait_for(healthy, timeout=30, give_up_on=RuntimeError)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def parse_metrics(text: str) -> dict[tuple[str, frozenset], float]:
    """Samples of an exposition keyed by (sample name, frozenset of label items)."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def chip_labels(key: str) -> dict[str, str]:
    """'1-2-11' -> {'io_group': '1', 'io_channel': '2', 'chip_id': '11'}."""
    g, c, chip = key.split("-")
    return {"io_group": g, "io_channel": c, "chip_id": chip}


def sample(samples: dict, name: str, **labels) -> float:
    return samples[(name, frozenset((k, str(v)) for k, v in labels.items()))]


def ingested(port: int) -> float:
    samples = parse_metrics(scrape(port))
    return sum(v for (name, _), v in samples.items() if name == "larpix_exporter_packets_ingested_total")


def check_counters(samples: dict, truths) -> None:
    chips: dict[str, dict[str, int]] = {}
    types: dict[str, int] = {}
    for truth in truths:
        for key, counts in truth.chips.items():
            for name, value in counts.items():
                chips.setdefault(key, {}).setdefault(name, 0)
                chips[key][name] += value
        for key, value in truth.packet_types.items():
            types[key] = types.get(key, 0) + value
    for key, counts in chips.items():
        labels = chip_labels(key)
        assert sample(samples, "larpix_chip_packets_total", **labels) == counts.get("packets", 0), key
        assert sample(samples, "larpix_chip_parity_errors_total", **labels) == counts.get("parity_errors", 0), key
        full = sample(samples, "larpix_chip_fifo_flags_total", **labels, fifo="local", level="full")
        assert full == counts.get("fifo_full", 0), key
    for key, value in types.items():
        group, ptype = key.split("/")
        assert (
            sample(samples, "larpix_packets_total", io_group=group, packet_type=PACKET_TYPE_NAMES[int(ptype)]) == value
        )
