"""HTTP endpoints: ``/metrics``, a landing page ``/`` and ``/-/healthy``.

Scrapes render the most recently published snapshot; nothing here takes a lock that the
ingest thread holds.
"""

from __future__ import annotations

import gzip
import html
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from . import __version__
from .collector import Collector
from .exposition import CONTENT_TYPE, Family, render
from .ingest import Published

log = logging.getLogger(__name__)
GZIP_LEVEL = 1


class MetricsApp:
    """Renders scrapes from whatever ``published()`` returns."""

    def __init__(self, published: Callable[[], Published], per_pixel_allowed: bool = False) -> None:
        self.published = published
        self.per_pixel_allowed = per_pixel_allowed
        self.collector = Collector()
        self._lock = threading.Lock()  # the collector's label cache is shared between scrapes
        self.last_scrape_seconds = 0.0

    def metrics_text(self, per_pixel: bool = False) -> str:
        """One scrape's exposition text."""
        started = time.perf_counter()
        pub = self.published()
        with self._lock:
            families = self.collector.families(pub.snapshot, pub.health, per_pixel and self.per_pixel_allowed)
        families.append(
            Family(
                "larpix_exporter_scrape_duration_seconds", "gauge", "Time the previous /metrics rendering took."
            ).add((), [()], [self.last_scrape_seconds])
        )
        text = render(families)
        self.last_scrape_seconds = time.perf_counter() - started
        return text

    def landing_page(self) -> str:
        """A small status page for people: health figures and links."""
        pub = self.published()
        h, s = pub.health, pub.snapshot
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
        ]
        table = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
        return (
            "<!doctype html><html><head><meta charset='utf-8'><title>larpix-dqm</title>"
            "<style>body{font-family:sans-serif;margin:2em}th{text-align:left;padding-right:1em}</style></head>"
            f"<body><h1>larpix-dqm {__version__}</h1><table>{table}</table>"
            "<p><a href='/metrics'>/metrics</a> &middot; <a href='/metrics?per_pixel=1'>/metrics?per_pixel=1</a>"
            " (per-pixel series, with <code>--per-pixel</code>)</p></body></html>"
        )


def make_handler(app: MetricsApp) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to ``app``."""

    class Handler(BaseHTTPRequestHandler):
        server_version = f"larpix-dqm/{__version__}"

        def log_message(self, format: str, *args: object) -> None:
            log.debug("%s " + format, self.address_string(), *args)

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            if "gzip" in self.headers.get("Accept-Encoding", "") and len(body) > 1024:
                body = gzip.compress(body, GZIP_LEVEL)
                self.send_response(status)
                self.send_header("Content-Encoding", "gzip")
            else:
                self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            if url.path == "/metrics":
                per_pixel = query.get("per_pixel", ["0"])[0] in ("1", "true", "yes")
                self._send(200, app.metrics_text(per_pixel).encode(), CONTENT_TYPE)
            elif url.path == "/":
                self._send(200, app.landing_page().encode(), "text/html; charset=utf-8")
            elif url.path in ("/-/healthy", "/-/ready"):
                self._send(200, b"OK\n", "text/plain; charset=utf-8")
            else:
                self._send(404, b"not found\n", "text/plain; charset=utf-8")

    return Handler


class ExporterServer(ThreadingHTTPServer):
    """Threaded HTTP server; ``serve_in_thread`` starts it in the background."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], app: MetricsApp) -> None:
        super().__init__(address, make_handler(app))
        self.app = app
        self.thread: threading.Thread | None = None

    def serve_in_thread(self) -> None:
        self.thread = threading.Thread(target=self.serve_forever, name="http", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
