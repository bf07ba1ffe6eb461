"""Checkpoints: the accumulator, the file cursors and the health counters, written atomically.

A checkpoint is one ``.npz`` file written to a temporary name, fsynced, then renamed over the
previous one, so a crash at any moment leaves either the old or the new checkpoint whole.
Cursors and counters in one checkpoint always belong together: packets read after it are
read again after a restart, and counted once.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from exporter.quality.accumulator import Accumulator
from exporter.reading.tail import DirectoryTail, FileCursor
from exporter.runtime.health import Health

log = logging.getLogger(__name__)
CHECKPOINT_VERSION = 1
STATE_DIR_ENV = "LARPIX_DQM_STATE_DIR"


class CheckpointError(ValueError):
    """A checkpoint exists but cannot be used; the message names the file and the problem."""


def default_state_file(inputs: list[str]) -> Path:
    """``$LARPIX_DQM_STATE_DIR`` (else ``~/.local/state/larpix-dqm``) / state-<hash of the inputs>.npz."""
    base = os.environ.get(STATE_DIR_ENV) or os.path.join(
        os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state"), "larpix-dqm"
    )
    digest = hashlib.sha1("\n".join(sorted(os.path.abspath(p) for p in inputs)).encode()).hexdigest()[:12]
    return Path(base) / f"state-{digest}.npz"


def save_checkpoint(path: str | os.PathLike, accumulator: Accumulator, tail: DirectoryTail, health: Health) -> None:
    """Write a checkpoint atomically (temp file, fsync, rename, fsync of the directory)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "version": CHECKPOINT_VERSION,
        "cursors": [c.to_dict() for c in tail.cursors.values()],
        "health": {
            "read_errors": health.read_errors,
            "decode_errors": health.decode_errors,
            "packets_ingested": health.packets_ingested,
            "messages_ingested": health.messages_ingested,
            "polls": health.polls,
        },
    }
    arrays: dict[str, Any] = accumulator.export_state()
    arrays["meta_json"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_checkpoint(path: str | os.PathLike, accumulator: Accumulator, tail: DirectoryTail, health: Health) -> bool:
    """Restore a checkpoint if ``path`` exists; False when there is none. CheckpointError if unusable."""
    path = Path(path)
    if not path.exists():
        return False
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
        meta = json.loads(arrays.pop("meta_json").tobytes())
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, io.UnsupportedOperation) as err:
        raise CheckpointError(
            f"state file {path}: unreadable checkpoint ({err}); move it away to start fresh"
        ) from None
    if meta.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"state file {path}: version {meta.get('version')}, expected {CHECKPOINT_VERSION}")
    if not accumulator.import_state(arrays):
        log.warning("%s: window settings changed since the checkpoint; counters restored, window restarts", path)
    for entry in meta["cursors"]:
        cursor = FileCursor.from_dict(entry)
        cursor.pending = True
        tail.cursors[cursor.path] = cursor
    saved = meta["health"]
    health.read_errors.update(saved["read_errors"])
    health.decode_errors.update(saved["decode_errors"])
    health.packets_ingested.update(saved["packets_ingested"])
    health.messages_ingested = saved["messages_ingested"]
    health.polls = saved["polls"]
    log.info("restored %s: %d files, %d chips", path, len(meta["cursors"]), len(arrays["chip_keys"]))
    return True
