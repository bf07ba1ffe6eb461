"""A server that cannot be starved: cached history, request deadlines, room made by closing the stalest
incomplete request, complete requests always served, a quick SIGTERM."""

from __future__ import annotations

import functools
import json
import select
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
import zlib

import pytest
from helpers import (
    START,
    free_port,
    parse_metrics,
    require_binary,
    running_exporter,
    scrape,
    simulate_files,
    wait_for,
)

from larpix_dqm.exporter.detector.geometry import packaged_layout
from larpix_dqm.exporter.metrics.families import FamilyBuilder
from larpix_dqm.exporter.monitor import Monitor
from larpix_dqm.exporter.quality.history import History
from larpix_dqm.exporter.reading.tail import InputSpec
from larpix_dqm.exporter.runtime.ingest import Ingester
from larpix_dqm.exporter.web import server as web
from larpix_dqm.exporter.web.server import ExporterServer, MetricsApp


@pytest.fixture
def server(tmp_path, tile_geometry):
    """An in-process server over 30 s of simulated data with a 10 s history, on a free port; its ``app.ingester``."""
    simulate_files(tile_geometry, tmp_path / "data", 30, file_seconds=10)
    ing = Ingester([InputSpec(str(tmp_path / "data"))], Monitor(tile_geometry, history_interval=10.0), 0.1)
    ing.poll()
    server = ExporterServer(("127.0.0.1", 0), MetricsApp(lambda: ing.published, history=ing.monitor.history))
    ing.publish_listeners.append(server.app.prerender)  # as the service wires them
    server.serve_in_thread()
    try:
        yield server, ing
    finally:
        server.stop()


@pytest.fixture
def served(server):
    """(port, ingester) of ``server``."""
    return server[0].server_address[1], server[1]


def get(port: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
        return resp.read()


@pytest.mark.external
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


def answer(sock: socket.socket) -> bytes:
    """Everything the server sends on ``sock`` until it closes it."""
    sock.settimeout(10)
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_request_size():
    """A request is complete once its head (CRLF or bare LF lines) and its Content-Length body are in."""
    assert web.request_size(b"GET / HTTP/1.1\r\nHost: a\r\n") is None
    assert web.request_size(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nnext") == 27
    assert web.request_size(b"GET / HTTP/1.0\n\n") == 16
    assert web.request_size(b"GET / HTTP/1.1\r\ncontent-length: 3\r\n\r\nab") is None
    with_body = b"GET / HTTP/1.1\r\nContent-Length : 3 \r\n\r\nabc"
    assert web.request_size(with_body + b"GET") == len(with_body)
    for data, status in [
        (b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 411),
        (b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nContent-Length: 70000\r\n\r\n", 413),
        (b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 20000, 431),
    ]:
        with pytest.raises(web.RequestError) as err:
            web.request_size(data)
        assert err.value.status == status


def test_an_answer_not_taken_in_time_is_cut_off():
    """A client that does not read holds a thread for RESPONSE_SECONDS at most, not per write."""
    server_end, client_end = socket.socketpair()
    with server_end, client_end:
        writer = web.DeadlineWriter(server_end, time.monotonic() + 0.5)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            writer.write(b"x" * 50_000_000)
        assert 0.4 < time.monotonic() - started < 5


@pytest.mark.external
def test_a_whole_request_has_a_deadline(served, monkeypatch):
    """A request dribbled a byte at a time, or with its body missing, is refused (408) REQUEST_SECONDS after it
    connected, however often it sends; a complete one with a body is served."""
    port, _ = served
    assert (web.REQUEST_SECONDS, web.RESPONSE_SECONDS) == (10.0, 30.0)  # as the README says
    monkeypatch.setattr(web, "REQUEST_SECONDS", 1.0)
    with socket.create_connection(("127.0.0.1", port)) as slow, socket.create_connection(("127.0.0.1", port)) as body:
        started = time.monotonic()
        body.sendall(b"GET /-/healthy HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
        for byte in b"GET /-/healthy HTTP/1.1\r\nX: y":
            try:
                slow.send(bytes([byte]))
            except OSError:  # closed by the server
                break
            if select.select([slow], [], [], 0.1)[0]:  # answered: stop sending
                break
        assert answer(slow).startswith(b"HTTP/1.0 408 Request Timeout")
        assert answer(body).startswith(b"HTTP/1.0 408")
        assert 1.0 <= time.monotonic() - started < 3.0
    with socket.create_connection(("127.0.0.1", port)) as complete:
        complete.sendall(b"GET /-/healthy HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")
        complete.shutdown(socket.SHUT_WR)  # all sent: still answered
        assert answer(complete).startswith(b"HTTP/1.0 200 OK") and answer(complete) == b""


@pytest.mark.slow
def test_the_stalest_incomplete_request_makes_room_and_complete_ones_are_always_served(server, monkeypatch):
    """With MAX_OPEN_CONNECTIONS open, a new connection closes the incomplete one whose last progress is oldest
    (not the new one); complete requests are never closed for room, and wait for a thread (MAX_WORKERS) in turn."""
    srv, _ = server
    port = srv.server_address[1]
    assert (web.MAX_OPEN_CONNECTIONS, web.MAX_WORKERS, srv.request_queue_size) == (512, 64, 1024)  # as the README says
    monkeypatch.setattr(web, "MAX_OPEN_CONNECTIONS", 4)
    monkeypatch.setattr(web, "MAX_WORKERS", 2)
    connect = functools.partial(socket.create_connection, ("127.0.0.1", port), timeout=10)
    slow = connect()
    slow.sendall(b"G")
    idle = [connect() for _ in range(3)]
    wait_for(lambda: len(srv._reading) == 4, timeout=10, what="four connections being read")
    slow.sendall(b"E")  # progress: now idle[0] is the stalest
    wait_for(lambda: next(reversed(srv._reading)).data == b"GE", timeout=10, what="the slow request's progress")
    try:
        assert "larpix_exporter_up 1" in scrape(port)
        assert answer(idle[0]).startswith(b"HTTP/1.0 503 Service Unavailable")
        for sock in [slow, *idle[1:]]:
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):  # still open, nothing said
                sock.recv(1)
    finally:
        for sock in [slow, *idle]:
            sock.close()
    # and the scrape's worker done with it: a request still counted as handed off would fill the fourth place below
    wait_for(lambda: not srv._reading and not srv._handed_off, timeout=10, what="closed connections forgotten")
    srv.app.heavy.acquire()  # every channel list now waits for its turn
    requests = [connect() for _ in range(4)]
    try:
        for sock in requests:
            sock.sendall(b"GET /api/channels?format=csv HTTP/1.1\r\n\r\n")
        wait_for(lambda: srv._handed_off == 4, timeout=10, what="four complete requests handed off")
        with connect() as extra:  # all four open ones are complete: the new one is refused
            assert answer(extra).startswith(b"HTTP/1.0 503")
    finally:
        srv.app.heavy.release()
    for sock in requests:
        with sock:
            assert answer(sock).startswith(b"HTTP/1.0 200 OK")


@pytest.mark.external
def test_out_of_file_descriptors_the_stalest_incomplete_request_makes_room(tmp_path, tile_geometry):
    """An exporter limited to 120 open files, 300 idle connections: each scrape is accepted by closing the
    stalest idle one, and answered."""
    simulate_files(tile_geometry, tmp_path / "data", 2)
    limit = [require_binary("prlimit"), "--nofile=120:120"]
    with running_exporter(["-i", str(tmp_path / "data"), "--checkpoint", "-"], wrapper=limit) as proc:
        port = int(proc.address.rsplit(":", 1)[1])
        idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(300)]
        try:
            for _ in range(5):
                assert "larpix_exporter_up 1" in scrape(port)
            assert answer(idle[0]).startswith(b"HTTP/1.0 503")
        finally:
            for sock in idle:
                sock.close()
        assert "connections not accepted: Too many open files" in proc.log.read_text()


@pytest.mark.external
def test_per_pixel_series_asked_for_when_off_is_404_with_a_reason(served):
    port, _ = served
    with pytest.raises(urllib.error.HTTPError) as err:
        get(port, "/metrics?per_pixel=1")
    assert err.value.code == 404
    assert err.value.read() == b"per-pixel series are off: start serve with --per-pixel\n"
    assert "larpix_exporter_up 1" in scrape(port, "/metrics?per_pixel=0")


@pytest.mark.external
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
