"""The drawing process: a ``PlotEngine`` fed through a pipe with snapshots and packets, apart from the server.

``serve`` draws here, in a child process started by ``PlotWorker`` (``larpix_dqm.plots.worker``), so
matplotlib never holds the interpreter lock of the process that answers ``/metrics``. The
parent sends, in order, ``("setup", Setup)`` (through this pipe, not in the spawn arguments:
a child killed before reading those would block its parent), ``("snapshot", Snapshot)``, ``("chunk", key, packets | messages | None, dropped)``,
``("draw", request)`` and ``("stop",)``; the child says how many packets it took
(``("taken", n)``), answers with ``("status", dict)`` after every cycle and forwards its log
records as ``("log", dict)``; its first status report says it is ready. A closed pipe (the parent is
gone) or a stop message ends the child; a cycle under way ends at the next image.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, NoReturn

import numpy as np

from larpix_dqm.exporter.detector.geometry import Geometry
from larpix_dqm.exporter.quality.snapshot import Snapshot
from larpix_dqm.exporter.reading.decode import Messages
from larpix_dqm.plots.discovery import Catalog, discover
from larpix_dqm.plots.engine import PlotEngine, PlotSettings, fingerprint

log = logging.getLogger(__name__)

#: What a chunk message carries: packet records, or raw messages decoded here (not in the ingest thread).
Payload = np.ndarray | Messages


def packet_count(payload: Payload) -> int:
    """Packets in a chunk message's payload."""
    return payload.size if isinstance(payload, Messages) else len(payload)


#: Niceness added to the drawing process: none, so that under load it gets the share any process gets (at
#: nice +10 it got a few percent at load 4 and drew no cycle in 30 s); what keeps it from crowding out ingest
#: and scrapes is its duty cycle: after a cycle of d seconds it waits at least d (``DrawingLoop.cycle``).
NICENESS = 0


@dataclass(frozen=True)
class Setup:
    """What a drawing process needs to build its engine, sent as its first message."""

    settings: PlotSettings
    geometry: Geometry | None
    catalog: tuple[list[tuple[str, str, str, str, str]], dict[str, str]]  # ``Catalog.references``
    interval: float
    idle_seconds: float


class _Stopping(Exception):
    """Raised between two images once the parent said stop or went away: a long cycle ends at once."""


class PipeLogHandler(logging.Handler):
    """Sends the child's log records to the parent, which logs them in its own format."""

    def __init__(self, conn: Connection, lock: threading.Lock) -> None:
        super().__init__()
        self.conn, self.send_lock = conn, lock  # not ``lock``: Handler has its own, held around emit

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = {
                "name": record.name,
                "levelno": record.levelno,
                "levelname": record.levelname,
                "msg": record.getMessage(),
                "exc_text": logging.Formatter().formatException(record.exc_info) if record.exc_info else None,
                "created": record.created,
                "msecs": record.msecs,
            }
            with self.send_lock:
                self.conn.send(("log", fields))
        except Exception:  # the parent is gone: nothing to log to
            pass


def _terminate(signum: int, frame: Any) -> NoReturn:
    """SIGTERM ends the child through SystemExit, so a half-written image's temporary file is removed."""
    raise SystemExit(0)


class DrawingLoop:
    """The child's main loop: take messages, draw at most every ``interval``, report each cycle."""

    def __init__(
        self, conn: Connection, lock: threading.Lock, engine: PlotEngine, interval: float, idle_seconds: float
    ) -> None:
        self.conn = conn
        self.lock = lock  # sends come from this loop and from the log handler
        self.engine = engine
        self.interval = interval
        self.idle_seconds = idle_seconds
        self.snapshot: Snapshot | None = None
        self.stopping = False
        self.taken = 0  # packets handled since the parent was last told
        self.wanted = 0  # highest draw request received
        self.answered = 0  # highest draw request a finished cycle covers
        self.next_due = 0.0
        self.cycles = 0
        self.looked = False  # whether the first cycle (one image of each plot, see ``cycle``) was drawn
        self.last_cycle_seconds = float("nan")
        self.last_cycle_wall = float("nan")

    def send(self, message: tuple) -> None:
        with self.lock:
            self.conn.send(message)

    def receive(self, wait: float) -> None:
        """Handle every message waiting (after up to ``wait`` seconds for the first); EOF means stop."""
        try:
            ready = self.conn.poll(wait)
            while ready:
                self.handle(self.conn.recv())
                ready = self.conn.poll(0)
            if self.taken:  # the parent bounds the packets not taken yet
                self.send(("taken", self.taken))
                self.taken = 0
        except (EOFError, OSError):
            self.stopping = True

    def handle(self, message: tuple) -> None:
        kind = message[0]
        if kind == "snapshot":
            first = self.snapshot is None
            self.snapshot = message[1]
            if first and math.isfinite(self.snapshot.data_time):  # restored from a checkpoint: draw what it holds
                self.engine.shared_fresh.feed(fingerprint(self.snapshot))
        elif kind == "chunk" and self.snapshot is not None:
            _, key, payload, dropped = message
            packets = payload.decode() if isinstance(payload, Messages) else payload
            self.engine.update(key, packets, self.snapshot, dropped)
            self.taken += 0 if payload is None else packet_count(payload)
        elif kind == "draw":
            self.wanted = max(self.wanted, message[1])
        elif kind == "stop":
            self.stopping = True

    def between(self) -> None:
        """Between two images: report (counts follow the images on disk), take what came meanwhile, stop if told."""
        self.report()
        self.receive(0)
        if self.stopping:
            raise _Stopping

    def run(self) -> None:
        self.report()
        while not self.stopping:
            snapshot = self.snapshot
            work = snapshot is not None and self.engine.has_work(snapshot)
            self.receive(min(max(0.0, self.next_due - time.monotonic()), 1.0) if work else 1.0)
            if self.stopping or self.snapshot is None:
                continue
            requested = self.answered < self.wanted
            if (requested or time.monotonic() >= self.next_due) and self.engine.has_work(self.snapshot):
                self.cycle(self.wanted)
            elif requested:
                self.answered = self.wanted
                self.report()

    def cycle(self, serving: int) -> None:
        """Draw what changed; requests that arrive meanwhile are answered by the next cycle.

        Only a cycle that wrote its images counts (``cycles``, the last cycle's time and duration):
        one with images not written (a full disk) or a surprise failure is tried again next interval.
        The first cycle, unless asked for, draws one image of each plot (a first picture of everything
        within seconds, not after 16 pixel maps are built); the next one, right after it, all of them.
        """
        started = time.monotonic()
        first_look, self.looked = not self.looked and self.answered >= serving, True
        completed = False
        try:
            assert self.snapshot is not None
            self.engine.draw(self.snapshot, between=self.between, first_look=first_look)
            self.engine.expire(self.idle_seconds)
            completed = not self.engine.failed_writes
        except _Stopping:
            return
        except Exception:  # a surprise outside the plugins: log it, go on next interval
            log.exception("plot cycle failed; trying again next interval")
        ended = time.monotonic()
        if completed:
            self.last_cycle_seconds = ended - started
            self.last_cycle_wall = time.time()
            self.cycles += 1
        # At most every interval, and never busier than half the time; the rest of a first look at once.
        self.next_due = ended if first_look else max(started + self.interval, ended + (ended - started))
        self.answered = serving
        self.report()

    def report(self) -> None:
        self.send(
            (
                "status",
                {
                    **self.engine.status(),
                    "pid": os.getpid(),
                    "cycles": self.cycles,
                    "answered": self.answered,
                    "last_cycle_seconds": self.last_cycle_seconds,
                    "last_cycle_wall": self.last_cycle_wall,
                },
            )
        )


def main(conn: Connection, level: int) -> None:
    """Entry point of the drawing process (started with the 'spawn' method): read the ``Setup``, draw.

    Plugin folders are imported before the parent's catalog is resolved, so their classes
    resolve by the same module names as in the parent.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent decides
    signal.signal(signal.SIGTERM, _terminate)
    os.nice(NICENESS)
    try:
        kind, setup = conn.recv()
        assert kind == "setup" and isinstance(setup, Setup)
        logging.disable(logging.CRITICAL)  # the parent already logged what discovery and set-up find
        if setup.settings.plugin_dirs:
            discover(setup.settings.plugin_dirs)
        engine = PlotEngine(setup.settings, setup.geometry, Catalog.from_references(setup.catalog))
        logging.disable(logging.NOTSET)
        lock = threading.Lock()
        root = logging.getLogger()
        root.handlers[:] = [PipeLogHandler(conn, lock)]
        root.setLevel(level)
        DrawingLoop(conn, lock, engine, setup.interval, setup.idle_seconds).run()
    except (EOFError, OSError):  # the parent went away (before the set-up, or while we reported)
        pass
    finally:
        conn.close()
