"""The registry's one writer: records each run as the exporter reads it.

The ingest thread hands it every counted chunk (``on_chunk``: which run, which file, how many
packets, what data time) and every published evaluation (``record``). Chunks are only noted in
memory; ``record`` writes them with the evaluation in one transaction, and is called only with a
publication the checkpoint holds (the service waits for one), so a ``kill -9`` loses at most the
last interval and never counts a packet twice. The data time of each run read between two
evaluations is credited to the statuses of the newer one.
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

from larpix_dqm.exporter.quality.channels import channel_list
from larpix_dqm.exporter.quality.evaluation import Evaluation
from larpix_dqm.exporter.quality.status import CheckStatus
from larpix_dqm.exporter.reading.files import Chunk
from larpix_dqm.exporter.registry.runs import RunName, RunNamer, chunk_span
from larpix_dqm.exporter.registry.schema import RegistryError, connect

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

    def __init__(self, path: str | Path, namer: RunNamer, context: RunContext, resume: bool = True) -> None:
        """Open the registry; with ``resume`` the newest open run is the current one (serve goes on with it after a
        restart), without it (once) no run is current and only the runs read are touched."""
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
        #: Open runs read since the last write or resumed: each is closed at the first write it had no chunk for
        #: while another run is current (runs read in turn stay open, not closed and reopened every chunk).
        self._open: set[str] = set()
        self._credited: dict[str, float] = {}  # per run: the data time credited to its statuses so far
        self._bad_channels: dict[str, str] = {}  # per run: its bad channels as last written
        #: The run being read now (None before any): with ``resume``, the newest still open after a restart.
        self.current: str | None = None
        if resume:
            row = self.conn.execute(
                "SELECT run, end_time FROM runs WHERE closed_at IS NULL ORDER BY updated_at DESC LIMIT 1"
            ).fetchone()
            if row is not None:
                self.current = row[0]
                self._open.add(row[0])
                if row[1] is not None:
                    self._credited[row[0]] = float(row[1])

    def on_chunk(self, chunk: Chunk) -> None:
        """Note a counted chunk (the ingest thread calls it after counting); its run is the current one, and the
        runs no longer read are closed at the next write."""
        name = self.namer.name(chunk.cursor.path)
        noted = self._noted.get(name.run)
        if noted is None:
            noted = self._noted[name.run] = _Noted(name)
        noted.files[chunk.cursor.path] += chunk.size
        span = chunk_span(chunk)
        if span is not None:
            noted.start = min(noted.start, span[0]) if not math.isnan(noted.start) else span[0]
            noted.end = max(noted.end, span[1]) if not math.isnan(noted.end) else span[1]
            self._credited.setdefault(name.run, span[0])  # a run's statuses count from what is read of it
        self.current = name.run

    def record(self, evaluation: Evaluation, wall_now: float | None = None) -> None:
        """Write what the chunks brought and each run's share of ``evaluation``, in one transaction; the writer's
        memory follows only once it is committed (a rollback leaves everything to the next write)."""
        now = time.time() if wall_now is None else wall_now
        ending = {run for run in self._open if run != self.current and run not in self._noted}
        credited, bad_channels = dict(self._credited), dict(self._bad_channels)
        credit = {run: noted.end for run, noted in self._noted.items()}
        if self.current is not None:
            credit[self.current] = evaluation.snapshot.data_time  # the current run: up to the newest data
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            for noted in self._noted.values():
                self._write_noted(noted, now)
            for run in ending:
                self.conn.execute("UPDATE runs SET closed_at = ? WHERE run = ? AND closed_at IS NULL", (now, run))
                credited.pop(run, None)
                bad_channels.pop(run, None)
            self._note_failing(evaluation)
            for run, until in credit.items():
                credited[run] = self._credit(run, evaluation, credited.get(run, math.nan), until)
            written = self._write_state(evaluation, now, bad_channels.get(self.current or ""))
            if written is not None:
                bad_channels[written[0]] = written[1]
            self.conn.execute("COMMIT")
        except sqlite3.Error as err:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise RegistryError(f"registry {self.path}: {err}") from None
        self._credited = {run: t for run, t in credited.items() if not math.isnan(t)}
        self._bad_channels = bad_channels
        self._open = (self._open - ending) | set(self._noted)
        self._noted.clear()

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
            self._open.discard(self.current)
            self.current = None

    def close(self) -> None:
        """Close the database and release the registry; the current run stays open (it may go on after a restart)."""
        self.conn.close()
        os.close(self._lock)

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
            " updated_at = excluded.updated_at, closed_at = NULL",  # read again after it ended: it goes on
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
        run_id = self._run_id(noted.name.run)
        self.conn.executemany(
            "INSERT INTO run_files (run_id, path, packets) VALUES (?, ?, ?)"
            " ON CONFLICT (run_id, path) DO UPDATE SET packets = packets + excluded.packets",
            [(run_id, path, n) for path, n in noted.files.items()],
        )

    def _run_id(self, run: str) -> int:
        return int(self.conn.execute("SELECT id FROM runs WHERE run = ?", (run,)).fetchone()[0])

    def _note_failing(self, evaluation: Evaluation) -> None:
        """Put the failing checks of ``evaluation`` (``_failing``) in the connection's temporary table ``failing``, once
        for the runs the write credits (a backlog of one-file runs credits each: SQLite copies them to each run)."""
        self.conn.execute(
            "CREATE TEMP TABLE IF NOT EXISTS failing (check_name TEXT, io_group INTEGER, io_channel INTEGER,"
            " chip_id INTEGER, worst INTEGER)"
        )
        self.conn.execute("DELETE FROM temp.failing")
        self.conn.executemany("INSERT INTO temp.failing VALUES (?, ?, ?, ?, ?)", _failing(evaluation))

    def _credit(self, run: str, evaluation: Evaluation, since: float, until: float) -> float:
        """Credit ``run`` with the data time from ``since`` (its start when NaN) to ``until`` in the statuses and
        failing checks (``_note_failing``) of ``evaluation``; return the data time credited up to now."""
        row = self.conn.execute("SELECT id, start_time FROM runs WHERE run = ?", (run,)).fetchone()
        if row is None:  # no chunk of it written yet
            return since
        run_id, start = int(row[0]), row[1]
        if math.isnan(since):
            since = start if start is not None else until
        seconds = 0.0 if math.isnan(until) or math.isnan(since) else max(0.0, until - since)
        snapshot, results = evaluation.snapshot, evaluation.results
        statuses = [(DETECTOR, results.detector_status)]
        statuses += [(g, int(results.io_group_status[g])) for g in snapshot.io_groups.tolist()]
        self.conn.executemany(
            "INSERT INTO status_time (run_id, io_group, status, seconds) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (run_id, io_group, status) DO UPDATE SET seconds = seconds + excluded.seconds",
            [(run_id, g, CheckStatus(s).label, seconds) for g, s in statuses],
        )
        if math.isnan(until):
            return since
        self.conn.execute(  # (``WHERE true``: an upsert's SELECT needs a WHERE clause to be parsed)
            "INSERT INTO check_failures (run_id, check_name, io_group, io_channel, chip_id, worst, seconds,"
            " first_time, last_time) SELECT ?, check_name, io_group, io_channel, chip_id, worst, ?, ?, ?"
            " FROM temp.failing WHERE true"
            " ON CONFLICT (run_id, check_name, io_group, io_channel, chip_id) DO UPDATE SET"
            " worst = max(worst, excluded.worst), seconds = seconds + excluded.seconds,"
            " last_time = excluded.last_time",
            (run_id, seconds, until, until),
        )
        return until if math.isnan(since) else max(since, until)

    def _write_state(self, evaluation: Evaluation, now: float, written: str | None) -> tuple[str, str] | None:
        """Write the current run's bad channels (when not ``written`` already) and run mode; return (run, its bad
        channels), or None without a current run in the registry."""
        run = self.current
        row = None if run is None else self.conn.execute("SELECT id FROM runs WHERE run = ?", (run,)).fetchone()
        if run is None or row is None:
            return None
        bad = json.dumps({s: channel_list(evaluation.snapshot, (s,)).tolist() for s in BAD_CHANNEL_STATUSES})
        if bad != written:
            self.conn.execute("UPDATE runs SET bad_channels = ? WHERE id = ?", (bad, row[0]))
        self.conn.execute("UPDATE runs SET mode = ?, updated_at = ? WHERE id = ?", (evaluation.run_mode, now, row[0]))
        return run, bad


def _failing(evaluation: Evaluation) -> list[tuple[str, int, int, int, int]]:
    """(check, io_group, io_channel, chip_id, worst) of every chip and io_group check not ok in ``evaluation``
    (-1, -1 for an io_group's); found once per write, whatever the runs it credits (a backlog of one-file runs)."""
    results, keys = evaluation.results, evaluation.snapshot.chip_keys
    failing: list[tuple[str, int, int, int, int]] = []
    for check, status in zip(results.chip_checks, results.chip_status):
        rows = np.flatnonzero(status > CheckStatus.OK)
        for (g, c, chip), worst in zip(keys[rows].tolist(), status[rows].tolist()):
            failing.append((check.name, g, c, chip, worst))
    for check, status in zip(results.group_checks, results.group_status):
        for g in np.flatnonzero(status > CheckStatus.OK).tolist():
            failing.append((check.name, g, -1, -1, int(status[g])))
    return failing


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
