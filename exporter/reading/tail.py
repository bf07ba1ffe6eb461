"""Directory tailing: find LArPix HDF5 files, remember how far each was read, read only new rows.

Each file has a ``FileCursor`` (identity, rows consumed, data clock). ``DirectoryTail.pump`` is
the one read loop of the product (serve, once, the Python API and the benchmarks use it): it
stats every file, opens only those that changed, are new, or have rows held back, hands each
chunk to the consumer and only then advances the file's cursor, and reports read errors once.

A cursor is keyed by the file's resolved path and carries its identity (device, inode, and
the header's ``created`` time, checked when the file is read): a file reached by another
name (a relative then an absolute input, a renamed file, a moved directory) keeps its cursor
and is never read twice. A file in error is one error until it recovers, is replaced or fails for
another reason (a live file that stays unreadable is not reported again on every poll); dangling and
looping symbolic links matching the pattern are errors of their own.
"""

from __future__ import annotations

import errno
import glob
import logging
import os
import re
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from larpix_dqm.exporter.reading.cursor import FileCursor
from larpix_dqm.exporter.reading.files import Chunk, FileReader, FileReplaced
from larpix_dqm.exporter.reading.formats.base import SourceError

log = logging.getLogger(__name__)

#: Called with the cursor, the reason (the read-error metric label) and a message when a file fails.
ErrorHandler = Callable[[FileCursor, str, str], None]


@dataclass
class InputSpec:
    """A directory (or a single file) to watch and the glob pattern selecting files in it."""

    path: str
    pattern: str = "*.h5"

    def statuses(self) -> dict[str, os.stat_result | OSError]:
        """The files to read by resolved path (symbolic links followed), in order, each with its status (a link's
        target's); a broken link (dangling or looping) as itself, with the error following it raised, so that it
        can be reported. One system call a file that is not a link: a poll stats every file of a directory that
        may hold thousands."""
        if os.path.isfile(self.path):
            names = [os.path.realpath(self.path)]
        else:
            names = glob.glob(os.path.join(glob.escape(os.path.realpath(self.path)), self.pattern))
        found: dict[str, os.stat_result | OSError] = {}
        for name in names:
            try:
                status = os.lstat(name)
            except OSError:  # gone since the listing
                continue
            if stat.S_ISLNK(status.st_mode):
                try:
                    status = os.stat(name)
                except OSError as err:
                    found[name] = err
                    continue
                name = os.path.realpath(name)
            found.setdefault(name, status)
        return dict(sorted(found.items()))

    def problem(self) -> str | None:
        """None if the input can be read, else the read-error reason: missing_input or unreadable_input."""
        if not os.path.exists(self.path):
            return "missing_input"
        if not os.access(self.path, os.R_OK | (os.X_OK if os.path.isdir(self.path) else 0)):
            return "unreadable_input"
        return None


class DirectoryTail:
    """Tracks every file under the inputs and hands out the new rows of changed files."""

    def __init__(
        self,
        inputs: list[InputSpec],
        reader: FileReader | None = None,
        flush_interval: float = 1800.0,
        on_error: ErrorHandler | None = None,
    ) -> None:
        self.inputs = inputs
        self.reader = reader or FileReader()
        self.flush_interval = flush_interval
        self.on_error = on_error
        self.cursors: dict[str, FileCursor] = {}
        #: One per input (directory or file), carrying the input's own error (missing_input, unreadable_input).
        self.input_cursors = {spec.path: FileCursor(spec.path, -1, -1, pending=False) for spec in inputs}
        #: Broken symbolic links matching the pattern (dangling_symlink, symlink_loop), as of the last scan.
        self.broken_links: dict[str, FileCursor] = {}

    @property
    def tracked(self) -> int:
        """Files present at the last scan."""
        return sum(1 for c in self.cursors.values() if c.size >= 0)

    def scan(self, now: float) -> list[FileCursor]:
        """Stat every file; return the cursors whose files need reading, oldest first. A file found by several
        names (hard links, a path through a linked folder) is tracked by the first in order of the inputs and
        names: its cursor follows that name (``_follow_moves``).

        Cursors of files that disappeared more than ``flush_interval`` seconds ago are dropped.
        """
        found: dict[str, os.stat_result] = {}
        broken: dict[str, str] = {}
        identities: set[tuple[int, int]] = set()
        for spec in self.inputs:
            if not self._input_readable(spec):
                continue
            for path, status in spec.statuses().items():
                if isinstance(status, OSError):
                    broken[path] = "symlink_loop" if status.errno == errno.ELOOP else "dangling_symlink"
                elif (status.st_dev, status.st_ino) not in identities:  # a hard link, a linked folder: read once
                    identities.add((status.st_dev, status.st_ino))
                    found[path] = status
        self._report_broken_links(broken)
        self._follow_moves(found)
        due: list[tuple[float, str, FileCursor]] = []
        for path, st in found.items():
            cursor = self.cursors.get(path)
            if cursor is None or (cursor.dev, cursor.inode) != (st.st_dev, st.st_ino):
                if cursor is not None:
                    log.warning("%s: replaced by a new file (new inode); reading it from the start", path)
                cursor = FileCursor(path, st.st_dev, st.st_ino)
                self.cursors[path] = cursor
            if 0 <= st.st_size < cursor.size:  # an appended HDF5 file never shrinks: this one was rewritten
                log.warning("%s: shrank from %d to %d bytes; reading it from the start", path, cursor.size, st.st_size)
                cursor = FileCursor(path, st.st_dev, st.st_ino)
                self.cursors[path] = cursor
            changed = (st.st_size, st.st_mtime_ns) != (cursor.size, cursor.mtime_ns)
            if changed:
                cursor.last_change = now
                cursor.pending = True  # until read to its end: a read stopped halfway is resumed after a restart
            cursor.size, cursor.mtime_ns = st.st_size, st.st_mtime_ns
            if not stat.S_ISREG(st.st_mode):  # a directory or FIFO named like a data file: never opened
                what = (
                    "a directory" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode) else "special"
                )
                self._fail(cursor, "not_a_file", f"{path}: not a regular file ({what})")
                continue
            if st.st_size == 0:
                self._fail(cursor, "empty", f"{path}: zero-length file")
                continue
            if changed or cursor.pending or cursor.held_since is not None:
                due.append((st.st_mtime_ns, path, cursor))
        for path, cursor in list(self.cursors.items()):
            if path not in found:
                cursor.size = -1
                if now - cursor.last_change > self.flush_interval:
                    del self.cursors[path]  # gone and idle: forget its cursor; its counts stay
        return [c for _, _, c in sorted(due)]

    def _report_broken_links(self, broken: dict[str, str]) -> None:
        """One error per broken link (dangling or looping) while it stays broken; forgotten once gone or mended."""
        for path in [p for p in self.broken_links if p not in broken]:
            del self.broken_links[path]
        for path, reason in broken.items():
            cursor = self.broken_links.setdefault(path, FileCursor(path, -1, -1, pending=False))
            what = "points into a loop of links" if reason == "symlink_loop" else "points to nothing"
            target = os.readlink(path) if os.path.islink(path) else "?"
            self._fail(cursor, reason, f"{path}: symbolic link {what} (-> {target})")

    def _follow_moves(self, found: dict[str, os.stat_result]) -> None:
        """Give a file found under a new name the cursor of the same file (device, inode) gone from its old name.

        The header check of the next read still tells a new file that reused the inode apart.
        """
        gone = {(c.dev, c.inode): c for path, c in self.cursors.items() if path not in found}
        if not gone:
            return
        for path, st in found.items():
            cursor = gone.pop((st.st_dev, st.st_ino), None) if path not in self.cursors else None
            if cursor is not None:
                log.info(
                    "%s: same file as %s (moved or renamed); continuing after row %d",
                    path,
                    cursor.path,
                    cursor.rows_done,
                )
                del self.cursors[cursor.path]
                cursor.path = path
                self.cursors[path] = cursor

    def pump(
        self,
        consume: Callable[[Chunk], None],
        stop: Callable[[], bool] | None = None,
        expect: Callable[[int], None] | None = None,
    ) -> int:
        """Scan once and hand every new chunk to ``consume``, oldest file first; return the packet count.

        A file's cursor advances past a chunk only after ``consume`` returned, so a crash or an
        exception inside it leaves those rows to be read again: counted once, never skipped.
        ``stop`` is asked after every chunk; when it says True the pump returns at once. ``expect`` is told the
        bytes of the due files with no row read yet, before any is read (what a backlog is about to cost).
        """
        total = 0
        due = self.scan(time.time())
        if expect is not None:
            expect(sum(c.size for c in due if c.rows_done == 0))
        for cursor in due:
            for chunk in self._read(cursor, time.time()):
                consume(chunk)
                chunk.cursor.rows_done = chunk.rows_end
                total += chunk.size
                if stop is not None and stop():
                    return total
        return total

    def _read(self, cursor: FileCursor, now: float) -> Iterator[Chunk]:
        """New chunks of one file; errors are reported once through ``on_error`` and end the file's turn."""
        try:
            yield from self.reader.read_new(cursor, now)
        except FileReplaced as err:
            log.warning("%s; reading it from the start", one_line(str(err)))
            fresh = FileCursor(cursor.path, cursor.dev, cursor.inode, size=cursor.size, mtime_ns=cursor.mtime_ns)
            self.cursors[cursor.path] = fresh
            yield from self._read(fresh, now)
            return
        except SourceError as err:
            self._fail(cursor, err.reason, str(err))
            return
        cursor.pending = cursor.held_since is not None
        if cursor.error is not None:
            log.info("%s: readable again after %s", cursor.path, cursor.error)
            cursor.error = None

    def _fail(self, cursor: FileCursor, reason: str, message: str) -> None:
        """Report a failure once: again only after the file recovered, was replaced, or fails for another reason
        (a live file that stays unreadable changes on every poll, and is still one error)."""
        cursor.pending = True
        if cursor.error == reason:
            return
        message = one_line(message)
        if self.on_error is not None:
            self.on_error(cursor, reason, message)
        else:
            log.warning(
                "%s (reason: %s; retried every poll, reported again if it recovers and fails again)", message, reason
            )
        cursor.error = reason

    def _input_readable(self, spec: InputSpec) -> bool:
        """True if the input exists and can be read; else its error is reported (logged once) like a file's."""
        cursor, problem = self.input_cursors[spec.path], spec.problem()
        if problem == "missing_input":
            self._fail(cursor, problem, f"{spec.path}: input does not exist")
        elif problem == "unreadable_input":
            self._fail(cursor, problem, f"{spec.path}: input cannot be read (permission denied)")
        elif cursor.error is not None:
            log.info("%s: input readable again after %s", spec.path, cursor.error)
            cursor.error = None
        return problem is None

    def errors_by_reason(self) -> dict[str, int]:
        """Files (and inputs) currently failing, by reason."""
        counts: dict[str, int] = {}
        present = [c for c in self.cursors.values() if c.size >= 0]
        for cursor in [*present, *self.input_cursors.values(), *self.broken_links.values()]:
            if cursor.error is not None:
                counts[cursor.error] = counts.get(cursor.error, 0) + 1
        return counts


def one_line(message: str) -> str:
    """A message with its line breaks (h5py error stacks have them) folded, for one log record."""
    return re.sub(r"\s*\n\s*", " ", message).strip()
