"""``once``'s drawing process: forked before the file is read, it sets the plots up and takes the file's packets
while the reading process reads and counts them, then draws.

Importing matplotlib with the plots and their per-chunk updates cost a ``once`` with plots ~0.8 s of CPU before
its first image (a module's 1.2 M-packet raw file). Done here, they run on the second core during the read, and
the reading process does not import matplotlib (unless it has to draw itself). Packets go as their bytes, sent
by a thread of the reading process and received by a thread of the child, so neither the read nor the child's
import waits on the pipe. Once sent the snapshot the child draws with a forked helper (``plots.sharing``),
reporting each image, then the totals and failures; both die with the process that forked them. A plot option
the engine rejects comes back as its message (``PlotConfigError`` here). If the child ends without reporting,
``finish`` returns None and the caller draws in its own process: a dead child costs time, never an image.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection, Pipe
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np

from larpix_dqm.plots.errors import PlotConfigError
from larpix_dqm.plots.processes import die_with_parent, release_free_heap
from larpix_dqm.plots.store import remove_temporaries

if TYPE_CHECKING:
    from larpix_dqm.exporter.detector.geometry import Geometry
    from larpix_dqm.exporter.quality.snapshot import Snapshot
    from larpix_dqm.plots.engine import PlotEngine

log = logging.getLogger(__name__)

#: How often the reading process looks whether the child is still alive while it waits for it (seconds).
ALIVE_CHECK = 0.2
#: Chunks sent and not yet taken by the child's plots, at most: the read waits beyond (plots slower than the read
#: hold at most this many chunks, ~35 MB of 250 k-packet chunks, not the file). The predecessor's file sends 3-4
#: while the child imports matplotlib; a fast-read 5 M-packet file more: 8 took 0.3 s less and 50 MB more there.
MAX_IN_FLIGHT = 4


class OnceDrawing:
    """The forked drawing process of one ``once`` file, as the reading process sees it."""

    def __init__(self, options: dict[str, Any], geometry: Geometry | None, key: tuple[str, int]) -> None:
        """Fork the child: it builds ``PlotSettings(**options)`` and its engine for ``geometry``, and takes the
        packets of the file ``key``. Raises OSError when the process cannot be forked."""
        self.options = options
        self._conn, child = Pipe()
        try:
            self.pid = os.fork()
        except OSError:
            self._conn.close()
            child.close()
            raise
        if self.pid == 0:
            self._conn.close()
            _child(child, options, geometry, key)
        child.close()
        self._outbox = _Outbox(self._conn)
        self._helpers: list[int] = []  # the child's helpers: killed with it (``die_with_parent``), tidied here
        self._wants_packets = True  # until the child says its plots read none
        self._ready = False  # whether the child has built its engine
        self._in_flight = 0  # chunks sent and not yet taken
        self._reaped = False
        self._status = 0  # the child's wait status, once reaped
        self._on_image: Callable[[], None] = lambda: None  # told of each image the child writes
        self._report: tuple[int, list[str]] | None = None  # the child's: images written, the plots' failures

    def settle(self) -> bool:
        """Wait until the child has built its engine, for a caller about to write what a rejected run must not
        leave (a run registry): raises ``PlotConfigError`` if it rejected the plot options; False if it ended
        without a verdict."""
        self._wait_for(lambda: self._ready)
        return self._ready

    def feed(self, packets: np.ndarray) -> None:
        """Send one chunk's packets, first waiting while ``MAX_IN_FLIGHT`` are not taken yet; raises
        ``PlotConfigError`` once the child has rejected the plot options."""
        self._take_news()
        self._wait_for(lambda: self._in_flight < MAX_IN_FLIGHT)
        self._outbox.put(("chunk", packets if self._wants_packets else None))
        self._in_flight += 1

    def finish(self, snapshot: Snapshot, on_image: Callable[[], None]) -> tuple[int, list[str]] | None:
        """Send the file's snapshot and wait for the child's draw: (images written, the plots' failures), or None
        when the child ended without reporting (then it is stopped and what it left half-written removed).
        Raises ``PlotConfigError`` when the child rejected the plot options."""
        self._on_image = on_image
        self._outbox.put(("draw", snapshot))
        self._outbox.close()
        release_free_heap()  # the read's freed temporaries, while this process waits
        self._wait_for(lambda: self._report is not None)
        if self._report is None:
            self.stop()
            return None
        self._conn.close()
        if not self._reaped:
            self._reap(0)
        return self._report

    def stop(self) -> None:
        """End the child if it has not reported (this process is leaving early, or the child ended without a
        report; its helper dies with it), reap it, remove what they left half-written."""
        if self._conn.closed:
            return
        if not self._reaped:  # not reaped: its number is not reused
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        self._outbox.close()  # a send under way fails now that the child is gone
        self._conn.close()
        if not self._reaped:
            self._reap(0)
        for pid in (self.pid, *self._helpers):
            remove_temporaries(self.options["output"], pid)

    @property
    def ending(self) -> str:
        """How the reaped child ended, for a log line: 'exited with status N' or 'was killed by signal NAME'."""
        if os.WIFSIGNALED(self._status):
            return f"was killed by signal {signal.Signals(os.WTERMSIG(self._status)).name}"
        return f"exited with status {os.waitstatus_to_exitcode(self._status)}"

    def _reap(self, options: int) -> None:
        """Reap the child (``os.WNOHANG``: if it has ended) and keep how it ended."""
        pid, status = os.waitpid(self.pid, options)
        if pid == self.pid:
            self._reaped, self._status = True, status

    def _wait_for(self, done: Callable[[], bool]) -> None:
        """Read the child's messages until ``done()``, or until the child has ended."""
        while not done() and not self._reaped:
            try:
                if self._message(ALIVE_CHECK) is None:
                    self._reap(os.WNOHANG)
            except EOFError:
                return

    def _take_news(self) -> None:
        """Read what the child has said so far without waiting."""
        with contextlib.suppress(EOFError):
            while self._message(0) is not None:
                pass

    def _message(self, timeout: float) -> tuple | None:
        """The child's next message within ``timeout`` seconds, or None; each is handled here. Raises EOFError
        when the child has closed its end, ``PlotConfigError`` when it rejected the options."""
        try:
            if self._conn.closed or not self._conn.poll(timeout):
                return None
            message = self._conn.recv()
        except OSError as err:  # the child died with our packets unread: its end of the socket was reset
            raise EOFError from err
        kind = message[0]
        if kind == "error":
            self.stop()
            raise PlotConfigError(message[1])
        if kind == "ready":
            self._ready, self._wants_packets = True, message[1]
        elif kind == "taken":
            self._in_flight -= 1
        elif kind == "helper":
            self._helpers.append(message[1])
        elif kind == "image":
            self._on_image()
        elif kind == "done":
            self._report = message[1], message[2]
        return message


def plot_engine(options: dict[str, Any], geometry: Geometry | None) -> PlotEngine:
    """The plot engine of the plot options (``PlotSettings``' arguments); raises ``PlotConfigError`` for options
    it rejects."""
    from larpix_dqm.plots.engine import PlotEngine, PlotSettings

    return PlotEngine(PlotSettings(**options), geometry)


def empty_snapshot(geometry: Geometry | None) -> Snapshot:
    """The snapshot the plots are fed with: their ``update`` reads packets, not statistics."""
    from larpix_dqm.exporter.quality.accumulator import Accumulator, QualityConfig
    from larpix_dqm.exporter.quality.config import NUMPY

    return Accumulator(QualityConfig(engine=NUMPY), geometry).snapshot()


def failures(engine: PlotEngine) -> list[str]:
    """What went wrong in a draw, one line each: plots that failed, plots skipped, plugins not loaded."""
    lines = [f"{name} failed: {h.last_error}" for name, h in engine.health.items() if h.failures]
    lines += [f"{name} skipped: {reason}" for name, reason in engine.skipped.items()]
    lines += [f"plugin {where} skipped: {error}" for where, error in engine.catalog.errors.items()]
    return lines


def _child(conn: Connection, options: dict[str, Any], geometry: Geometry | None, key: tuple[str, int]) -> NoReturn:
    """The child's whole life (``_draw``); killed if the reading process ends first, and ends without running
    that process's exit handlers, whatever a plugin raises (its registry, files and progress display are that
    process's)."""
    code = 1
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the reading process decides
        die_with_parent()
        _draw(conn, options, geometry, key)
        code = 0
    except OSError:  # the reading process went away
        pass
    except Exception:
        log.exception("plots: the drawing process failed")
    finally:
        os._exit(code)


def _draw(conn: Connection, options: dict[str, Any], geometry: Geometry | None, key: tuple[str, int]) -> None:
    """Set the plots up (or report why not), take the packets, draw, report."""
    inbox = _Inbox(conn)
    from larpix_dqm.plots.sharing import draw_shared

    try:
        engine = plot_engine(options, geometry)
    except PlotConfigError as err:
        conn.send(("error", str(err)))
        return
    conn.send(("ready", engine.wants_packets))
    empty = empty_snapshot(geometry)
    while True:
        message = inbox.get()
        if message is None:  # the reading process is gone, or stopped before the draw
            return
        if message[0] == "draw":
            break
        engine.update(key, message[1], empty)
        conn.send(("taken",))
    written = draw_shared(
        engine,
        message[1],
        lambda: conn.send(("image",)),
        on_fork=lambda pid: conn.send(("helper", pid)),
    )
    conn.send(("done", written, failures(engine)))


class _Outbox:
    """What the reading process sends the child, sent by a thread of its own, in order: a full pipe never holds
    up the read, and packets go as their bytes (no pickled copy). Once the child is gone, nothing is kept."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._queue: queue.SimpleQueue[tuple | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._send, name="plots-outbox", daemon=True)
        self._thread.start()

    def put(self, message: tuple) -> None:
        """Queue a message for the child; dropped if the child is gone (the thread ended on a failed send)."""
        if self._thread.is_alive():
            self._queue.put(message)

    def close(self) -> None:
        """Send what is queued, end the thread (at once if the child is gone) and drop what it could not send."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        with contextlib.suppress(queue.Empty):
            while True:
                self._queue.get_nowait()

    def _send(self) -> None:
        """The thread: send each message until the closing None or a failed send; a chunk's packets as a small
        pickled header (dtype, rows) and their raw bytes."""
        try:
            while (message := self._queue.get()) is not None:
                if message[0] == "chunk" and message[1] is not None:
                    packets = np.ascontiguousarray(message[1])
                    self._conn.send(("chunk", packets.dtype, len(packets)))
                    self._conn.send_bytes(packets.view(np.uint8).reshape(-1).data)
                else:
                    self._conn.send(message)
        except OSError:  # the child is gone: ``finish`` says so
            pass


class _Inbox:
    """The messages the reading process sends, drained from the pipe by a thread as they come, so its sends
    do not wait while this process imports and sets up; None once the pipe is closed."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._queue: queue.SimpleQueue[tuple | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._drain, name="plots-inbox", daemon=True)
        self._thread.start()

    def get(self) -> tuple | None:
        """The next message, waiting for it; a chunk's packets as a writable array."""
        message = self._queue.get()
        if message is None or message[0] == "draw":
            self._thread.join()  # it ends after the draw message: none is left running when the helper forks
        return message

    def _drain(self) -> None:
        """The thread: receive until the draw message or the pipe's end (then None)."""
        try:
            while True:
                message = self._conn.recv()
                if message[0] == "chunk" and message[1] is not None:
                    _, dtype, rows = message
                    buffer = bytearray(rows * dtype.itemsize)
                    self._conn.recv_bytes_into(buffer)
                    message = ("chunk", np.frombuffer(buffer, dtype))
                self._queue.put(message)
                if message[0] == "draw":
                    return
        except (EOFError, OSError):
            self._queue.put(None)
