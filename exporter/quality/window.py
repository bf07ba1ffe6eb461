"""The sliding windows in live time, per io_group: moved by each chunk's timestamps, read by the summary.

Live time is an io_group's data time without the gaps in its data: a stretch longer than
``DEAD_GAP_SECONDS`` in which it sent no timestamp (a DAQ pause, the stop between two runs) and its
window was not moved by the other io_groups is dead time, neither silence nor exposure. Windows,
last-hit times, silences and learnt rates all run on it; a clock step is dead time too, so the
window goes on over it. Every function reads or moves the window fields of a ``State``
(``newest_bin``, ``window_end``, ``window_reference``, ``dead_seconds``, ``live_start``,
``run_start`` and the per-slot arrays); both engines count into the slots it returns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from larpix_dqm.exporter.quality.clock import TOLERANCE_SECONDS, AcceptedStamps
from larpix_dqm.exporter.quality.state import State
from larpix_dqm.exporter.reading.cursor import DataClock
from larpix_dqm.exporter.reading.packets import IO_GROUPS, io_groups_in

#: Data seconds without any timestamp of an io_group (it sends one with every message, and an 'S'
#: sync every second) after which the gap is dead time and the io_group's run starts again.
DEAD_GAP_SECONDS = 10.0


@dataclass(frozen=True)
class Placed:
    """A chunk's accepted timestamps placed in the windows: what both engines count with."""

    accepted: AcceptedStamps
    slots: np.ndarray  # window slot of each accepted timestamp (-1: outside its io_group's window)
    before: np.ndarray  # (256,) slot of each io_group's packets before its first timestamp in the chunk
    ends: np.ndarray  # live time of the end of each accepted timestamp's bin (a hit's last-hit time)
    before_ends: np.ndarray  # (256,) the same for the packets before the first timestamp


def move(state: State, packets: np.ndarray, clock: DataClock, wall_now: float) -> Placed:
    """Read the chunk's timestamp packets, place them in live time and move the windows; a packet's
    slot and bin end are those of its io_group's latest accepted timestamp at or before it (``AcceptedStamps.fill``).

    The data-time rule is ``DetectorClock``'s (quality/clock.py). Each io_group's window ends at
    its own live clock and, while the io_group sends nothing, follows the other io_groups once their
    live clocks have advanced past where they were when it last advanced and their data time past its
    own (after ``TOLERANCE_SECONDS``): a stopped io_group's rates fall to zero, while a skewed one keeps
    its own, one read ahead of the others (a backlog whose chunks hold one io_group's data before
    another's) is not pushed past its own data, and a pause of the whole detector moves nothing.
    """
    head_before = state.clock.head.copy()
    dead_before = state.dead_seconds.copy()
    accepted = state.clock.read(packets, clock, wall_now)
    live, gapped = _live_times(state, accepted)
    head = state.clock.head
    live_head = head - state.dead_seconds
    reference = state.clock.others_median(live_head)
    advanced = ~np.isnan(head) & ~(head == head_before)
    stalled = ~np.isnan(head) & ~advanced
    state.window_reference[advanced] = reference[advanced]
    fresh = stalled & np.isnan(state.window_reference)
    state.window_reference[fresh] = reference[fresh]
    behind = np.minimum(reference - state.window_reference, state.clock.others_median() - head)
    push = np.fmax(behind - TOLERANCE_SECONDS, 0.0)  # 0 where not known
    state.window_end = np.fmax(state.window_end, np.where(stalled, live_head + push, live_head))
    for g in io_groups_in(accepted.groups):
        first = float(live[accepted.groups == g].min())
        if np.isnan(state.live_start[g]):
            state.live_start[g] = first
        if g in gapped or np.isnan(state.run_start[g]):  # the run starts again with the chunk that holds the gap
            state.start_run(g, first)
    _advance(state, np.flatnonzero(state.bin_of(state.window_end) > state.newest_bin).tolist())
    before_live = accepted.before - dead_before
    return Placed(
        accepted,
        _slot_of(state, live, accepted.groups),
        _slot_of(state, before_live, np.arange(IO_GROUPS)),
        _bin_end(state, live),
        _bin_end(state, before_live),
    )


def _live_times(state: State, accepted: AcceptedStamps) -> tuple[np.ndarray, set[int]]:
    """Live time of each accepted timestamp, and the io_groups with a dead gap in the chunk.

    Per io_group, in the chunk's order, from where its window had reached: each forward move of its
    newest time by more than ``DEAD_GAP_SECONDS`` adds the move less one second to ``dead_seconds``; at a
    clock step (``AcceptedStamps.rebased``) live time goes on one second after the newest live time so far.
    """
    live = accepted.times.copy()
    gapped: set[int] = set()
    for g in io_groups_in(accepted.groups):
        at = np.flatnonzero(accepted.groups == g)
        dead, live_end = float(state.dead_seconds[g]), float(state.window_end[g])
        reach = live_end + dead  # the data time its window had reached (NaN before any)
        step = accepted.rebased.get(g)
        split = int(np.searchsorted(at, step)) if step is not None else len(at)
        for part in (at[:split], at[split:]):
            if not len(part):
                continue
            times = accepted.times[part]
            if part[0] == step:  # a clock step: the old clock's times are behind, live time goes on
                dead = float(times[0]) - (live_end + 1.0)
                reach = float(times[0])
            base, highest = float(times[0]) if np.isnan(reach) else reach, float(times.max())
            if highest - base <= DEAD_GAP_SECONDS:  # no move longer than the whole advance: no gap (a second's file)
                live[part] = times - dead
                reach = max(base, highest)
                live_end = float(np.fmax(live_end, highest - dead))
                continue
            newest = np.maximum.accumulate(np.concatenate([[base], times]))
            moves = np.diff(newest)
            gaps = moves > DEAD_GAP_SECONDS
            dead_at = dead + np.cumsum(np.where(gaps, moves - 1.0, 0.0))
            live[part] = times - dead_at
            if gaps.any():
                gapped.add(g)
            dead, reach = float(dead_at[-1]), float(newest[-1])
            live_end = float(np.fmax(live_end, live[part].max()))
        state.dead_seconds[g] = dead
    return live, gapped


def _bin_end(state: State, live: np.ndarray) -> np.ndarray:
    """Live time of the end of the window bin of each live time (NaN stays NaN)."""
    return (state.bin_of(live) + 1.0) * state.config.bin_seconds


def _slot_of(state: State, times: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Ring slot of each data time in its io_group's window, -1 outside it (unknown, late, ahead)."""
    bins = state.bin_of(times)
    newest = state.newest_bin[groups]
    inside = (bins > newest - state.config.window_bins) & (bins <= newest)  # (never for NaN)
    slots = np.full(len(bins), -1, np.int64)
    slots[inside] = bins[inside].astype(np.int64) % state.config.window_bins
    return slots


def _advance(state: State, groups: list[int]) -> None:
    """Move the windows of io_groups ``groups`` forward to their ends, clearing the bins that fall out of them
    (at once for the io_groups that clear the same slots). A window that never moved holds nothing (nothing is
    counted into a slot before its io_group's window has one): its first move clears nothing (a module's 12 slots
    cost a fresh state 45 ms, their pages faulted in)."""
    nb = state.config.window_bins
    clearing: dict[tuple[int, ...], list[int]] = {}
    for g in groups:
        newest = int(state.bin_of(state.window_end[g]))
        if state.newest_bin[g] >= 0:
            slots = tuple(b % nb for b in range(max(int(state.newest_bin[g]) + 1, newest - nb + 1), newest + 1))
            clearing.setdefault(slots, []).append(g)
        state.newest_bin[g] = newest
    for slots, together in clearing.items():
        state.clear(together, slots)


def slot_ends(state: State, groups: np.ndarray, slots: np.ndarray) -> np.ndarray:
    """The data time io_group ``groups``' window slot ``slots`` ends at, pair by pair (a hit's last-hit time); the
    compiled fold (``compiled.fold_hits``) computes the same."""
    nb, newest = state.config.window_bins, state.newest_bin[groups]
    return ((newest - (newest - slots) % nb + 1) * state.config.bin_seconds).astype(np.float64)


def span_seconds(state: State) -> np.ndarray:
    """(256,) seconds of live time each io_group's window spans: from the later of its window
    start and its first live time to its newest time + 1 s (timestamps have one-second
    resolution), between 1 s and the window; the whole window for io_groups without a time."""
    window, nb = state.config.window_seconds, state.config.window_bins
    end = state.window_end
    window_start = (state.newest_bin - nb + 1) * state.config.bin_seconds
    span = end + 1.0 - np.fmax(window_start, state.live_start)
    return np.where(np.isnan(end), window, np.clip(span, 1.0, window))


def covered_seconds(state: State) -> float:
    """Seconds of live time the windows span: the longest io_group span (the window before any data)."""
    known = ~np.isnan(state.window_end)
    return float(span_seconds(state)[known].max()) if known.any() else state.config.window_seconds


def chip_clock(state: State) -> tuple[np.ndarray, np.ndarray]:
    """Per chip row: its io_group's live time now (end of the newest second) and the live time since its
    run started; the verdicts judge silences and learnt rates over these."""
    groups = state.chips.keys[:, 0].astype(np.int64)
    now = state.window_end[groups] + 1.0  # timestamp packets have one-second resolution
    run = np.fmax(now - state.run_start[groups], 1.0)
    return now, np.where(np.isnan(now), 0.0, run)
