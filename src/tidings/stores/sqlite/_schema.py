"""The SQLite store's framework tables, and the user's migrations as statements."""

from __future__ import annotations

import sqlite3

from tidings._notify import SCHEMA as LISTENERS_SCHEMA
from tidings._notify import upgrade_schema as upgrade_listeners
from tidings.errors import MigrationError, StorageError

SCHEMA_VERSION = 3

SCHEMA = [
    "CREATE TABLE IF NOT EXISTS tidings_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS tidings_outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        topic TEXT NOT NULL,
        event_id TEXT NOT NULL,
        key BLOB,
        value BLOB NOT NULL,
        headers BLOB,
        created_ms INTEGER NOT NULL,
        UNIQUE (event_id, topic)
    )""",
    """CREATE TABLE IF NOT EXISTS tidings_inbox (
        consumer TEXT NOT NULL,
        event_id TEXT NOT NULL,
        status TEXT NOT NULL,
        topic TEXT NOT NULL,
        partition INTEGER NOT NULL,
        offset INTEGER NOT NULL,
        processed_ms INTEGER NOT NULL,
        PRIMARY KEY (consumer, event_id)
    ) WITHOUT ROWID""",
    # the periodic cleanup reads only the rows past their retention through it (INBOX_CLEANUP)
    "CREATE INDEX IF NOT EXISTS tidings_inbox_processed ON tidings_inbox (processed_ms)",
    """CREATE TABLE IF NOT EXISTS tidings_relay_lease (
        name TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        expires_ms INTEGER NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS tidings_outbox_unpublishable (
        seq INTEGER PRIMARY KEY,
        topic TEXT NOT NULL,
        event_id TEXT NOT NULL,
        key BLOB,
        value BLOB NOT NULL,
        headers BLOB,
        created_ms INTEGER NOT NULL,
        error TEXT NOT NULL,
        set_aside_ms INTEGER NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS tidings_sequences (
        scope TEXT NOT NULL,
        key BLOB NOT NULL,
        last_seq INTEGER NOT NULL,
        PRIMARY KEY (scope, key)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS tidings_last_applied (
        scope TEXT NOT NULL,
        source TEXT NOT NULL,
        key TEXT NOT NULL,
        last_value INTEGER NOT NULL,
        prev_value INTEGER,
        PRIMARY KEY (scope, source, key)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS tidings_migrations (
        id INTEGER PRIMARY KEY,
        statement TEXT NOT NULL,
        applied_ms INTEGER NOT NULL
    )""",
    LISTENERS_SCHEMA,
]


def create_schema(conn: sqlite3.Connection, path: str) -> None:
    """Create the framework's tables (IF NOT EXISTS) and record the schema version; refuse a
    file written by a newer tidings."""
    for statement in SCHEMA:
        conn.execute(statement)
    upgrade_listeners(conn)
    row = conn.execute("SELECT value FROM tidings_meta WHERE key = 'schema'").fetchone()
    if row is not None and int(row[0]) > SCHEMA_VERSION:
        raise StorageError(
            f"{path}: written by a newer tidings (store schema {row[0]}); this version "
            f"understands {SCHEMA_VERSION}"
        )
    if row is None or int(row[0]) < SCHEMA_VERSION:
        conn.execute(
            "INSERT INTO tidings_meta(key, value) VALUES ('schema', ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (str(SCHEMA_VERSION),),
        )


def split_statements(script: str) -> list[str]:
    """The complete SQL statements of `script`, in order (semicolons inside literals kept)."""
    statements = []
    buffer = ""
    for piece in script.split(";"):
        buffer += piece + ";"
        if sqlite3.complete_statement(buffer):
            if buffer.strip(" \t\n;"):
                statements.append(buffer.strip())
            buffer = ""
    if buffer.strip(" \t\n;"):
        raise MigrationError(f"incomplete SQL statement in migration: {buffer.strip()[:80]!r}")
    return statements
