"""One engine's images drawn by two processes: ``once``'s drawing process (``plots.once``) forks a helper once it
has the file's snapshot.

Drawing is most of a ``once`` with plots and runs on one core. After the fork both processes hold
the same engine, fed with the same packets, and walk its images in the same order; each image goes
to the first of the two that asks for it (``Shares``), so a slow image does not leave the other core
idle. The helper reports what it wrote and how the plots fared through a pipe; if it dies before
reporting, or has not reported long after this process is done (``HELPER_WAIT``), this process stops it
and draws everything it did not draw itself: a helper that hangs costs time, never an image.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import logging
import multiprocessing
import os
import pickle
import select
import signal
import time
from collections.abc import Callable, Iterator

from larpix_dqm.exporter.quality.halves import two_cores
from larpix_dqm.exporter.quality.snapshot import Snapshot
from larpix_dqm.plots.engine import PlotEngine, PluginHealth
from larpix_dqm.plots.processes import die_with_parent, release_free_heap
from larpix_dqm.plots.store import remove_temporaries

log = logging.getLogger(__name__)

#: How long the helper may take to report after this process has drawn its share: these seconds plus this many
#: times the time that share took. Images are handed out one by one, so the helper is at most one image behind;
#: past this, it is stopped and its share drawn here.
HELPER_WAIT = (10.0, 10.0)


class Shares:
    """Hands out the images of one ``PlotEngine.draw``, in its drawing order, each to the first of the
    forked processes that asks; ``take`` (the draw's ``share``) says whether the next one is this process's."""

    def __init__(self) -> None:
        self._next = multiprocessing.get_context("fork").Value("q", 0)  # the next image nobody has taken
        self._seen = 0  # images this process has asked about
        self._mine = -1  # the image this process took last
        self.taken: set[int] = set()

    def take(self) -> bool:
        if self._mine < self._seen:
            with self._next.get_lock():
                self._mine = self._next.value
                self._next.value += 1
        mine = self._mine == self._seen
        if mine:
            self.taken.add(self._seen)
        self._seen += 1
        return mine

    def rest(self) -> Callable[[], bool]:
        """A ``share`` for drawing again every image this process did not take."""
        seen = itertools.count()
        return lambda: next(seen) not in self.taken


def can_share() -> bool:
    """Whether a second process would draw on a second core: Linux (it forks safely with numpy and matplotlib
    loaded, and says which cores are ours), and two cores are ours."""
    return hasattr(os, "sched_getaffinity") and two_cores()


def draw_shared(
    engine: PlotEngine,
    snapshot: Snapshot,
    between: Callable[[], None],
    on_fork: Callable[[int], None] = lambda pid: None,
) -> int:
    """Draw ``engine``'s due images with a forked helper; the number written by both processes.

    ``between`` runs after each image this process draws; ``on_fork`` is told the helper's process number (for
    the process that tidies up after it). Without a second core, one process draws all.
    """
    if not can_share():
        return engine.draw(snapshot, between)
    shares = Shares()
    before = {name: (h.failures, h.renders) for name, h in engine.health.items()}
    read, write = os.pipe()
    release_free_heap()
    with _collector_frozen():  # see _help
        try:
            pid = os.fork()
        except OSError:
            os.close(read)
            os.close(write)
            raise
        if pid == 0:  # the helper
            os.close(read)
            _help(engine, snapshot, shares, write, before)
        os.close(write)
        report = None
        try:
            on_fork(pid)
            started = time.monotonic()
            written = engine.draw(snapshot, between, share=shares.take)
            seconds, times = HELPER_WAIT
            report = _report(_receive(read, time.monotonic() + seconds + times * (time.monotonic() - started)))
        finally:
            os.close(read)
            if report is None:
                _stop(pid)
            os.waitpid(pid, 0)
            if report is None:  # killed, or died, perhaps while writing an image
                remove_temporaries(engine.store.root, pid)
    if report is None:
        log.warning("plots: the drawing helper (pid %d) did not report; its images are drawn here", pid)
        engine.redraw()
        return written + engine.draw(snapshot, between, share=shares.rest())
    helper_written, health = report
    for name, (failures, renders, last_error) in health.items():
        _merge(engine.health[name], failures, renders, last_error)
    return written + helper_written


@contextlib.contextmanager
def _collector_frozen() -> Iterator[None]:
    """The objects made so far left out of the garbage collector's walks (``gc.freeze``) until the block ends;
    a caller's own freeze is left as it is."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _help(
    engine: PlotEngine, snapshot: Snapshot, shares: Shares, pipe: int, before: dict[str, tuple[int, int]]
) -> None:
    """The helper's whole life: draw the images it takes, report, exit without running the parent's
    exit handlers (its files, registry and progress display are the parent's); killed if the parent ends first.

    Both processes draw with the objects made before the fork frozen (``gc.freeze``): the collector's full
    walks of the read's and the state's 80-180 k objects took a tenth of a draw's CPU in each process, and
    in the helper copied every page they touched."""
    code = 1
    try:
        die_with_parent()
        written = engine.draw(snapshot, share=shares.take)
        health = {
            name: (h.failures - before[name][0], h.renders - before[name][1], h.last_error)
            for name, h in engine.health.items()
        }
        with os.fdopen(pipe, "wb") as out:
            out.write(pickle.dumps((written, health)))
        code = 0
    except Exception:
        log.exception("plots: the drawing helper failed")
    finally:
        os._exit(code)


def _receive(fd: int, deadline: float) -> bytes | None:
    """What the helper wrote to the pipe until it closed it, or None if it is still open at ``deadline``."""
    data = bytearray()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            return None
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return bytes(data)
        data += chunk


def _report(data: bytes | None) -> tuple[int, dict[str, tuple[int, int, str | None]]] | None:
    """The helper's report (images written; per plot its failures, renders and last error), or None when it
    ended before writing all of it, or did not end in time."""
    if data is None:
        return None
    try:
        return pickle.loads(data)
    except (EOFError, pickle.UnpicklingError):
        return None


def _merge(health: PluginHealth, failures: int, renders: int, last_error: str | None) -> None:
    """Add what the helper's draw did to one plot's health here."""
    health.renders += renders
    if failures:
        health.failures += failures
        health.last_error = last_error


def _stop(pid: int) -> None:
    """Stop the helper (this process is leaving the draw early, or it ended without a report)."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
