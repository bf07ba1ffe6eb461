"""``PlotWorker``: the serving process's handle on the drawing process (``larpix_dqm.plots.process``).

Ingest hands each chunk to ``on_chunk``, which only appends it to a queue bounded in packets
(never waits; what does not fit is counted as dropped). A sender thread pipes the published
snapshot (when it changed, at most every ``SNAPSHOT_SECONDS``, and before each draw request)
and the queued chunks to the child; a receiver thread takes the child's status reports and
log records, and starts the child, and again whenever it dies or does not report ready within
``SPAWN_SECONDS`` of its start (it is then killed and its pipe closed). Pickling happens in these threads, so
neither ingest nor a scrape waits for it, and matplotlib runs under another interpreter lock.
"""

from __future__ import annotations

import collections
import logging
import math
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from larpix_dqm.exporter.quality.snapshot import Snapshot
from larpix_dqm.exporter.reading.files import Chunk
from larpix_dqm.plots import process
from larpix_dqm.plots.engine import PlotEngine
from larpix_dqm.plots.process import Payload, Setup, packet_count
from larpix_dqm.plots.store import ERROR_REASONS, PlotStore, remove_temporaries

log = logging.getLogger(__name__)

#: Packets waiting for the drawing process beyond which new chunks are skipped (and counted).
MAX_QUEUED_PACKETS = 2_000_000
#: A changed snapshot is sent at most this often, except right before a draw request.
SNAPSHOT_SECONDS = 1.0
#: Waits before restarting a drawing process that died: doubling from the first to the last.
RESTART_SECONDS = (1.0, 60.0)
#: Time a stopped child gets after SIGTERM before it is killed.
KILL_SECONDS = 1.0
#: A new drawing process that has not reported ready this long after its start is killed and started again.
SPAWN_SECONDS = 60.0
_STOP = ("stop",)


class PlotWorker:
    """Runs a ``PlotEngine`` in a child process, fed by ``on_chunk`` from the ingest thread.

    ``engine`` is the parent's engine: it checked the settings and plugins, owns the image
    ``store`` the web pages list, and gives the status until the child reports; the child
    builds its own from the same settings, geometry and plugin catalog. ``idle_seconds``: a
    file's plot state is dropped after that long without new packets.
    """

    def __init__(
        self,
        engine: PlotEngine,
        snapshot: Callable[[], Snapshot],
        interval: float = 30.0,
        max_queued_packets: int = MAX_QUEUED_PACKETS,
        idle_seconds: float = 1800.0,
    ) -> None:
        self.engine = engine
        self.snapshot = snapshot
        self.interval = interval
        self.max_queued_packets = max_queued_packets
        self.idle_seconds = idle_seconds
        self._catalog = engine.catalog.references()
        self._context = multiprocessing.get_context("spawn")  # the parent has threads: no plain fork
        self._cond = threading.Condition()
        self._queue: collections.deque[tuple] = collections.deque()
        self._queued = 0  # packets in the queue
        self._in_flight = 0  # packets sent (or being sent) that the child has not taken yet
        self.dropped_total = 0
        self._stopping = False
        self._requested = 0  # draw requests made
        self._answered = 0  # draw requests a finished cycle covered
        self._child_status: dict = {}
        # counts of drawing processes that died, so counters never go back
        self._carried_cycles = 0
        self._carried_plugins: dict[str, dict[str, int]] = {}  # renders and errors by reason, per plot
        self.restarts = 0
        self.last_exit: str | None = None
        self.process: BaseProcess | None = None
        self._conn: Connection | None = None
        self._sent_snapshot: Snapshot | None = None
        self._sent_at = -math.inf
        self._sender = threading.Thread(target=self._send_loop, name="plots-sender", daemon=True)
        self._receiver = threading.Thread(target=self._receive_loop, name="plots-receiver", daemon=True)

    @property
    def store(self) -> PlotStore:
        return self.engine.store

    # -- ingest side (never blocks) ----------------------------------------------------
    def on_chunk(self, chunk: Chunk) -> None:
        """Ingest listener: queue the chunk's packets (raw messages as they are: the drawing process
        decodes them), or count them as skipped when full."""
        n = chunk.size
        if not n:
            return
        key = (chunk.cursor.path, chunk.cursor.inode)
        packets: Payload | None = None
        if self.engine.wants_packets:
            if chunk.records is None:
                packets = chunk.raw
            else:  # the ingest thread may reuse buffers it handed out as views; own the data here
                packets = chunk.records if chunk.records.flags.owndata else chunk.records.copy()
        with self._cond:
            waiting = self._queued + self._in_flight
            if packets is not None and waiting and waiting + n > self.max_queued_packets:
                last = self._queue[-1] if self._queue else None
                if last is not None and last[0] == "chunk" and last[2] is None and last[1] == key:  # one count per file
                    self._queue[-1] = ("chunk", key, None, last[3] + n)
                else:
                    self._queue.append(("chunk", key, None, n))
                self.dropped_total += n
                if self.dropped_total == n:
                    log.warning("plotting fell behind ingest: skipping packets for plots (counted, titles say so)")
            else:
                self._queue.append(("chunk", key, packets, 0))
                self._queued += n if packets is not None else 0
            self._cond.notify_all()

    # -- life cycle ----------------------------------------------------------------------
    def start(self) -> None:
        """Start the threads that talk to the drawing process; the receiver starts the process."""
        self._sender.start()
        self._receiver.start()

    def _spawn(self) -> tuple[BaseProcess, Connection]:
        """Start a drawing process; its spawn arguments stay small (the set-up goes through the pipe).

        ``Process.start`` writes the pickled process object into a pipe whose reading end the parent
        holds until the write ends: more than a pipe's buffer (a geometry) would block forever if the
        child died before reading it. Raises OSError (with the pipe closed) if it cannot start.
        """
        parent, child = self._context.Pipe()
        proc = self._context.Process(
            target=process.main, args=(child, logging.getLogger().getEffectiveLevel()), name="plots", daemon=True
        )
        try:
            proc.start()
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        with self._cond:
            self.process = proc
        return proc, parent

    def _start_up(self, proc: BaseProcess, conn: Connection) -> bool:
        """Send the set-up and wait for the first status report, at most ``SPAWN_SECONDS``; False if the
        child died, hung or the worker stops meanwhile (the child is then ended)."""
        setup = Setup(self.engine.settings, self.engine.geometry, self._catalog, self.interval, self.idle_seconds)
        sender = threading.Thread(target=_send_quietly, args=(conn, ("setup", setup)), name="plots-setup", daemon=True)
        sender.start()
        deadline = time.monotonic() + SPAWN_SECONDS
        ready = False
        try:
            while not ready and not self._stopping and time.monotonic() < deadline:
                if conn.poll(min(0.25, max(0.0, deadline - time.monotonic()))):
                    message = conn.recv()
                    self._handle(message)
                    ready = message[0] == "status"
        except (EOFError, OSError):
            pass
        if not ready:
            if proc.is_alive() and not self._stopping:
                log.error("drawing process %s not ready %.0f s after its start; killed", proc.pid, SPAWN_SECONDS)
            self._end(proc)  # a set-up still being sent then fails
        sender.join()
        return ready

    @staticmethod
    def _end(proc: BaseProcess) -> None:
        """Terminate the child, kill it if it must, and reap it."""
        if proc.is_alive():
            proc.terminate()
            proc.join(KILL_SECONDS)
            if proc.is_alive():
                proc.kill()
        proc.join(KILL_SECONDS)

    def stop(self, timeout: float = 5.0) -> None:
        """Tell the child to stop and wait up to ``timeout`` s; then terminate it (and kill it if it must).

        ``stop(0)`` only tells it: the service does so first, so the child stops drawing while
        ingest writes its last checkpoint, and waits for it later.
        """
        with self._cond:
            self._stopping = True
            self._queue.clear()  # packets not sent yet would only delay the stop
            self._queued = 0
            self._queue.append(_STOP)
            self._cond.notify_all()
        if self._gone(timeout) or timeout <= 0:
            return
        proc = self.process
        if proc is None:
            return
        proc.terminate()
        if not self._gone(KILL_SECONDS):
            log.error("drawing process %s did not stop; killed", proc.pid)
            proc.kill()
            self._gone(KILL_SECONDS)

    def _gone(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the child to be gone. While the receiver thread runs, it is the one
        that waits for the child (two threads waiting for one child race: the one that does not reap it
        may see it alive); it returns once the child is gone."""
        if self._receiver.is_alive():
            self._receiver.join(timeout)
            return not self._receiver.is_alive()
        proc = self.process
        if proc is None:
            return True
        proc.join(timeout)
        return not proc.is_alive()

    # -- sender thread -------------------------------------------------------------------
    def _next(self) -> tuple[Connection, tuple] | None:
        """The next message to send (a newer snapshot first when due); None once stopped and sent."""
        with self._cond:
            while True:
                conn = self._conn
                if conn is not None:
                    snapshot = self.snapshot()
                    head = self._queue[0] if self._queue else None
                    fresh = time.monotonic() - self._sent_at >= SNAPSHOT_SECONDS or (
                        head is not None and head[0] == "draw"
                    )
                    if snapshot is not self._sent_snapshot and (fresh or self._sent_snapshot is None):
                        self._sent_snapshot, self._sent_at = snapshot, time.monotonic()
                        return conn, ("snapshot", snapshot)
                    if head is not None:
                        message = self._queue.popleft()
                        if message[0] == "chunk" and message[2] is not None:
                            count = packet_count(message[2])
                            self._queued -= count
                            self._in_flight += count
                        return conn, message
                if self._stopping and (not self._queue or conn is None):  # stopped with no child to tell: done
                    return None
                self._cond.wait(SNAPSHOT_SECONDS / 4)

    def _send_loop(self) -> None:
        while True:
            item = self._next()
            if item is None:
                return
            conn, message = item
            try:
                conn.send(message)
            except (OSError, ValueError, TypeError):  # the child died (the receiver restarts it and counts
                pass  # what it lost); TypeError: the receiver closed the pipe during the send
            if message is _STOP:
                return

    # -- receiver thread -----------------------------------------------------------------
    def _receive_loop(self) -> None:
        """Start the drawing process, take its messages until it dies, start it again after a wait."""
        wait = RESTART_SECONDS[0]
        while not self._stopping:
            try:
                proc, conn = self._spawn()
            except OSError as err:
                exit = f"drawing process could not start: {err}"
            else:
                ready = self._start_up(proc, conn)
                if ready:
                    wait = self._serve(proc, conn, wait)
                conn.close()
                with self._cond:
                    self._conn = None  # chunks wait in the queue (up to its bound) for the next child
                    self.dropped_total += self._in_flight  # sent to the dead child, never drawn
                    self._in_flight = 0
                    self._carry()
                    self._cond.notify_all()
                if proc.pid is not None:  # reaped: any temporary file of its number is one it was killed writing
                    remove_temporaries(self.engine.store.root, proc.pid)
                during = "" if ready else " during its start-up"
                exit = f"drawing process {proc.pid} exited with code {proc.exitcode}{during}"
            with self._cond:
                if self._stopping:
                    return
                self.restarts += 1
                self.last_exit = exit
            log.error("%s; restarting it in %.0f s (the exporter goes on)", exit, wait)
            with self._cond:
                if self._cond.wait_for(lambda: self._stopping, wait):
                    return
            wait = min(wait * 2, RESTART_SECONDS[1])

    def _serve(self, proc: BaseProcess, conn: Connection, wait: float) -> float:
        """Hand a ready child to the sender and take its messages until it is gone; return the next restart
        wait (the first again once it said anything)."""
        with self._cond:
            self._conn = conn
            self._sent_snapshot = None  # a new child gets the snapshot first
            if self._answered < self._requested:  # a request a dead child did not answer
                self._queue.append(("draw", self._requested))
            self._cond.notify_all()
        try:
            while True:
                self._handle(conn.recv())
                wait = RESTART_SECONDS[0]
        except (EOFError, OSError):
            pass
        proc.join(None if self._stopping else KILL_SECONDS)  # stopping: stop() terminates it if it must
        self._end(proc)  # it closed its pipe but hangs: end it before another one starts
        return wait

    def _handle(self, message: tuple) -> None:
        kind, body = message
        if kind == "log":
            record = logging.makeLogRecord({**body, "args": None, "processName": "plots"})
            logging.getLogger(record.name).handle(record)
        elif kind == "taken":
            with self._cond:
                self._in_flight = max(0, self._in_flight - body)
        elif kind == "status":
            with self._cond:
                self._child_status = body
                self._answered = max(self._answered, body["answered"])
                self._cond.notify_all()

    def _carry(self) -> None:
        """Keep a dead child's counts, so cycles, renders and errors never go back; under ``_cond``, so no
        status sees them neither in the child's report nor carried."""
        status, self._child_status = self._child_status, {}
        self._carried_cycles += status.get("cycles", 0)
        for name, plugin in status.get("plugins", {}).items():
            carried = self._carried_plugins.setdefault(name, dict.fromkeys(("renders", *ERROR_REASONS), 0))
            for key, count in _counts(plugin).items():
                carried[key] += count

    # -- requests and status -------------------------------------------------------------
    def draw_now(self, timeout: float = 60.0) -> bool:
        """Ask for a cycle now (queued packets first) and wait for it, at most ``timeout`` s; ``POST /-/draw``."""
        with self._cond:
            self._requested += 1
            target = self._requested
            self._queue.append(("draw", target))
            self._cond.notify_all()
            return self._cond.wait_for(lambda: self._answered >= target or self._stopping, timeout)

    @property
    def last_cycle_seconds(self) -> float:
        return self.status()["last_cycle_seconds"]

    def status(self) -> dict:
        """Status for people and ``/metrics``: the last cycle, the plugins, skipped packets, the child."""
        base = self.engine.status()
        with self._cond:  # the child's report and the carried counts as of one moment
            child = self._child_status
            cycles = self._carried_cycles + child.get("cycles", 0)
            plugins = {}
            for name, plugin in child.get("plugins", base["plugins"]).items():
                counts = _counts(plugin)
                for key, count in self._carried_plugins.get(name, {}).items():
                    counts[key] += count
                write_errors = {reason: counts[reason] for reason in ERROR_REASONS if reason != "draw"}
                plugins[name] = {**plugin, "renders": counts["renders"], "failures": counts["draw"]}
                plugins[name]["write_errors"] = write_errors
        return {
            **base,
            **child,
            "plugins": plugins,
            "pid": child.get("pid"),
            "last_cycle_seconds": child.get("last_cycle_seconds", float("nan")),
            "last_cycle_wall": child.get("last_cycle_wall", float("nan")),
            "cycles": cycles,
            "dropped_packets": self.dropped_total,
            "queued_packets": self._queued + self._in_flight,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "interval": self.interval,
            "output": os.fspath(self.store.root),
        }


def _counts(plugin: dict) -> dict[str, int]:
    """A plugin status's counters: renders, and errors by ``ERROR_REASONS``."""
    counts = dict.fromkeys(("renders", *ERROR_REASONS), 0)
    counts["renders"], counts["draw"] = plugin["renders"], plugin["failures"]
    for reason, count in plugin.get("write_errors", {}).items():
        counts[reason] += count
    return counts


def _send_quietly(conn: Connection, message: tuple) -> None:
    """Send one message; a child that died meanwhile is the receiver's to report."""
    try:
        conn.send(message)
    except (OSError, ValueError):
        pass
