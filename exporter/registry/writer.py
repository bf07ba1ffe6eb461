"""The registry's one writer: records each run as the exporter reads it.

The ingest thread hands it every counted chunk (``on_chunk``: which run, which file, how many
packets, what data time) and every published evaluation (``record``). Chunks are only noted in
memory; ``record`` writes them with the evaluation in one transaction, after the checkpoint that
covers them, so a ``kill -9`` loses at most the last interval and never counts a packet twice.
The data time between two evaluations is credited to the statuses of the newer one.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import sqlite3
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from exporter.quality.channels import channel_list
from exporter.quality.evaluation import Evaluation
from exporter.quality.status import CheckStatus
from exporter.reading.files import Chunk
from exporter.registry.runs import RunName, RunNamer, chunk_span
from exporter.registry.schema import RegistryError, connect

#: Channel statuses whose lists a run keeps (as they stand at its last update).
BAD_CHANNEL_STATUSES = ("noisy", "silent", "inefficient")
#: status_time.io_group of the whole detector.
DETECTOR = -1


@dataclass(frozen=True)
class RunContext:
    """What judges the runs, recorded with each: the configuration (geometry, networks, disabled lists,
    checks, run pattern), the reference and the configured run mode."""

    configuration: dict[str, Any] = field(default_factory=dict)
    reference: str | None = None
    mode_setting: str = "auto"


@dataclass
class _Noted:
    """What the chunks of one run brought since the last write."""

    name: RunName
    files: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    start: float = math.nan
    end: float = math.nan


class RegistryWriter:
    """Writes runs into the registry at ``path`` (created or migrated); one per registry (a lock file says so)."""

    def __init__(self, path: str | Path, namer: RunNamer, context: RunContext) -> None:
        self.path = str(path)
        self.namer = namer
        self.context = context
        self._lock = _lock(self.path)
        try:
            self.conn = connect(self.path)
        except RegistryError:
            os.close(self._lock)
            raise
        self._noted: dict[str, _Noted] = {}
        self._ending: set[str] = set()
        row = self.conn.execute(
            "SELECT run, end_time FROM runs WHERE closed_at IS NULL ORDER BY updated_at DESC LIMIT 1"
        ).fetchone()
        #: The run being read now (None before any): the newest still open after a restart.
        self.current: str | None = row[0] if row else None
        self._credited = float(row[1]) if row and row[1] is not None else math.nan  # data time credited so far
        self._bad_channels: str | None = None

    def on_chunk(self, chunk: Chunk) -> None:
        """Note a counted chunk (the ingest thread calls it after counting); a chunk of another run than
        the current one ends the current run at the next write."""
        name = self.namer.name(chunk.cursor.path)
        noted = self._noted.get(name.run)
        if noted is None:
            noted = self._noted[name.run] = _Noted(name)
        noted.files[chunk.cursor.path] += chunk.size
        span = chunk_span(chunk)
        if span is not None:
            noted.start = min(noted.start, span[0]) if not math.isnan(noted.start) else span[0]
            noted.end = max(noted.end, span[1]) if not math.isnan(noted.end) else span[1]
        if name.run != self.current:
            if self.current is not None:
                self._ending.add(self.current)
            self._ending.discard(name.run)
            self.current = name.run
            self._credited = span[0] if span is not None else math.nan  # its statuses count from what is read now
            self._bad_channels = None

    def record(self, evaluation: Evaluation, wall_now: float | None = None) -> None:
        """Write what the chunks brought and the current run's share of ``evaluation``, in one transaction."""
        now = time.time() if wall_now is None else wall_now
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            for noted in self._noted.values():
                self._write_noted(noted, now)
            for run in self._ending:
                self.conn.execute("UPDATE runs SET closed_at = ? WHERE run = ? AND closed_at IS NULL", (now, run))
            if self.current is not None:
                self._write_evaluation(self.current, evaluation, now)
            self.conn.execute("COMMIT")
        except sqlite3.Error as err:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise RegistryError(f"registry {self.path}: {err}") from None
        self._noted.clear()
        self._ending.clear()

    def holds(self, path: str) -> str | None:
        """The run the registry already counts ``path`` in, or None."""
        row = self.conn.execute(
            "SELECT runs.run FROM run_files JOIN runs ON runs.id = run_files.run_id WHERE run_files.path = ?", (path,)
        ).fetchone()
        return None if row is None else str(row[0])

    def end_run(self, wall_now: float | None = None) -> None:
        """Close the current run now (``once``: its file is read to the end)."""
        if self.current is not None:
            now = time.time() if wall_now is None else wall_now
            self.conn.execute("UPDATE runs SET closed_at = ? WHERE run = ? AND closed_at IS NULL", (now, self.current))
            self.current = None

    def close(self) -> None:
        """Close the database and release the registry; the current run stays open (it may go on after a restart)."""
        self.conn.close()
        os.close(self._lock)

    def _run_id(self, run: str) -> int:
        return int(self.conn.execute("SELECT id FROM runs WHERE run = ?", (run,)).fetchone()[0])

    def _write_noted(self, noted: _Noted, now: float) -> None:
        ctx = self.context
        packets = sum(noted.files.values())
        start, end = (None if math.isnan(t) else t for t in (noted.start, noted.end))
        self.conn.execute(
            "INSERT INTO runs (run, source, start_time, end_time, packets, opened_at, updated_at, mode_setting,"
            " configuration, reference) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (run) DO UPDATE SET packets = packets + excluded.packets,"
            " start_time = min(coalesce(start_time, excluded.start_time), coalesce(excluded.start_time, start_time)),"
            " end_time = max(coalesce(end_time, excluded.end_time), coalesce(excluded.end_time, end_time)),"
            " updated_at = excluded.updated_at",
            (
                noted.name.run,
                noted.name.source,
                start,
                end,
                packets,
                now,
                now,
                ctx.mode_setting,
                json.dumps(ctx.configuration),
                ctx.reference,
            ),
        )
        if noted.name.run == self.current:  # read again after it ended: it goes on
            self.conn.execute("UPDATE runs SET closed_at = NULL WHERE run = ?", (noted.name.run,))
        run_id = self._run_id(noted.name.run)
        self.conn.executemany(
            "INSERT INTO run_files (run_id, path, packets) VALUES (?, ?, ?)"
            " ON CONFLICT (run_id, path) DO UPDATE SET packets = packets + excluded.packets",
            [(run_id, path, n) for path, n in noted.files.items()],
        )

    def _write_evaluation(self, run: str, evaluation: Evaluation, now: float) -> None:
        row = self.conn.execute("SELECT id, start_time FROM runs WHERE run = ?", (run,)).fetchone()
        if row is None:  # no chunk of it written yet
            return
        run_id, start = int(row[0]), row[1]
        snap, results = evaluation.snapshot, evaluation.results
        t = snap.data_time
        if math.isnan(self._credited):
            self._credited = start if start is not None else t
        seconds = 0.0 if math.isnan(t) or math.isnan(self._credited) else max(0.0, t - self._credited)
        if not math.isnan(t):
            self._credited = max(self._credited, t) if not math.isnan(self._credited) else t
        statuses = [(DETECTOR, results.detector_status)]
        statuses += [(g, int(results.io_group_status[g])) for g in snap.io_groups.tolist()]
        self.conn.executemany(
            "INSERT INTO status_time (run_id, io_group, status, seconds) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (run_id, io_group, status) DO UPDATE SET seconds = seconds + excluded.seconds",
            [(run_id, g, CheckStatus(s).label, seconds) for g, s in statuses],
        )
        if not math.isnan(t):
            self.conn.executemany(
                "INSERT INTO check_failures (run_id, check_name, io_group, io_channel, chip_id, worst, seconds,"
                " first_time, last_time) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (run_id, check_name, io_group, io_channel, chip_id) DO UPDATE SET"
                " worst = max(worst, excluded.worst), seconds = seconds + excluded.seconds,"
                " last_time = excluded.last_time",
                _failures(run_id, evaluation, seconds, t),
            )
        bad = json.dumps({s: channel_list(snap, (s,)).tolist() for s in BAD_CHANNEL_STATUSES})
        if bad != self._bad_channels:
            self.conn.execute("UPDATE runs SET bad_channels = ? WHERE id = ?", (bad, run_id))
            self._bad_channels = bad
        self.conn.execute("UPDATE runs SET mode = ?, updated_at = ? WHERE id = ?", (evaluation.run_mode, now, run_id))


def _failures(run_id: int, evaluation: Evaluation, seconds: float, t: float) -> list[tuple]:
    """Rows of check_failures for every chip and io_group check not ok in ``evaluation``."""
    results, keys = evaluation.results, evaluation.snapshot.chip_keys
    rows: list[tuple] = []
    for check, status in zip(results.chip_checks, results.chip_status):
        for row in np.flatnonzero(status > CheckStatus.OK).tolist():
            g, c, chip = keys[row].tolist()
            rows.append((run_id, check.name, g, c, chip, int(status[row]), seconds, t, t))
    for check, status in zip(results.group_checks, results.group_status):
        for g in np.flatnonzero(status > CheckStatus.OK).tolist():
            rows.append((run_id, check.name, g, -1, -1, int(status[g]), seconds, t, t))
    return rows


def _lock(path: str) -> int:
    """Hold ``<path>.lock`` (with this process's pid in it) for the writer's life: one writer per registry."""
    lock_path = f"{path}.lock"
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise RegistryError(f"registry {path}: cannot create {lock_path} ({err.strerror or err})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise RegistryError(f"registry {path}: written by another larpix-dqm (pid {owner})") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd
