"""The Python API: a data-quality monitor to build in a script or notebook.

    from larpix_dqm.exporter import Monitor

    monitor = Monitor(geometry="multi_tile_layout-2.4.16.yaml", window=60)
    monitor.add_status_handler(lambda change: print(change))
    monitor.add_file("run.h5")          # only the rows not read yet
    evaluation = monitor.update()       # snapshot + check statuses, handlers called
    evaluation.snapshot.chip_rate_hz    # numpy arrays, one row per chip
    monitor.channels("noisy")           # (n, 4): io_group, io_channel, chip_id, channel_id

``larpix-dqm serve`` runs the same object: its ingest thread feeds it and publishes ``update()``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from larpix_dqm.exporter.detector.geometry import Geometry, load_geometry
from larpix_dqm.exporter.detector.runconfig import RunConfig, RunConfigError
from larpix_dqm.exporter.quality.accumulator import COMPILED, Accumulator, QualityConfig
from larpix_dqm.exporter.quality.channels import channel_list
from larpix_dqm.exporter.quality.checks import (
    DEFAULT_CHECKS,
    Check,
    detect_run_mode,
    evaluate,
    load_checks,
    mode_checks,
    rates_good,
)
from larpix_dqm.exporter.quality.evaluation import Evaluation
from larpix_dqm.exporter.quality.history import History
from larpix_dqm.exporter.quality.reference import Reference
from larpix_dqm.exporter.quality.snapshot import Snapshot
from larpix_dqm.exporter.quality.status import ChannelStatus, CheckStatus
from larpix_dqm.exporter.reading.cursor import DataClock, FileCursor
from larpix_dqm.exporter.reading.formats import BY_NAME
from larpix_dqm.exporter.reading.packets import in_range
from larpix_dqm.exporter.reading.tail import DirectoryTail, InputSpec
from larpix_dqm.exporter.registry.runs import FILE, RunNamer

if TYPE_CHECKING:
    from larpix_dqm.exporter.reading.files import Chunk

log = logging.getLogger(__name__)


class MetricHandler(Protocol):
    """Receives detector-level figures after each update."""

    def handle_metric(self, name: str, value: float, metadata: dict[str, Any]) -> None: ...


class LogHandler(Protocol):
    """Receives structured log records (read errors, status changes)."""

    def handle_log(self, record: dict[str, Any]) -> None: ...


#: The reason a dead chip's status change gives when the chip sent nothing since its run started.
NO_DATA_THIS_RUN = "no data since the run started"


@dataclass(frozen=True)
class StatusChange:
    """A chip's or io_group's worst status, or the detector's, changed between two updates."""

    scope: str  # "chip", "io_group" or "detector"
    key: tuple[int, ...]
    old: int
    new: int
    checks: tuple[str, ...]  # checks not ok now
    reason: str = ""  # what the data say besides the checks, e.g. a dead chip's "no data since the run started"

    def __str__(self) -> str:
        where = " ".join([self.scope, "-".join(map(str, self.key))]).strip()
        failing = f" ({', '.join(self.checks)})" if self.checks else ""
        reason = f": {self.reason}" if self.reason else ""
        return f"{where}: {CheckStatus(self.old).label} -> {CheckStatus(self.new).label}{failing}{reason}"


def _as_callable(handler: object, method: str) -> Callable[..., None]:
    return getattr(handler, method) if hasattr(handler, method) else handler  # type: ignore[return-value]


class Monitor:
    """Accumulates packets, judges them with checks, and tells handlers what changed."""

    def __init__(
        self,
        geometry: Geometry | str | os.PathLike | None = None,
        *,
        window: float = 60.0,
        window_bins: int = 12,
        noisy_rate_hz: float = 10.0,
        false_alarm_probability: float = 0.01,
        checks: tuple[Check, ...] | str | os.PathLike | None = None,
        reference: Reference | str | os.PathLike | None = None,
        history_interval: float = 10.0,
        history_length: int = 360,
        networks: Iterable[str | os.PathLike] = (),
        disabled_lists: Iterable[str | os.PathLike] = (),
        run_mode: str = "auto",
        ingest_engine: str = COMPILED,
        run_pattern: str | None = None,
        io_groups: Iterable[int] = (),
        drift_window_us: float = 200.0,
    ) -> None:
        if geometry is not None and not isinstance(geometry, Geometry):
            geometry = load_geometry(geometry)
        served = tuple(sorted(set(io_groups)))
        if geometry is not None and served:
            geometry = geometry.only_io_groups(served)
        self.geometry = geometry
        run_config = RunConfig.load([str(p) for p in networks], [str(p) for p in disabled_lists], run_mode)
        self.accumulator = Accumulator(
            QualityConfig(
                window,
                window_bins,
                noisy_rate_hz,
                false_alarm_probability,
                ingest_engine,
                io_groups=served,
                drift_window_us=drift_window_us,
            ),
            geometry,
            run_config,
        )
        if isinstance(checks, (str, os.PathLike)):
            self.checks = load_checks(str(checks))
            self.mode_checks = mode_checks(DEFAULT_CHECKS, str(checks))
        else:
            self.checks = checks or DEFAULT_CHECKS
            self.mode_checks = mode_checks(self.checks)
        self.reference = Reference.load(reference) if isinstance(reference, (str, os.PathLike)) else reference
        self.history = History(history_interval, history_length)
        #: Names each file's run (``--run-pattern``, else the file's metadata); a chunk of another named run
        #: than the last starts a new run: the learnt rates start again (``feed_chunk``).
        self.runs = RunNamer(run_pattern)
        self.run: str | None = None
        self._files: dict[str, DirectoryTail] = {}
        #: The files (device, inode) whose stored configuration was applied (or found unusable); a file replaced at
        #: the same path is another inode, or read again from its start: its configuration is read again.
        self._configured: set[tuple[int, int]] = set()
        self._metric_handlers: list[Callable[[str, float, dict], None]] = []
        self._log_handlers: list[Callable[[dict], None]] = []
        self._status_handlers: list[Callable[[StatusChange], None]] = []
        self._last: Evaluation | None = None

    # -- handlers -------------------------------------------------------------------------
    def add_metric_handler(self, handler: MetricHandler | Callable[[str, float, dict], None]) -> None:
        self._metric_handlers.append(_as_callable(handler, "handle_metric"))

    def add_log_handler(self, handler: LogHandler | Callable[[dict], None]) -> None:
        self._log_handlers.append(_as_callable(handler, "handle_log"))

    def add_status_handler(self, handler: Callable[[StatusChange], None]) -> None:
        self._status_handlers.append(handler)

    def log_event(self, level: str, message: str, **fields: Any) -> None:
        """Send a structured record to the log handlers (and to Python logging)."""
        log.log(logging.getLevelName(level.upper()), message)
        record = {"level": level, "message": message, "time": time.time(), **fields}
        for handler in self._log_handlers:
            self._call(handler, record)

    def _call(self, handler: Callable, *args: Any) -> None:
        try:
            handler(*args)
        except Exception:  # a handler must never stop the monitor
            log.exception("handler %r failed", handler)

    # -- input ----------------------------------------------------------------------------
    def feed(self, packets: np.ndarray, clock: DataClock | None = None, wall_now: float | None = None) -> None:
        """Add packet records (any structured array with the packet fields); records whose fields do not fit a
        LArPix packet's are left out, and logged, as a file's are (``packets.in_range``).

        ``clock`` holds the data clock of the stream the packets come from (one per file).
        """
        packets, out_of_range = in_range(packets)
        if out_of_range:
            self.log_event(
                "error",
                f"{out_of_range} packet records left out: fields beyond a LArPix packet's",
                reason="out_of_range",
            )
        self.accumulator.add(
            packets, clock if clock is not None else DataClock(), time.time() if wall_now is None else wall_now
        )

    def feed_chunk(self, chunk: Chunk, wall_now: float | None = None) -> None:
        """Add a chunk read from a file (raw messages are decoded and counted in one pass); a chunk of a new run
        (a name the run pattern or the file's metadata gives, not a file alone) starts it first."""
        run = self.runs.name(chunk.cursor.path, chunk.file)
        if run.source != FILE:
            if self.run is not None and run.run != self.run:
                self.accumulator.start_run()
                self.log_event("info", f"run {run.run} starts after run {self.run}", file=chunk.cursor.path)
            self.run = run.run
        self.accumulator.add_chunk(chunk, time.time() if wall_now is None else wall_now)

    def add_file(self, path: str | os.PathLike) -> int:
        """Read the rows of a packet or raw file not read by an earlier call; return the packet count."""
        path = str(path)
        if path not in self._files:
            self._files[path] = DirectoryTail([InputSpec(path)], on_error=self._on_read_error)
        return self._files[path].pump(self._feed_file_chunk)

    def _feed_file_chunk(self, chunk: Chunk) -> None:
        try:
            self.apply_file_configuration(chunk)
        except RunConfigError as err:
            self.log_event("warning", str(err), reason="configs", file=chunk.cursor.path)
        self.feed_chunk(chunk)

    def apply_file_configuration(self, chunk: Chunk) -> None:
        """Judge with the configuration the chunk's file stores, if its format stores one (a packet file's
        channel masks and periodic triggers): read once per file, at its first chunk, before its data are
        counted. RunConfigError if it is unusable; the file's data still count then."""
        cursor = chunk.cursor  # not yet advanced past the chunk: rows_done 0 is a file read from its start
        identity = (cursor.dev, cursor.inode)
        if (identity in self._configured and cursor.rows_done) or not BY_NAME[chunk.kind].stores_run_configuration:
            return
        self._configured.add(identity)
        run_config = self.accumulator.run_config.with_file(cursor.path, chunk.file.fh if chunk.file else None)
        if run_config is not self.accumulator.run_config:
            self.accumulator.set_run_config(run_config)

    def forget_files(self, tracked: Iterable[FileCursor]) -> None:
        """Forget the files whose cursors the tail forgot (gone and idle): only files still tracked are kept."""
        cursors = list(tracked)
        self._configured &= {(cursor.dev, cursor.inode) for cursor in cursors}
        self.runs.keep({cursor.path for cursor in cursors})

    def _on_read_error(self, cursor: FileCursor, reason: str, message: str) -> None:
        self.log_event("error", message, reason=reason, file=cursor.path)

    # -- output ---------------------------------------------------------------------------
    def update(self) -> Evaluation:
        """Snapshot, check, record history and notify handlers; return the new evaluation."""
        snapshot = self.accumulator.snapshot(self.reference)
        comparison = self.reference.compare(snapshot) if self.reference is not None else None
        mode = self.run_mode
        if mode == "auto":
            mode = detect_run_mode(snapshot)
        results = evaluate(snapshot, self.mode_checks[mode], self.reference)
        self.accumulator.note_rates(rates_good(results))
        self.history.record(snapshot, results.chip_worst)
        evaluation = Evaluation(snapshot, results, comparison, time.time(), mode)
        self._notify(self._last, evaluation)
        self._last = evaluation
        return evaluation

    @property
    def run_mode(self) -> str:
        """The configured run mode: 'auto' (detected from the data's trigger types at each update) or a fixed one."""
        return self.accumulator.run_config.run_mode

    @property
    def evaluation(self) -> Evaluation:
        """The last ``update()``, made now if there was none."""
        return self._last if self._last is not None else self.update()

    def _notify(self, old: Evaluation | None, new: Evaluation) -> None:
        r, snapshot = new.results, new.snapshot
        for group in snapshot.io_groups.tolist():
            for name, value in (
                ("io_group_hit_rate_hz", snapshot.io_group_rate_hz[group]),
                ("io_group_sync_rate_hz", snapshot.sync_rate_hz[group]),
                ("io_group_status", r.io_group_status[group]),
            ):
                for handler in self._metric_handlers:
                    self._call(handler, name, float(value), {"io_group": group, "data_time": snapshot.data_time})
        for handler in self._metric_handlers:
            self._call(handler, "detector_status", float(r.detector_status), {"data_time": snapshot.data_time})
        if not self._status_handlers and not self._log_handlers:
            return
        for change in self._changes(old, new):
            level = {CheckStatus.WARNING: "warning", CheckStatus.ERROR: "error"}.get(CheckStatus(change.new), "info")
            self.log_event(level, str(change), scope=change.scope, key=list(change.key), status=change.new)
            for status_handler in self._status_handlers:
                self._call(status_handler, change)

    def _changes(self, old: Evaluation | None, new: Evaluation) -> list[StatusChange]:
        """Statuses that moved to or from warning or error (unknown and ok are alike here: nothing to act on)."""
        r = new.results
        keys = new.snapshot.chip_keys
        old_worst = np.zeros(len(keys), np.int8)
        if old is not None:
            n = min(len(old.results.chip_worst), len(keys))
            old_worst[:n] = old.results.chip_worst[:n]
        # a dead chip that sent nothing in this run (it may have in an earlier one, and no configuration
        # says it is off now) is told apart from one that stopped
        unheard = new.snapshot.chip_dead & (new.snapshot.chip_run_hits == 0)
        changes = []
        for row in np.flatnonzero(_acted_on(old_worst) != _acted_on(r.chip_worst)).tolist():
            failing = tuple(c.name for c, s in zip(r.chip_checks, r.chip_status[:, row]) if s > CheckStatus.OK)
            reason = NO_DATA_THIS_RUN if unheard[row] else ""
            changes.append(
                StatusChange(
                    "chip", tuple(keys[row].tolist()), int(old_worst[row]), int(r.chip_worst[row]), failing, reason
                )
            )
        old_groups = old.results.io_group_status if old is not None else np.zeros_like(r.io_group_status)
        for group in np.flatnonzero(_acted_on(old_groups) != _acted_on(r.io_group_status)).tolist():
            changes.append(
                StatusChange("io_group", (group,), int(old_groups[group]), int(r.io_group_status[group]), ())
            )
        old_detector = old.results.detector_status if old is not None else 0
        if _acted_on(old_detector) != _acted_on(r.detector_status):
            changes.append(StatusChange("detector", (), old_detector, r.detector_status, ()))
        return changes

    def chip_table(self) -> dict[str, np.ndarray]:
        """Per-chip statistics and the worst check status, as named numpy columns."""
        evaluation = self.evaluation
        snapshot = evaluation.snapshot
        table = {
            "io_group": snapshot.chip_keys[:, 0],
            "io_channel": snapshot.chip_keys[:, 1],
            "chip_id": snapshot.chip_keys[:, 2],
            "packets": snapshot.chip_packets,
            "hit_rate_hz": snapshot.chip_rate_hz,
            "adc_mean": snapshot.chip_adc_mean,
            "adc_std": snapshot.chip_adc_std,
            "status": evaluation.results.chip_worst,
        }
        for i, status in enumerate(ChannelStatus.judged()):
            table[f"{status.label}_channels"] = snapshot.chip_status_counts[:, i]
        return table

    def channels(self, *statuses: str) -> np.ndarray:
        """(n, 4) rows of io_group, io_channel, chip_id, channel_id whose channel status is one of ``statuses``."""
        return channel_list(self.evaluation.snapshot, statuses or ("noisy", "silent"))

    def unexpected_chips(self) -> list[dict[str, int]]:
        """Chips that sent valid data but are not in the geometry (see ``unexpected_chips``)."""
        return unexpected_chips(self.evaluation.snapshot)

    def export_history(self, path: str | os.PathLike, fmt: str | None = None) -> str:
        """Write the per-chip history (csv, json, or parquet with pyarrow); return the format used."""
        return self.history.export(path, fmt)


def unexpected_chips(snapshot: Snapshot) -> list[dict[str, int]]:
    """Chips outside the geometry that sent valid data: io_group, io_channel, chip_id and their data packets."""
    return [
        {"io_group": g, "io_channel": c, "chip_id": chip, "packets": int(snapshot.chip_packets[row])}
        for row, (g, c, chip) in zip(
            np.flatnonzero(~snapshot.chip_in_geometry).tolist(), snapshot.chip_keys[~snapshot.chip_in_geometry].tolist()
        )
    ]


def _acted_on(status: np.ndarray | int) -> np.ndarray:
    """A status as far as anyone acts on it: unknown counts as ok."""
    return np.maximum(status, CheckStatus.OK)
