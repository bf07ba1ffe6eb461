"""HTTP endpoints: ``/metrics`` (``--web.telemetry-path``), a landing page ``/``, ``/-/healthy``, ``/-/ready``,
the plots under ``/plots/`` and ``POST /-/draw`` (draw the plots now).

Scrapes render the most recently published snapshot; nothing here takes a lock that the
ingest thread holds. Slow clients cannot starve the server: one thread reads every request without
blocking (TLS handshake, head and body), each within ``REQUEST_SECONDS`` of connecting; only a complete
request gets a thread (``MAX_WORKERS`` at once, the rest wait their turn) and ``RESPONSE_SECONDS`` to be
taken; when ``MAX_OPEN_CONNECTIONS`` are open, the incomplete one silent longest is closed for the new one.
The heavy endpoints (history, channel lists, per-pixel series, plots) render one at a
time, the history at most once per new history entry, so ``/metrics`` never queues behind them.
The health endpoints answer without basic auth (they say only OK or not), so an orchestrator can
probe them; everything else needs the web config's users.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import html
import io
import logging
import math
import re
import selectors
import socket
import ssl
import threading
import time
import zlib
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, ClassVar, Protocol
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector, generate_latest

from larpix_dqm.exporter import __version__
from larpix_dqm.exporter.detector.geometry import Geometry
from larpix_dqm.exporter.detector.runconfig import RunConfig
from larpix_dqm.exporter.metrics.exposition import CONTENT_TYPE, Family, render
from larpix_dqm.exporter.metrics.families import FamilyBuilder
from larpix_dqm.exporter.metrics.health import Health
from larpix_dqm.exporter.monitoring import MixinConfig
from larpix_dqm.exporter.quality.channels import (
    CHANNEL_MEDIA_TYPES,
    DEFAULT_STATUSES,
    channel_list,
    disabled_list_meta,
    format_channels,
)
from larpix_dqm.exporter.quality.evaluation import Evaluation
from larpix_dqm.exporter.quality.history import History
from larpix_dqm.exporter.quality.snapshot import Snapshot
from larpix_dqm.exporter.quality.status import ChannelStatus, CheckStatus
from larpix_dqm.exporter.registry.reader import find_run, format_run, format_runs, read_runs, recent_runs
from larpix_dqm.exporter.registry.schema import RegistryError
from larpix_dqm.exporter.web.auth import WebConfig
from larpix_dqm.exporter.web.pages import (
    GALLERY_CSS,
    PlotSource,
    folder_html,
    gallery_html,
    listing_html,
    plot_families,
    runs_html,
)
from larpix_dqm.exporter.web.problems import PROBLEMS_CSS, geometry_notice_html, problems_html
from larpix_dqm.plots.store import MEDIA_TYPES

log = logging.getLogger(__name__)
GZIP_LEVEL = 1
#: Publications are rendered as they come (not at the next scrape) while a scrape came this recently.
PRERENDER_AFTER_SCRAPE_SECONDS = 300.0
#: A scrape is served the previous rendering, while the newest publication is being rendered, only if
#: that rendering's publication is at most this much older (about a poll); else it waits.
STALE_RENDERING_SECONDS = 10.0
#: zlib window bits for a gzip stream (header and trailer) with the largest window.
GZIP_WBITS = 16 + zlib.MAX_WBITS
#: Seconds a client has, from connecting, to send its whole request (TLS handshake, head and body): 408 after.
REQUEST_SECONDS = 10.0
#: Seconds a client has to take the whole answer to a request.
RESPONSE_SECONDS = 30.0
#: Seconds ``POST /-/draw`` waits for the drawing cycle it asked for (then 202: still drawing); within
#: RESPONSE_SECONDS, so the answer is still taken.
DRAW_WAIT_SECONDS = 20.0
#: Bytes of a request (head and body) at most: 431 or 413 beyond.
MAX_REQUEST_BYTES = 64 * 1024
#: Connections open at once, being read or served; beyond, the one still sending its request whose last
#: progress is oldest is closed (503) to make room, and a new one is refused (503) only when all are served.
MAX_OPEN_CONNECTIONS = 512
#: Complete requests served at once (one thread each); more wait, in order, for a thread.
MAX_WORKERS = 64
#: Connections the kernel holds until they are accepted: a full queue drops a client's handshake, which then
#: waits for TCP's retransmissions (seconds to minutes), so it is deep and drained whole at each wake-up.
LISTEN_BACKLOG = 1024
#: Bytes written to a client at a time, each with the time left of RESPONSE_SECONDS.
WRITE_CHUNK = 64 * 1024
#: Heavy renderings (history, channel lists, per-pixel series, plot pages) at once, and how
#: long a request waits for its turn before a 503.
HEAVY_CONCURRENCY = 1
HEAVY_WAIT_SECONDS = 30.0
#: Rows (chip x entry) of /api/history at most: the newest entries that fit.
MAX_HISTORY_ROWS = 1_000_000
#: The end of a request's head, and its Content-Length and Transfer-Encoding headers.
HEAD_END = re.compile(rb"\r?\n\r?\n")
CONTENT_LENGTH = re.compile(rb"^content-length[ \t]*:[ \t]*([^\r\n]*?)[ \t]*\r?$", re.I | re.M)
TRANSFER_ENCODING = re.compile(rb"^transfer-encoding[ \t]*:", re.I | re.M)


class Published(Protocol):
    """What a scrape reads: one evaluation, the health and the run being read at that moment (the ingest thread
    publishes them; the service hands the app a callable that returns the newest)."""

    @property
    def evaluation(self) -> Evaluation: ...

    @property
    def health(self) -> Health: ...

    @property
    def snapshot(self) -> Snapshot: ...

    @property
    def run(self) -> str | None: ...


@dataclass(frozen=True)
class Rendering:
    """The detector families of one published snapshot as exposition text, and as the start of a
    gzip stream (``stream``: the compressor after that text, copied to finish each scrape's body)."""

    source: Published
    text: bytes
    gzipped: bytes
    stream: Any  # zlib.Compress


def _same_view(a: Published, b: Published) -> bool:
    """Whether two publications show the same detector families (one evaluation, one run)."""
    return a.evaluation is b.evaluation and a.run == b.run


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
        runbook_url: str = MixinConfig.runbook_url,
        geometry: Geometry | None = None,
        registry: str | None = None,
    ) -> None:
        self.published = published
        self.registry = registry  # the run registry's path, for /api/runs (None: no registry)
        self.inputs = inputs or []
        self.run_config = run_config or RunConfig()
        self.per_pixel_allowed = per_pixel_allowed
        self.plots = plots
        self.web = web
        self.history = history
        self.telemetry_path = telemetry_path
        self.ready = ready
        self.runbook_url = runbook_url
        self.geometry = geometry
        self.families = FamilyBuilder(self.run_config.run_mode, geometry)
        self.process = CollectorRegistry(auto_describe=True)  # process_*, python_info, python_gc_*: client_python's
        for collector in (ProcessCollector, PlatformCollector, GCCollector):
            collector(registry=self.process)
        self._lock = threading.Lock()  # the family builder's label cache and the renderings are shared between scrapes
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
        pub = self.published()
        with self.heavy_turn() if per_pixel else contextlib.nullcontext():
            rendered = self._detector_rendering(pub, per_pixel)
        source = rendered.source  # the exporter's figures of the same publication as the detector's
        families = self.families.exporter_families(source.snapshot, source.health)
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
        if last is not None and last.source is not pub and _same_view(last.source, pub):
            # a publication of the same evaluation (an idle poll): its text, with this publication's health
            last = self._renderings[per_pixel] = dataclasses.replace(last, source=pub)
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
                families = self.families.detector_families(
                    pub.snapshot, per_pixel, evaluation=pub.evaluation, run=pub.run
                )
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
            snapshot = self.published().snapshot
            meta = disabled_list_meta(snapshot, statuses, self.inputs) if fmt == "daq" else None
            return format_channels(channel_list(snapshot, statuses), fmt, meta), CHANNEL_MEDIA_TYPES[fmt]

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

    def runs(self, fmt: str, run: str | None) -> tuple[bytes, str] | None:
        """The registry's runs as json or csv, or one run's record (``run``: its failing chips in csv); None for
        an unknown run."""
        assert self.registry is not None
        if fmt not in ("json", "csv"):
            raise ValueError(f"unknown format {fmt!r}: use json or csv")
        with self.heavy_turn():
            records = read_runs([self.registry])
        if run is None:
            return format_runs(records, fmt).encode(), CHANNEL_MEDIA_TYPES[fmt]
        record = find_run(records, run)
        if record is None:
            return None
        return format_run(record, fmt).encode(), CHANNEL_MEDIA_TYPES[fmt]

    def _runs_line(self) -> str:
        """The status page's links to the current and the last runs (nothing without a registry)."""
        if self.registry is None:
            return ""
        try:
            recent = recent_runs(self.registry)
        except RegistryError as err:
            return f"<p class='runs'>run registry: {html.escape(str(err))}</p>"
        return runs_html(self.published().run, recent)

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
            (
                "dead chips",
                f"{int(s.chip_dead.sum())} ({int((s.chip_dead & (s.chip_run_hits == 0)).sum())} with no data since "
                "the run started)",
            ),
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
        problems = geometry_notice_html(self.geometry) + problems_html(
            pub.evaluation, self.runbook_url, self.plots is not None
        )
        return (
            "<!doctype html><html><head><meta charset='utf-8'><title>larpix-dqm</title>"
            "<style>body{font-family:sans-serif;margin:2em}th{text-align:left;padding-right:1em}"
            f"{GALLERY_CSS}{PROBLEMS_CSS}</style>"
            f"</head><body><h1>larpix-dqm {__version__}</h1>{problems}{self._runs_line()}"
            f"<h2>Exporter</h2><table>{table}</table>"
            f"<p><a href='{self.telemetry_path}'>{self.telemetry_path}</a> &middot; "
            f"<a href='{self.telemetry_path}?per_pixel=1'>{self.telemetry_path}?per_pixel=1</a>"
            " (per-pixel series, with <code>--per-pixel</code>) &middot; <a href='/plots/'>/plots/</a>"
            " &middot; <a href='/api/channels?status=noisy,silent&amp;format=csv'>bad channels (csv)</a>"
            " &middot; <a href='/api/channels?format=daq'>disabled list for the DAQ (noisy channels)</a>"
            " &middot; <a href='/api/history?format=csv'>per-chip history (csv)</a></p>"
            f"{gallery_html(self.plots)}</body></html>"
        )


class RequestHandler(BaseHTTPRequestHandler):
    """Answers one request from the MetricsApp ``app`` (bound by ``make_handler``), read whole by the server."""

    app: ClassVar[MetricsApp]
    server_version = f"larpix-dqm/{__version__}"
    request: Connection  # read whole by the server before the handler runs

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
        for name, value in {**(self.app.web.headers if self.app.web is not None else {}), **(headers or {})}.items():
            self.send_header(name, value)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.do_GET()

    def setup(self) -> None:
        """Parse the request the server read whole; write the answer within RESPONSE_SECONDS."""
        self.connection = self.request.sock
        self.rfile = io.BytesIO(self.request.data)
        self.wfile = DeadlineWriter(self.connection, time.monotonic() + RESPONSE_SECONDS)

    def _authorized(self) -> bool:
        """Whether the request carries one of the web config's users (always, without one); else answer 401."""
        if self.app.web is None or self.app.web.authorized(self.headers.get("Authorization")):
            return True
        self._send(
            401,
            b"unauthorized\n",
            "text/plain; charset=utf-8",
            headers={"WWW-Authenticate": 'Basic realm="larpix-dqm"'},
        )
        return False

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/-/healthy":
            self._send(200, b"OK\n", "text/plain; charset=utf-8")
            return
        if url.path == "/-/ready":
            ready = self.app.ready()
            self._send(200 if ready else 503, b"OK\n" if ready else b"not ready\n", "text/plain; charset=utf-8")
            return
        if not self._authorized():
            return
        if url.path == "/-/draw":
            self._send(405, b"POST to draw the plots now\n", "text/plain; charset=utf-8", headers={"Allow": "POST"})
            return
        query = parse_qs(url.query)
        try:
            self._route(url.path, query)
        except Busy:
            self._send(503, b"busy: try again\n", "text/plain; charset=utf-8", headers={"Retry-After": "5"})

    def do_POST(self) -> None:
        """``POST /-/draw``: a drawing cycle now (the new packets first), answered when its images are written
        (200) or after DRAW_WAIT_SECONDS (202, still drawing); ``?then=/plots/...`` answers 303 to that page,
        so a button on the plot pages returns to them."""
        url = urlsplit(self.path)
        if not self._authorized():
            return
        text = "text/plain; charset=utf-8"
        if url.path != "/-/draw":
            self._send(405, b"only /-/draw takes POST\n", text, headers={"Allow": "GET, HEAD"})
            return
        if self.app.plots is None:
            self._send(404, b"plots are off: start serve with -o PLOTDIR\n", text)
            return
        drawn = self.app.plots.draw_now(DRAW_WAIT_SECONDS)
        then = parse_qs(url.query).get("then", [""])[0]
        if then == "/" or then.startswith("/plots/"):  # only this server's pages: no open redirect
            self._send(303, b"", text, headers={"Location": then})
        elif drawn:
            self._send(200, b"drawn\n", text)
        else:
            self._send(202, f"still drawing after {DRAW_WAIT_SECONDS:g} s\n".encode(), text)

    def _route(self, path: str, query: dict[str, list[str]]) -> None:
        """Answer one GET or HEAD request for ``path``."""
        if path == "/api/channels":
            statuses = [s for s in ",".join(query.get("status", [])).split(",") if s]
            fmt = query.get("format", ["json"])[0]
            try:
                body, media = self.app.channels(statuses, fmt)
            except (ValueError, KeyError) as err:
                self._send(400, f"{err}\n".encode(), "text/plain; charset=utf-8")
                return
            self._send(200, body, media)
        elif path == "/api/history":
            fmt = query.get("format", ["csv"])[0]
            if fmt not in ("csv", "json"):
                self._send(400, b"format: csv or json\n", "text/plain; charset=utf-8")
                return
            body, gzipped, media = self.app.history_export(fmt)
            self._send(200, body, media, gzipped=gzipped)
        elif path == "/api/runs":
            self._runs(query.get("format", ["json"])[0], query.get("run", [None])[0])
        elif path == self.app.telemetry_path:
            per_pixel = query.get("per_pixel", ["0"])[0] in ("1", "true", "yes")
            if per_pixel and not self.app.per_pixel_allowed:
                reason = b"per-pixel series are off: start serve with --per-pixel\n"
                self._send(404, reason, "text/plain; charset=utf-8")
                return
            accepts_gzip = "gzip" in self.headers.get("Accept-Encoding", "")
            body = self.app.metrics_body(per_pixel, accepts_gzip)
            encoding = {"Content-Encoding": "gzip"} if accepts_gzip else None
            self._send(200, body, CONTENT_TYPE, compress=False, headers=encoding)
        elif path == "/":
            self._send(200, self.app.landing_page().encode(), "text/html; charset=utf-8")
        elif path == "/plots":
            self._send(301, b"", "text/plain; charset=utf-8", headers={"Location": "/plots/"})
        elif path.startswith("/plots/"):
            self._plots(path[len("/plots/") :])
        else:
            self._send(404, b"not found\n", "text/plain; charset=utf-8")

    def _runs(self, fmt: str, run: str | None) -> None:
        """``/api/runs``: the run registry's runs, or one run's record."""
        text = "text/plain; charset=utf-8"
        if self.app.registry is None:
            self._send(404, b"no run registry: this exporter keeps none (--registry none, or --checkpoint -)\n", text)
            return
        try:
            found = self.app.runs(fmt, run)
        except ValueError as err:
            self._send(400, f"{err}\n".encode(), text)
            return
        except RegistryError as err:
            self._send(503, f"{err}\n".encode(), text)
            return
        if found is None:
            self._send(404, f"no run {run!r}\n".encode(), text)
            return
        self._send(200, *found)

    def _plots(self, rest: str) -> None:
        """``/plots/`` listing, ``/plots/<stem>_dqm/`` listings, images; never outside PLOTDIR."""
        if self.app.plots is None:
            self._send(404, b"plots are off: start serve with -o PLOTDIR\n", "text/plain; charset=utf-8")
            return
        if rest == "" or rest.endswith("/"):
            folder = self.app.plots.store.resolve_folder(rest[:-1]) if rest else None
            if rest and folder is None:
                self._send(404, b"no such plot folder\n", "text/plain; charset=utf-8")
            else:
                with self.app.heavy_turn():
                    page = folder_html(self.app.plots, folder) if folder else listing_html(self.app.plots)
                self._send(200, page.encode(), "text/html; charset=utf-8")
            return
        path = self.app.plots.store.resolve(rest)
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


def make_handler(app: MetricsApp) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to ``app``."""
    return type("Handler", (RequestHandler,), {"app": app})


class RequestError(Exception):
    """A request this server does not read: answered with ``status`` and a one-line ``reason``, then closed."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def request_size(data: bytes | bytearray) -> int | None:
    """Bytes of the request at the start of ``data`` (head and Content-Length body), None while incomplete.

    Raises RequestError for a request too large (MAX_REQUEST_BYTES), with a chunked body or a bad length.
    """
    end = HEAD_END.search(data, 0, MAX_REQUEST_BYTES + 4)
    if end is None:
        if len(data) > MAX_REQUEST_BYTES:
            raise RequestError(431, f"the request head exceeds {MAX_REQUEST_BYTES} bytes")
        return None
    head = data[: end.start()]
    if TRANSFER_ENCODING.search(head):
        raise RequestError(411, "a request body needs a Content-Length")
    lengths = {value.strip() for value in CONTENT_LENGTH.findall(head)}
    if len(lengths) > 1 or not all(value.isdigit() for value in lengths):
        raise RequestError(400, "bad Content-Length")
    size = end.end() + (int(lengths.pop()) if lengths else 0)
    if size > MAX_REQUEST_BYTES:
        raise RequestError(413, f"the request exceeds {MAX_REQUEST_BYTES} bytes")
    return size if len(data) >= size else None


def refusal(status: int, reason: str) -> bytes:
    """A whole HTTP answer that refuses a request with ``status`` and closes the connection."""
    body = f"{reason}\n".encode()
    retry = "Retry-After: 1\r\n" if status == 503 else ""
    return (
        f"HTTP/1.0 {status} {HTTPStatus(status).phrase}\r\nContent-Type: text/plain; charset=utf-8\r\n{retry}"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


class Connection:
    """A client connection: its request read so far (``data``) without blocking, by the server's selector
    thread, until it is complete and handed to a handler thread."""

    def __init__(self, sock: socket.socket, address: Any, handshaken: bool) -> None:
        self.sock = sock
        self.address = address
        self.handshaken = handshaken  # TLS handshake done (always, for plain connections)
        self.deadline = time.monotonic() + REQUEST_SECONDS
        self.data = bytearray()

    def refuse(self, status: int, reason: str) -> None:
        """Send a refusal if the socket takes it at once (never waiting for the client), then close."""
        if self.handshaken:
            with contextlib.suppress(OSError):
                self.sock.send(refusal(status, reason))
        self.sock.close()


class DeadlineWriter(io.BufferedIOBase):
    """The handler's ``wfile``: writes to the client's socket, the whole answer by ``deadline``, so a client
    that does not read cannot hold a thread."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self.sock = sock
        self.deadline = deadline

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        for start in range(0, len(view), WRITE_CHUNK):
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"the answer was not taken within {RESPONSE_SECONDS:.0f} s")
            self.sock.settimeout(left)
            self.sock.sendall(view[start : start + WRITE_CHUNK])
        return len(view)


class ExporterServer(HTTPServer):
    """HTTP server that slow clients cannot starve; ``serve_in_thread`` starts it in the background.

    One thread (``serve_forever``) accepts connections and reads their requests without blocking; a complete
    request is served in a thread of its own, at most MAX_WORKERS at once (the rest queue for a thread).
    """

    request_queue_size = LISTEN_BACKLOG

    def __init__(self, address: tuple[str, int], app: MetricsApp) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, make_handler(app))
        self.app = app
        context = app.web.ssl_context if app.web is not None else None
        self.tls = context is not None
        if context is not None:
            self.socket = context.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)
        self.socket.setblocking(False)
        self.thread: threading.Thread | None = None
        self._selector = selectors.DefaultSelector()
        #: Connections still sending their request, the one whose last progress is oldest first.
        self._reading: OrderedDict[Connection, None] = OrderedDict()
        self._by_deadline: deque[Connection] = deque()  # the same, in the order they connected
        self._lock = threading.Lock()  # the handed-off connections below, shared with the handler threads
        self._handed_off = 0  # complete requests being served or waiting for a thread
        self._workers = 0
        self._waiting: deque[Connection] = deque()
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._stopped.set()
        self._closed_for_room = 0
        self._accept_failures = 0

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Accept connections and read their requests until ``shutdown``; hand each complete one to a thread."""
        self._stopped.clear()
        self._selector.register(self.socket, selectors.EVENT_READ)
        try:
            while not self._stopping.is_set():
                wait = poll_interval
                if self._by_deadline:
                    wait = min(wait, max(0.0, self._by_deadline[0].deadline - time.monotonic()))
                for key, _ in self._selector.select(wait):
                    if key.fileobj is self.socket:
                        for _ in range(LISTEN_BACKLOG):  # the connections waiting, not one per wake-up
                            if not self._accept():
                                break
                    else:
                        self._advance(key.data)
                self._expire()
        finally:
            self._selector.unregister(self.socket)
            for conn in list(self._reading):
                self._forget(conn)
                conn.sock.close()
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop ``serve_forever`` (within its poll interval) and wait until it has returned."""
        self._stopping.set()
        self._stopped.wait()

    def _accept(self) -> bool:
        """Take one new connection (False when none is waiting); make room for it first when
        MAX_OPEN_CONNECTIONS are open."""
        try:
            sock, address = self.socket.accept()
        except BlockingIOError:
            return False
        except ConnectionError:
            return True
        except OSError as err:  # out of file descriptors: close the stalest incomplete request, else pause
            self._accept_failures += 1
            if self._accept_failures == 1 or self._accept_failures % 1000 == 0:
                log.warning("%d connections not accepted: %s", self._accept_failures, err.strerror or err)
            if not self._make_room():
                self._stopping.wait(0.1)
            return False
        sock.setblocking(False)
        conn = Connection(sock, address, handshaken=not self.tls)
        with self._lock:
            full = len(self._reading) + self._handed_off >= MAX_OPEN_CONNECTIONS
        if full and not self._make_room():
            conn.refuse(503, f"busy: {MAX_OPEN_CONNECTIONS} requests being served")
            return True
        self._reading[conn] = None
        self._by_deadline.append(conn)
        self._selector.register(sock, selectors.EVENT_READ, conn)
        return True

    def _make_room(self) -> bool:
        """Close the connection still sending its request whose last progress is oldest (503); False if none is."""
        if not self._reading:
            return False
        conn = next(iter(self._reading))
        self._forget(conn)
        conn.refuse(503, "closed for a newer connection: too many open")
        self._closed_for_room += 1
        if self._closed_for_room == 1 or self._closed_for_room % 1000 == 0:
            log.warning(
                "%d incomplete requests closed to make room (%d connections open at most)",
                self._closed_for_room,
                MAX_OPEN_CONNECTIONS,
            )
        return True

    def _advance(self, conn: Connection) -> None:
        """Read what ``conn`` sent (after the TLS handshake); hand the request off once it is complete."""
        events = selectors.EVENT_READ
        progressed = ended = False
        try:
            if not conn.handshaken:
                conn.sock.do_handshake()  # type: ignore[attr-defined]  # an SSLSocket
                conn.handshaken = progressed = True
            while len(conn.data) <= MAX_REQUEST_BYTES:
                chunk = conn.sock.recv(WRITE_CHUNK)
                if not chunk:  # the client sent all it will (a complete request is still answered)
                    ended = True
                    break
                conn.data += chunk
                progressed = True
        except ssl.SSLWantWriteError:
            events = selectors.EVENT_WRITE
        except (ssl.SSLWantReadError, BlockingIOError):
            pass
        except OSError:  # a failed handshake, a reset, a client that closed
            self._forget(conn)
            conn.sock.close()
            return
        try:
            size = request_size(conn.data)
        except RequestError as err:
            self._forget(conn)
            conn.refuse(err.status, str(err))
            return
        if size is not None:
            self._forget(conn)
            del conn.data[size:]
            self._hand_off(conn)
            return
        if ended:  # gave up before its request was complete
            self._forget(conn)
            conn.sock.close()
            return
        if progressed:
            self._reading.move_to_end(conn)
        if self._selector.get_key(conn.sock).events != events:
            self._selector.modify(conn.sock, events, conn)

    def _expire(self) -> None:
        """Refuse (408) the requests not complete within REQUEST_SECONDS of connecting."""
        now = time.monotonic()
        while self._by_deadline and self._by_deadline[0].deadline <= now:
            conn = self._by_deadline.popleft()
            if conn in self._reading:
                self._forget(conn)
                conn.refuse(408, f"the request was not complete within {REQUEST_SECONDS:.0f} s")

    def _forget(self, conn: Connection) -> None:
        """Stop reading ``conn`` (its place in ``_by_deadline`` is dropped when its deadline comes)."""
        del self._reading[conn]
        self._selector.unregister(conn.sock)

    def _hand_off(self, conn: Connection) -> None:
        """Serve a complete request in a thread of its own, or queue it for the next free one."""
        conn.sock.setblocking(True)
        with self._lock:
            self._handed_off += 1
            start = self._workers < MAX_WORKERS
            if start:
                self._workers += 1
            else:
                self._waiting.append(conn)
        if start:
            threading.Thread(target=self._serve, args=(conn,), name="http-request", daemon=True).start()

    def _serve(self, conn: Connection) -> None:
        """Serve ``conn``, then the requests waiting for a thread, one after another."""
        next_conn: Connection | None = conn
        while next_conn is not None:
            try:
                self.finish_request(next_conn, next_conn.address)  # type: ignore[arg-type]  # the handler's request
            except Exception:
                self.handle_error(next_conn, next_conn.address)
            finally:
                self.shutdown_request(next_conn.sock)
                next_conn.data.clear()  # its place in _by_deadline may hold it until its deadline
            with self._lock:
                self._handed_off -= 1
                next_conn = self._waiting.popleft() if self._waiting else None
                if next_conn is None:
                    self._workers -= 1

    def handle_error(self, request: object, client_address: tuple) -> None:
        """A client that breaks off (or fails the TLS handshake) is not the exporter's error."""
        log.debug("request from %s failed", client_address, exc_info=True)

    def serve_in_thread(self) -> None:
        self.thread = threading.Thread(target=self.serve_forever, name="http", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.thread is not None:
            self.shutdown()
        self.server_close()
        self._selector.close()
