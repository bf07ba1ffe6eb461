"""Wires settings into a running exporter: ingest thread + HTTP server, with clean shutdown."""

from __future__ import annotations

import logging
import signal
import threading
import time

from .config import Settings
from .geometry import Geometry, default_geometry_path, load_geometry
from .http import ExporterServer, MetricsApp
from .ingest import Ingester
from .quality import Accumulator, QualityConfig
from .sources import DirectoryTail, FileReader, InputSpec

log = logging.getLogger(__name__)
SHUTDOWN_TIMEOUT_SECONDS = 10.0


def resolve_geometry(path: str | None) -> Geometry | None:
    """Load the configured geometry (or the documented default), or None when there is none."""
    resolved = default_geometry_path(path)
    return load_geometry(resolved) if resolved else None


class Service:
    """The live monitor: call ``start``, then ``wait`` or ``stop``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.geometry = resolve_geometry(settings.geometry)
        quality = QualityConfig(settings.window, settings.window_bins, settings.noisy_rate_hz)
        self.accumulator = Accumulator(quality, self.geometry)
        tail = DirectoryTail(
            [InputSpec(p, settings.pattern) for p in settings.inputs],
            FileReader(chunk_rows=settings.chunk_rows),
            settings.flush_interval,
        )
        self.ingester = Ingester(tail, self.accumulator, settings.interval)
        self.app = MetricsApp(lambda: self.ingester.published, settings.per_pixel)
        self.server = ExporterServer((settings.listen_address, settings.port), self.app)
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.ingester.run, args=(self.stop_event,), name="ingest", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        shown = "localhost" if host in ("0.0.0.0", "::") else host
        return f"http://{shown}:{port}/metrics"

    def start(self) -> None:
        self.server.serve_in_thread()
        self.thread.start()
        log.info("serving %s (geometry: %s)", self.url, self.geometry.path if self.geometry else "none")

    def stop(self) -> None:
        """Finish the current chunk, stop the HTTP server, join within the shutdown timeout."""
        self.stop_event.set()
        self.thread.join(SHUTDOWN_TIMEOUT_SECONDS)
        self.server.stop()

    def wait(self) -> None:
        """Block until SIGINT or SIGTERM, then stop."""
        stopped = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stopped.set())
        while not stopped.is_set():
            stopped.wait(0.5)
        log.info("shutting down")
        started = time.monotonic()
        self.stop()
        log.info("stopped in %.1f s", time.monotonic() - started)
