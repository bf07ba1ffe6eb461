"""Reading one LArPix HDF5 file: detect its format, read the rows after a cursor, in bounded chunks.

Packet files (``packets`` dataset) are read as they are; raw PACMAN files (``msgs`` +
``msg_headers``, written in SWMR mode) are decoded to packets. Rows at the end that look
unwritten are held back for a while; a file whose header changed is reported as replaced.
"""

from __future__ import annotations

import errno
import hashlib
import logging
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property

import h5py
import numpy as np

from exporter.reading.cursor import FileCursor
from exporter.reading.decode import Messages, split_messages
from exporter.reading.packets import REQUIRED_FIELDS

log = logging.getLogger(__name__)

RAW, PACKETS = "raw", "packets"
#: The thread that reads the next chunk of a file while the current one is counted (one for the process:
#: readers that run at once take turns).
_READ_AHEAD = ThreadPoolExecutor(1, thread_name_prefix="read-ahead")
#: Rows as read: packet records, or raw messages joined into ``Messages``.
Rows = np.ndarray | Messages
#: Rows at the end of a file that look unwritten (all-zero packets, empty messages) are held
#: back this long, in case the writer has grown the dataset but not yet filled it.
HOLD_SECONDS = 10.0
#: The first rows of a file are its identity by content: a file rewritten in place (same inode and
#: ``created``) and regrown past the cursor between two polls is told apart by them.
HEAD_ROWS = 8


class SourceError(Exception):
    """A file cannot be read now; ``reason`` is the label of the read-error metric."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class Chunk:
    """New packets from one file, as packet records or as raw PACMAN messages (decoded only when
    ``packets`` is asked for); ``rows_end`` is the cursor position once they are counted."""

    cursor: FileCursor
    rows_end: int
    kind: str
    records: np.ndarray | None = None
    raw: Messages | None = None

    @property
    def messages(self) -> int:
        """Raw messages read (malformed and headerless ones included); 0 for packet files."""
        return 0 if self.raw is None else len(self.raw.starts) + self.raw.bad_messages + self.raw.headerless

    @property
    def bad_messages(self) -> int:
        return 0 if self.raw is None else self.raw.bad_messages

    @property
    def unknown_words(self) -> int:
        return 0 if self.raw is None else self.raw.unknown_words

    @property
    def headerless(self) -> int:
        """Raw messages left out because their ``msg_headers`` row was never written (io_group 0)."""
        return 0 if self.raw is None else self.raw.headerless

    @property
    def size(self) -> int:
        """Number of packets, without decoding raw messages."""
        return len(self.records) if self.records is not None else self.raw.size if self.raw is not None else 0

    @cached_property
    def packets(self) -> np.ndarray:
        """The packet records (raw messages decoded on first use, by the numpy reference decoder)."""
        if self.records is not None:
            return self.records
        assert self.raw is not None
        return self.raw.decode()


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


def _unwritten_tail(kind: str, rows: np.ndarray, io_groups: np.ndarray | None = None) -> int:
    """Number of trailing rows that look not yet written by the writer (checked from the end). A raw
    message is written once both its ``msgs`` row (not empty) and its ``msg_headers`` row (an io_group,
    never 0) are: the writer fills the two datasets one after the other."""
    if kind == RAW:
        assert io_groups is not None

        def written(i: int) -> bool:
            return len(rows[i]) > 0 and io_groups[i] != 0
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

    def _fetch(self, fh: h5py.File, kind: str, start: int, end: int) -> Rows:
        """Rows ``start:end``: packet records, or raw messages joined into ``Messages``."""
        if kind != RAW:
            return fh["packets"][start:end]
        return split_messages(fh["msgs"][start:end], fh["msg_headers"].fields("io_groups")[start:end])

    def _written_length(self, fh: h5py.File, cursor: FileCursor, kind: str, length: int, now: float) -> int:
        """``length`` without the trailing rows that look unwritten, while they are held back (up to
        ``HOLD_SECONDS``): the writer may have grown the dataset before filling it. Read backwards from
        the end, the last row first, so a file whose end is written costs one row."""
        held, block = 0, 1
        while held < length - cursor.rows_done:
            start = max(cursor.rows_done, length - held - block)
            if kind == RAW:
                end = length - held
                rows = fh["msgs"][start:end]
                unwritten = _unwritten_tail(kind, rows, fh["msg_headers"].fields("io_groups")[start:end])
            else:
                rows = fh["packets"][start : length - held]
                unwritten = _unwritten_tail(kind, rows)
            held += unwritten
            if unwritten < len(rows):
                break
            block = min(block * 16, self.chunk_rows)
        if held and (cursor.held_since is None or now - cursor.held_since < HOLD_SECONDS):
            cursor.held_since = cursor.held_since or now
            return length - held
        cursor.held_since = None
        return length

    def _head_digest(self, fh: h5py.File, kind: str, rows: int) -> str:
        """Digest of the first ``rows`` rows (raw: message bytes and io_groups)."""
        sha = hashlib.blake2b(digest_size=16)
        if kind == RAW:
            for msg in fh["msgs"][:rows]:
                sha.update(len(msg).to_bytes(8, "little"))
                sha.update(msg.tobytes())
            sha.update(fh["msg_headers"].fields("io_groups")[:rows].tobytes())
        else:
            sha.update(fh["packets"][:rows].tobytes())
        return sha.hexdigest()

    def _check_head(self, fh: h5py.File, cursor: FileCursor, kind: str, length: int) -> None:
        """FileReplaced if the file's first rows are not those the cursor saw; else note them (up to HEAD_ROWS)."""
        if cursor.head_rows and self._head_digest(fh, kind, cursor.head_rows) != cursor.head_digest:
            raise FileReplaced(f"{cursor.path}: its first {cursor.head_rows} rows changed (rewritten in place)")
        if cursor.head_rows < HEAD_ROWS and length > cursor.head_rows:
            cursor.head_rows = min(HEAD_ROWS, length)
            cursor.head_digest = self._head_digest(fh, kind, cursor.head_rows)

    def _read_rows(self, fh: h5py.File, cursor: FileCursor, kind: str, now: float) -> Iterator[Chunk]:
        """Chunks from the cursor to the end; the next chunk is read in a thread while the caller counts
        this one (reading and the compiled counting, which releases the GIL, overlap on two cores)."""
        length = self._length(fh, kind)
        if length < max(cursor.rows_done, cursor.head_rows):
            raise FileReplaced(f"{cursor.path}: now {length} rows, {cursor.rows_done} already read")
        length = self._written_length(fh, cursor, kind, length, now)
        self._check_head(fh, cursor, kind, length)
        # Raw chunks are bounded by messages and, once their length is known, by packets (chunk_rows).
        step = min(self.raw_chunk_messages, max(1, self.chunk_rows // 1000)) if kind == RAW else self.chunk_rows
        start = cursor.rows_done
        end = min(start + step, length)
        pending: Future[Rows] | None = None
        try:
            while start < length:
                rows = self._fetch(fh, kind, start, end) if pending is None else pending.result()
                if isinstance(rows, Messages):
                    chunk = Chunk(cursor, end, RAW, raw=rows)
                    per_message = max(1.0, rows.size_bound / max(1, end - start))
                    step = max(1, min(self.raw_chunk_messages, int(self.chunk_rows / per_message)))
                else:
                    chunk = Chunk(cursor, end, PACKETS, records=rows)
                start, end = end, min(end + step, length)
                pending = _READ_AHEAD.submit(self._fetch, fh, kind, start, end) if start < length else None
                yield chunk
        finally:
            if pending is not None:  # the caller stopped early: let the read finish before the file closes
                pending.exception()


class FileReplaced(Exception):
    """The file under a cursor's path is no longer the one the cursor describes."""
