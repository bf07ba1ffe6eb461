"""Checkpoints: the counters and file cursors every poll, the sliding window now and then, written atomically.

Two ``.npz`` files, each written to a temporary name, fsynced, then renamed over the previous
one, so a crash at any moment leaves each either old or new and whole:

- the checkpoint proper (``state-….npz``): counters, file cursors and health counters, which
  always belong together (packets read after it are read again after a restart, and counted
  once), plus what it was made for: the inputs, a digest of the geometry and the window shape;
- the window file (``state-….window.npz``): the sliding-window arrays (most of the bytes),
  written at most every ``window_interval`` seconds and on shutdown. After a crash the window
  lacks the packets counted since its last write (they are in every counter); it is whole
  again one window length of data later.

A checkpoint made for another geometry, for inputs none of whose files are found again, of
another version or damaged is refused with one line naming the file and the problem.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import time
import uuid
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import cast

import numpy as np
from numpy.lib.npyio import NpzFile

from larpix_dqm.exporter.detector.geometry import Geometry
from larpix_dqm.exporter.metrics.health import Health
from larpix_dqm.exporter.quality.accumulator import Accumulator
from larpix_dqm.exporter.quality.slots import DENSE_NAMES, slot_names
from larpix_dqm.exporter.quality.state import BY_NAME, in_window_file
from larpix_dqm.exporter.reading.cursor import FileCursor
from larpix_dqm.exporter.reading.tail import DirectoryTail, InputSpec

log = logging.getLogger(__name__)
CHECKPOINT_VERSION = 2
STATE_DIR_ENV = "LARPIX_DQM_STATE_DIR"
#: Default seconds between two writes of the window arrays (the counters are written every poll).
WINDOW_CHECKPOINT_SECONDS = 60.0
MOVE_AWAY = "move it away (or give another --checkpoint) to start afresh"


class CheckpointError(ValueError):
    """A checkpoint exists but cannot be used; the message names the file and the problem."""


def default_checkpoint(inputs: list[str]) -> Path:
    """``$LARPIX_DQM_STATE_DIR`` (else ``~/.local/state/larpix-dqm``) / state-<hash of the resolved inputs>.npz."""
    base = os.environ.get(STATE_DIR_ENV) or os.path.join(
        os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state"), "larpix-dqm"
    )
    digest = hashlib.sha1("\n".join(sorted(os.path.realpath(p) for p in inputs)).encode()).hexdigest()[:12]
    return Path(base) / f"state-{digest}.npz"


def geometry_digest(geometry: Geometry | None) -> str:
    """A digest of the geometry's content (chips, tiles, pixel positions); 'none' without one."""
    if geometry is None:
        return "none"
    sha = hashlib.sha1()
    for array in (geometry.chips, geometry.tiles, geometry.x, geometry.y, geometry.connected):
        sha.update(np.ascontiguousarray(array).tobytes())
    sha.update(json.dumps(sorted(geometry.by_chip_id.items())).encode())
    return sha.hexdigest()[:16]


def input_identity(inputs: list[InputSpec]) -> list[list[str]]:
    """The inputs as resolved paths and patterns, in a stable order."""
    return sorted([os.path.realpath(spec.path), spec.pattern] for spec in inputs)


def window_file(path: Path) -> Path:
    """The window file next to a checkpoint: ``state-x.npz`` -> ``state-x.window.npz``."""
    return path.with_name(f"{path.stem}.window{path.suffix}")


def _temporaries(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f".{path.name}.*.tmp"))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(path: Path) -> None:
    """Delete temporary files a previous exporter left behind (a crash or a full disk mid-write)."""
    for tmp in _temporaries(path) + _temporaries(window_file(path)):
        pid = tmp.name.rsplit(".", 2)[-2]
        if pid.isdigit() and int(pid) != os.getpid() and _pid_alive(int(pid)):
            continue  # another exporter is writing it right now
        try:
            size = tmp.stat().st_size
            tmp.unlink()
        except OSError as err:
            log.warning("cannot remove stale temporary checkpoint %s: %s", tmp, err.strerror or err)
            continue
        log.warning("removed stale temporary checkpoint %s (%.1f MB)", tmp, size / 1e6)


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> int:
    """Write arrays atomically (temp file, fsync, rename, fsync of the directory); return the size."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as the allow_pickle flag
            fh.flush()
            os.fsync(fh.fileno())
            size = fh.tell()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk must not stay full because of a half-written checkpoint
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return size


def _json_array(value: dict) -> np.ndarray:
    return np.frombuffer(json.dumps(value).encode(), np.uint8)


#: Bytes read from a checkpoint member at a time into the state (a zip member's ``readinto`` reads what it is asked
#: for into a new bytes object first).
_READ_BYTES = 1 << 20


class _Arrays(Mapping[str, np.ndarray]):
    """The arrays of an open checkpoint file, each read when asked for: a restore holds one array at a time
    beside the state it fills, not the whole file. ``names`` limits them; those per chip are given empty rows
    up to ``chips`` when shorter; ``under`` answers for the names they do not have."""

    def __init__(
        self,
        data: NpzFile,
        path: Path,
        what: str,
        names: tuple[str, ...] | None = None,
        chips: int | None = None,
        under: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        self._data, self._path, self._what, self._chips = data, path, what, chips
        self._names = [name for name in data.files if name != "meta_json" and (names is None or name in names)]
        self._under: Mapping[str, np.ndarray] = under or {}

    def window(self, names: tuple[str, ...], chips: int) -> _Arrays:
        """Only the arrays ``names``, those per chip given empty rows up to ``chips`` (chips registered since
        the window file was written)."""
        return _Arrays(self._data, self._path, self._what, names, chips)

    def over(self, under: Mapping[str, np.ndarray]) -> _Arrays:
        """These arrays, and those of ``under`` that they do not have."""
        return _Arrays(self._data, self._path, self._what, tuple(self._names), self._chips, under)

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._names:
            return self._under[name]
        try:
            value = self._data[name]
        except Exception as err:  # damaged since it was opened: still one line
            raise CheckpointError(
                f"{self._what} {self._path}: unreadable ({type(err).__name__}: {err}); {MOVE_AWAY}"
            ) from None
        field = BY_NAME.get(name)
        if self._chips is None or field is None or not field.per_chip:
            return value
        axis = 1 if field.per_slot else 0
        if value.shape[axis] >= self._chips:
            return value
        shape = list(value.shape)
        shape[axis] = self._chips
        padded = np.full(shape, field.fill, value.dtype)
        padded[(slice(None),) * axis + (slice(0, value.shape[axis]),)] = value
        return padded

    def read_into(self, name: str, out: np.ndarray) -> bool:
        """Read array ``name`` straight into ``out`` when it is stored as ``out`` holds it (its shape and dtype, C
        order, a plain ``.npy`` member) and ``out`` is contiguous, or each of its first axis's entries is (a window's
        slots of a block of chip rows, in a state with more rows): a restore's state array is then written once, with
        no array of the same size made and dropped beside it (for 40,000 chips, 245 MB of pages faulted in twice).
        False when it cannot; the caller then reads it as usual."""
        pieces = [out] if out.flags.c_contiguous else list(out) if out.ndim > 1 else []
        if not all(piece.flags.c_contiguous for piece in pieces):
            return False
        if name not in self._names:
            return isinstance(self._under, _Arrays) and self._under.read_into(name, out)
        archive = self._data.zip
        if archive is None:
            return False
        try:
            with cast(zipfile.ZipExtFile, archive.open(f"{name}.npy")) as member:
                version = np.lib.format.read_magic(member)
                if version not in ((1, 0), (2, 0)):
                    return False
                read_header = (
                    np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                )
                shape, fortran, dtype = read_header(member)
                if fortran or dtype != out.dtype or shape != out.shape or dtype.hasobject or not pieces:
                    return False
                for piece in pieces:
                    view = piece.reshape(-1).view(np.uint8).data  # the bytes of ``piece`` itself (contiguous)
                    done = 0
                    while done < len(view):
                        got = member.readinto(view[done : done + _READ_BYTES])
                        if not got:
                            raise EOFError(f"{name}: {done} of {len(view)} bytes")
                        done += got
                member.read(1)  # at the member's end: its checksum is checked
        except Exception as err:  # damaged since it was opened: still one line
            raise CheckpointError(
                f"{self._what} {self._path}: unreadable ({type(err).__name__}: {err}); {MOVE_AWAY}"
            ) from None
        return True

    def __contains__(self, name: object) -> bool:
        """Whether there is an array ``name``, without reading it (``Mapping``'s own would read it whole)."""
        return name in self._names or name in self._under

    def __iter__(self) -> Iterator[str]:
        return iter([*self._names, *(name for name in self._under if name not in self._names)])

    def __len__(self) -> int:
        return len(list(iter(self)))


def _open_npz(path: Path, what: str, stack: contextlib.ExitStack, verify: bool = False) -> tuple[_Arrays, dict]:
    """The arrays (read when asked for) and the JSON metadata of one file, open until ``stack`` closes;
    ``verify``: every array's checksum is checked first, so a damaged one is found before any is used.
    CheckpointError naming the file if it is damaged."""
    try:
        if path.stat().st_size == 0:
            raise ValueError("empty file (0 bytes)")
        data = stack.enter_context(np.load(path, allow_pickle=False))
        if verify and (damaged := data.zip.testzip()) is not None:
            raise ValueError(f"{damaged} does not match its checksum")
        if "meta_json" not in data.files:
            raise ValueError("no metadata (meta_json); not a larpix-dqm checkpoint")
        meta = json.loads(data["meta_json"].tobytes())
        if not isinstance(meta, dict):
            raise ValueError("metadata is not a JSON object")
    except Exception as err:  # any damage (truncated zip, wrong format, bad JSON) is one line, never a traceback
        raise CheckpointError(f"{what} {path}: unreadable ({type(err).__name__}: {err}); {MOVE_AWAY}") from None
    if meta.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{what} {path}: checkpoint version {meta.get('version')}, this exporter writes {CHECKPOINT_VERSION}; "
            f"{MOVE_AWAY}"
        )
    return _Arrays(data, path, what), meta


class Checkpoint:
    """One exporter's checkpoint at ``path`` (and its window file); ``save`` after polls, ``load`` at start."""

    def __init__(self, path: str | os.PathLike, window_interval: float = WINDOW_CHECKPOINT_SECONDS) -> None:
        self.path = Path(path)
        self.window_path = window_file(self.path)
        self.window_interval = window_interval
        self.lineage = uuid.uuid4().hex  # ties a window file to the checkpoints of the same run(s)
        self.window_written = -math.inf  # monotonic time of the last window write
        self.last_bytes = 0
        self._lock_fd: int | None = None

    def lock(self) -> None:
        """Hold an exclusive lock on ``<checkpoint>.lock`` for the life of the process: two exporters writing
        one checkpoint would each undo the other's counts. CheckpointError when another process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise CheckpointError(
                f"checkpoint {self.path} is in use by another larpix-dqm (pid {holder}); "
                "give each exporter its own --checkpoint"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd  # closed (and the lock released) when the process exits

    @property
    def window_current(self) -> bool:
        """Whether this process wrote the window file or restored the window from it (not on a first start, nor when the
        file could not be restored: then it is written at the next checkpoint)."""
        return self.window_written > -math.inf

    def window_due(self) -> bool:
        """Whether the window arrays are old enough to be written with the next checkpoint."""
        return time.monotonic() - self.window_written >= self.window_interval

    def save(
        self,
        accumulator: Accumulator,
        tail: DirectoryTail,
        health: Health,
        with_window: bool,
        with_counters: bool = True,
    ) -> None:
        """Write the counters and cursors (unless ``with_counters`` is False: those on disk are current) and the window
        arrays when ``with_window``; OSError if impossible."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        state = accumulator.export_state(slots=with_window)
        window = {name: state.pop(name) for name in list(state) if in_window_file(name)}
        meta = {
            "version": CHECKPOINT_VERSION,
            "lineage": self.lineage,
            "inputs": input_identity(tail.inputs),
            "geometry": geometry_digest(accumulator.geometry),
            "geometry_path": accumulator.geometry.path if accumulator.geometry is not None else None,
            "cursors": [c.to_dict() for c in tail.cursors.values()],
            "health": {
                "read_errors": health.read_errors,
                "decode_errors": health.decode_errors,
                "packets_ingested": health.packets_ingested,
                "messages_ingested": health.messages_ingested,
                "polls": health.polls,
            },
        }
        state["meta_json"] = _json_array(meta)
        self.last_bytes = _write_npz(self.path, state) if with_counters else 0
        if with_window:  # after the counters: a window file is never ahead of the checkpoint on disk
            window["chip_keys"] = state["chip_keys"]
            window["meta_json"] = _json_array({"version": CHECKPOINT_VERSION, "lineage": self.lineage})
            self.last_bytes += _write_npz(self.window_path, window)
            self.window_written = time.monotonic()

    def load(self, accumulator: Accumulator, tail: DirectoryTail, health: Health) -> bool:
        """Restore the checkpoint if there is one; False when there is none. CheckpointError if unusable."""
        remove_stale_temporaries(self.path)
        if not self.path.exists():
            return False
        with contextlib.ExitStack() as files:
            arrays, meta = _open_npz(self.path, "checkpoint", files)
            try:
                self._check_identity(meta, accumulator, tail)
                keys = arrays["chip_keys"]
                window = self._window(meta, keys, files)
                restored = accumulator.import_state(arrays if window is None else window.over(arrays))
                if restored and window is not None:  # the window on disk is the one in memory: due again an
                    self.window_written = time.monotonic()  # interval after the restart (not after its write)
                elif window is not None:
                    log.warning(
                        "checkpoint %s: window settings changed since the checkpoint; counters restored, "
                        "window restarts",
                        self.path,
                    )
                cursors = [FileCursor.from_dict(entry) for entry in meta["cursors"]]
                saved = meta["health"]
                health.read_errors.update(saved["read_errors"])
                health.decode_errors.update(saved["decode_errors"])
                health.packets_ingested.update(saved["packets_ingested"])
                health.messages_ingested = saved["messages_ingested"]
                health.polls = saved["polls"]
            except KeyError as err:
                raise CheckpointError(f"checkpoint {self.path}: {err.args[0]!r} is missing; {MOVE_AWAY}") from None
            except (ValueError, IndexError, TypeError, AttributeError) as err:
                if isinstance(err, CheckpointError):
                    raise
                one_line = " ".join(str(err).split())
                raise CheckpointError(f"checkpoint {self.path}: arrays do not fit ({one_line}); {MOVE_AWAY}") from None
        for cursor in cursors:  # a file read to its end whose size and mtime are unchanged is not opened again
            tail.cursors[cursor.path] = cursor
        self.lineage = meta["lineage"]
        log.info("restored %s: %d files, %d chips", self.path, len(cursors), len(keys))
        return True

    def _check_identity(self, meta: dict, accumulator: Accumulator, tail: DirectoryTail) -> None:
        """Refuse a checkpoint of another geometry or of unrelated inputs; adopt moved inputs with a warning."""
        digest = geometry_digest(accumulator.geometry)
        if meta["geometry"] != digest:
            now = accumulator.geometry.path if accumulator.geometry is not None else "no geometry"
            raise CheckpointError(
                f"checkpoint {self.path}: written for geometry {meta['geometry_path'] or 'none'} "
                f"(digest {meta['geometry']}), this run uses {now} (digest {digest}); {MOVE_AWAY}"
            )
        inputs = input_identity(tail.inputs)
        if meta["inputs"] == inputs:
            return
        present = {
            (status.st_dev, status.st_ino)
            for spec in tail.inputs
            for status in spec.statuses().values()
            if not isinstance(status, OSError)  # a broken link
        }
        found = sum((entry["dev"], entry["inode"]) in present for entry in meta["cursors"])
        saved = ", ".join(path for path, _ in meta["inputs"]) or "no inputs"
        shown = ", ".join(path for path, _ in inputs)
        if meta["cursors"] and not found:
            raise CheckpointError(
                f"checkpoint {self.path}: written for {saved}, not {shown} "
                f"(none of its {len(meta['cursors'])} files is there); {MOVE_AWAY}"
            )
        log.warning(
            "checkpoint %s: written for %s, now %s; %d of its %d files found again by device and inode "
            "(moved or renamed): their counts continue",
            self.path,
            saved,
            shown,
            found,
            len(meta["cursors"]),
        )

    def _window(self, meta: dict, keys: np.ndarray, files: contextlib.ExitStack) -> _Arrays | None:
        """The window arrays from the window file (checked whole, read as they are restored), for the
        checkpoint's chips ``keys``; None when the window file is missing, damaged or from another run (the
        window then restarts empty).

        The window file may be older than the counters: each io_group's window then ends where it
        ended then, and moves on (clearing what falls out of it) with the next packets.
        """
        problem = "no window file"
        if self.window_path.exists():
            try:
                saved, wmeta = _open_npz(self.window_path, "window file", files, verify=True)
                n = len(saved["chip_keys"])
                if wmeta.get("lineage") != meta["lineage"]:
                    raise CheckpointError(f"{self.window_path} belongs to another checkpoint")
                if not np.array_equal(saved["chip_keys"], keys[:n]):
                    raise CheckpointError(f"{self.window_path} has other chips than the counters")
                missing = [name for name in Accumulator.WINDOW_FILE if name not in saved and not BY_NAME[name].optional]
                if not any(name in saved for name in (slot_names(0)[0], DENSE_NAMES[0])):
                    missing.append(slot_names(0)[0])  # the slots' entries (or an older file's dense sums)
                if missing:
                    raise KeyError(missing[0])
                return saved.window(tuple(name for name in saved if in_window_file(name)), len(keys))
            except KeyError as err:
                problem = f"{self.window_path}: {err.args[0]!r} is missing"
            except (CheckpointError, ValueError, IndexError) as err:
                problem = " ".join(str(err).split())
        log.warning("checkpoint %s: %s; counters restored, the window starts empty", self.path, problem)
        return None
