"""Helpers shared by the tests: simulated files, free ports, scraping, a running ``serve``."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from exporter.simulate import Faults, SimulationConfig, Simulator, Truth, write_run

START = 1_700_000_000


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


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.2):
    """Poll ``predicate`` until it returns a truthy value or the timeout passes."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            last = predicate()
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last value: {last!r})")


@contextlib.contextmanager
def running_serve(args: list[str], port: int, env: dict | None = None) -> Iterator[subprocess.Popen]:
    """Run ``larpix-dqm serve`` in a subprocess on 127.0.0.1:port; always stopped afterwards."""
    cmd = [sys.executable, "-m", "exporter.cli", "serve", "--listen-address", "127.0.0.1", "--port", str(port), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    try:
        wait_for(lambda: scrape(port, "/-/healthy") == "OK\n", timeout=30)
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
