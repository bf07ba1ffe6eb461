"""The registry's SQLite schema, created and migrated by the tool, versioned by ``PRAGMA user_version``.

Migration ``i`` takes a database of version ``i`` to ``i + 1``; a new database runs them all. A
database of a newer version than this tool knows is refused rather than misread; only a writer migrates.
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


def statements(script: str) -> list[str]:
    """The statements of a migration script, one by one (``executescript`` would COMMIT the transaction first)."""
    found, pending = [], ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                found.append(pending.strip())
            pending = ""
    return found


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema to ``VERSION`` in one transaction; return the version found.

    The version is read inside the write transaction, so of two processes opening an older registry at once
    the second finds it migrated. A non-empty database that is not a registry is refused, never added to.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = version(conn)
        if found > VERSION:
            raise RegistryError(f"schema version {found} is newer than this larpix-dqm knows ({VERSION})")
        if found == 0 and conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
            raise RegistryError("not a run registry (an SQLite database of other tables)")
        for step in range(found, VERSION):
            for statement in statements(MIGRATIONS[step]):
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return found


def _readonly(path: str | Path) -> sqlite3.Connection:
    """The registry opened read-only, never written: one of an older schema is read through a copy migrated in
    memory (its file is migrated by its writer, serve or ``runs certify``); a database that is no registry is
    refused."""
    if not Path(path).is_file():
        raise RegistryError("no such file")
    conn = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
    try:
        found = version(conn)
        if found > VERSION:
            raise RegistryError(f"schema version {found} is newer than this larpix-dqm knows ({VERSION})")
        if found == 0:
            raise RegistryError("not a run registry (no registry tables)")
        if found < VERSION:
            copy = sqlite3.connect(":memory:", isolation_level=None)
            conn.backup(copy)
            conn.close()
            conn = copy
            migrate(conn)
        return conn
    except BaseException:
        conn.close()
        raise


def connect(path: str | Path, readonly: bool = False) -> sqlite3.Connection:
    """Open the registry: read-only as it is (never written), or for writing in WAL mode with the schema migrated."""
    conn: sqlite3.Connection | None = None
    try:
        if readonly:
            return _readonly(path)
        # opened by the thread that starts the exporter, written by the ingest thread (never two at once)
        conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA foreign_keys = ON")
        migrate(conn)  # first: a database that is no registry is refused before anything of it changes
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")  # WAL: a crash loses no committed transaction, power loss the last
        return conn
    except sqlite3.DatabaseError as err:
        if conn is not None:
            conn.close()
        raise RegistryError(f"registry {path}: {err}") from None
    except RegistryError as err:
        if conn is not None:
            conn.close()
        raise RegistryError(str(err) if str(err).startswith("registry ") else f"registry {path}: {err}") from None
