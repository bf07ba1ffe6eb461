"""Plot engine: isolation of broken plugins, feeding them packets, drawing what changed, output.

``PlotEngine`` is the synchronous core: it feeds new packets to the plugins of each input
file and draws every plot whose data changed, writing the images through a ``PlotStore``.
``once`` uses it directly; ``serve`` runs one in a drawing process (``larpix_dqm.plots.process``,
started by ``larpix_dqm.plots.worker.PlotWorker``). Drawing reads a published ``Snapshot``, never the
live accumulator.
"""

from __future__ import annotations

import io
import logging
import math
import struct
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before any plugin imports pyplot: no display

import numpy as np
from matplotlib.backend_bases import FigureCanvasBase
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from larpix_dqm.exporter.detector.geometry import Geometry
from larpix_dqm.exporter.quality.accumulator import Snapshot
from larpix_dqm.exporter.quality.clock import DetectorClock
from larpix_dqm.exporter.reading.cursor import DataClock
from larpix_dqm.plots import Plot, PlotContext
from larpix_dqm.plots.discovery import FAST, Catalog, PluginSpec, Selection, discover
from larpix_dqm.plots.errors import PlotConfigError
from larpix_dqm.plots.legacy import as_packet_dtype, packets_file
from larpix_dqm.plots.store import PlotStore, write_reason

log = logging.getLogger(__name__)

#: Predecessor-style plugins are called at the latest when this many new packets wait for them.
LEGACY_BATCH_PACKETS = 1_000_000
#: A plugin failing this many times in a row is disabled (reported on / and /plots/).
MAX_CONSECUTIVE_FAILURES = 3
#: Per-file plot states (plugin instances, figures) kept at most: a new file beyond this drops the
#: least recently fed one, so memory depends on the detector and the plots, not on how many files a
#: run had. A finished file is drawn a last time by the next cycle unless more than this many files
#: started within one cycle (then its last packets miss its own images; counted in ``undrawn_files``).
MAX_FILE_STATES = 8
#: savefig options by extension: PNG compressed fast (level 1: about 3 times faster than the
#: default 6, files about a third larger; the images are rewritten every cycle, rarely kept).
SAVE_OPTIONS: dict[str, dict[str, Any]] = {".png": {"pil_kwargs": {"compress_level": 1}}}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_FAILED = object()


def supported_extensions() -> list[str]:
    """File extensions matplotlib can save to, with the dot."""
    return sorted(f".{ext}" for ext in FigureCanvasBase.get_supported_filetypes())


@dataclass(frozen=True)
class PlotSettings:
    """Plot options of ``serve`` and ``once``."""

    output: str
    ext: str = ".png"
    plots: tuple[str, ...] = ()
    interval: float = 30.0
    plugin_dirs: tuple[str, ...] = ()
    latest: bool = True

    def __post_init__(self) -> None:
        ext = self.ext if self.ext.startswith(".") else f".{self.ext}"
        if ext.lower() not in supported_extensions():
            raise PlotConfigError(
                f"--ext {self.ext}: matplotlib cannot write it (use one of {', '.join(supported_extensions())})"
            )
        object.__setattr__(self, "ext", ext.lower())
        if self.interval < 0:
            raise PlotConfigError(f"--plot-interval {self.interval}: must be 0 or more seconds")


@dataclass
class PluginHealth:
    """How one plot class is doing."""

    kind: str
    renders: int = 0
    failures: int = 0
    consecutive: int = 0
    disabled: bool = False
    last_error: str | None = None
    last_seconds: float = 0.0
    write_errors: dict[str, int] = field(default_factory=dict)  # images not written, by reason


def fingerprint(snapshot: Snapshot) -> tuple[int, float]:
    """Changes whenever a snapshot counts more packets: (packets counted, newest data time)."""
    return int(snapshot.packet_type_counts.sum()), snapshot.data_time if math.isfinite(snapshot.data_time) else -1.0


@dataclass
class Freshness:
    """Whether a drawing target (a file's plots, or the whole-detector ones) needs drawing.

    Packets reach the drawing process before the snapshot counting them is published, so a
    target drawn with the snapshot it was fed under may have missed its newest packets:
    it is drawn again once a later snapshot (a new fingerprint) is out, then it is settled.
    """

    dirty: bool = False
    fed: tuple | None = None
    drawn: tuple | None = None

    def feed(self, fp: tuple) -> None:
        self.dirty, self.fed = True, fp

    def due(self, fp: tuple) -> bool:
        return self.dirty or (self.drawn == self.fed and self.fed is not None and fp != self.drawn)

    def done(self, fp: tuple) -> None:
        self.dirty, self.drawn = False, fp


@dataclass
class _FilePlots:
    """Per input file: its plugin instances, their figures, and what they have not drawn yet."""

    path: str
    stem: str
    clock: DataClock = field(default_factory=DataClock)
    plots: dict[str, Plot | Callable[..., Any]] = field(default_factory=dict)
    figures: dict[str, Figure] = field(default_factory=dict)
    pending: list[np.ndarray] = field(default_factory=list)
    pending_rows: int = 0
    unsaved: set[str] = field(default_factory=set)
    fresh: Freshness = field(default_factory=Freshness)
    dropped: int = 0
    last_update: float = field(default_factory=time.monotonic)


def render(fig: Figure, ext: str) -> bytes:
    """The figure as image bytes in the format of ``ext``.

    A PNG of a figure on an Agg canvas is the canvas's raster, encoded here (see ``png``): the
    same pixels as ``savefig`` (figure dpi, no bbox cropping), in half the encoding time.
    """
    if ext == ".png" and isinstance(fig.canvas, FigureCanvasAgg) and _plain_savefig():
        fig.canvas.draw()
        return png(np.asarray(fig.canvas.buffer_rgba()))
    buf = io.BytesIO()
    fig.savefig(buf, format=ext.lstrip("."), **SAVE_OPTIONS.get(ext, {}))
    return buf.getvalue()


def _plain_savefig() -> bool:
    """Whether ``savefig`` would save the canvas as drawn (rcParams not changed by a plugin)."""
    rc = matplotlib.rcParams
    return (
        rc["savefig.dpi"] == "figure"
        and rc["savefig.bbox"] is None
        and rc["savefig.facecolor"] == rc["savefig.edgecolor"] == "auto"
        and not rc["savefig.transparent"]
    )


def png(rgba: np.ndarray) -> bytes:
    """PNG of an (h, w, 4) uint8 raster: rows unfiltered, zlib level 1.

    Plot rasters are mostly flat colour, which zlib compresses well without PNG's row filters;
    skipping them (and PIL's adaptive filter choice) makes encoding about twice as fast.
    """
    height, width, _ = rgba.shape
    rows = np.empty((height, 4 * width + 1), np.uint8)
    rows[:, 0] = 0  # filter type "none"
    rows[:, 1:] = rgba.reshape(height, -1)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)  # 8-bit RGBA, no interlace
    return PNG_SIGNATURE + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows.data, 1)) + chunk(b"IEND", b"")


def _close(fig: Figure) -> None:
    """Forget a figure, also in pyplot's registry if a plugin made it with ``plt.figure()``."""
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.close(fig)


class PlotEngine:
    """Feeds plugins, draws what changed, writes images; one thread at a time."""

    def __init__(self, settings: PlotSettings, geometry: Geometry | None, catalog: Catalog | None = None) -> None:
        self.settings = settings
        self.geometry = geometry
        self.catalog = catalog if catalog is not None else discover(settings.plugin_dirs)
        self.selection = Selection(settings.plots)
        unknown = self.selection.unmatched(self.catalog.plugins)
        if unknown:
            raise PlotConfigError(
                f"--plots {' '.join(unknown)}: no such plot (available: {', '.join(sorted(self.catalog.plugins))})"
            )
        self.specs: list[PluginSpec] = []
        self.skipped: dict[str, str] = {}
        for spec in self.catalog.plugins.values():
            if not self.selection.plugin(spec.name):
                continue
            reason = self._cannot_draw(spec, geometry)
            if reason is not None:
                if self.selection.explicit(spec.name):
                    raise PlotConfigError(f"plot {spec.name}: {reason}")
                self.skipped[spec.name] = reason
                log.warning("plot %s skipped: %s", spec.name, reason)
                continue
            self.specs.append(spec)
        self.health = {spec.name: PluginHealth(spec.kind) for spec in self.specs}
        self.store = PlotStore(settings.output, settings.ext, settings.latest)
        self.write_problem: str | None = None  # the last write failure's reason, until an image is written again
        self.write_error: str | None = None  # its message
        self.failed_writes = 0  # images the current (or last) draw could not write
        self._deferred = False  # whether the current draw left images for the next (``first_look``)
        self.files: dict[tuple[str, int], _FilePlots] = {}
        # the accumulator's data-time rule applied to the packets the plots see (the accumulator logs the events)
        self.clock = DetectorClock(log_events=False)
        self.undrawn_files = 0  # per-file states dropped with packets not drawn (see MAX_FILE_STATES)
        self.shared: dict[str, Plot] = {}
        self.shared_figures: dict[str, Figure] = {}
        self.shared_fresh = Freshness()
        self._new_stems: list[str] = []  # files fed since the whole-detector images were last drawn
        self._stems: list[str] = []  # the folders those images went to last time
        for spec in self.specs:
            if not spec.per_file:
                plot = self._guard(spec.name, "__init__", spec.cls)
                if plot is not _FAILED:
                    self.shared[spec.name] = plot
        self.per_file_specs = [spec for spec in self.specs if spec.per_file]

    @staticmethod
    def _cannot_draw(spec: PluginSpec, geometry: Geometry | None) -> str | None:
        """Why a fast plot cannot work with this geometry (its ``check``), or None."""
        if spec.kind != FAST:
            return None
        try:
            spec.cls.check(geometry)
        except ValueError as err:
            return str(err)
        except Exception as err:  # a plugin's own check is plugin code too
            return f"check failed: {type(err).__name__}: {err}"
        return None

    @property
    def wants_packets(self) -> bool:
        """Whether any selected plot reads packets (else only which files changed matters)."""
        return bool(self.per_file_specs)

    def redraw(self) -> None:
        """Make every image due again, drawn or not (a process sharing the draw died before reporting)."""
        self.shared_fresh.dirty = True
        for state in self.files.values():
            state.fresh.dirty = True

    def has_work(self, snapshot: Snapshot) -> bool:
        """Whether ``draw(snapshot)`` would draw anything."""
        fp = fingerprint(snapshot)
        return self.shared_fresh.due(fp) or any(state.fresh.due(fp) for state in self.files.values())

    # -- isolation ----------------------------------------------------------------------
    def _guard(self, name: str, what: str, fn: Callable, *args: object) -> Any:
        """Call a plugin; on an exception report it by name, count it, return ``_FAILED``."""
        health = self.health[name]
        if health.disabled:
            return _FAILED
        try:
            return fn(*args)
        except Exception as err:
            health.failures += 1
            health.consecutive += 1
            health.last_error = f"{what}: {type(err).__name__}: {err}"
            if health.failures == 1:
                log.exception("plot %s failed in %s; skipped this time, the other plots go on", name, what)
            else:
                log.warning("plot %s failed in %s again: %s", name, what, health.last_error)
            if health.consecutive >= MAX_CONSECUTIVE_FAILURES:
                health.disabled = True
                log.error("plot %s disabled after %d failures in a row", name, health.consecutive)
            return _FAILED

    # -- feeding ------------------------------------------------------------------------
    def _file(self, key: tuple[str, int]) -> _FilePlots:
        state = self.files.get(key)
        if state is None:
            while len(self.files) >= MAX_FILE_STATES:
                self._retire(min(self.files, key=lambda k: self.files[k].last_update))
            state = _FilePlots(key[0], Path(key[0]).stem)
            for spec in self.per_file_specs:
                plot = self._guard(spec.name, "__init__", spec.cls)
                if plot is not _FAILED:
                    state.plots[spec.name] = plot
            self.files[key] = state
        return state

    def _retire(self, key: tuple[str, int]) -> None:
        """Forget a file's plot state (its images stay); count it if it had packets not drawn yet."""
        state = self.files.pop(key)
        if state.fresh.dirty or state.pending or state.unsaved:
            self.undrawn_files += 1
            if self.undrawn_files == 1:
                log.warning(
                    "plots: more than %d files started within one plot cycle; the oldest files' own images miss "
                    "their last packets (whole-detector plots are complete)",
                    MAX_FILE_STATES,
                )
        for fig in state.figures.values():
            _close(fig)

    def update(self, key: tuple[str, int], packets: np.ndarray | None, snapshot: Snapshot, dropped: int = 0) -> None:
        """New packets of one input file (``key`` = path, inode); ``None`` when only touched."""
        state = self._file(key)
        fp = fingerprint(snapshot)
        state.fresh.feed(fp)
        self.shared_fresh.feed(fp)
        if state.stem not in self._new_stems:
            self._new_stems.append(state.stem)
        state.dropped += dropped
        state.last_update = time.monotonic()
        if packets is None or not len(packets) or not state.plots:
            return
        packets = as_packet_dtype(packets)
        times = self.clock.times(packets, state.clock, time.time())
        ctx = PlotContext(state.path, snapshot, self.geometry, times, state.dropped)
        for name, plot in list(state.plots.items()):
            if isinstance(plot, Plot):
                self._guard(name, "update", plot.update, packets, ctx)
        if any(not isinstance(p, Plot) for p in state.plots.values()):
            state.pending.append(packets)
            state.pending_rows += len(packets)
            if state.pending_rows >= LEGACY_BATCH_PACKETS:
                self._call_legacy(state)

    def _call_legacy(self, state: _FilePlots) -> None:
        """Hand the waiting packets to every predecessor-style plugin of the file."""
        if not state.pending:
            return
        packets = np.concatenate(state.pending) if len(state.pending) > 1 else state.pending[0]
        state.pending, state.pending_rows = [], 0
        for name, plot in state.plots.items():
            if isinstance(plot, Plot):
                continue
            with packets_file(packets) as fh:
                fig = self._guard(name, "__call__", plot, state.path, fh, state.figures.get(name))
            if fig is _FAILED:
                continue
            if not isinstance(fig, Figure):
                self._guard(name, "__call__", _not_a_figure, fig)
                continue
            state.figures[name] = fig
            state.unsaved.add(name)

    # -- drawing ------------------------------------------------------------------------
    def _save(self, plugin: str, image: str, fig: object, stems: list[str]) -> bool:
        if fig is _FAILED:
            return False
        if not isinstance(fig, Figure):
            self._guard(plugin, "draw", _not_a_figure, fig)
            return False
        data = self._guard(plugin, "savefig", render, fig, self.settings.ext)
        if data is _FAILED:
            return False
        health = self.health[plugin]
        try:
            self.store.write(image, data, stems)
        except OSError as err:
            self._write_failed(health, err)
            return False
        if self.write_problem is not None:
            log.info("plots: images are written again (after %s)", self.write_problem)
            self.write_problem = self.write_error = None
        health.renders += 1
        health.consecutive = 0
        return True

    def _write_failed(self, health: PluginHealth, err: OSError) -> None:
        """Count an image the store could not write (a full or read-only disk is not the plugin's fault);
        one log line when the reason changes, not one per image and cycle."""
        reason = write_reason(err)
        health.write_errors[reason] = health.write_errors.get(reason, 0) + 1
        self.failed_writes += 1
        self.write_error = f"cannot write images: {err}"
        if reason != self.write_problem:
            log.error(
                "plots: %s; retried every cycle, counted in larpix_exporter_plot_errors_total{reason=%r} "
                "(logged again when the reason changes)",
                self.write_error,
                reason,
            )
            self.write_problem = reason

    def draw(
        self,
        snapshot: Snapshot,
        between: Callable[[], None] = lambda: None,
        first_look: bool = False,
        share: Callable[[], bool] = lambda: True,
    ) -> int:
        """Draw every selected image whose data changed; return the number of images written.

        ``between`` runs after each image (the drawing process takes queued packets there, so
        a long cycle does not back up ingest, and stops there when told to). ``first_look``: only
        the first image of each plot (one pixel map of 16); the others stay due for the next cycle.
        ``share`` is asked before each image (a file's predecessor-style plugins count as one) whether
        this process draws it: processes forked with the same engine split its images (``plots.sharing``).
        """
        written = 0
        self.failed_writes = 0
        self._deferred = False
        fp = fingerprint(snapshot)
        if self.shared_fresh.due(fp):
            self.shared_fresh.done(fp)
            ctx = PlotContext(None, snapshot, self.geometry)
            stems = self._stems = self._new_stems or self._stems  # a redraw for a newer snapshot: same folders
            self._new_stems = []
            for name, plot in self.shared.items():
                written += self._draw_fast(name, plot, ctx, self.shared_figures, stems, between, first_look, share)
            # not written, or left for later: drawn again next cycle
            self.shared_fresh.dirty |= self.failed_writes > 0 or self._deferred
        for key in [key for key, state in self.files.items() if state.fresh.due(fp)]:
            if key in self.files:  # files fed in between() may have retired others
                written += self._draw_file(self.files[key], fp, snapshot, between, first_look, share)
        return written

    def _draw_file(
        self,
        state: _FilePlots,
        fp: tuple,
        snapshot: Snapshot,
        between: Callable[[], None],
        first_look: bool,
        share: Callable[[], bool],
    ) -> int:
        """Draw one file's plots; return the number of images written."""
        written = 0
        failed, deferred = self.failed_writes, self._deferred
        self._deferred = False
        state.fresh.done(fp)  # before drawing: packets fed meanwhile (in between()) make it due again
        ctx = PlotContext(state.path, snapshot, self.geometry, dropped_packets=state.dropped)
        for name, plot in list(state.plots.items()):
            if isinstance(plot, Plot):
                written += self._draw_fast(name, plot, ctx, state.figures, [state.stem], between, first_look, share)
        if (state.pending or state.unsaved) and share():  # the predecessor-style plugins: one image to share
            self._call_legacy(state)
            for name in sorted(state.unsaved):
                started, before = time.perf_counter(), self.failed_writes
                if self._save(name, name, state.figures[name], [state.stem]):
                    written += 1
                    self.health[name].last_seconds = time.perf_counter() - started
                if self.failed_writes == before:  # written, or the plugin failed: not saved again
                    state.unsaved.discard(name)
                between()
        state.fresh.dirty |= self.failed_writes > failed or self._deferred  # drawn again next cycle
        self._deferred |= deferred
        return written

    def _draw_fast(
        self,
        name: str,
        plot: Plot,
        ctx: PlotContext,
        figures: dict,
        stems: list[str],
        between: Callable[[], None],
        first_look: bool,
        share: Callable[[], bool],
    ) -> int:
        images = self._guard(name, "outputs", plot.outputs, ctx)
        if images is _FAILED:
            return 0
        written = tried = 0
        for image in images:
            if not self.selection.image(name, image):
                continue
            if first_look and tried:
                self._deferred = True
                break
            if not share():
                continue
            tried += 1
            started = time.perf_counter()
            fig = self._guard(name, "draw", plot.draw, image, ctx, figures.get(image))
            if isinstance(fig, Figure):
                figures[image] = fig
            if self._save(name, image, fig, stems):
                written += 1
                self.health[name].last_seconds = time.perf_counter() - started
            between()
        return written

    def expire(self, idle_seconds: float) -> None:
        """Forget files without new packets for ``idle_seconds`` (their images stay on disk)."""
        now = time.monotonic()
        for key, state in list(self.files.items()):
            if not state.fresh.dirty and now - state.last_update > idle_seconds:
                for fig in state.figures.values():
                    _close(fig)
                del self.files[key]

    def status(self) -> dict:
        """Plain summary for the landing page and ``/plots/``."""
        return {
            "plugins": {
                name: {
                    "kind": h.kind,
                    "renders": h.renders,
                    "failures": h.failures,
                    "disabled": h.disabled,
                    "last_error": h.last_error,
                    "last_seconds": round(h.last_seconds, 4),
                    "write_errors": dict(h.write_errors),
                }
                for name, h in self.health.items()
            },
            "write_error": self.write_error,
            "skipped": dict(self.skipped),
            "discovery_errors": dict(self.catalog.errors),
            "files": len(self.files),
            "undrawn_files": self.undrawn_files,
        }


def _not_a_figure(value: object) -> None:
    raise TypeError(f"returned {type(value).__name__}, not a matplotlib Figure")
