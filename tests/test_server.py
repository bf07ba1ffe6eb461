"""A server that cannot be starved: cached history, bounded connections, read timeouts, a quick SIGTERM."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
import urllib.request
import zlib

import pytest
from helpers import START, free_port, parse_metrics, running_exporter, scrape, simulate_files, wait_for

from exporter.detector.geometry import packaged_layout
from exporter.metrics.families import FamilyBuilder
from exporter.monitor import Monitor
from exporter.quality.history import History
from exporter.reading.tail import InputSpec
from exporter.runtime.ingest import Ingester
from exporter.web import server as web
from exporter.web.server import ExporterServer, MetricsApp


@pytest.fixture
def served(tmp_path, tile_geometry, monkeypatch):
    """An in-process server over 30 s of simulated data with a 10 s history; (port, ingester)."""
    monkeypatch.setattr(web, "REQUEST_READ_SECONDS", 1.0)
    monkeypatch.setattr(web, "MAX_CONNECTIONS", 4)
    simulate_files(tile_geometry, tmp_path / "data", 30, file_seconds=10)
    ing = Ingester([InputSpec(str(tmp_path / "data"))], Monitor(tile_geometry, history_interval=10.0), 0.1)
    ing.poll()
    server = ExporterServer(("127.0.0.1", 0), MetricsApp(lambda: ing.published, history=ing.monitor.history))
    ing.publish_listeners.append(server.app.prerender)  # as the service wires them
    server.serve_in_thread()
    try:
        yield server.server_address[1], ing
    finally:
        server.stop()


def get(port: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
        return resp.read()


@pytest.mark.e2e
def test_history_hammering_renders_once_per_entry_and_metrics_keep_answering(
    served, tmp_path, tile_geometry, monkeypatch
):
    port, ing = served
    renders = []
    real_text = History.text
    monkeypatch.setattr(
        History, "text", lambda self, fmt, max_rows=None: renders.append(fmt) or real_text(self, fmt, max_rows)
    )
    stop = threading.Event()
    bodies: list[bytes] = []

    def hammer() -> None:
        while not stop.is_set():
            bodies.append(get(port, "/api/history?format=json"))

    clients = [threading.Thread(target=hammer) for _ in range(2)]
    for client in clients:
        client.start()
    try:
        scrapes = [scrape(port) for _ in range(20)]
    finally:
        stop.set()
        for client in clients:
            client.join(30)
    assert all("larpix_exporter_up 1" in text for text in scrapes)
    assert len(bodies) > 2 and len(set(bodies)) == 1 and renders == ["json"], "rendered once, then cached"
    entries = json.loads(bodies[0])
    assert {row["data_time"] for row in entries} == {e.data_time for e in ing.monitor.history.entries}
    simulate_files(tile_geometry, tmp_path / "data", 20, start=START + 30, seed=2)
    ing.poll()  # a new history entry: rendered again, once
    newer = [get(port, "/api/history?format=json") for _ in range(3)]
    assert renders == ["json", "json"] and len(json.loads(newer[0])) > len(entries)
    # the size cap: only the newest entries that fit
    monkeypatch.setattr(web, "MAX_HISTORY_ROWS", 2 * len(ing.monitor.history.entries[-1].chip_keys))
    ing.monitor.history.entries.popleft()  # a change, so the next request renders
    capped = json.loads(get(port, "/api/history?format=json"))
    assert sorted({row["data_time"] for row in capped}) == [e.data_time for e in list(ing.monitor.history.entries)[-2:]]


@pytest.mark.e2e
def test_idle_connections_are_bounded_and_time_out(served):
    port, _ = served
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]  # MAX_CONNECTIONS, saying nothing
    try:
        time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as extra:
            assert extra.recv(100).startswith(b"HTTP/1.0 503"), "refused at once, not queued behind idle clients"
        time.sleep(1.5)  # REQUEST_READ_SECONDS: the idle ones are dropped
        assert "larpix_exporter_up 1" in scrape(port)
        assert all(s.recv(10) == b"" for s in idle), "the server closed the idle connections"
    finally:
        for s in idle:
            s.close()
    assert ExporterServer.request_queue_size == 128


@pytest.mark.e2e
def test_sigterm_within_10_s_with_plots_drawing_and_many_files(tmp_path, module_geometry):
    simulate_files(module_geometry, tmp_path / "data", 60, file_seconds=1, hit_rate_hz=0.05)
    port = free_port()
    args = ["-i", str(tmp_path / "data"), "--interval", "0.2", "--geometry", str(packaged_layout())]
    args += ["-o", str(tmp_path / "plots"), "--plot-interval", "0"]
    with running_exporter(args, port) as proc:
        wait_for(lambda: list((tmp_path / "plots" / "latest").glob("*.png")), timeout=120)  # drawing has begun
        assert parse_metrics(scrape(port))[("larpix_exporter_files_tracked", frozenset())] == 60
        started = time.monotonic()
        proc.popen.send_signal(signal.SIGTERM)
        assert proc.popen.wait(15) == 0
        assert time.monotonic() - started < 10
    assert "stopped in" in proc.log.read_text()


def test_metrics_render_the_detector_once_per_publication_and_gzip_is_one_valid_stream(
    served, tmp_path, tile_geometry, monkeypatch
):
    port, ing = served
    renders = []
    real = FamilyBuilder.detector_families
    monkeypatch.setattr(
        FamilyBuilder, "detector_families", lambda self, *a, **k: renders.append(1) or real(self, *a, **k)
    )

    def fetch(gzipped: bool) -> tuple[str, str | None]:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics")
        if gzipped:
            request.add_header("Accept-Encoding", "gzip")
        with urllib.request.urlopen(request, timeout=10) as resp:
            body, encoding = resp.read(), resp.headers.get("Content-Encoding")
        if encoding == "gzip":
            stream = zlib.decompressobj(16 + zlib.MAX_WBITS)
            body = stream.decompress(body)
            assert stream.eof and not stream.unused_data  # one gzip member, complete
        return body.decode(), encoding

    def stable(text: str) -> list[str]:  # the lines that do not follow the wall clock or the process
        moving = ("larpix_exporter_scrape_duration", "larpix_exporter_ingest_lag", "process_", "python_gc")
        return sorted(line for line in text.splitlines() if not line.startswith(moving))

    (zipped, encoding), (plain, none) = fetch(True), fetch(False)
    assert (encoding, none) == ("gzip", None)
    assert stable(zipped) == stable(plain) and "larpix_chip_packets_total" in plain
    assert "larpix_exporter_ingest_lag_seconds" in zipped and "larpix_exporter_up 1" in zipped
    assert len(renders) == 1, "the detector families of one publication are rendered once"
    simulate_files(tile_geometry, tmp_path / "data", 10, start=START + 30, seed=2)
    ing.poll()  # a new publication, scraped recently: rendered as it is published, before any scrape
    assert len(renders) == 2
    newer = [fetch(True)[0] for _ in range(3)]
    assert len(renders) == 2 and stable(newer[0]) != stable(zipped)
    monkeypatch.setattr(web, "PRERENDER_AFTER_SCRAPE_SECONDS", 0.0)  # nobody scraping: no rendering ahead
    simulate_files(tile_geometry, tmp_path / "data", 10, start=START + 40, seed=3)
    ing.poll()
    assert len(renders) == 2
    app = ing.publish_listeners[0].__self__  # type: ignore[attr-defined]

    def detector(text: str) -> list[str]:
        return [line for line in stable(text) if "larpix_exporter_" not in line]

    with app._lock:  # a rendering of the newest publication under way: the last complete one is served (a
        during = fetch(False)[0]  # scrape that waited for the lock would time out here)
        assert detector(during) == detector(newer[0]) and len(renders) == 2
    after = fetch(False)[0]
    assert len(renders) == 3 and detector(after) != detector(during)
