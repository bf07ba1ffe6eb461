"""Dense numbering of chips seen in data or expected from the geometry.

A chip is (io_group, io_channel, chip_id). Each io_group seen gets a 65,536-entry block of a
lookup table indexed by (io_channel << 8 | chip_id), so a chunk of packets is numbered with
two gathers and no Python loop over packets.
"""

from __future__ import annotations

import numpy as np

UNKNOWN = -1
#: Keys below which new chips are found by sorting them rather than by flagging every possible chip.
DISTINCT_BY_SORT = 20_000


class ChipIndex:
    """Assigns dense rows to chips in order of first appearance; rows never change."""

    def __init__(self) -> None:
        self._group_slot = np.full(256, UNKNOWN, np.int32)  # io_group -> block of the table
        self._table = np.zeros(0, np.int32)  # block * 65536 + (io_channel << 8 | chip_id) -> row
        self._keys = np.zeros((0, 3), np.uint8)

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def keys(self) -> np.ndarray:
        """(n, 3) array of (io_group, io_channel, chip_id) by row."""
        return self._keys

    def tables(self) -> tuple[np.ndarray, np.ndarray]:
        """The lookup tables, for compiled code: io_group -> block, and block << 16 | io_channel << 8 | chip_id -> row."""
        return self._group_slot, self._table

    def _block(self, io_group: int) -> int:
        if self._group_slot[io_group] == UNKNOWN:
            self._group_slot[io_group] = len(self._table) >> 16
            self._table = np.concatenate([self._table, np.full(1 << 16, UNKNOWN, np.int32)])
        return int(self._group_slot[io_group])

    def add(self, keys: np.ndarray, in_order: bool = False) -> np.ndarray:
        """Register chips (rows of io_group, io_channel, chip_id) not yet known, in ascending key order, or with
        ``in_order`` in the order of their first row in ``keys`` (a checkpoint's chips get back the rows they had);
        return their rows."""
        keys = np.asarray(keys, np.uint8).reshape(-1, 3)
        rows = self.lookup(keys[:, 0], keys[:, 1], keys[:, 2])
        missing = keys[rows == UNKNOWN].astype(np.int32)
        if len(missing):
            packed = (missing[:, 0] << 16) | (missing[:, 1] << 8) | missing[:, 2]
            new = packed[np.sort(np.unique(packed, return_index=True)[1])] if in_order else _distinct(packed)
            first = len(self._keys)
            for g in np.unique(new >> 16).tolist():
                self._block(g)
            self._table[(self._group_slot[new >> 16].astype(np.int64) << 16) | (new & 0xFFFF)] = first + np.arange(
                len(new), dtype=np.int32
            )
            added = np.stack([new >> 16, (new >> 8) & 255, new & 255], axis=1).astype(np.uint8)
            self._keys = np.concatenate([self._keys, added])
        return self.lookup(keys[:, 0], keys[:, 1], keys[:, 2])

    def lookup(self, io_group: np.ndarray, io_channel: np.ndarray, chip_id: np.ndarray) -> np.ndarray:
        """Rows of the given chips, UNKNOWN (-1) for chips not registered."""
        block = self._group_slot[io_group]
        key = (block << 16) | (io_channel.astype(np.int32) << 8) | chip_id
        rows = np.full(len(key), UNKNOWN, np.int32)
        known = block >= 0
        if known.all():
            return self._table[key]
        rows[known] = self._table[key[known]]
        return rows

    def rows_for(self, io_group: np.ndarray, io_channel: np.ndarray, chip_id: np.ndarray) -> np.ndarray:
        """Rows of the given chips, registering the unknown ones first."""
        rows = self.lookup(io_group, io_channel, chip_id)
        missing = rows == UNKNOWN
        if missing.any():
            self.add(np.stack([io_group[missing], io_channel[missing], chip_id[missing]], axis=1))
            rows[missing] = self.lookup(io_group[missing], io_channel[missing], chip_id[missing])
        return rows


def _distinct(packed: np.ndarray) -> np.ndarray:
    """The distinct packed chip keys (io_group << 16 | io_channel << 8 | chip_id), ascending: sorted when few,
    else one flag per possible chip in one pass (a 16 MB array, 3 ms to clear and scan: a small file's few new chips
    would pay it at every registration)."""
    if len(packed) < DISTINCT_BY_SORT:
        return np.unique(packed)
    seen = np.zeros(1 << 24, bool)
    seen[packed] = True
    return np.flatnonzero(seen)
