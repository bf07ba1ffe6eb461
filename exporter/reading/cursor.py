"""How far one file has been read: its ``FileCursor`` (identity, rows consumed) and its ``DataClock``.

Both are per-file state that the read loop carries and the checkpoint saves; the rule that moves a
data clock is ``quality.clock.DetectorClock``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from larpix_dqm.exporter.reading.packets import IO_GROUPS


class DataClock:
    """The data clock of one file: per io_group, the last accepted time and any pending jump."""

    def __init__(self, last_times: dict[int, float] | None = None) -> None:
        self.last = np.full(IO_GROUPS, np.nan)
        for group, value in (last_times or {}).items():
            self.last[int(group)] = value
        self.jump_start = np.full(IO_GROUPS, np.nan)  # first time of a pending (rejected) jump
        self.jump_last = np.full(IO_GROUPS, np.nan)

    def last_times(self) -> dict[int, float]:
        """Accepted time per io_group that has one (for the checkpoint: never a rejected time)."""
        return {int(g): float(self.last[g]) for g in np.flatnonzero(~np.isnan(self.last))}


@dataclass
class FileCursor:
    """How far one file has been consumed, and what identifies it."""

    path: str
    dev: int
    inode: int
    created: float | None = None
    kind: str | None = None
    rows_done: int = 0
    size: int = -1
    mtime_ns: int = -1
    pending: bool = True
    error: str | None = None
    held_since: float | None = None
    last_change: float = field(default_factory=time.time)
    clock: DataClock = field(default_factory=DataClock)
    head_rows: int = 0  # rows covered by head_digest (the file's identity by content)
    head_digest: str | None = None

    def to_dict(self) -> dict:
        """Plain form for the checkpoint file."""
        return {
            "path": self.path,
            "dev": self.dev,
            "inode": self.inode,
            "created": self.created,
            "kind": self.kind,
            "rows_done": self.rows_done,
            "size": self.size,
            "mtime_ns": self.mtime_ns,
            "pending": self.pending or self.held_since is not None,
            "head_rows": self.head_rows,
            "head_digest": self.head_digest,
            "last_times": self.clock.last_times(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> FileCursor:
        """A cursor as saved: a file whose size and mtime are unchanged and that was read to its end is not
        opened again after a restart."""
        return cls(
            path=d["path"],
            dev=d["dev"],
            inode=d["inode"],
            created=d.get("created"),
            kind=d.get("kind"),
            rows_done=d["rows_done"],
            size=d.get("size", -1),
            mtime_ns=d.get("mtime_ns", -1),
            pending=d.get("pending", True),
            head_rows=d.get("head_rows", 0),
            head_digest=d.get("head_digest"),
            clock=DataClock({int(g): t for g, t in d.get("last_times", {}).items()}),
        )
