"""The trigger-correlated view: the self-triggered charge within the drift window after each external trigger.

A beam (or light) trigger reaches one io_group's PACMAN as a trigger word; its charge lands on every
io_group. Every packet is placed on one time line, data second x 10 MHz ticks: the second of its
io_group's latest timestamp packet the data clock accepted (``clock.py``), the tick of its own clock,
which restarts at each 'S' sync (a chip timestamp ahead of its PACMAN receipt time belongs to the sync
period before). A trigger is *closed* once every io_group that sends data is ``SETTLE_TICKS`` past its
drift window, so chunks and io_groups read out of step pair the same hits; triggers within
``COINCIDENT_TICKS`` of each other (one trigger fanned out to several PACMANs) are one. Closed triggers
count into the state's ``trigger_*`` and ``beam_*`` fields (``state.FIELDS``); a hit is in the window
when a trigger is at most the drift window before it, else in the background. Both engines pair
through here (one implementation); its two passes over a chunk's packets and the held hits, placing them
on the time line (``place_packets``) and counting the hits against the triggers (``pair_hits``), are numpy's
or, on the kernels, ``compiled.place_packets`` and ``compiled.pair_hits`` (``tests/test_compiled.py``
compares them).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple, Protocol

import numpy as np

from larpix_dqm.exporter.detector.chips import ChipIndex
from larpix_dqm.exporter.reading.decode import Messages
from larpix_dqm.exporter.reading.packets import (
    DATA,
    EXTERNAL_TRIGGER_BIT,
    IO_GROUPS,
    TICKS_PER_SYNC,
    TIMESTAMP,
    TRIGGER,
    latest_seconds,
)

#: How far every io_group's data must be past a time before its triggers and hits are final (0.5 s):
#: PACMAN messages are not strictly in time order, and chunks split the file anywhere.
SETTLE_TICKS = TICKS_PER_SYNC // 2
#: Trigger words closer than this (10 µs) are one trigger (the same beam trigger at several PACMANs).
COINCIDENT_TICKS = 100
#: An io_group whose data is this far behind the newest (10 s) has stopped: triggers do not wait for it.
STOPPED_TICKS = 10 * TICKS_PER_SYNC
#: Upper edges of the hits-per-trigger histogram (hits; the last bucket is +Inf).
HITS_EDGES = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000)
#: Bins of the trigger-to-hit delay histogram: the drift window in this many equal parts.
DELAY_BINS = 20
#: Bits of a trigger word's ``trigger_type`` (bit 1: the external trigger input).
TRIGGER_BITS = 8
NO_TIME = -(2**62)
#: What ``export_state`` writes, besides the hits' chip keys.
_SAVED = ("second", "frontier", "open", "open_groups", "recent", "hit_times", "hit_groups")


class State(Protocol):
    """What the pairing counts into: the ``trigger_words`` and ``beam_*`` fields of a ``state.State``."""

    chips: ChipIndex
    trigger_words: np.ndarray
    beam_trigger_hits: np.ndarray
    beam_trigger_hit_sum: np.ndarray
    beam_delays: np.ndarray
    beam_delay_sum: np.ndarray
    beam_window_ticks: np.ndarray
    beam_live_seconds: np.ndarray
    beam_chip_hits: np.ndarray

    def register(self, keys: np.ndarray) -> np.ndarray: ...


class Found(NamedTuple):
    """A chunk's self-triggered hits on registered chips and its external triggers, on the time line (ticks)."""

    hit_times: np.ndarray
    hit_rows: np.ndarray
    hit_groups: np.ndarray
    trigger_times: np.ndarray
    trigger_groups: np.ndarray


#: Places a chunk (``place_packets``'s arguments and result).
Placer = Callable[[State, np.ndarray, np.ndarray, np.ndarray], Found]
#: Counts held hits against triggers (``pair_hits``'s arguments and result).
Pairer = Callable[[State, np.ndarray, np.ndarray, np.ndarray, int, int, np.ndarray, np.ndarray, int], np.ndarray]


class Steps(NamedTuple):
    """An engine's two steps of the pairing: numpy's (``NUMPY_STEPS``, the reference) or the kernels'
    (``accumulator.COMPILED_STEPS``)."""

    place: Placer
    pair: Pairer


def place_packets(state: State, packets: np.ndarray, stamp: np.ndarray, second: np.ndarray) -> Found:
    """Count a chunk's trigger words into ``state.trigger_words``, move ``second`` (each io_group's data second)
    over its accepted timestamp packets (``stamp``), and return its placed hits and external triggers: the
    numpy reference of the kernels' ``place_packets``."""
    ptype = packets["packet_type"]
    groups = packets["io_group"].astype(np.int64)
    trigger = np.flatnonzero(ptype == TRIGGER)
    kinds = packets["trigger_type"][trigger].astype(np.int64)
    for bit in range(TRIGGER_BITS):
        state.trigger_words[:, bit] += np.bincount(groups[trigger[(kinds >> bit) & 1 == 1]], minlength=IO_GROUPS)
    seconds = latest_seconds(packets, stamp, second)
    ticks = packets["timestamp"].astype(np.int64)
    placed = seconds >= 0
    external = trigger[((kinds & EXTERNAL_TRIGGER_BIT) != 0) & placed[trigger]]
    hits = np.flatnonzero(
        (ptype == DATA) & (packets["valid_parity"] != 0) & ((packets["trigger_type"] & 3) == 0) & placed
    )
    rows = state.chips.lookup(packets["io_group"][hits], packets["io_channel"][hits], packets["chip_id"][hits])
    hits, rows = hits[rows >= 0], rows[rows >= 0].astype(np.int64)
    hit_times = seconds[hits] * TICKS_PER_SYNC + ticks[hits]
    if "receipt_timestamp" in (packets.dtype.names or ()):
        receipt = packets["receipt_timestamp"][hits].astype(np.int64)
        hit_times -= np.where((receipt > 0) & (ticks[hits] > receipt), TICKS_PER_SYNC, 0)
    trigger_times = seconds[external] * TICKS_PER_SYNC + ticks[external]
    return Found(hit_times, rows, groups[hits], trigger_times, groups[external])


def pair_hits(
    state: State,
    times: np.ndarray,
    rows: np.ndarray,
    groups: np.ndarray,
    start: int,
    end: int,
    known: np.ndarray,
    closing: np.ndarray,
    window: int,
) -> np.ndarray:
    """Count held hits (``times`` in any order, their chip ``rows`` and ``groups``) against triggers: those in
    [``start``, ``end``) into ``state.beam_chip_hits``, inside a window of the ascending ``known`` triggers or
    not; every hit in an ascending ``closing`` trigger's window into ``beam_delays`` and ``beam_delay_sum``.
    Returns the hits of each closing trigger: the numpy reference of the kernels' ``pair_hits``."""
    final = (times >= start) & (times < end)
    if final.any():
        before = np.searchsorted(known, times[final], side="right") - 1
        inside = (
            (before >= 0) & (times[final] < known[np.maximum(before, 0)] + window)
            if len(known)
            else np.zeros(len(before), bool)
        )
        counts = np.bincount(rows[final] * 2 + ~inside, minlength=state.beam_chip_hits.size)
        state.beam_chip_hits += counts.reshape(state.beam_chip_hits.shape)
    if not len(closing):
        return np.zeros(0, np.int64)
    near = np.flatnonzero((times >= closing[0]) & (times < closing[-1] + window))
    near = near[np.argsort(times[near], kind="stable")]
    times, groups = times[near], groups[near]
    first = np.searchsorted(times, closing, side="left")
    counts = np.searchsorted(times, closing + window, side="left") - first
    paired = np.repeat(first - np.r_[0, np.cumsum(counts)[:-1]], counts) + np.arange(int(counts.sum()))
    delay = times[paired] - np.repeat(closing, counts)
    np.add.at(state.beam_delays, (groups[paired], np.minimum(delay * DELAY_BINS // window, DELAY_BINS - 1)), 1)
    np.add.at(state.beam_delay_sum, groups[paired], delay)
    return counts


NUMPY_STEPS = Steps(place_packets, pair_hits)


class TriggerWindows:
    """The triggers and hits of the last ``SETTLE_TICKS`` and the drift window, paired as they become final.

    Idle (one look at each chunk's trigger words and timestamps) until the first external trigger."""

    def __init__(self, window_ticks: int) -> None:
        self.window = int(window_ticks)
        self.active = False  # an external trigger was seen: hits are held and classified from then on
        self.second = np.full(IO_GROUPS, -1, np.int64)  # data second of each io_group's latest timestamp packet
        self.frontier = np.full(IO_GROUPS, NO_TIME, np.int64)  # newest time each io_group has shown
        self.first = NO_TIME  # the earliest time shown, when the first io_group showed one
        self.settled = NO_TIME  # hits before this are classified, triggers whose window ends before it closed
        self.window_end = NO_TIME  # end of the union of the closed triggers' windows
        self.open = np.zeros(0, np.int64)  # triggers not yet closed (times, unsorted)
        self.open_groups = np.zeros(0, np.int64)
        self.recent = np.zeros(0, np.int64)  # closed triggers (ascending) whose windows late hits may still fall in
        self.hit_times = np.zeros(0, np.int64)  # hits an open trigger or the classification still needs
        self.hit_rows = np.zeros(0, np.int64)  # their chip rows
        self.hit_groups = np.zeros(0, np.int64)

    # -- counting -------------------------------------------------------------------------------
    def add_messages(
        self,
        state: State,
        messages: Messages,
        accepted: np.ndarray,
        triggered: bool,
        decode: Callable[[Messages], np.ndarray] = Messages.decode,
        steps: Steps = NUMPY_STEPS,
    ) -> None:
        """``add`` for raw messages (``accepted``: the messages whose timestamp the data clock accepted;
        ``triggered``: they hold trigger words, as the kernels counted), decoded (by ``decode``: the compiled
        decoder on the kernels) only when they hold trigger words or triggers are being paired."""
        if self.active or triggered:
            packets = decode(messages)
            stamps = np.flatnonzero(packets["packet_type"] == TIMESTAMP)  # one a message, in order
            self.add(state, packets, stamps[accepted], steps)
        elif len(accepted):
            self._idle(messages.io_groups[accepted].astype(np.int64), messages.timestamps()[accepted].astype(np.int64))

    def add(self, state: State, packets: np.ndarray, accepted: np.ndarray, steps: Steps = NUMPY_STEPS) -> None:
        """Place a chunk's packet records and count what became final into ``state`` (its ``trigger_words``
        and ``beam_*`` fields); chips must be registered (the engines have counted the chunk). Packets are
        placed by the timestamp packets the data clock accepted (rows ``accepted``, ``clock.AcceptedStamps.rows``):
        a corrupt or jumping timestamp moves nothing. ``steps``: numpy's (the reference) or the kernels'."""
        stamped = packets["timestamp"][accepted].astype(np.int64)
        stamp_groups = packets["io_group"][accepted].astype(np.int64)
        if not self.active and not (packets["packet_type"] == TRIGGER).any():
            self._idle(stamp_groups, stamped)
            return
        fresh = self.fresh(stamp_groups, stamped)
        stamp = np.zeros(len(packets), bool)
        stamp[accepted] = True
        found = steps.place(state, packets, stamp, self.second)
        self.add_found(state, found, stamp_groups, stamped, fresh, steps)

    def add_found(
        self,
        state: State,
        found: Found,
        stamp_groups: np.ndarray,
        stamped: np.ndarray,
        fresh: np.ndarray,
        steps: Steps = NUMPY_STEPS,
    ) -> None:
        """Count a placed chunk (``found``; its accepted timestamps ``stamped`` of io_groups ``stamp_groups`` and its
        ``fresh`` seconds, taken before it moved ``self.second``): hold its hits and triggers, pair what became final."""
        self.active |= len(found.trigger_times) > 0
        if not self.active:
            self._idle(stamp_groups, stamped)
            return
        state.beam_live_seconds += fresh
        for times, groups in (
            (found.hit_times, found.hit_groups),
            (found.trigger_times, found.trigger_groups),
            (stamped * TICKS_PER_SYNC, stamp_groups),
        ):
            if len(times):
                np.maximum.at(self.frontier, groups, times)
        if len(found.hit_times) and found.hit_times.min() < self.settled:  # older than what is final already:
            known = np.sort(np.r_[self.recent, self.open])  # classified now, against the triggers known
            steps.pair(state, *found[:3], NO_TIME, self.settled, known, np.zeros(0, np.int64), self.window)
        self.open = np.r_[self.open, found.trigger_times]
        self.open_groups = np.r_[self.open_groups, found.trigger_groups]
        self.hit_times = np.r_[self.hit_times, found.hit_times]
        self.hit_rows = np.r_[self.hit_rows, found.hit_rows]
        self.hit_groups = np.r_[self.hit_groups, found.hit_groups]
        self._settle(state, self._settled_now(state), steps)

    def _idle(self, groups: np.ndarray, seconds: np.ndarray) -> None:
        """Follow the io_groups' seconds (timestamps ``seconds`` of io_groups ``groups``) until the first trigger:
        hits and live seconds count from the chunk that brings it."""
        for g in np.unique(groups).tolist():
            self.second[g] = seconds[groups == g][-1]
        if len(groups):  # the io_groups seen before the first trigger are waited for from its start
            np.maximum.at(self.frontier, groups, seconds * TICKS_PER_SYNC)

    def flush(self, state: State, steps: Steps = NUMPY_STEPS) -> None:
        """Make everything final (the end of a file read whole: no later data can come)."""
        if len(self.open) or len(self.hit_times):
            self._settle(state, int(self.frontier.max()) + self.window + SETTLE_TICKS + 1, steps)

    def fresh(self, groups: np.ndarray, stamped: np.ndarray) -> np.ndarray:
        """Per io_group, the new data seconds among a chunk's accepted timestamps (``stamped`` of io_groups
        ``groups``): the seconds with data, ``beam_live_seconds`` once pairing."""
        new = stamped > self.second[groups]
        distinct = np.unique(groups[new] << 32 | stamped[new])
        return np.bincount(distinct >> 32, minlength=IO_GROUPS)

    def _settled_now(self, state: State) -> int:
        """The time up to which every io_group still sending data has shown its data, less the margin. An
        io_group the chips expect (the geometry's) that has sent nothing yet is waited for as if it had
        sent at the start of the data, so for ``STOPPED_TICKS`` at most."""
        frontier = self.frontier.copy()
        seen = frontier > NO_TIME
        if not seen.any():
            return NO_TIME
        if self.first == NO_TIME:
            self.first = int(frontier[seen].min())
        expected = np.zeros(IO_GROUPS, bool)
        expected[state.chips.keys[:, 0]] = True
        frontier[expected & ~seen] = self.first
        known = frontier[frontier > NO_TIME]
        going = known[known >= known.max() - STOPPED_TICKS]
        return int(going.min()) - SETTLE_TICKS

    def _settle(self, state: State, settled: int, steps: Steps) -> None:
        """Close the triggers whose windows end before ``settled`` and classify the hits before it (a late one
        was when it came), against every trigger that may cover them."""
        if settled <= self.settled:
            return
        times, rows, groups = self.hit_times, self.hit_rows, self.hit_groups  # in no order
        triggers, trigger_groups = self._distinct_triggers()
        closing = triggers + self.window <= settled
        known = np.sort(np.r_[self.recent, triggers])
        counts = steps.pair(state, times, rows, groups, self.settled, settled, known, triggers[closing], self.window)
        self._close(state, triggers[closing], trigger_groups[closing], counts)
        self.settled = settled
        self.open, self.open_groups = triggers[~closing], trigger_groups[~closing]
        closed = np.sort(np.r_[self.recent, triggers[closing]])
        self.recent = closed[closed + self.window > settled - SETTLE_TICKS]
        keep = times >= min(int(self.open.min()) if len(self.open) else settled, settled)
        self.hit_times, self.hit_rows, self.hit_groups = times[keep], rows[keep], groups[keep]

    def _distinct_triggers(self) -> tuple[np.ndarray, np.ndarray]:
        """The open triggers, ascending, without those coincident with an earlier one (open or closed)."""
        order = np.argsort(self.open, kind="stable")
        opened, groups = self.open[order], self.open_groups[order]
        distinct = np.r_[True, np.diff(opened) > COINCIDENT_TICKS] if len(opened) else np.zeros(0, bool)
        if len(self.recent) and len(opened):
            before = np.searchsorted(self.recent, opened, side="right") - 1
            distinct &= ~((before >= 0) & (opened - self.recent[np.maximum(before, 0)] <= COINCIDENT_TICKS))
        return opened[distinct], groups[distinct]

    def _close(self, state: State, triggers: np.ndarray, groups: np.ndarray, counts: np.ndarray) -> None:
        """Count closed triggers (ascending ``triggers``, their io_groups, their hits ``counts``): hits per trigger,
        exposure (the union of their windows, from the end of the last closed one)."""
        if not len(triggers):
            return
        np.add.at(state.beam_trigger_hits, (groups, np.searchsorted(np.asarray(HITS_EDGES), counts, side="left")), 1)
        np.add.at(state.beam_trigger_hit_sum, groups, counts)
        ends = np.maximum.accumulate(np.r_[self.window_end, triggers + self.window])
        union = int(np.sum(ends[1:] - np.maximum(triggers, ends[:-1])))
        self.window_end = int(ends[-1])
        going = self.frontier > max(int(triggers[-1]) - STOPPED_TICKS, NO_TIME)
        state.beam_window_ticks[going] += union

    # -- checkpoint -----------------------------------------------------------------------------
    def export_state(self, chip_keys: np.ndarray) -> dict[str, np.ndarray]:
        """What continues the pairing exactly after a restart (``chip_keys``: the state's, to name the hits' chips)."""
        arrays = {f"triggers_{name}": np.asarray(getattr(self, name)) for name in _SAVED}
        arrays["triggers_scalars"] = np.array([self.active, self.settled, self.window_end, self.first], np.int64)
        arrays["triggers_hit_chips"] = chip_keys[self.hit_rows].reshape(-1, 3)
        return arrays

    def import_state(self, state: State, arrays: Mapping[str, np.ndarray]) -> None:
        """Continue from ``export_state`` output (a checkpoint without it: idle until the next trigger)."""
        if "triggers_scalars" not in arrays:
            return
        for name in _SAVED:
            setattr(self, name, np.asarray(arrays[f"triggers_{name}"], np.int64))
        active, self.settled, self.window_end, self.first = (int(v) for v in arrays["triggers_scalars"])
        self.active = bool(active)
        self.hit_rows = state.register(arrays["triggers_hit_chips"]).astype(np.int64)
