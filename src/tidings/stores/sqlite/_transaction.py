"""A transaction of the SQLite store."""

from __future__ import annotations

import functools
import itertools
import operator
import sqlite3
from collections.abc import Sequence
from typing import NoReturn

from tidings import _sqlite
from tidings.errors import DuplicateEventError, InboxConflictError, IntegrityError
from tidings.stores._codec import encode_headers
from tidings.stores.inbox import InboxKey, InboxStatus, Position
from tidings.stores.transaction import OutboxEntry, Params, Row, SequenceKey, Transaction

_INBOX_FIND_CHUNK = 512
_SEQUENCES_CHUNK = 64


@functools.lru_cache(maxsize=16)
def _inbox_find_sql(size: int) -> str:
    """The lookup of `size` event ids of one consumer. Sizes are powers of two (the ids are
    padded by repeating the last one), so a few statements stay in sqlite3's statement cache."""
    placeholders = ", ".join("?" * size)
    return f"SELECT event_id FROM tidings_inbox WHERE consumer = ? AND event_id IN ({placeholders})"  # noqa: S608


@functools.lru_cache(maxsize=256)
def _batchable(statement: str) -> bool:
    """Whether a run of `statement` can go to `executemany`: an INSERT, UPDATE, DELETE or
    REPLACE without RETURNING (which `executemany` rejects from Python 3.12 on)."""
    words = statement.split(None, 1)
    return (
        bool(words)
        and words[0].upper() in {"INSERT", "UPDATE", "DELETE", "REPLACE"}
        and "RETURNING" not in statement.upper()
    )


@functools.lru_cache(maxsize=_SEQUENCES_CHUNK)
def _take_sequences_sql(size: int) -> str:
    """Add counts to `size` keys' last sequence numbers; returns each key's new one."""
    rows = ", ".join(["(?, ?, ?)"] * size)
    return (
        f"INSERT INTO tidings_sequences(scope, key, last_seq) VALUES {rows}"  # noqa: S608
        " ON CONFLICT (scope, key) DO UPDATE SET last_seq = last_seq + excluded.last_seq"
        " RETURNING scope, key, last_seq"
    )


def _padded_size(count: int) -> int:
    return 1 << (count - 1).bit_length()


class SQLiteTransaction(Transaction):
    """A transaction on the store's writer connection; statements run inline (the write lock
    is held)."""

    driver_errors = (sqlite3.Error,)
    IMMEDIATE_CONSTRAINTS = None
    """SQLite's only deferrable constraints are foreign keys, which it does not enforce (as it
    ships, and as tidings opens it)."""

    def __init__(self, conn: sqlite3.Connection, path: str) -> None:
        super().__init__()
        self._conn = conn
        self._path = path

    def _cursor(self, sql: str, params: Params) -> sqlite3.Cursor:
        try:
            return self._conn.execute(sql, params)
        except sqlite3.Error as exc:
            self._raise(exc)

    def _raise(self, exc: sqlite3.Error) -> NoReturn:
        """Raise `exc` translated: IntegrityError for a broken constraint, StorageError for
        the file's own problems."""
        if isinstance(exc, sqlite3.IntegrityError):
            raise IntegrityError(str(exc), exc) from exc
        error = _sqlite.translate(exc, self._path)
        if error is exc:
            raise exc
        raise error from exc

    async def _execute(self, sql: str, params: Params) -> int:
        return self._cursor(sql, params).rowcount

    async def _fetchall(self, sql: str, params: Params) -> list[Row]:
        return self._cursor(sql, params).fetchall()

    async def _run_deferred(self, pending: Sequence[tuple[str, Params]]) -> None:
        """Consecutive runs of one data-changing statement as one `executemany`."""
        try:
            for statement, run in itertools.groupby(pending, key=operator.itemgetter(0)):
                params = [p for _, p in run]
                if len(params) > 1 and _batchable(statement):
                    self._conn.executemany(statement, params)
                else:
                    for item in params:
                        self._conn.execute(statement, item)
        except sqlite3.Error as exc:
            self._raise(exc)

    async def _write_outbox(self, rows: Sequence[OutboxEntry]) -> None:
        now = _sqlite.now_ms()
        try:
            self._conn.executemany(
                "INSERT INTO tidings_outbox(topic, event_id, key, value, headers, created_ms)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (topic, event_id, m.key, m.value, encode_headers(m.headers), now)
                    for topic, event_id, m in rows
                ],
            )
        except sqlite3.IntegrityError as exc:
            raise DuplicateEventError(
                f"an event id was published twice to one topic in this transaction or while "
                f"still in the outbox ({exc})"
            ) from exc
        except sqlite3.Error as exc:
            self._raise(exc)

    async def _take_sequences(
        self, counts: Sequence[tuple[SequenceKey, int]]
    ) -> dict[SequenceKey, int]:
        """One statement per up to 64 keys (the write lock makes them atomic)."""
        lasts: dict[SequenceKey, int] = {}
        for start in range(0, len(counts), _SEQUENCES_CHUNK):
            chunk = counts[start : start + _SEQUENCES_CHUNK]
            params = [value for (scope, key), count in chunk for value in (scope, key, count)]
            for scope, key, last in self._cursor(_take_sequences_sql(len(chunk)), params):
                lasts[scope, key] = last
        return lasts

    async def _inbox_add(
        self, consumer: str, event_id: str, position: Position, status: InboxStatus
    ) -> bool:
        cursor = self._cursor(
            "INSERT INTO tidings_inbox"
            "(consumer, event_id, status, topic, partition, offset, processed_ms)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (consumer, event_id, status.value, *position, _sqlite.now_ms()),
        )
        return cursor.rowcount == 1

    async def _inbox_find(self, keys: Sequence[InboxKey]) -> set[InboxKey]:
        by_consumer: dict[str, list[str]] = {}
        for consumer, event_id in keys:
            by_consumer.setdefault(consumer, []).append(event_id)
        found: set[InboxKey] = set()
        for consumer, event_ids in by_consumer.items():
            for start in range(0, len(event_ids), _INBOX_FIND_CHUNK):
                chunk = event_ids[start : start + _INBOX_FIND_CHUNK]
                size = _padded_size(len(chunk))
                chunk += [chunk[-1]] * (size - len(chunk))
                rows = self._cursor(_inbox_find_sql(size), (consumer, *chunk)).fetchall()
                found.update((consumer, event_id) for (event_id,) in rows)
        return found

    async def _inbox_add_all(self, entries: Sequence[tuple[str, str, Position]]) -> None:
        now = _sqlite.now_ms()
        try:
            self._conn.executemany(
                "INSERT INTO tidings_inbox"
                "(consumer, event_id, status, topic, partition, offset, processed_ms)"
                " VALUES (?, ?, 'done', ?, ?, ?, ?)",
                [
                    (consumer, event_id, topic, partition, offset, now)
                    for consumer, event_id, (topic, partition, offset) in entries
                ],
            )
        except sqlite3.IntegrityError as exc:
            raise InboxConflictError(
                f"an inbox row already exists for one of {len(entries)} events ({exc})"
            ) from exc
        except sqlite3.Error as exc:
            self._raise(exc)

    async def _inbox_get(self, consumer: str, event_id: str) -> InboxStatus | None:
        row = self._cursor(
            "SELECT status FROM tidings_inbox WHERE consumer = ? AND event_id = ?",
            (consumer, event_id),
        ).fetchone()
        return None if row is None else InboxStatus(row[0])

    async def _inbox_delete(self, consumer: str, event_id: str) -> None:
        self._cursor(
            "DELETE FROM tidings_inbox WHERE consumer = ? AND event_id = ?", (consumer, event_id)
        )
