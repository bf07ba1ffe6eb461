"""The ingest loop: poll the inputs, feed new packets to the monitor, publish its state.

One thread owns the monitor. After every poll (and every second during a long backlog) it
publishes an immutable (Evaluation, Health) pair; scrapes read only the published pair.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from larpix_dqm.exporter.detector.geometry import CHANNELS_PER_CHIP
from larpix_dqm.exporter.detector.runconfig import RunConfigError
from larpix_dqm.exporter.metrics.health import Health
from larpix_dqm.exporter.monitor import Monitor
from larpix_dqm.exporter.quality.accumulator import Accumulator
from larpix_dqm.exporter.quality.evaluation import Evaluation
from larpix_dqm.exporter.quality.snapshot import Snapshot
from larpix_dqm.exporter.reading.cursor import FileCursor
from larpix_dqm.exporter.reading.files import Chunk, FileReader
from larpix_dqm.exporter.reading.tail import DirectoryTail, InputSpec
from larpix_dqm.exporter.runtime.checkpoint import WINDOW_CHECKPOINT_SECONDS, Checkpoint

log = logging.getLogger(__name__)
#: Shortest time between two publications inside a poll (a backlog being read).
PUBLISH_EVERY_SECONDS = 1.0
#: At most this share of a backlog's reading goes to publications inside the poll (checkpoint, update and the
#: listeners): they come at least ``PUBLISH_EVERY_SECONDS`` and at least their last cost / this share apart,
#: which bounds how stale a scrape is while catching up (10 x 0.2 s = 2 s for an ND-LAr module).
PUBLISH_COST_SHARE = 0.1
#: What an evaluated publication is reckoned to cost a channel until one has been timed (a first start's backlog):
#: judged on numpy, its checkpoint included, a first publication took 1.0-2.1 us a channel of 179 k (2 io_groups) and
#: 0.27-0.5 us of 2.4 M (50 io_groups; `bench/serve_large.py`'s data). Without it a first start published at its
#: second chunk whatever that cost (0.7-1.2 s at 50 io_groups: a sixth of its first poll).
PUBLISH_SECONDS_PER_CHANNEL = 1e-6


@dataclass(frozen=True)
class Published:
    """What a scrape reads: one consistent monitor state and the health at that moment, the run being read then,
    and whether the checkpoint on disk holds every packet counted in it (else the registry waits for one that does)."""

    evaluation: Evaluation
    health: Health
    run: str | None = None
    checkpointed: bool = False

    @property
    def snapshot(self) -> Snapshot:
        return self.evaluation.snapshot


def count_chunk(health: Health, chunk: Chunk, now: float) -> None:
    """Add a counted chunk to the exporter's own figures: packets by format, raw messages, decode errors."""
    health.packets_ingested[chunk.kind] += chunk.size
    health.messages_ingested += chunk.messages
    health.decode_errors["bad_message"] += chunk.bad_messages
    health.decode_errors["unknown_word"] += chunk.unknown_words
    health.decode_errors["headerless"] += chunk.headerless
    health.decode_errors["out_of_range"] += chunk.out_of_range
    if chunk.size:
        health.last_ingest_wall = now


def note_reading(health: Health, accumulator: Accumulator, tail: DirectoryTail) -> None:
    """Copy into the exporter's figures what the clocks rejected, the engine, and the files read and failing."""
    health.decode_errors["implausible_timestamp"] = accumulator.clock.implausible
    health.decode_errors["time_jump"] = accumulator.clock.rejected
    health.compiled_ingest = accumulator.compiled
    health.files_tracked = tail.tracked
    health.files_in_error = tail.errors_by_reason()


class Ingester:
    """Polls the inputs and feeds the monitor; call ``run`` in a thread."""

    def __init__(
        self,
        inputs: list[InputSpec],
        monitor: Monitor,
        interval: float = 2.0,
        checkpoint_path: str | None = None,
        reader: FileReader | None = None,
        flush_interval: float = 1800.0,
        window_checkpoint_interval: float = WINDOW_CHECKPOINT_SECONDS,
    ) -> None:
        self.tail = DirectoryTail(inputs, reader, flush_interval, on_error=self._on_read_error)
        self.monitor = monitor
        self.accumulator = monitor.accumulator
        self.interval = interval
        self.checkpoint_path = checkpoint_path
        self.checkpoints = Checkpoint(checkpoint_path, window_checkpoint_interval) if checkpoint_path else None
        self.health = Health()
        self._checkpointed: tuple | None = None  # progress at the last checkpoint
        self._window_checkpointed: tuple | None = None  # progress at the last write of the window arrays
        self.listeners: list[Callable[[Chunk], None]] = []
        #: Called in the ingest thread with each new publication (the server renders it ahead of scrapes).
        self.publish_listeners: list[Callable[[Published], None]] = []
        #: The run being read (the service's run namer or registry tells it), captured in each publication.
        self.current_run: Callable[[], str | None] = lambda: None
        self._last_publish = time.monotonic()  # the empty state's publication, below
        self._publish_cost: float | None = None  # seconds the last evaluated publication took, its checkpoint included
        self._unpublished = False  # chunks counted since the last publication
        self._poll_started = time.monotonic()  # of the poll under way, or the last
        #: Set once the first poll after the checkpoint restore completed: the exporter is ready (/-/ready).
        self.polled = threading.Event()
        self.published = Published(monitor.update(), self.health.copy())

    def _on_read_error(self, cursor: FileCursor, reason: str, message: str) -> None:
        """One failure event (the tail reports a file again only once it changed): count it, log it once."""
        self.health.count_read_error(reason)
        self.monitor.log_event(
            "warning",
            f"{message} (reason: {reason}; retried every poll, reported again if it recovers and fails again)",
            reason=reason,
            file=cursor.path,
        )

    def restore(self) -> bool:
        """Load the checkpoint at ``checkpoint_path`` if there is one (raises CheckpointError if unusable)."""
        if self.checkpoints is None or not self.checkpoints.load(self.accumulator, self.tail, self.health):
            return False
        self._checkpointed = self._progress()
        # a window that could not be restored (damaged, other settings) is written at the next checkpoint
        self._window_checkpointed = self._checkpointed if self.checkpoints.window_current else None
        self._checkpoint_and_publish(evaluate=True)  # nothing to write: the checkpoint is what was restored
        return True

    def _progress(self) -> tuple:
        """What a checkpoint must capture: changes whenever cursors or counters change."""
        h = self.health
        return (
            tuple(h.packets_ingested.values()),
            tuple(sorted(h.read_errors.items())),
            h.messages_ingested,
            len(self.tail.cursors),
        )

    def checkpoint(self, final: bool = False, window: bool = True) -> bool:
        """Write the checkpoint if anything was counted since the last one; never raises. True when the checkpoint
        on disk then holds everything counted (always without a checkpoint: nothing is restored), False when it
        could not be written.

        The window arrays go with it at most every ``window_checkpoint_interval`` seconds, and when ``final``;
        never without ``window``.
        """
        if self.checkpoints is None:
            return True
        progress = self._progress()
        with_window = window and progress != self._window_checkpointed and (final or self.checkpoints.window_due())
        if progress == self._checkpointed and not with_window:
            return True
        started = time.monotonic()
        try:
            self.checkpoints.save(self.accumulator, self.tail, self.health, with_window, progress != self._checkpointed)
        except OSError as err:
            self.health.checkpoint_errors += 1
            log.error("cannot write checkpoint %s: %s", self.checkpoint_path, err)
            return False
        self._checkpointed = progress
        if with_window:
            self._window_checkpointed = progress
        self.health.checkpoint_duration = time.monotonic() - started
        return True

    def publish(self, checkpointed: bool, evaluate: bool = True) -> None:
        """Make the current state visible to scrapes; ``checkpointed``: the checkpoint on disk holds all of it.
        Without ``evaluate`` (nothing counted since the last publication) its evaluation is published again:
        the same data give the same verdicts, and an idle poll of a large detector costs no snapshot."""
        note_reading(self.health, self.accumulator, self.tail)
        evaluation = self.monitor.update() if evaluate else self.published.evaluation
        self.published = Published(evaluation, self.health.copy(), self.current_run(), checkpointed)
        self._last_publish = time.monotonic()
        self._unpublished = False
        for listener in self.publish_listeners:
            try:
                listener(self.published)
            except Exception:  # a listener must never stop ingest
                log.exception("publish listener %r failed", listener)

    def _checkpoint_and_publish(self, evaluate: bool) -> bool:
        """Checkpoint the counters, then publish (``publish``); an evaluated publication's cost, checkpoint included,
        spaces the next ones inside a poll (``PUBLISH_COST_SHARE``), that poll's first included. Whether the
        checkpoint on disk holds everything counted."""
        started = time.monotonic()
        checkpointed = self.checkpoint(window=False)
        self.publish(checkpointed, evaluate=evaluate)
        if evaluate:  # an idle poll's publication judges nothing: it says nothing of the next one's cost
            self._publish_cost = time.monotonic() - started
        return checkpointed

    def _next_publish_cost(self) -> float:
        """The last evaluated publication's cost; before one was timed, ``PUBLISH_SECONDS_PER_CHANNEL`` for each
        channel of the chips seen so far."""
        if self._publish_cost is not None:
            return self._publish_cost
        return len(self.accumulator.chips) * CHANNELS_PER_CHIP * PUBLISH_SECONDS_PER_CHANNEL

    def _long_poll(self) -> bool:
        """Whether the poll under way has lasted the window's checkpoint interval (a first start's backlog of a minute
        is ready without writing the window inside its poll: 2 s at 50 io_groups)."""
        interval = self.checkpoints.window_interval if self.checkpoints is not None else math.inf
        return time.monotonic() - self._poll_started >= interval

    def ingest(self, chunk: Chunk) -> None:
        """Count one chunk (the pump advances its file's cursor afterwards) and publish now and then.

        A publication inside a poll comes before the chunk is counted, when every chunk counted so far
        has its cursor advanced, and after a checkpoint of exactly that: no scrape ever shows a count that
        a restart could not restore, so a counter never goes back across a kill. The window arrays wait for the end
        of the poll (``poll``): a publication does not wait for them, except in a poll longer than the window's interval
        (a backlog of hours), which writes them when due after a publication, as polls do.
        """
        every = max(PUBLISH_EVERY_SECONDS, self._next_publish_cost() / PUBLISH_COST_SHARE)
        if self._unpublished and time.monotonic() - self._last_publish > every:
            if self._checkpoint_and_publish(evaluate=True) and self._long_poll():
                self.checkpoint()  # the window when due, as between polls: a crash in a backlog of hours restores it
        self._unpublished = True
        now = time.time()
        try:
            self.monitor.apply_file_configuration(chunk)  # its channel masks, before its data
        except RunConfigError as err:
            self.health.count_read_error("configs")
            self.monitor.log_event("warning", str(err), reason="configs", file=chunk.cursor.path)
        self.monitor.feed_chunk(chunk, now)
        count_chunk(self.health, chunk, now)
        for listener in self.listeners:
            try:
                listener(chunk)
            except Exception:  # a listener (plots) must never stop ingest
                log.exception("listener %r failed on %s", listener, chunk.cursor.path)

    def poll(self, stop: threading.Event | None = None) -> int:
        """Read everything new once; return the number of packets ingested."""
        started = self._poll_started = time.monotonic()
        total = self.tail.pump(self.ingest, stop.is_set if stop is not None else None, self.accumulator.expect)
        self.monitor.forget_files(self.tail.cursors.values())
        h = self.health
        h.polls += 1
        h.poll_duration = time.monotonic() - started
        h.last_poll_wall = time.time()
        h.up = True
        checkpointed = self._checkpoint_and_publish(evaluate=self._unpublished)
        self.polled.set()
        if checkpointed:  # the window when due, after the publication: ready and scrapes wait for the counters only
            self.checkpoint()
        return total

    def run(self, stop: threading.Event) -> None:
        """Poll every ``interval`` seconds until ``stop`` is set; never dies on one bad poll."""
        while not stop.is_set():
            started = time.monotonic()
            try:
                self.poll(stop)
            except Exception:
                log.exception("poll failed; retrying next interval")
                self.health.up = False
                self.publish(checkpointed=False)  # a poll cut short: its cursors and counts may not agree
            stop.wait(max(0.0, self.interval - (time.monotonic() - started)))
        # the window arrays too: a clean stop loses nothing of the window; what the checkpoint now holds is
        # published once more if the last publication was not checkpointed (the registry writes it then)
        if self.checkpoint(final=True) and not self.published.checkpointed:
            self.publish(checkpointed=True)
