"""Directory tailing: find LArPix HDF5 files, remember how far each was read, read only new rows.

Each file has a ``FileCursor`` (identity, rows consumed, data clock). A poll stats every file
and opens only those that changed, are new, or have rows held back; rows are read in bounded
chunks so memory does not grow with file size.
"""

from __future__ import annotations

import errno
import glob
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import h5py
import numpy as np

from exporter.quality.accumulator import TimeCarry
from exporter.reading.decode import decode_messages
from exporter.reading.packets import REQUIRED_FIELDS

log = logging.getLogger(__name__)

RAW, PACKETS = "raw", "packets"
#: Rows at the end of a file that look unwritten (all-zero packets, empty messages) are held
#: back this long, in case the writer has grown the dataset but not yet filled it.
HOLD_SECONDS = 10.0


class SourceError(Exception):
    """A file cannot be read now; ``reason`` is the label of the read-error metric."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


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
    carry: TimeCarry = field(default_factory=TimeCarry)

    def to_dict(self) -> dict:
        """Plain form for the checkpoint file."""
        return {
            "path": self.path,
            "dev": self.dev,
            "inode": self.inode,
            "created": self.created,
            "kind": self.kind,
            "rows_done": self.rows_done,
            "last_time": None if math.isnan(self.carry.last_time) else self.carry.last_time,
        }

    @classmethod
    def from_dict(cls, d: dict) -> FileCursor:
        last = d.get("last_time")
        return cls(
            path=d["path"],
            dev=d["dev"],
            inode=d["inode"],
            created=d.get("created"),
            kind=d.get("kind"),
            rows_done=d["rows_done"],
            carry=TimeCarry(math.nan if last is None else last),
        )


@dataclass
class Chunk:
    """New packets from one file; ``rows_end`` is the cursor position once they are counted."""

    cursor: FileCursor
    packets: np.ndarray
    rows_end: int
    kind: str
    messages: int
    bad_messages: int = 0
    unknown_words: int = 0


def classify_os_error(err: BaseException) -> str:
    """Map an exception from h5py/OS to a short read-error reason."""
    text = str(err).lower()
    if isinstance(err, FileNotFoundError) or getattr(err, "errno", None) == errno.ENOENT:
        return "vanished"
    if isinstance(err, PermissionError) or getattr(err, "errno", None) == errno.EACCES or "permission denied" in text:
        return "permission"
    if getattr(err, "errno", None) == errno.EAGAIN or "unable to lock" in text or "locking flag" in text:
        return "locked"
    if "file signature not found" in text:
        return "not_hdf5"
    if "truncated file" in text:
        return "truncated"
    if "swmr" in text or "refresh" in text:
        return "swmr"
    return "read_error"


def _attr_float(group: h5py.Group | None, name: str) -> float | None:
    try:
        return float(group.attrs[name]) if group is not None and name in group.attrs else None
    except (TypeError, ValueError):
        return None


def detect_kind(fh: h5py.File, path: str) -> str:
    """'raw' for PACMAN files (msgs + msg_headers), 'packets' for packet files; else SourceError."""
    if "msgs" in fh and "msg_headers" in fh:
        headers = fh["msg_headers"]
        if headers.dtype.names is None or "io_groups" not in headers.dtype.names:
            raise SourceError("bad_dtype", f"{path}: msg_headers has no 'io_groups' field")
        if fh["msgs"].dtype.kind != "O" or h5py.check_vlen_dtype(fh["msgs"].dtype) is None:
            raise SourceError("bad_dtype", f"{path}: msgs is not a variable-length byte dataset")
        return RAW
    if "packets" in fh:
        names = fh["packets"].dtype.names or ()
        missing = [f for f in REQUIRED_FIELDS if f not in names]
        if missing:
            raise SourceError("bad_dtype", f"{path}: packets dataset lacks fields {', '.join(missing)}")
        not_int = [f for f in REQUIRED_FIELDS if fh["packets"].dtype[f].kind not in "ui"]
        if not_int:
            raise SourceError("bad_dtype", f"{path}: packets fields {', '.join(not_int)} are not integers")
        return PACKETS
    raise SourceError("no_dataset", f"{path}: neither a 'packets' dataset nor 'msgs'+'msg_headers'")


def _created(fh: h5py.File, kind: str) -> float | None:
    return _attr_float(fh.get("meta") if kind == RAW else fh.get("_header"), "created")


def _unwritten_tail(kind: str, rows: np.ndarray) -> int:
    """Number of trailing rows that look not yet written by the writer (checked from the end)."""
    if kind == RAW:

        def written(i: int) -> bool:
            return len(rows[i]) > 0
    else:
        as_bytes = np.ascontiguousarray(rows).view(np.uint8).reshape(len(rows), -1)

        def written(i: int) -> bool:
            return bool(as_bytes[i].any())

    held = 0
    while held < len(rows) and not written(len(rows) - 1 - held):
        held += 1
    return held


class FileReader:
    """Reads the rows a cursor has not consumed yet, in chunks of at most ``chunk_rows``."""

    def __init__(self, chunk_rows: int = 1_000_000, raw_chunk_messages: int = 100_000) -> None:
        self.chunk_rows = chunk_rows
        self.raw_chunk_messages = raw_chunk_messages

    def read_new(self, cursor: FileCursor, now: float) -> Iterator[Chunk]:
        """Yield chunks of new packets; raise SourceError when the file cannot be read."""
        try:
            with h5py.File(cursor.path, "r", swmr=True, locking=False) as fh:
                kind = detect_kind(fh, cursor.path)
                created = _created(fh, kind)
                if cursor.kind is not None and (cursor.kind != kind or cursor.created != created):
                    raise FileReplaced(f"{cursor.path}: header changed (created {cursor.created} -> {created})")
                cursor.kind, cursor.created = kind, created
                yield from self._read_rows(fh, cursor, kind, now)
        except (SourceError, FileReplaced):
            raise
        except (OSError, RuntimeError, ValueError, KeyError) as err:
            raise SourceError(classify_os_error(err), f"{cursor.path}: {err}") from err

    def _length(self, fh: h5py.File, kind: str) -> int:
        if kind == RAW:
            msgs, headers = fh["msgs"], fh["msg_headers"]
            msgs.id.refresh()
            headers.id.refresh()
            return min(len(msgs), len(headers))
        dset = fh["packets"]
        dset.id.refresh()
        return len(dset)

    def _read_rows(self, fh: h5py.File, cursor: FileCursor, kind: str, now: float) -> Iterator[Chunk]:
        length = self._length(fh, kind)
        if length < cursor.rows_done:
            raise FileReplaced(f"{cursor.path}: now {length} rows, {cursor.rows_done} already read")
        step = self.raw_chunk_messages if kind == RAW else self.chunk_rows
        start = cursor.rows_done
        while start < length:
            end = min(start + step, length)
            if kind == RAW:
                msgs = fh["msgs"][start:end]
                io_groups = fh["msg_headers"]["io_groups"][start:end]
            else:
                msgs = fh["packets"][start:end]
            if end == length:
                held = _unwritten_tail(kind, msgs)
                if held and (cursor.held_since is None or now - cursor.held_since < HOLD_SECONDS):
                    cursor.held_since = cursor.held_since or now
                    end -= held
                    msgs = msgs[: len(msgs) - held]
                    if kind == RAW:
                        io_groups = io_groups[: len(msgs)]
                else:
                    cursor.held_since = None
            if end <= start:
                return
            if kind == RAW:
                result = decode_messages(msgs, io_groups)
                yield Chunk(cursor, result.packets, end, RAW, end - start, result.bad_messages, result.unknown_words)
            else:
                yield Chunk(cursor, msgs, end, PACKETS, 0)
            start = end


class FileReplaced(Exception):
    """The file under a cursor's path is no longer the one the cursor describes."""


@dataclass
class InputSpec:
    """A directory (or a single file) to watch and the glob pattern selecting files in it."""

    path: str
    pattern: str = "*.h5"

    def files(self) -> list[str]:
        if os.path.isfile(self.path):
            return [self.path]
        return sorted(glob.glob(os.path.join(glob.escape(self.path), self.pattern)))


class DirectoryTail:
    """Tracks every file under the inputs and hands out the new rows of changed files."""

    def __init__(
        self, inputs: list[InputSpec], reader: FileReader | None = None, flush_interval: float = 1800.0
    ) -> None:
        self.inputs = inputs
        self.reader = reader or FileReader()
        self.flush_interval = flush_interval
        self.cursors: dict[str, FileCursor] = {}
        self.on_error = lambda cursor, reason, message: None
        self.on_recover = lambda cursor: None

    @property
    def tracked(self) -> int:
        """Files present at the last scan."""
        return sum(1 for c in self.cursors.values() if c.size >= 0)

    def scan(self, now: float) -> list[FileCursor]:
        """Stat every file; return the cursors whose files need reading, oldest first.

        Cursors of files that disappeared more than ``flush_interval`` seconds ago are dropped.
        """
        paths = [p for spec in self.inputs for p in spec.files()]
        due: list[tuple[float, str, FileCursor]] = []
        present = set()
        for path in paths:
            try:
                st = os.stat(path)
            except OSError:
                continue
            present.add(path)
            cursor = self.cursors.get(path)
            if cursor is None or (cursor.dev, cursor.inode) != (st.st_dev, st.st_ino):
                if cursor is not None:
                    log.warning("%s: replaced by a new file (new inode); reading it from the start", path)
                cursor = FileCursor(path, st.st_dev, st.st_ino)
                self.cursors[path] = cursor
            changed = (st.st_size, st.st_mtime_ns) != (cursor.size, cursor.mtime_ns)
            if changed:
                cursor.last_change = now
            cursor.size, cursor.mtime_ns = st.st_size, st.st_mtime_ns
            if st.st_size == 0:
                self._fail(cursor, "empty", f"{path}: zero-length file")
                continue
            if changed or cursor.pending or cursor.held_since is not None:
                due.append((st.st_mtime_ns, path, cursor))
        for path, cursor in list(self.cursors.items()):
            if path not in present:
                cursor.size = -1
                if now - cursor.last_change > self.flush_interval:
                    del self.cursors[path]  # gone and idle: forget its cursor; its counts stay
        return [c for _, _, c in sorted(due)]

    def read(self, cursor: FileCursor, now: float) -> Iterator[Chunk]:
        """New chunks of one file; errors are reported through ``on_error`` and end the file's turn."""
        try:
            yield from self.reader.read_new(cursor, now)
        except FileReplaced as err:
            log.warning("%s; reading it from the start", err)
            fresh = FileCursor(cursor.path, cursor.dev, cursor.inode, size=cursor.size, mtime_ns=cursor.mtime_ns)
            self.cursors[cursor.path] = fresh
            yield from self.read(fresh, now)
            return
        except SourceError as err:
            self._fail(cursor, err.reason, str(err))
            return
        cursor.pending = cursor.held_since is not None
        if cursor.error is not None:
            log.info("%s: readable again after %s", cursor.path, cursor.error)
            cursor.error = None
            self.on_recover(cursor)

    def _fail(self, cursor: FileCursor, reason: str, message: str) -> None:
        cursor.pending = True
        first = cursor.error != reason
        self.on_error(cursor, reason, message)  # before the update: handlers may compare with the old reason
        cursor.error = reason
        if first:
            log.warning("%s (reason: %s; will retry every poll, logged once)", message, reason)

    def errors_by_reason(self) -> dict[str, int]:
        """Files currently failing, by reason."""
        counts: dict[str, int] = {}
        for cursor in self.cursors.values():
            if cursor.error is not None and cursor.size >= 0:
                counts[cursor.error] = counts.get(cursor.error, 0) + 1
        return counts
