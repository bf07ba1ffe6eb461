"""The exporter behaves like the Prometheus exporters: listen addresses, telemetry path, readiness, logs,
process metrics, build_info, and a missing input reported as a read error."""

from __future__ import annotations

import json
import platform
import subprocess
import urllib.error
import urllib.request

import pytest
from helpers import free_port, parse_metrics, running_exporter, sample, scrape, simulate_files, wait_for

from larpix_dqm.exporter import __version__
from larpix_dqm.exporter.runtime.service import Service
from larpix_dqm.exporter.settings import Settings


def status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


@pytest.mark.external
def test_missing_input_listen_addresses_telemetry_path_and_json_logs(tmp_path):
    port, second = free_port(), free_port()
    missing = tmp_path / "nonexistent"
    args = ["-i", str(missing), "--interval", "0.2", "--web.listen-address", f"127.0.0.1:{second}"]
    args += ["--web.telemetry-path", "/prom", "--log.format", "json"]
    with running_exporter(args, port, ready_path="/-/ready") as proc:
        text = scrape(port, "/prom")
        assert scrape(second, "/prom") and status(f"http://127.0.0.1:{port}/metrics") == 404
        samples = parse_metrics(text)
        assert sample(samples, "larpix_exporter_files_in_error", reason="missing_input") == 1
        assert sample(samples, "larpix_exporter_read_errors_total", reason="missing_input") >= 1
        assert sample(samples, "larpix_exporter_files_tracked") == 0
        for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "python_gc_objects_collected_total"):
            assert any(n == name for n, _ in samples), name
        info = sample(
            samples,
            "larpix_exporter_build_info",
            version=__version__,
            revision=next(dict(labels)["revision"] for n, labels in samples if n == "larpix_exporter_build_info"),
            pythonversion=platform.python_version(),
        )
        assert info == 1
        check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        missing.mkdir()  # the input appears: the error clears
        in_error = ("larpix_exporter_files_in_error", frozenset({("reason", "missing_input")}))
        wait_for(lambda: in_error not in parse_metrics(scrape(port, "/prom")))
    lines = [json.loads(line) for line in proc.log.read_text().splitlines() if line.startswith("{")]
    warned = [line for line in lines if "input does not exist" in line["msg"]]
    # the first failure only (the tail and the monitor's log handlers each say it once), not every poll
    assert 0 < len(warned) <= 2 and warned[0]["level"] == "warn", lines


@pytest.mark.slow
def test_ready_only_after_the_first_poll(tmp_path, tile_geometry):
    simulate_files(tile_geometry, tmp_path / "data", 1)
    port = free_port()
    settings = Settings(inputs=[str(tmp_path / "data")], port=port, listen_address="127.0.0.1", checkpoint="-")
    service = Service(settings)
    try:
        for server in service.servers:  # the HTTP side only: no ingest thread yet
            server.serve_in_thread()
        assert status(f"http://127.0.0.1:{port}/-/ready") == 503
        assert status(f"http://127.0.0.1:{port}/-/healthy") == 200
        service.ingester.poll()
        assert status(f"http://127.0.0.1:{port}/-/ready") == 200
    finally:
        for server in service.servers:
            server.stop()
