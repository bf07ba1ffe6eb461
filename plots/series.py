"""Running state for plots: data times of packets, time series with a bounded number of bins.

Everything here gives the same result whether packets arrive in one piece or in many, so a
plot fed poll by poll ends up with the same data as one fed the whole file at once.
"""

from __future__ import annotations

import math

import numpy as np


class TimeSeries:
    """Counts of several series in time bins aligned to multiples of the bin width.

    When the data span more than ``max_bins`` bins the width doubles and pairs of bins
    merge; because bins are aligned to absolute time this is exact, so the final bins do
    not depend on how the data were split into chunks.
    """

    def __init__(self, n_series: int, max_bins: int = 1440, width: float = 1.0) -> None:
        self.n_series = n_series
        self.max_bins = max_bins
        self.width = width
        self.first = 0  # absolute index (time // width) of counts[0]
        self.counts = np.zeros((0, n_series), np.int64)

    def add(self, times: np.ndarray, series: np.ndarray, weights: np.ndarray | None = None) -> None:
        """Count each (time, series) pair (times NaN are ignored), weighted if given."""
        ok = np.isfinite(times)
        if not ok.any():
            return
        times, series = times[ok], np.asarray(series)[ok]
        weights = None if weights is None else np.asarray(weights)[ok]
        lo, hi = float(times.min()), float(times.max())
        while True:
            b_lo, b_hi = math.floor(lo / self.width), math.floor(hi / self.width)
            if len(self.counts):
                b_lo, b_hi = min(b_lo, self.first), max(b_hi, self.first + len(self.counts) - 1)
            if b_hi - b_lo + 1 <= self.max_bins:
                break
            self._coarsen()
        self._extend(b_lo, b_hi)
        index = (np.floor(times / self.width).astype(np.int64) - self.first) * self.n_series + series
        self.counts += np.bincount(index, weights, self.counts.size).astype(np.int64).reshape(self.counts.shape)

    def _extend(self, b_lo: int, b_hi: int) -> None:
        if not len(self.counts):
            self.first, self.counts = b_lo, np.zeros((b_hi - b_lo + 1, self.n_series), np.int64)
            return
        before = self.first - b_lo
        after = b_hi - (self.first + len(self.counts) - 1)
        if before > 0 or after > 0:
            self.counts = np.pad(self.counts, ((max(before, 0), max(after, 0)), (0, 0)))
            self.first = min(self.first, b_lo)

    def _coarsen(self) -> None:
        self.width *= 2
        if not len(self.counts):
            return
        pad_front = self.first % 2
        counts = np.pad(self.counts, ((pad_front, 0), (0, 0)))
        if len(counts) % 2:
            counts = np.pad(counts, ((0, 1), (0, 0)))
        self.counts = counts.reshape(-1, 2, self.n_series).sum(axis=1)
        self.first = (self.first - pad_front) // 2

    def edges(self) -> np.ndarray:
        """Bin edges in unix seconds (len(counts) + 1 values)."""
        return (self.first + np.arange(len(self.counts) + 1)) * self.width

    def rates(self) -> np.ndarray:
        """Counts per second, shape (bins, series)."""
        return self.counts / self.width


def bin_counts(values: np.ndarray, edges: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """(n_groups, len(edges) - 1) counts of values in [edges[i], edges[i+1]); others are dropped.

    Evenly spaced edges are binned by arithmetic, others by search.
    """
    steps = np.diff(edges)
    if np.all(steps == steps[0]):
        bins = np.floor((values - edges[0]) / steps[0]).astype(np.int64)
    else:
        bins = np.searchsorted(edges, values, side="right") - 1
    inside = (bins >= 0) & (bins < len(edges) - 1)
    flat = groups[inside].astype(np.int64) * (len(edges) - 1) + bins[inside]
    return np.bincount(flat, minlength=n_groups * (len(edges) - 1)).reshape(n_groups, -1)


def unix_to_mpl(seconds: np.ndarray) -> np.ndarray:
    """Unix seconds to matplotlib date numbers (days since 1970-01-01, the default epoch)."""
    return np.asarray(seconds, dtype=np.float64) / 86_400.0
