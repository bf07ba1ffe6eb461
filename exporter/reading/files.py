"""Reading one LArPix HDF5 file: detect its format, read the rows after a cursor, in bounded chunks.

What differs between formats (datasets, what an unwritten row looks like, chunk sizes) is asked of the
file's ``InputFormat`` (``reading/formats``). Rows at the end that look unwritten are held back for a
while; a file whose header or first rows changed is reported as replaced.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from larpix_dqm.exporter.reading.cursor import FileCursor
from larpix_dqm.exporter.reading.decode import Messages
from larpix_dqm.exporter.reading.formats import detect
from larpix_dqm.exporter.reading.formats.base import (
    InputFormat,
    OpenFile,
    Rows,
    SourceError,
    Stored,
    head,
    open_for_reading,
)
from larpix_dqm.exporter.reading.packets import in_range

log = logging.getLogger(__name__)

#: The thread that reads the next chunk of a file while the current one is counted (one for the process:
#: readers that run at once take turns).
_READ_AHEAD = ThreadPoolExecutor(1, thread_name_prefix="read-ahead")
#: Rows at the end of a file that look unwritten (all-zero packets, empty messages) are held
#: back this long, in case the writer has grown the dataset but not yet filled it.
HOLD_SECONDS = 10.0
#: The first rows of a file are its identity by content: a file rewritten in place (same inode and
#: ``created``) and regrown past the cursor between two polls is told apart by them.
HEAD_ROWS = 8
#: Packets of a chunk (and raw messages): half a million count as fast as a million or faster, and halve the
#: temporaries of counting a chunk (a 700 k-packet raw chunk took ~150 MB of them on numpy, and the process
#: 400 MB at its peak; with these, 330 MB).
CHUNK_ROWS = 500_000
RAW_CHUNK_MESSAGES = 50_000
#: New rows up to this many (and one chunk) are read once, whole: a small file costs one read of each dataset.
WHOLE_ROWS = 100_000


@dataclass
class Chunk:
    """New packets from one file, as packet records or as raw PACMAN messages (decoded only when
    ``packets`` is asked for); ``rows_end`` is the cursor position once they are counted; ``kind`` is
    the name of the file's format; ``file`` the file, open while the reader hands the chunk on (its other
    facts, read at its first chunk, without opening it again: a small file's open costs 0.2-0.4 ms)."""

    cursor: FileCursor
    rows_end: int
    kind: str
    records: np.ndarray | None = None
    raw: Messages | None = None
    file: OpenFile | None = field(default=None, repr=False, compare=False)
    out_of_range: int = 0  # packet records left out: a field beyond its LArPix range (``packets.in_range``)

    @classmethod
    def of(cls, cursor: FileCursor, rows_end: int, kind: str, rows: Rows, file: OpenFile | None = None) -> Chunk:
        """The chunk of rows as a format read them: raw messages, or packet records (those in range)."""
        if isinstance(rows, Messages):
            return cls(cursor, rows_end, kind, raw=rows, file=file)
        records, out_of_range = in_range(rows)
        return cls(cursor, rows_end, kind, records=records, file=file, out_of_range=out_of_range)

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
    if "truncated" in text or "checksum" in text:  # (a metadata checksum that never matches: cut short or damaged)
        return "truncated"
    if "swmr" in text or "refresh" in text:
        return "swmr"
    return "read_error"


class FileReader:
    """Reads the rows a cursor has not consumed yet, in chunks of at most ``chunk_rows``."""

    def __init__(self, chunk_rows: int = CHUNK_ROWS, raw_chunk_messages: int = RAW_CHUNK_MESSAGES) -> None:
        self.chunk_rows = chunk_rows
        self.raw_chunk_messages = raw_chunk_messages

    def read_new(self, cursor: FileCursor, now: float) -> Iterator[Chunk]:
        """Yield chunks of new packets; raise SourceError when the file cannot be read."""
        try:
            with open_for_reading(cursor.path) as opened:
                fh = OpenFile(opened)
                fmt = detect(fh, cursor.path)
                created = fmt.created(fh)
                if cursor.kind is not None and (cursor.kind != fmt.name or cursor.created != created):
                    raise FileReplaced(f"{cursor.path}: header changed (created {cursor.created} -> {created})")
                cursor.kind, cursor.created = fmt.name, created
                yield from self._read_rows(fh, cursor, fmt, now)
        except (SourceError, FileReplaced):
            raise
        except (OSError, RuntimeError, ValueError, KeyError) as err:
            raise SourceError(classify_os_error(err), f"{cursor.path}: {err}") from err
        except (TypeError, AttributeError, IndexError) as err:  # a structure no format checks for: one error
            raise SourceError("read_error", f"{cursor.path}: {type(err).__name__}: {err}") from err

    def _written_length(
        self, fh: OpenFile, cursor: FileCursor, fmt: InputFormat, length: int, now: float, new: Stored | None
    ) -> int:
        """``length`` without the trailing rows that look unwritten, while they are held back (up to
        ``HOLD_SECONDS``): the writer may have grown the dataset before filling it. From the ``new`` rows when
        they were read whole, else read backwards from the end, the last row first, so a file whose end is
        written costs one row."""
        held, block = 0, 1
        if new is not None:
            held = fmt.unwritten_in(new)
        while new is None and held < length - cursor.rows_done:
            start, end = max(cursor.rows_done, length - held - block), length - held
            unwritten = fmt.unwritten(fh, start, end)
            held += unwritten
            if unwritten < end - start:
                break
            block = min(block * 16, self.chunk_rows)
        if held and (cursor.held_since is None or now - cursor.held_since < HOLD_SECONDS):
            cursor.held_since = cursor.held_since or now
            return length - held
        cursor.held_since = None
        return length

    def _check_head(
        self, fh: OpenFile, cursor: FileCursor, fmt: InputFormat, length: int, first: Stored | None
    ) -> None:
        """FileReplaced if the file's first rows are not those the cursor saw; else note them (up to HEAD_ROWS).
        ``first``: the file's rows from its first, when they were read whole."""

        def digest(rows: int) -> str:
            if first is not None and len(first[0]) >= rows:
                return fmt.digest(head(first, rows))
            return fmt.head_digest(fh, rows)

        if cursor.head_rows and digest(cursor.head_rows) != cursor.head_digest:
            raise FileReplaced(f"{cursor.path}: its first {cursor.head_rows} rows changed (rewritten in place)")
        if cursor.head_rows < HEAD_ROWS and length > cursor.head_rows:
            cursor.head_rows = min(HEAD_ROWS, length)
            cursor.head_digest = digest(cursor.head_rows)

    def _read_rows(self, fh: OpenFile, cursor: FileCursor, fmt: InputFormat, now: float) -> Iterator[Chunk]:
        """Chunks from the cursor to the end; the next chunk is read in a thread while the caller counts
        this one (reading and the compiled counting, which releases the GIL, overlap on two cores). New rows
        that fit one chunk and ``WHOLE_ROWS`` (a small file, a live file's last second) are read once for
        the unwritten rows, the head's digest and the chunk."""
        length = fmt.length(fh)
        if length < max(cursor.rows_done, cursor.head_rows):
            raise FileReplaced(f"{cursor.path}: now {length} rows, {cursor.rows_done} already read")
        step = fmt.rows_per_chunk(self.chunk_rows, self.raw_chunk_messages)
        start = cursor.rows_done
        new = fmt.read(fh, start, length) if 0 < length - start <= min(step, WHOLE_ROWS) else None
        length = self._written_length(fh, cursor, fmt, length, now, new)
        self._check_head(fh, cursor, fmt, length, new if start == 0 else None)
        if new is not None:
            if start < length:
                yield Chunk.of(cursor, length, fmt.name, fmt.rows(head(new, length - start)), fh)
            return
        end = min(start + step, length)
        pending: Future[Rows] | None = None
        try:
            while start < length:
                rows = fmt.fetch(fh, start, end) if pending is None else pending.result()
                chunk = Chunk.of(cursor, end, fmt.name, rows, fh)
                step = fmt.rows_per_chunk(self.chunk_rows, self.raw_chunk_messages, rows, end - start)
                start, end = end, min(end + step, length)
                pending = _READ_AHEAD.submit(fmt.fetch, fh, start, end) if start < length else None
                yield chunk
        finally:
            if pending is not None:  # the caller stopped early: let the read finish before the file closes
                pending.exception()


class FileReplaced(Exception):
    """The file under a cursor's path is no longer the one the cursor describes."""
