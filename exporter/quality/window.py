"""The sliding windows in data time, per io_group: moved by each chunk's timestamps, read by the summary.

Every function reads or moves the window fields of a ``State`` (``newest_bin``, ``window_end``,
``window_reference`` and the per-slot arrays); both engines count into the slots they return.
"""

from __future__ import annotations

import numpy as np

from exporter.quality.clock import IO_GROUPS, TOLERANCE_SECONDS, DataClock, Reading
from exporter.quality.state import State


def move(
    state: State, packets: np.ndarray, clock: DataClock, wall_now: float
) -> tuple[Reading, np.ndarray, np.ndarray]:
    """Read the chunk's timestamp packets and move the windows: the accepted timestamps, the window
    slot of each (-1: outside its io_group's window) and of each io_group before the chunk; a
    packet's slot is that of its io_group's latest accepted timestamp at or before it (``Reading.fill``).

    The data-time rule is ``DetectorClock``'s (quality/clock.py). Each io_group's window ends
    at its own clock, restarts where that clock stepped, and, while the io_group sends
    nothing, follows the other io_groups once they have passed both its clock and where they were
    when it last advanced (after ``TOLERANCE_SECONDS``): a stopped io_group's rates fall to zero while
    a skewed one keeps its own, and one read ahead of the others (a backlog whose chunks hold one
    io_group's data before another's) is not pushed past its own data.
    """
    head_before = state.clock.head.copy()
    reading = state.clock.read(packets, clock, wall_now)
    head = state.clock.head
    reference = state.clock.others_median()
    advanced = ~np.isnan(head) & ~(head == head_before)
    stalled = ~np.isnan(head) & ~advanced
    state.window_reference[advanced] = reference[advanced]
    fresh = stalled & np.isnan(state.window_reference)
    state.window_reference[fresh] = reference[fresh]
    behind = np.minimum(reference - state.window_reference, reference - head)
    push = np.maximum(behind - TOLERANCE_SECONDS, 0.0)
    end = np.where(stalled, head + np.nan_to_num(push), head)
    for g in reading.rebased:
        state.window_end[g] = head[g]
        _restart(state, g)
    state.window_end = np.fmax(state.window_end, end)
    for g in np.flatnonzero(state.bin_of(state.window_end) > state.newest_bin).tolist():
        _advance(state, g)
    slots = _slot_of(state, reading.times, reading.groups)
    before = _slot_of(state, reading.before, np.arange(IO_GROUPS))
    for g, index in reading.rebased.items():  # times on the clock before the step are not in the new window
        slots[:index][reading.groups[:index] == g] = -1
        before[g] = -1
    return reading, slots, before


def _slot_of(state: State, times: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Ring slot of each data time in its io_group's window, -1 outside it (unknown, late, ahead)."""
    bins = state.bin_of(times)
    newest = state.newest_bin[groups]
    with np.errstate(invalid="ignore"):
        inside = (bins > newest - state.config.window_bins) & (bins <= newest)
    return np.where(inside, np.nan_to_num(bins, nan=0).astype(np.int64) % state.config.window_bins, -1)


def _advance(state: State, g: int) -> None:
    """Move io_group ``g``'s window forward to its end, clearing bins that fall out of it."""
    newest = int(state.bin_of(state.window_end[g]))
    nb = state.config.window_bins
    if newest <= state.newest_bin[g]:
        return
    state.clear(g, [b % nb for b in range(max(int(state.newest_bin[g]) + 1, newest - nb + 1), newest + 1)])
    state.newest_bin[g] = newest


def _restart(state: State, g: int) -> None:
    """Empty io_group ``g``'s window and start it again at its clock (after a clock step)."""
    state.clear(g, range(state.config.window_bins))
    state.newest_bin[g] = int(state.bin_of(state.clock.head[g]))


def slot_ends(state: State) -> np.ndarray:
    """(256, window bins) float: the data time each io_group's window slot ends at (a hit's last-hit time)."""
    nb, newest = state.config.window_bins, state.newest_bin[:, None]
    return ((newest - (newest - np.arange(nb)) % nb + 1) * state.config.bin_seconds).astype(np.float64)


def span_seconds(state: State) -> np.ndarray:
    """(256,) seconds of data time each io_group's window spans: from the later of its window
    start and its last clock step to its newest time + 1 s (timestamps have one-second
    resolution), between 1 s and the window; the whole window for io_groups without a time."""
    window, nb = state.config.window_seconds, state.config.window_bins
    end = state.window_end
    window_start = (state.newest_bin - nb + 1) * state.config.bin_seconds
    span = end + 1.0 - np.fmax(window_start, state.clock.span_start)
    return np.where(np.isnan(end), window, np.clip(span, 1.0, window))


def covered_seconds(state: State) -> float:
    """Seconds of data time the windows span: the longest io_group span (the window before any data)."""
    known = ~np.isnan(state.window_end)
    return float(span_seconds(state)[known].max()) if known.any() else state.config.window_seconds


def chip_clock(state: State) -> tuple[np.ndarray, np.ndarray]:
    """Per chip row: its io_group's data time now (end of the newest second) and how long that
    io_group has run without a clock step; the verdicts judge silences and learnt rates over these."""
    groups = state.chips.keys[:, 0].astype(np.int64)
    now = state.window_end[groups] + 1.0  # timestamp packets have one-second resolution
    run = np.fmax(now - state.clock.span_start[groups], 1.0)
    return now, np.where(np.isnan(now), 0.0, run)
