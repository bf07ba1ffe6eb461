"""Data time: one clock per io_group, from its PACMAN timestamp packets.

This is the one data-time rule; the accumulator (window slots) and the plots (time series)
both read packets through a ``DetectorClock``. Rule (README "Data time"):

- A packet's data time is that of the latest *accepted* timestamp packet of its own io_group
  before it in its file (``DataClock`` carries that across chunks); before the first one, none.
- A timestamp ``t`` of io_group ``g`` is accepted when it follows the file's own sequence for
  ``g`` (within ``TOLERANCE_SECONDS`` of the last accepted one), or agrees with the io_group's
  detector clock or with the median clock of the other io_groups (within the same tolerance).
  The first timestamp of ``g`` in a file is also accepted when it is not ahead of both: an old
  file read late is placed in the past, where it falls outside the windows.
- Anything else is a jump: rejected and counted (``rejected``), and the packets after it keep
  the last accepted time. A jump that persists, i.e. its own timestamps advance consistently for
  ``STEP_CONFIRM_SECONDS`` of data time, is a genuine clock step and is accepted then.
- The io_group's detector clock (``head``) is its newest accepted time. When the file that
  drives it steps (forward by more than the tolerance, or backward with a confirmed step or to
  agree with the other io_groups), the step is dead time for its window (``rebased``,
  ``window.py``), so rates are neither frozen nor doubled, and a time once rejected never reaches the
  head. An io_group that agreed with the others and moves forward to agree with them again (all
  resumed after a pause, a new run) has a gap in its data, not a step.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from larpix_dqm.exporter.reading.cursor import DataClock
from larpix_dqm.exporter.reading.packets import IO_GROUPS, TIMESTAMP, io_groups_in

log = logging.getLogger(__name__)

#: Data times before this (2015-01-01) cannot come from a LArPix DAQ.
EARLIEST_PLAUSIBLE_TIME = 1_420_070_400
#: Data times further than this ahead of the wall clock are treated as corrupt.
MAX_FUTURE_SECONDS = 86_400
#: How far a timestamp may move from the last accepted one of its sequence (PACMANs stamp each
#: message; an io_group sends at least its 'S' sync every second) or from the other clocks.
TOLERANCE_SECONDS = 5.0
#: Data time a jump must persist, advancing consistently, before it is accepted as a clock step.
STEP_CONFIRM_SECONDS = 5.0
#: A forward jump to within this many seconds of the wall clock is a DAQ writing live again after a
#: pause (a stopped and resumed run), accepted at once: the window slides on over the gap.
LIVE_SECONDS = 30.0
#: Wall seconds between two log lines about the same io_group's clock.
LOG_EVERY_SECONDS = 60.0


def plausible_timestamps(packets: np.ndarray, wall_now: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Rows and times (float unix s) of the plausible timestamp packets, and how many were not."""
    ts_rows = np.flatnonzero(packets["packet_type"] == TIMESTAMP)
    stamps = packets["timestamp"][ts_rows]
    plausible = (stamps >= EARLIEST_PLAUSIBLE_TIME) & (stamps <= wall_now + MAX_FUTURE_SECONDS)
    return ts_rows[plausible], stamps[plausible].astype(np.float64), int(len(ts_rows) - np.count_nonzero(plausible))


def _near(t: float, reference: float) -> bool:
    """Whether ``t`` is within the tolerance of ``reference`` (never when it is NaN)."""
    return abs(t - reference) <= TOLERANCE_SECONDS


@dataclass
class AcceptedStamps:
    """The accepted timestamps of one chunk and what they did to the io_group clocks."""

    rows: np.ndarray  # accepted timestamp rows, ascending
    times: np.ndarray  # their data times
    groups: np.ndarray  # their io_groups
    before: np.ndarray  # (256,) the file's clock per io_group before the chunk
    #: io_group -> index into ``rows`` from which its clock stepped (earlier times are on the old clock)
    rebased: dict[int, int] = field(default_factory=dict)

    def fill(self, io_group: np.ndarray, values: np.ndarray, before: np.ndarray) -> np.ndarray:
        """Per packet: ``values[i]`` of the latest accepted timestamp of its io_group at or before
        it, else ``before[io_group]`` (``values`` per accepted row, ``before`` per io_group)."""
        n = len(io_group)
        out = np.empty(n, np.result_type(values, before))
        first = int(self.rows[0]) if len(self.rows) else n
        out[:first] = before[io_group[:first]]
        if first == n:
            return out
        counts = np.diff(np.append(self.rows, n))
        out[first:] = np.repeat(values, counts)
        if (self.groups[0] == self.groups).all() and (io_group[first:] == self.groups[0]).all():
            return out  # one io_group: every packet follows a timestamp of its own io_group
        # Raw files put each message's packets right after its own timestamp packet, so the
        # preceding timestamp is nearly always of the same io_group; fix the rest one by one.
        wrong = np.flatnonzero(np.repeat(self.groups, counts) != io_group[first:]) + first
        for g in np.unique(io_group[wrong]).tolist():
            at = wrong[io_group[wrong] == g]
            own = np.flatnonzero(self.groups == g)
            if len(own) == 0:
                out[at] = before[g]
                continue
            j = np.searchsorted(self.rows[own], at, side="right") - 1
            out[at] = np.where(j >= 0, values[own[np.maximum(j, 0)]], before[g])
        return out


class DetectorClock:
    """The clock of every io_group (its newest accepted data time) and the rule that moves it."""

    def __init__(self, log_events: bool = True) -> None:
        self.log_events = log_events  # False for a second reader of the same packets (the plots)
        self.head = np.full(IO_GROUPS, np.nan)  # newest accepted data time per io_group
        self.span_start = np.full(IO_GROUPS, np.nan)  # data time since which the io_group runs without a step
        #: Per io_group: its clock agreed with the others' after its last chunk (a later forward move to
        #: agree with them again is a gap in its data, not a step of its own clock)
        self.in_step = np.ones(IO_GROUPS, bool)
        self.rejected = 0  # timestamp packets rejected as jumps
        self.implausible = 0  # timestamp packets outside the plausible range
        self._logged = np.full(IO_GROUPS, -math.inf)
        self._unlogged = np.zeros(IO_GROUPS, np.int64)

    @property
    def data_time(self) -> float:
        """Newest data time over all io_groups (NaN before any)."""
        return float(np.nanmax(self.head)) if not np.isnan(self.head).all() else math.nan

    def others_median(self, clocks: np.ndarray | None = None) -> np.ndarray:
        """(256,) the median clock of the other io_groups, per io_group (NaN without others); of
        ``clocks`` (e.g. their live times) instead of their heads when given."""
        values = self.head if clocks is None else clocks
        out = np.full(IO_GROUPS, np.nan)
        known = np.flatnonzero(~np.isnan(values))
        n = len(known)
        if n == 2:  # (a module's two io_groups: each the other's)
            out[known] = values[known[::-1]]
        elif n > 2:  # the others of each are the sorted clocks without its own: their middle one or two, as np.median
            order = np.argsort(values[known], kind="stable")
            ranked = values[known][order]
            rank = np.empty(n, np.int64)
            rank[order] = np.arange(n)

            def other(k: int) -> np.ndarray:
                """The k-th smallest of the others' clocks, for each known io_group."""
                return np.where(k < rank, ranked[k], ranked[k + 1])

            half = (n - 1) // 2
            out[known] = other(half) if (n - 1) % 2 else (other(half - 1) + other(half)) / 2
        return out

    def offsets(self) -> np.ndarray:
        """(256,) each io_group's clock minus the median clock of the other io_groups (0 for a lone
        io_group, NaN for one without a clock); with two io_groups both show the skew."""
        offsets = self.head - self.others_median()
        offsets[~np.isnan(self.head) & np.isnan(offsets)] = 0.0
        return offsets

    def read(self, packets: np.ndarray, clock: DataClock, wall_now: float) -> AcceptedStamps:
        """Judge the chunk's timestamp packets, advance the file and io_group clocks, return the accepted ones."""
        ts_rows, stamps, implausible = plausible_timestamps(packets, wall_now)
        self.implausible += implausible
        before = clock.last.copy()
        groups = packets["io_group"][ts_rows]
        present = io_groups_in(groups)
        selections: list[tuple[int, slice | np.ndarray]]
        if len(present) == 1:
            selections = [(present[0], slice(None))]
        else:
            selections = [(g, np.flatnonzero(groups == g)) for g in present]
        keep = np.ones(len(ts_rows), bool)
        rebased: dict[int, int] = {}
        for g, sel in selections:
            times = stamps[sel]
            last = clock.last[g]
            steps = np.abs(np.diff(times))
            if (  # the usual case: the file's own sequence, in step (a new file's: in step with the io_group's clock)
                abs(times[0] - (self.head[g] if math.isnan(last) else last)) <= TOLERANCE_SECONDS
                and steps.max(initial=0) <= TOLERANCE_SECONDS
            ):
                newest = float(times.max())  # (the general rule, ``_judge``, accepts them all and moves no more)
                clock.last[g] = times[-1]
                clock.jump_start[g] = clock.jump_last[g] = math.nan
                if not newest <= self.head[g]:
                    self.head[g] = newest
                    if math.isnan(self.span_start[g]):
                        self.span_start[g] = newest
                continue
            accepted, rebase_at = self._judge(g, times, clock, wall_now)
            index = np.arange(len(ts_rows))[sel]
            keep[index[~accepted]] = False
            if rebase_at is not None:
                rebased[g] = int(index[rebase_at])
        if not keep.all():
            shift = np.cumsum(~keep)  # accepted rows before a rejected one keep their index
            rebased = {g: i - int(shift[i]) for g, i in rebased.items()}
            ts_rows, stamps, groups = ts_rows[keep], stamps[keep], groups[keep]
        if len(present) and len(present) < IO_GROUPS:
            offsets = self.head[present] - self.others_median()[present]
            self.in_step[present] = ~(np.abs(offsets) > TOLERANCE_SECONDS)
        return AcceptedStamps(ts_rows, stamps, groups, before, rebased)

    def _judge(self, g: int, times: np.ndarray, clock: DataClock, wall_now: float) -> tuple[np.ndarray, int | None]:
        """The general rule, run by run of equal times: which are accepted, and where the clock steps."""
        accepted = np.zeros(len(times), bool)
        starts = np.flatnonzero(np.concatenate([[True], times[1:] != times[:-1]]))
        ends = np.append(starts[1:], len(times))
        others = np.delete(self.head, g)
        others = others[~np.isnan(others)]
        other = float(np.median(others)) if len(others) else math.nan
        rebase_at = None
        for a, b in zip(starts.tolist(), ends.tolist()):
            t = float(times[a])
            last, head = float(clock.last[g]), float(self.head[g])
            known = [v for v in (head, other) if not math.isnan(v)]
            if _near(t, last):
                how = "own"
            elif t > max(known, default=-math.inf) and abs(t - wall_now) <= LIVE_SECONDS:
                how = "resume"  # forward to the wall clock: the DAQ writes live again after a pause
            elif _near(t, head) or _near(t, other):
                how = "agrees"
            elif math.isnan(last) and not t > max(known, default=math.inf) + TOLERANCE_SECONDS:
                how = "first"  # the file's first timestamp, not ahead: the present, or old data placed in the past
            elif self._persists(g, t, clock, b - a):
                how = "step"
            else:
                continue
            accepted[a:b] = True
            clock.jump_start[g] = clock.jump_last[g] = math.nan
            at_head = not math.isnan(last) and last >= head - TOLERANCE_SECONDS
            if math.isnan(head):
                self.head[g] = self.span_start[g] = t
            elif how == "agrees" and t > head and self.in_step[g]:
                self.head[g] = t  # it agreed with the others and follows them over a gap (a pause, a new run)
            elif how in ("agrees", "step") and not _near(t, head) and (t > head or at_head):
                self._log(
                    g, f"io_group {g}: data clock steps {t - head:+.0f} s to {t:.0f}; the step is dead time", False
                )
                self.head[g] = self.span_start[g] = t
                rebase_at = a
            elif t > head:
                self.head[g] = t
            clock.last[g] = t
        return accepted, rebase_at

    def _persists(self, g: int, t: float, clock: DataClock, count: int) -> bool:
        """Whether the jump to ``t`` has persisted long enough to be a clock step; else count its ``count`` packets."""
        if abs(t - clock.jump_last[g]) <= TOLERANCE_SECONDS:  # the pending jump goes on
            clock.jump_last[g] = t
            if t - clock.jump_start[g] >= STEP_CONFIRM_SECONDS:
                return True
        else:  # a new jump
            clock.jump_start[g] = clock.jump_last[g] = t
            reference = clock.last[g] if not math.isnan(clock.last[g]) else self.head[g]
            self._log(
                g,
                f"io_group {g}: timestamp {t:.0f} jumps {t - reference:+.0f} s against its clock and the other"
                f" io_groups; ignored unless it persists {STEP_CONFIRM_SECONDS:g} s",
            )
        self.rejected += count
        return False

    def _log(self, g: int, message: str, limited: bool = True) -> None:
        """Log a clock event of io_group ``g``; ``limited`` ones (jumps) at most once a minute per
        io_group, with the count of those not logged since; steps always (each took 5 s to prove)."""
        if not self.log_events:
            return
        now = time.monotonic()
        if limited and now - self._logged[g] < LOG_EVERY_SECONDS:
            self._unlogged[g] += 1
            return
        extra = f" ({self._unlogged[g]} more jumps on it not logged)" if self._unlogged[g] else ""
        log.warning("%s%s", message, extra)
        if limited:
            self._logged[g], self._unlogged[g] = now, 0

    def times(self, packets: np.ndarray, clock: DataClock, wall_now: float) -> np.ndarray:
        """Float unix seconds per packet (NaN before its io_group's first accepted timestamp); advances the clocks."""
        if len(packets) == 0:
            return np.zeros(0)
        accepted = self.read(packets, clock, wall_now)
        return accepted.fill(packets["io_group"], accepted.times, accepted.before)

    def export_state(self) -> dict[str, np.ndarray]:
        """Arrays for the checkpoint (accepted times only)."""
        return {
            "clock_head": self.head.copy(),
            "clock_span_start": self.span_start.copy(),
            "clock_counts": np.array([self.rejected, self.implausible]),
        }

    def import_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Continue from ``export_state`` output."""
        self.head[...] = state["clock_head"]
        self.span_start[...] = state["clock_span_start"]
        self.rejected, self.implausible = (int(v) for v in state["clock_counts"])
