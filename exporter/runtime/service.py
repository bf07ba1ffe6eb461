"""Wires settings into a running exporter: ingest thread + HTTP server (+ drawing process), with clean shutdown."""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from larpix_dqm.exporter.detector.geometry import resolve_geometry
from larpix_dqm.exporter.monitor import Monitor
from larpix_dqm.exporter.reading.files import FileReader
from larpix_dqm.exporter.reading.tail import InputSpec
from larpix_dqm.exporter.registry.runs import CurrentRun, RunNamer
from larpix_dqm.exporter.registry.schema import RegistryError
from larpix_dqm.exporter.registry.writer import RegistryWriter, RunContext
from larpix_dqm.exporter.runtime.checkpoint import default_checkpoint
from larpix_dqm.exporter.runtime.ingest import Ingester, Published
from larpix_dqm.exporter.settings import Settings
from larpix_dqm.exporter.web.auth import load_web_config
from larpix_dqm.exporter.web.server import ExporterServer, MetricsApp

if TYPE_CHECKING:
    from larpix_dqm.plots.engine import PlotSettings
    from larpix_dqm.plots.worker import PlotWorker

log = logging.getLogger(__name__)


class ListenError(OSError):
    """An address to listen on cannot be bound; the message names it."""


SHUTDOWN_TIMEOUT_SECONDS = 10.0
PLOTS_SHUTDOWN_SECONDS = 5.0


def resolve_checkpoint_path(settings: Settings) -> str | None:
    """The checkpoint file: the setting, else the default per set of inputs; '-' disables."""
    if settings.checkpoint == "-":
        return None
    return settings.checkpoint or str(default_checkpoint(settings.inputs))


def resolve_registry_path(settings: Settings) -> str | None:
    """The run registry: the setting ('' or 'none' disables), else ``<checkpoint stem>.runs.sqlite`` beside the
    checkpoint (none without one)."""
    if settings.registry is not None:
        return None if settings.registry.strip().lower() in ("", "none") else settings.registry
    checkpoint = resolve_checkpoint_path(settings)
    if checkpoint is None:
        return None
    return str(Path(checkpoint).with_name(f"{Path(checkpoint).stem}.runs.sqlite"))


def run_context(settings: Settings) -> RunContext:
    """What judges the runs, as the registry records it with each."""
    configuration = {
        "geometry": settings.geometry,
        "networks": settings.networks,
        "disabled_lists": settings.disabled_lists,
        "checks": settings.checks,
        "run_pattern": settings.run_pattern,
        "window_seconds": settings.window,
        "false_alarm_probability": settings.false_alarm_probability,
        "drift_window_us": settings.drift_window_us,
    }
    return RunContext(configuration, settings.reference, settings.run_mode)


class Service:
    """The live monitor: call ``start``, then ``wait`` or ``stop``.

    With ``plots`` settings, a drawing process (``PlotWorker``) gets every ingested chunk
    through a bounded queue and draws from the published snapshots.
    """

    def __init__(self, settings: Settings, plots: PlotSettings | None = None) -> None:
        self.settings = settings
        self.registry_path = resolve_registry_path(settings)
        self.geometry = resolve_geometry(settings.geometry)
        self.monitor = Monitor(
            self.geometry,
            window=settings.window,
            window_bins=settings.window_bins,
            noisy_rate_hz=settings.noisy_rate_hz,
            false_alarm_probability=settings.false_alarm_probability,
            checks=settings.checks,
            reference=settings.reference,
            networks=settings.networks,
            disabled_lists=settings.disabled_lists,
            run_mode=settings.run_mode,
            ingest_engine=settings.ingest_engine,
            run_pattern=settings.run_pattern,
            io_groups=settings.served_io_groups(),
            drift_window_us=settings.drift_window_us,
        )
        self.geometry = self.monitor.geometry  # a shard draws and serves its own io_groups' chips
        self.checkpoint_path = resolve_checkpoint_path(settings)
        self.ingester = Ingester(
            [InputSpec(p, settings.pattern) for p in settings.inputs],
            self.monitor,
            settings.interval,
            self.checkpoint_path,
            FileReader(chunk_rows=settings.chunk_rows),
            settings.flush_interval,
            settings.window_checkpoint_interval,
        )
        if self.ingester.checkpoints is not None:
            self.ingester.checkpoints.lock()  # one exporter per checkpoint, else each would undo the other's counts
        namer = self.monitor.runs
        #: Records the runs (None without a registry); opened after the checkpoint's lock (a second exporter is
        #: told about the checkpoint it shares) and before any data is read, so a bad registry stops start-up.
        self.registry = RegistryWriter(self.registry_path, namer, run_context(settings)) if self.registry_path else None
        try:
            self._start_up(settings, namer, plots)
        except BaseException:  # a bad checkpoint, web config or address: release the registry and its lock
            if self.registry is not None:
                self.registry.close()
            raise
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.ingester.run, args=(self.stop_event,), name="ingest", daemon=True)

    def _start_up(self, settings: Settings, namer: RunNamer, plots: PlotSettings | None) -> None:
        """Restore the checkpoint, wire the listeners, the drawing process and the HTTP servers."""
        self.runs: RegistryWriter | CurrentRun = self.registry or CurrentRun(namer)
        self._registry_failing = False
        self.ingester.current_run = lambda: self.runs.current  # read in the ingest thread, at each publication
        self.ingester.restore()
        self.ingester.listeners.append(self.runs.on_chunk)
        if self.registry is not None:
            self.ingester.publish_listeners.append(self._record_run)  # before the server renders the publication
        self.plots: PlotWorker | None = None
        if plots is not None:
            from larpix_dqm.plots.engine import PlotEngine  # matplotlib only when plots are asked for
            from larpix_dqm.plots.worker import PlotWorker

            engine = PlotEngine(plots, self.geometry)
            self.plots = PlotWorker(
                engine, lambda: self.ingester.published.snapshot, plots.interval, idle_seconds=settings.flush_interval
            )
            self.ingester.listeners.append(self.plots.on_chunk)
        web = load_web_config(settings.web_config_file) if settings.web_config_file else None
        self.app = MetricsApp(
            lambda: self.ingester.published,
            settings.per_pixel,
            plots=self.plots,
            web=web,
            history=self.monitor.history,
            inputs=settings.inputs,
            run_config=self.monitor.accumulator.run_config,
            telemetry_path=settings.web_telemetry_path,
            ready=self.ingester.polled.is_set,
            runbook_url=settings.runbook_url,
            geometry=self.geometry,
            registry=self.registry_path,
        )
        self.ingester.publish_listeners.append(self.app.prerender)
        self.servers: list[ExporterServer] = []
        for address in settings.addresses():
            try:
                self.servers.append(ExporterServer(address, self.app))
            except OSError as err:
                for server in self.servers:
                    server.server_close()
                host, port = address
                shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                raise ListenError(f"cannot listen on {shown}: {err.strerror or err}") from None

    def _record_run(self, published: Published) -> None:
        """Write the publication into the run registry; a failure (a full disk) is logged once, ingest goes on.

        A publication the checkpoint does not hold (it could not be written) is not: its chunks stay noted and are
        written with the next that is, so a restart from the older checkpoint never counts them twice."""
        assert self.registry is not None
        if not published.checkpointed:
            return
        try:
            self.registry.record(published.evaluation)
        except RegistryError as err:
            if not self._registry_failing:
                log.error("%s; the run registry misses this interval and the next ones until it can write again", err)
            self._registry_failing = True
        else:
            self._registry_failing = False

    @property
    def urls(self) -> list[str]:
        """The metrics URL of every address listened on."""
        scheme = "https" if self.app.web is not None and self.app.web.ssl_context is not None else "http"
        urls = []
        for server in self.servers:
            host, port = str(server.server_address[0]), int(server.server_address[1])
            shown = "localhost" if host in ("0.0.0.0", "::") else f"[{host}]" if ":" in host else host
            urls.append(f"{scheme}://{shown}:{port}{self.settings.web_telemetry_path}")
        return urls

    @property
    def url(self) -> str:
        """The metrics URL of the first address."""
        return self.urls[0]

    def start(self) -> None:
        for server in self.servers:
            server.serve_in_thread()
        if self.plots is not None:
            self.plots.start()
        self.thread.start()
        log.info(
            "serving %s (geometry: %s, checkpoint: %s, run registry: %s)",
            ", ".join(self.urls),
            self.geometry.path if self.geometry else "none",
            self.checkpoint_path or "off",
            self.registry_path or "off",
        )

    def stop(self) -> None:
        """Stop ingest (it finishes its chunk and writes the checkpoint), the plots and the HTTP server,
        all within the shutdown timeout: they wind down together, a drawing under way is abandoned."""
        deadline = time.monotonic() + SHUTDOWN_TIMEOUT_SECONDS - 1.0  # a second left for the server and the exit
        self.stop_event.set()
        if self.plots is not None:
            self.plots.stop(0.0)  # tell the drawing process now, so it no longer competes with the last checkpoint
        self.thread.join(max(0.0, deadline - time.monotonic()))
        if self.thread.is_alive():
            log.error("ingest did not stop within %.0f s; the last checkpoint may be missing", SHUTDOWN_TIMEOUT_SECONDS)
        if self.plots is not None:
            self.plots.stop(max(0.1, min(PLOTS_SHUTDOWN_SECONDS, deadline - time.monotonic())))
        for server in self.servers:
            server.stop()
        if self.registry is not None and not self.thread.is_alive():  # else ingest may still write: leave it open
            self.registry.close()  # what the final checkpoint holds was written with its publication

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
