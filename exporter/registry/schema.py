"""The registry's SQLite schema, created and migrated by the tool, versioned by ``PRAGMA user_version``.

Migration ``i`` takes a database of version ``i`` to ``i + 1``; a new database runs them all. A
database of a newer version than this tool knows is refused rather than misread.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

#: Statements that take the schema from version i to i + 1 (index i).
MIGRATIONS: tuple[str, ...] = (
    # 1: runs, their files, the time spent in each status, the failing chips per check, the bad channels
    """
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        run TEXT NOT NULL UNIQUE,          -- the run's name: a run number, or a file's stem
        source TEXT NOT NULL,              -- where the name came from: pattern, metadata or file
        start_time REAL,                   -- data time (unix s) of its first packet
        end_time REAL,                     -- data time of its newest packet
        packets INTEGER NOT NULL DEFAULT 0,
        mode TEXT,                         -- the run mode that judged it (at its last update)
        bad_channels TEXT NOT NULL DEFAULT '{}',  -- JSON {status: [[io_group, io_channel, chip_id, channel_id]]}
        opened_at REAL NOT NULL,           -- wall times
        updated_at REAL NOT NULL,
        closed_at REAL                     -- NULL while the run goes on
    );
    CREATE TABLE run_files (
        run_id INTEGER NOT NULL REFERENCES runs(id),
        path TEXT NOT NULL,
        packets INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (run_id, path)
    );
    CREATE TABLE status_time (
        run_id INTEGER NOT NULL REFERENCES runs(id),
        io_group INTEGER NOT NULL,         -- -1: the whole detector
        status TEXT NOT NULL,              -- unknown, ok, warning, error
        seconds REAL NOT NULL DEFAULT 0,   -- of data time
        PRIMARY KEY (run_id, io_group, status)
    );
    CREATE TABLE check_failures (
        run_id INTEGER NOT NULL REFERENCES runs(id),
        check_name TEXT NOT NULL,
        io_group INTEGER NOT NULL,
        io_channel INTEGER NOT NULL,       -- -1 for an io_group check
        chip_id INTEGER NOT NULL,          -- -1 for an io_group check
        worst INTEGER NOT NULL,            -- 1 warning, 2 error
        seconds REAL NOT NULL DEFAULT 0,   -- of data time not ok
        first_time REAL NOT NULL,          -- data time it first failed
        last_time REAL NOT NULL,
        PRIMARY KEY (run_id, check_name, io_group, io_channel, chip_id)
    );
    """,
    # 2: the configuration and reference that judged a run; the shift crew's certification, kept apart
    """
    ALTER TABLE runs ADD COLUMN mode_setting TEXT;
    ALTER TABLE runs ADD COLUMN configuration TEXT NOT NULL DEFAULT '{}';  -- JSON: geometry, networks, ...
    ALTER TABLE runs ADD COLUMN reference TEXT;
    CREATE TABLE certifications (
        id INTEGER PRIMARY KEY,
        run_id INTEGER NOT NULL REFERENCES runs(id),
        io_group INTEGER NOT NULL,
        verdict TEXT NOT NULL CHECK (verdict IN ('good', 'bad')),
        reason TEXT NOT NULL,
        author TEXT NOT NULL,
        certified_at REAL NOT NULL
    );
    """,
)
VERSION = len(MIGRATIONS)
BUSY_TIMEOUT_MS = 5000


class RegistryError(Exception):
    """The registry cannot be opened, read or written; the message names the file and the problem."""


def version(conn: sqlite3.Connection) -> int:
    """The schema version of an open database (0: empty)."""
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema to ``VERSION``, each step in one transaction; return the version found."""
    found = version(conn)
    if found > VERSION:
        raise RegistryError(f"schema version {found} is newer than this larpix-dqm knows ({VERSION})")
    for step in range(found, VERSION):
        conn.executescript(f"BEGIN IMMEDIATE; {MIGRATIONS[step]} PRAGMA user_version = {step + 1}; COMMIT;")
    return found


def connect(path: str | Path, readonly: bool = False) -> sqlite3.Connection:
    """Open the registry: read-only as it is, or for writing in WAL mode with the schema migrated."""
    try:
        if readonly:
            if not Path(path).is_file():
                raise RegistryError(f"registry {path}: no such file")
            uri = f"{Path(path).resolve().as_uri()}?mode=ro"
            conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
            found = version(conn)
            if found < VERSION:  # an older registry is migrated once (the tool owns the schema), then read
                conn.close()
                connect(path).close()
                conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
            elif found > VERSION:
                raise RegistryError(f"schema version {found} is newer than this larpix-dqm knows ({VERSION})")
            return conn
        # opened by the thread that starts the exporter, written by the ingest thread (never two at once)
        conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")  # WAL: a crash loses no committed transaction, power loss the last
        conn.execute("PRAGMA foreign_keys = ON")
        migrate(conn)
        return conn
    except sqlite3.DatabaseError as err:
        raise RegistryError(f"registry {path}: {err}") from None
    except RegistryError as err:
        raise RegistryError(str(err) if str(err).startswith("registry ") else f"registry {path}: {err}") from None
