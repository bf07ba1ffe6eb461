"""What an input format is: how a file in it is recognised, how its rows are counted, read and held back
while unwritten, and what identifies it; ``formats/__init__.py`` lists the formats the reader knows."""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import ClassVar

import h5py
import numpy as np

from larpix_dqm.exporter.reading.decode import Messages

log = logging.getLogger(__name__)

#: Rows as a format reads them: packet records, or raw messages joined into ``Messages`` (decoded by the
#: compiled counting in one pass, or to packet records by ``Messages.decode``).
Rows = np.ndarray | Messages
#: Rows as a format's datasets store them: one array per dataset, the same rows of each.
Stored = tuple[np.ndarray, ...]
#: Stored types already converted to numpy dtypes: each with its dtype (``stored_dtype``) and the HDF5 memory type
#: of that dtype (what ``read_rows`` reads into); the last few kept.
_DTYPES: list[tuple[h5py.h5t.TypeID, np.dtype, h5py.h5t.TypeID]] = []
_KEPT_DTYPES = 8


def head(stored: Stored, rows: int) -> Stored:
    """The first ``rows`` rows of each dataset's."""
    return tuple(a[:rows] for a in stored)


#: Reads of an object's metadata under SWMR before it is an error. HDF5 reads again when a checksum does not match (a
#: reader meeting metadata the writer is rewriting), sleeping twice as long each time, 100 times by default: the
#: last sleeps are the hour it caps them at, so a truncated or corrupt file (a copy in progress) held the reader for
#: hours. 26 reads sleep 70 ms in all.
SWMR_READ_ATTEMPTS = 26


def open_for_reading(path: str | os.PathLike[str]) -> h5py.File:
    """An HDF5 file opened read-only as a live writer allows (SWMR, no lock), with one file-access property list for
    every file: ``h5py.File`` makes a new one at each open (30 us of a small file's 1 ms)."""
    return h5py.File(h5py.h5f.open(os.fsencode(path), h5py.h5f.ACC_RDONLY | h5py.h5f.ACC_SWMR_READ, fapl=_access()))


@functools.cache
def _access() -> h5py.h5p.PropFAID:
    """The file-access property list of ``open_for_reading``: h5py's for ``locking=False``, and at most
    ``SWMR_READ_ATTEMPTS`` reads of an object's metadata."""
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_libver_bounds(h5py.h5f.LIBVER_EARLIEST, h5py.h5f.LIBVER_LATEST)
    fapl.set_file_locking(False, ignore_when_disabled=False)
    try:  # HDF5's own function, which h5py does not wrap, found among the libraries h5py's h5p module links
        set_attempts = ctypes.CDLL(h5py.h5p.__file__).H5Pset_metadata_read_attempts
        set_attempts.argtypes = (ctypes.c_int64, ctypes.c_uint)
        if set_attempts(fapl.id, SWMR_READ_ATTEMPTS) < 0:
            raise OSError("H5Pset_metadata_read_attempts failed")
    except (OSError, AttributeError) as err:
        log.warning("HDF5's metadata read attempts left at its default (a truncated file may hold the reader): %s", err)
    return fapl


class OpenFile:
    """An open HDF5 file as the reader and the run names look into it, each group or dataset looked up once: h5py's
    lookup costs 30-130 us, and a small packet file's reading made ten of them (recognised, its length, its rows, its
    header, its run attribute). A name whose link leads nowhere, or to a named type, is not in it (no dataset, as the
    formats report); an object whose metadata fails its checksum is an OSError (a truncated or corrupt file)."""

    def __init__(self, fh: h5py.File) -> None:
        self.fh = fh
        self._found: dict[str, h5py.Group | h5py.Dataset | None] = {}

    def __bool__(self) -> bool:
        """Whether the file is still open."""
        return bool(self.fh)

    def get(self, name: str) -> h5py.Group | h5py.Dataset | None:
        """The group or dataset ``name``, None if the file has none (asked of its links first: 6 us, where h5py's
        ``get`` costs 30 us for a name it lacks and 130 us for one it has)."""
        if name not in self._found:
            found = None
            if self.fh.id.links.exists(name.encode()):
                try:  # (``self.fh[name]`` also makes a File object a lookup, to ask whether it is read-only)
                    opened = h5py.h5o.open(self.fh.id, name.encode())
                except KeyError as err:  # a link to nothing, or an object whose metadata is cut short or damaged
                    if "checksum" in str(err):
                        raise OSError(f"{name!r} unreadable, a truncated or corrupt file: {err}") from err
                    opened = None
                if isinstance(opened, h5py.h5d.DatasetID):
                    found = h5py.Dataset(opened, readonly=True)
                elif isinstance(opened, h5py.h5g.GroupID):
                    found = h5py.Group(opened)
            self._found[name] = found
        return self._found[name]

    def __contains__(self, name: str) -> bool:
        return self.get(name) is not None

    def __getitem__(self, name: str) -> h5py.Group | h5py.Dataset:
        found = self.get(name)
        if found is None:
            raise KeyError(f"no {name!r} in {self.fh.filename}")
        return found


def rows_dataset(fh: OpenFile, name: str, path: str) -> h5py.Dataset:
    """The one-dimensional dataset ``name`` (in the file) a format reads rows of; SourceError (bad_dtype) when it is
    something else (a group, a scalar, a table): a format asks this before it looks at a dataset's type or length."""
    found = fh.get(name)
    if not isinstance(found, h5py.Dataset) or found.shape is None or len(found.shape) != 1:
        what = "a group" if isinstance(found, h5py.Group) else f"of shape {getattr(found, 'shape', None)}"
        raise SourceError("bad_dtype", f"{path}: {name!r} is not a one-dimensional dataset ({what})")
    return found


class SourceError(Exception):
    """A file cannot be read now; ``reason`` is the label of the read-error metric."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class InputFormat(ABC):
    """One kind of LArPix HDF5 file. A row is what the format appends as the writer goes (a packet, a
    message); the reader reads rows after a cursor, holds back the trailing ones that look unwritten and
    tells a rewritten file by its first rows, asking the format for each of these."""

    #: The format's name as users see it: ``simulate --format``, the ``format`` label of
    #: ``larpix_exporter_packets_ingested_total``, ``kind`` in the checkpoint's cursors.
    name: ClassVar[str]
    #: Whether its files store the chips' configurations (channel masks, periodic triggers) to apply
    #: before their data (``detector.runconfig.read_file_configuration``).
    stores_run_configuration: ClassVar[bool] = False
    #: What a file in this format holds, for the error naming the formats a file is in none of.
    holds: ClassVar[str]

    @abstractmethod
    def recognise(self, fh: OpenFile, path: str) -> bool:
        """Whether the file is in this format; SourceError (bad_dtype) if it has its datasets, malformed."""

    @abstractmethod
    def created(self, fh: OpenFile) -> float | None:
        """The header's creation time (part of the file's identity), None if it has none."""

    @abstractmethod
    def length(self, fh: OpenFile) -> int:
        """Rows written so far, its datasets refreshed first (the writer appends to them in SWMR mode)."""

    @abstractmethod
    def read(self, fh: OpenFile, start: int, end: int) -> Stored:
        """Rows ``start:end`` of each of the format's datasets, as stored."""

    @abstractmethod
    def rows(self, stored: Stored) -> Rows:
        """The rows of ``read`` output, as they are counted."""

    @abstractmethod
    def unwritten_in(self, stored: Stored) -> int:
        """How many of the rows of ``read`` output, counted back from its last, look not yet written (grown but
        not filled)."""

    @abstractmethod
    def digest(self, stored: Stored) -> str:
        """Digest of the rows of ``read`` output from the file's first: its identity by content (saved in
        checkpoints)."""

    def fetch(self, fh: OpenFile, start: int, end: int) -> Rows:
        """Rows ``start:end``."""
        return self.rows(self.read(fh, start, end))

    def unwritten(self, fh: OpenFile, start: int, end: int) -> int:
        """How many of rows ``start:end``, counted back from ``end``, look not yet written."""
        return self.unwritten_in(self.read(fh, start, end))

    def head_digest(self, fh: OpenFile, rows: int) -> str:
        """Digest of the first ``rows`` rows."""
        return self.digest(self.read(fh, 0, rows))

    def rows_per_chunk(self, packets: int, messages: int, last: Rows | None = None, last_rows: int = 0) -> int:
        """Rows of the next chunk, for chunks of at most ``packets`` packets (and ``messages`` raw
        messages); ``last`` is the chunk just read, of ``last_rows`` rows (None before the first)."""
        return packets


def digest_of(parts: Iterable[bytes]) -> str:
    """The identity digest of a file's first rows, given as byte strings."""
    sha = hashlib.blake2b(digest_size=16)
    for part in parts:
        sha.update(part)
    return sha.hexdigest()


def stored_dtype(dataset: h5py.Dataset) -> np.dtype:
    """The numpy dtype of a dataset's stored type, converted once per distinct type: h5py converts it again for
    every dataset opened (0.2 ms a packet record type, a tenth of what a small file costs)."""
    return _converted(dataset)[0]


def _converted(dataset: h5py.Dataset) -> tuple[np.dtype, h5py.h5t.TypeID]:
    """The dataset's ``stored_dtype`` and the HDF5 memory type of that dtype, each made once per distinct type."""
    stored = dataset.id.get_type()
    for known, dtype, memory in _DTYPES:
        if known == stored:  # H5Tequal
            return dtype, memory
    dtype = stored.dtype
    memory = h5py.h5t.py_create(dtype)
    _DTYPES[:] = [*_DTYPES[-_KEPT_DTYPES + 1 :], (stored, dtype, memory)]
    return dtype, memory


def read_rows(dataset: h5py.Dataset, start: int, end: int) -> np.ndarray:
    """Rows ``start:end`` of a dataset of fixed-size records, read into an array of its ``stored_dtype``
    (``dataset[start:end]`` converts the type again); clipped to its length as a slice is. Records with
    variable-length fields are read by h5py's slicing, which makes their objects.

    HDF5 converts the stored type to the dtype's memory type, made once per type: h5py's ``read_direct`` makes
    it at every read (0.3 ms of a small file's 0.4 ms read). For a stored type that the dtype mirrors (packet
    records) the conversion copies bytes; a type it does not (fewer bits, another float format) is converted."""
    dtype, memory = _converted(dataset)
    if dtype.hasobject:
        return dataset[start:end]
    start, end = min(start, len(dataset)), min(end, len(dataset))
    rows = np.empty(max(end - start, 0), dtype)
    if len(rows):
        selected = dataset.id.get_space()
        selected.select_hyperslab((start,), (len(rows),))
        dataset.id.read(h5py.h5s.create_simple((len(rows),)), selected, rows, mtype=memory)
    return rows


def attr_float(group: h5py.Group | None, name: str) -> float | None:
    """A numeric attribute of a group, None if the group or attribute is missing or not a number."""
    try:
        return float(group.attrs[name]) if group is not None and name in group.attrs else None
    except (TypeError, ValueError):
        return None


def trailing(written: np.ndarray) -> int:
    """Number of False at the end of ``written`` (rows not yet written, counted back from the last)."""
    found = np.flatnonzero(written)
    return len(written) - 1 - int(found[-1]) if len(found) else len(written)
