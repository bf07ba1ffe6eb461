"""Data time: the clock of each file's packets, from its PACMAN timestamp packets.

A packet's data time is that of the latest plausible timestamp packet before it in its file;
the accumulator (window slots) and the plots (time series) both use this one rule.
"""

from __future__ import annotations

import math

import numpy as np

from exporter.reading.packets import TIMESTAMP

#: Data times before this (2015-01-01) cannot come from a LArPix DAQ.
EARLIEST_PLAUSIBLE_TIME = 1_420_070_400
#: Data times further than this ahead of the wall clock are treated as corrupt.
MAX_FUTURE_SECONDS = 86_400


def plausible_timestamps(packets: np.ndarray, wall_now: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Rows and times (float unix s) of the plausible timestamp packets, and how many were not.

    The data time of any packet is that of the latest plausible timestamp packet before it in
    its file; plots and the accumulator both use this rule.
    """
    ts_rows = np.flatnonzero(packets["packet_type"] == TIMESTAMP)
    stamps = packets["timestamp"][ts_rows]
    plausible = (stamps >= EARLIEST_PLAUSIBLE_TIME) & (stamps <= wall_now + MAX_FUTURE_SECONDS)
    return ts_rows[plausible], stamps[plausible].astype(np.float64), int(len(ts_rows) - np.count_nonzero(plausible))


def forward_fill(rows: np.ndarray, values: np.ndarray, n: int, before: float | int) -> np.ndarray:
    """Length-``n`` array holding at each index the value of the latest ``rows`` entry at or
    before it (``rows`` ascending), and ``before`` ahead of the first one."""
    out = np.empty(n, np.result_type(values, np.asarray(before)))
    first = rows[0] if len(rows) else n
    out[:first] = before
    if len(rows):
        out[first:] = np.repeat(values, np.diff(np.append(rows, n)))
    return out


class DataClock:
    """The data clock of one file: the last plausible timestamp-packet time, carried across chunks."""

    def __init__(self, last_time: float = math.nan) -> None:
        self.last_time = last_time

    def times(self, packets: np.ndarray, wall_now: float) -> np.ndarray:
        """Float unix seconds per packet (NaN before the file's first timestamp packet); advances the clock."""
        if len(packets) == 0:
            return np.zeros(0)
        ts_rows, stamps, _ = plausible_timestamps(packets, wall_now)
        times = forward_fill(ts_rows, stamps, len(packets), self.last_time)
        self.last_time = float(times[-1])
        return times
