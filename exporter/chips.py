"""Dense numbering of chips seen in data or expected from the geometry.

A chip is (io_group, io_channel, chip_id). Per-io_group lookup tables of 65,536 entries map
(io_channel << 8 | chip_id) to a dense row, so a chunk of packets is numbered without a
Python loop over packets.
"""

from __future__ import annotations

import numpy as np

UNKNOWN = -1


class ChipIndex:
    """Assigns dense rows to chips in order of first appearance; rows never change."""

    def __init__(self) -> None:
        self._tables: dict[int, np.ndarray] = {}
        self._keys = np.zeros((0, 3), np.uint8)

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def keys(self) -> np.ndarray:
        """(n, 3) array of (io_group, io_channel, chip_id) by row."""
        return self._keys

    def _table(self, io_group: int) -> np.ndarray:
        table = self._tables.get(io_group)
        if table is None:
            table = np.full(1 << 16, UNKNOWN, np.int32)
            self._tables[io_group] = table
        return table

    def add(self, keys: np.ndarray) -> np.ndarray:
        """Register chips (rows of io_group, io_channel, chip_id) not yet known; return their rows."""
        keys = np.asarray(keys, np.uint8).reshape(-1, 3)
        rows = self.lookup(keys[:, 0], keys[:, 1], keys[:, 2])
        new = np.unique(keys[rows == UNKNOWN], axis=0)
        for key in new:
            self._table(int(key[0]))[(int(key[1]) << 8) | int(key[2])] = len(self._keys)
            self._keys = np.vstack([self._keys, key[None, :]])
        return self.lookup(keys[:, 0], keys[:, 1], keys[:, 2])

    def lookup(self, io_group: np.ndarray, io_channel: np.ndarray, chip_id: np.ndarray) -> np.ndarray:
        """Rows of the given chips, UNKNOWN (-1) for chips not registered."""
        sub = (io_channel.astype(np.int32) << 8) | chip_id.astype(np.int32)
        rows = np.full(len(sub), UNKNOWN, np.int32)
        for group in np.unique(io_group):
            table = self._tables.get(int(group))
            if table is not None:
                mask = io_group == group
                rows[mask] = table[sub[mask]]
        return rows

    def rows_for(self, io_group: np.ndarray, io_channel: np.ndarray, chip_id: np.ndarray) -> np.ndarray:
        """Rows of the given chips, registering the unknown ones first."""
        rows = self.lookup(io_group, io_channel, chip_id)
        missing = rows == UNKNOWN
        if missing.any():
            self.add(np.stack([io_group[missing], io_channel[missing], chip_id[missing]], axis=1))
            rows[missing] = self.lookup(io_group[missing], io_channel[missing], chip_id[missing])
        return rows
