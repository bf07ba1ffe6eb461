"""HTTP endpoints: ``/metrics`` (``--web.telemetry-path``), a landing page ``/``, ``/-/healthy``, ``/-/ready``
and the plots under ``/plots/``.

Scrapes render the most recently published snapshot; nothing here takes a lock that the
ingest thread holds. The server cannot be starved: a client has ``REQUEST_READ_SECONDS`` for
each read and write, at most ``MAX_CONNECTIONS`` are served at once (more get a 503 at once),
and the heavy endpoints (history, channel lists, per-pixel series, plots) render one at a
time, the history at most once per new history entry, so ``/metrics`` never queues behind them.
The health endpoints answer without basic auth (they say only OK or not), so an orchestrator can
probe them; everything else needs the web config's users.
"""

from __future__ import annotations

import contextlib
import gzip
import html
import logging
import math
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector, generate_latest

from exporter import __version__
from exporter.detector.runconfig import RunConfig
from exporter.metrics.exposition import CONTENT_TYPE, Family, render
from exporter.metrics.families import FamilyBuilder
from exporter.monitor import channel_list
from exporter.monitoring import Monitoring
from exporter.quality.channels import CHANNEL_MEDIA_TYPES, DEFAULT_STATUSES, disabled_list_meta, format_channels
from exporter.quality.history import History
from exporter.quality.status import ChannelStatus, CheckStatus
from exporter.runtime.ingest import Published
from exporter.web.auth import WebConfig
from exporter.web.pages import GALLERY_CSS, PlotSource, folder_html, gallery_html, listing_html, plot_families
from exporter.web.problems import PROBLEMS_CSS, problems_html
from plots.store import MEDIA_TYPES

log = logging.getLogger(__name__)
GZIP_LEVEL = 1
#: Publications are rendered as they come (not at the next scrape) while a scrape came this recently.
PRERENDER_AFTER_SCRAPE_SECONDS = 300.0
#: A scrape is served the previous rendering, while the newest publication is being rendered, only if
#: that rendering's publication is at most this much older (about a poll); else it waits.
STALE_RENDERING_SECONDS = 10.0
#: zlib window bits for a gzip stream (header and trailer) with the largest window.
GZIP_WBITS = 16 + zlib.MAX_WBITS
TLS_HANDSHAKE_SECONDS = 10.0
#: Seconds a client may take for each read of its request and each write of the answer.
REQUEST_READ_SECONDS = 10.0
#: Connections served at once (one thread each); beyond, a connection gets 503 and is closed.
MAX_CONNECTIONS = 64
LISTEN_BACKLOG = 128
#: Heavy renderings (history, channel lists, per-pixel series, plot pages) at once, and how
#: long a request waits for its turn before a 503.
HEAVY_CONCURRENCY = 1
HEAVY_WAIT_SECONDS = 30.0
#: Rows (chip x entry) of /api/history at most: the newest entries that fit.
MAX_HISTORY_ROWS = 1_000_000
BUSY_RESPONSE = b"HTTP/1.0 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


@dataclass(frozen=True)
class Rendering:
    """The detector families of one published snapshot as exposition text, and as the start of a
    gzip stream (``stream``: the compressor after that text, copied to finish each scrape's body)."""

    source: Published
    text: bytes
    gzipped: bytes
    stream: Any  # zlib.Compress


class Busy(Exception):
    """No turn for a heavy rendering within HEAVY_WAIT_SECONDS (answered with 503)."""


class MetricsApp:
    """Renders scrapes from whatever ``published()`` returns; ``plots`` (if any) is the plot manager."""

    def __init__(
        self,
        published: Callable[[], Published],
        per_pixel_allowed: bool = False,
        plots: PlotSource | None = None,
        web: WebConfig | None = None,
        history: History | None = None,
        inputs: list[str] | None = None,
        run_config: RunConfig | None = None,
        telemetry_path: str = "/metrics",
        ready: Callable[[], bool] = lambda: True,
    ) -> None:
        self.published = published
        self.inputs = inputs or []
        self.run_config = run_config or RunConfig()
        self.per_pixel_allowed = per_pixel_allowed
        self.plots = plots
        self.web = web
        self.history = history
        self.telemetry_path = telemetry_path
        self.ready = ready
        self.collector = FamilyBuilder(self.run_config.run_mode)
        self.process = CollectorRegistry(auto_describe=True)  # process_*, python_info, python_gc_*: client_python's
        for collector in (ProcessCollector, PlatformCollector, GCCollector):
            collector(registry=self.process)
        self._lock = threading.Lock()  # the collector's label cache and the renderings are shared between scrapes
        self._renderings: dict[bool, Rendering] = {}
        self._last_scrape = -math.inf
        self.last_scrape_seconds = 0.0
        self.heavy = threading.BoundedSemaphore(HEAVY_CONCURRENCY)
        self._history_cache: dict[str, tuple[tuple, bytes, bytes]] = {}

    @contextlib.contextmanager
    def heavy_turn(self) -> Iterator[None]:
        """Wait for the turn of a heavy rendering (HEAVY_CONCURRENCY at once); Busy after HEAVY_WAIT_SECONDS."""
        if not self.heavy.acquire(timeout=HEAVY_WAIT_SECONDS):
            raise Busy
        try:
            yield
        finally:
            self.heavy.release()

    def metrics_body(self, per_pixel: bool, compressed: bool) -> bytes:
        """One scrape's exposition, gzipped when ``compressed``. The detector families are rendered
        (and compressed) once per published snapshot, whoever scrapes; only the exporter's own
        families, which follow the wall clock, are rendered for each scrape."""
        started = time.perf_counter()
        self._last_scrape = time.monotonic()
        per_pixel = per_pixel and self.per_pixel_allowed
        pub = self.published()
        with self.heavy_turn() if per_pixel else contextlib.nullcontext():
            rendered = self._detector_rendering(pub, per_pixel)
        source = rendered.source  # the exporter's figures of the same publication as the detector's
        families = self.collector.exporter_families(source.snapshot, source.health)
        families.append(
            Family(
                "larpix_exporter_scrape_duration_seconds", "gauge", "Time the previous /metrics rendering took."
            ).add((), [()], [self.last_scrape_seconds])
        )
        if self.plots is not None:
            families += plot_families(self.plots)
        fresh = (render(families) + generate_latest(self.process).decode()).encode()
        if compressed:
            stream = rendered.stream.copy()  # the gzip stream after the detector part: finish it with this scrape's
            body = rendered.gzipped + stream.compress(fresh) + stream.flush()
        else:
            body = rendered.text + fresh
        self.last_scrape_seconds = time.perf_counter() - started
        return body

    def prerender(self, pub: Published) -> None:
        """Render a new publication's detector families ahead of the scrapes (called by the ingest thread
        when it publishes), while somebody scrapes: no scrape then waits for a rendering."""
        if time.monotonic() - self._last_scrape < PRERENDER_AFTER_SCRAPE_SECONDS:
            self._detector_rendering(pub, False)

    def _detector_rendering(self, pub: Published, per_pixel: bool) -> Rendering:
        """The detector families of ``pub``, rendered once. While it is being rendered (by the ingest
        thread, or another scrape), the last complete rendering of the default view is served if its
        publication is at most ``STALE_RENDERING_SECONDS`` older: no scrape then waits for a rendering."""
        last = self._renderings.get(per_pixel)
        if last is not None and last.source is pub:
            return last
        recent = (
            last is not None
            and not per_pixel
            and pub.evaluation.wall_time - last.source.evaluation.wall_time <= STALE_RENDERING_SECONDS
        )
        if not self._lock.acquire(blocking=not recent):
            assert last is not None  # only a recent rendering is served instead of waiting
            return last
        try:
            cached = self._renderings.get(per_pixel)
            if cached is None or cached.source is not pub:
                families = self.collector.detector_families(pub.snapshot, per_pixel, evaluation=pub.evaluation)
                text = render(families).encode()
                stream = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, GZIP_WBITS)
                cached = self._renderings[per_pixel] = Rendering(pub, text, stream.compress(text), stream)
            return cached
        finally:
            self._lock.release()

    def channels(self, statuses: list[str], fmt: str) -> tuple[bytes, str]:
        """The current channels of the given statuses (all bad ones: ``[]``), as csv, json or the DAQ's disabled list."""
        if fmt not in CHANNEL_MEDIA_TYPES:
            raise ValueError(f"unknown format {fmt!r}: use {', '.join(CHANNEL_MEDIA_TYPES)}")
        statuses = statuses or list(DEFAULT_STATUSES[fmt])
        with self.heavy_turn():
            snap = self.published().snapshot
            meta = disabled_list_meta(snap, statuses, self.inputs) if fmt == "daq" else None
            return format_channels(channel_list(snap, statuses), fmt, meta), CHANNEL_MEDIA_TYPES[fmt]

    def history_export(self, fmt: str) -> tuple[bytes, bytes, str]:
        """The per-chip history as csv or json (the newest MAX_HISTORY_ROWS rows), plain and gzipped.

        Rendered once per new history entry and format; every other request gets the cached bytes.
        """
        if self.history is None:
            return b"", b"", "text/plain"
        entries = self.history.entries
        key = (len(entries), entries[-1].data_time if entries else None)
        cached = self._history_cache.get(fmt)
        if cached is None or cached[0] != key:
            with self.heavy_turn():
                cached = self._history_cache.get(fmt)
                if cached is None or cached[0] != key:  # not rendered by the request we waited for
                    body = self.history.text(fmt, MAX_HISTORY_ROWS).encode()
                    cached = self._history_cache[fmt] = (key, body, gzip.compress(body, GZIP_LEVEL))
        return cached[1], cached[2], CHANNEL_MEDIA_TYPES[fmt]

    def landing_page(self) -> str:
        """A small status page for people: health figures, links, the newest plots."""
        pub = self.published()
        h, s = pub.health, pub.snapshot
        rc = self.run_config
        masked_column = ChannelStatus.judged().index(ChannelStatus.MASKED)
        rows = [
            ("up", "yes" if h.up else "no"),
            ("files tracked", h.files_tracked),
            ("files in error", ", ".join(f"{k}: {v}" for k, v in sorted(h.files_in_error.items())) or "none"),
            ("packets ingested", sum(h.packets_ingested.values())),
            ("chips", len(s.chip_keys)),
            (
                "newest data time",
                time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(s.data_time))
                if s.data_time == s.data_time
                else "no data yet",
            ),
            ("ingest lag", f"{time.time() - s.data_time:.1f} s" if s.data_time == s.data_time else "n/a"),
            ("polls", h.polls),
            ("detector status", CheckStatus(pub.evaluation.results.detector_status).name),
            (
                "run mode",
                f"{pub.evaluation.run_mode} ({'detected from the trigger types' if rc.run_mode == 'auto' else 'given'})",
            ),
            (
                "run configuration",
                f"{'all chips expected' if rc.network is None else f'{len(rc.network)} chips in the hydra networks'}, "
                f"{int(s.chip_status_counts[:, masked_column].sum()) if len(s.chip_keys) else 0} channels masked"
                + (f" ({len(rc.sources)} files)" if rc.sources else ""),
            ),
            ("dead chips", int(s.chip_dead.sum())),
            ("chips unknown (not enough data yet)", int(s.chip_unknown.sum())),
            (
                "verdict thresholds",
                f"a channel is silent after {s.silent_channel_hits:.1f} expected hits without one, a chip dead after "
                f"{s.dead_chip_hits:.1f} (false-alarm probability {s.config.false_alarm_probability:g} per evaluation)",
            ),
            (
                "channels",
                ", ".join(
                    f"{int(n)} {status.label}" for status, n in zip(ChannelStatus.judged(), s.chip_status_counts.sum(0))
                ),
            ),
        ]
        table = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
        problems = problems_html(pub.evaluation, Monitoring().runbook_url, self.plots is not None)
        return (
            "<!doctype html><html><head><meta charset='utf-8'><title>larpix-dqm</title>"
            "<style>body{font-family:sans-serif;margin:2em}th{text-align:left;padding-right:1em}"
            f"{GALLERY_CSS}{PROBLEMS_CSS}</style>"
            f"</head><body><h1>larpix-dqm {__version__}</h1>{problems}<h2>Exporter</h2><table>{table}</table>"
            f"<p><a href='{self.telemetry_path}'>{self.telemetry_path}</a> &middot; "
            f"<a href='{self.telemetry_path}?per_pixel=1'>{self.telemetry_path}?per_pixel=1</a>"
            " (per-pixel series, with <code>--per-pixel</code>) &middot; <a href='/plots/'>/plots/</a>"
            " &middot; <a href='/api/channels?status=noisy,silent&amp;format=csv'>bad channels (csv)</a>"
            " &middot; <a href='/api/channels?format=daq'>disabled list for the DAQ (noisy channels)</a>"
            " &middot; <a href='/api/history?format=csv'>per-chip history (csv)</a></p>"
            f"{gallery_html(self.plots)}</body></html>"
        )


def make_handler(app: MetricsApp) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to ``app``."""

    class Handler(BaseHTTPRequestHandler):
        server_version = f"larpix-dqm/{__version__}"
        timeout = REQUEST_READ_SECONDS  # per socket read and write: idle clients do not hold a thread

        def log_message(self, format: str, *args: object) -> None:
            log.debug("%s " + format, self.address_string(), *args)

        def _send(
            self,
            status: int,
            body: bytes,
            content_type: str,
            compress: bool = True,
            headers: dict | None = None,
            gzipped: bytes | None = None,
        ) -> None:
            if compress and "gzip" in self.headers.get("Accept-Encoding", "") and len(body) > 1024:
                body = gzipped or gzip.compress(body, GZIP_LEVEL)
                self.send_response(status)
                self.send_header("Content-Encoding", "gzip")
            else:
                self.send_response(status)
            for name, value in {**(app.web.headers if app.web is not None else {}), **(headers or {})}.items():
                self.send_header(name, value)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_HEAD(self) -> None:
            self.do_GET()

        def setup(self) -> None:
            if isinstance(self.request, ssl.SSLSocket):  # handshake here, in the request's own thread
                self.request.settimeout(TLS_HANDSHAKE_SECONDS)
                self.request.do_handshake()
            super().setup()

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path == "/-/healthy":
                self._send(200, b"OK\n", "text/plain; charset=utf-8")
                return
            if url.path == "/-/ready":
                ready = app.ready()
                self._send(200 if ready else 503, b"OK\n" if ready else b"not ready\n", "text/plain; charset=utf-8")
                return
            if app.web is not None and not app.web.authorized(self.headers.get("Authorization")):
                self._send(
                    401,
                    b"unauthorized\n",
                    "text/plain; charset=utf-8",
                    headers={"WWW-Authenticate": 'Basic realm="larpix-dqm"'},
                )
                return
            query = parse_qs(url.query)
            try:
                self._route(url.path, query)
            except Busy:
                self._send(503, b"busy: try again\n", "text/plain; charset=utf-8", headers={"Retry-After": "5"})

        def _route(self, path: str, query: dict[str, list[str]]) -> None:
            """Answer one GET or HEAD request for ``path``."""
            if path == "/api/channels":
                statuses = [s for s in ",".join(query.get("status", [])).split(",") if s]
                fmt = query.get("format", ["json"])[0]
                try:
                    body, media = app.channels(statuses, fmt)
                except (ValueError, KeyError) as err:
                    self._send(400, f"{err}\n".encode(), "text/plain; charset=utf-8")
                    return
                self._send(200, body, media)
            elif path == "/api/history":
                fmt = query.get("format", ["csv"])[0]
                if fmt not in ("csv", "json"):
                    self._send(400, b"format: csv or json\n", "text/plain; charset=utf-8")
                    return
                body, gzipped, media = app.history_export(fmt)
                self._send(200, body, media, gzipped=gzipped)
            elif path == app.telemetry_path:
                per_pixel = query.get("per_pixel", ["0"])[0] in ("1", "true", "yes")
                accepts_gzip = "gzip" in self.headers.get("Accept-Encoding", "")
                body = app.metrics_body(per_pixel, accepts_gzip)
                encoding = {"Content-Encoding": "gzip"} if accepts_gzip else None
                self._send(200, body, CONTENT_TYPE, compress=False, headers=encoding)
            elif path == "/":
                self._send(200, app.landing_page().encode(), "text/html; charset=utf-8")
            elif path == "/plots":
                self._send(301, b"", "text/plain; charset=utf-8", headers={"Location": "/plots/"})
            elif path.startswith("/plots/"):
                self._plots(path[len("/plots/") :])
            else:
                self._send(404, b"not found\n", "text/plain; charset=utf-8")

        def _plots(self, rest: str) -> None:
            """``/plots/`` listing, ``/plots/<stem>_dqm/`` listings, images; never outside PLOTDIR."""
            if app.plots is None:
                self._send(404, b"plots are off: start serve with -o PLOTDIR\n", "text/plain; charset=utf-8")
                return
            if rest == "" or rest.endswith("/"):
                folder = app.plots.store.resolve_folder(rest[:-1]) if rest else None
                if rest and folder is None:
                    self._send(404, b"no such plot folder\n", "text/plain; charset=utf-8")
                else:
                    with app.heavy_turn():
                        page = folder_html(app.plots, folder) if folder else listing_html(app.plots)
                    self._send(200, page.encode(), "text/html; charset=utf-8")
                return
            path = app.plots.store.resolve(rest)
            try:
                mtime, body = (path.stat().st_mtime, path.read_bytes()) if path is not None else (0.0, None)
            except OSError:  # replaced or removed meanwhile
                body = None
            if path is None or body is None:
                self._send(404, b"no such plot\n", "text/plain; charset=utf-8")
                return
            headers = {
                "Cache-Control": "no-cache",
                "Last-Modified": self.date_time_string(int(mtime)),
                "X-Content-Type-Options": "nosniff",
                "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
            }
            media = MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream")
            self._send(200, body, media, compress=media == "image/svg+xml", headers=headers)

    return Handler


class ExporterServer(ThreadingHTTPServer):
    """Threaded HTTP server; ``serve_in_thread`` starts it in the background."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = LISTEN_BACKLOG

    def __init__(self, address: tuple[str, int], app: MetricsApp) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, make_handler(app))
        self.app = app
        self.connections = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.refused = 0
        self.thread: threading.Thread | None = None
        if app.web is not None and app.web.ssl_context is not None:
            self.socket = app.web.ssl_context.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)

    def process_request(self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any) -> None:
        """Serve the connection in a thread of its own, or refuse it (503) when MAX_CONNECTIONS are busy."""
        if not self.connections.acquire(blocking=False):
            self.refused += 1
            if self.refused == 1 or self.refused % 1000 == 0:
                log.warning("%d connections refused: %d already being served", self.refused, MAX_CONNECTIONS)
            try:
                if isinstance(request, socket.socket) and not isinstance(request, ssl.SSLSocket):
                    request.settimeout(1.0)
                    request.sendall(BUSY_RESPONSE)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.connections.release()
            raise

    def process_request_thread(self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.connections.release()

    def handle_error(self, request: object, client_address: tuple) -> None:
        """A client that breaks off (or fails the TLS handshake) is not the exporter's error."""
        log.debug("request from %s failed", client_address, exc_info=True)

    def serve_in_thread(self) -> None:
        self.thread = threading.Thread(target=self.serve_forever, name="http", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
