"""A transaction of the PostgreSQL store."""

from __future__ import annotations

import itertools
import operator
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.rows import TupleRow

from tidings.errors import (
    DuplicateEventError,
    InboxConflictError,
    IntegrityError,
    TransactionAbortedError,
)
from tidings.stores._codec import encode_headers
from tidings.stores.inbox import InboxKey, InboxStatus, Position
from tidings.stores.postgres._errors import first_failure, translate
from tidings.stores.postgres._placeholders import arguments, translate_placeholders
from tidings.stores.postgres._sql import (
    INBOX_ADD_ALL,
    INBOX_ADD_ONE,
    INBOX_FIND,
    INBOX_FIND_ONE,
    INBOX_PRIMARY_KEY,
    OUTBOX_ADD_ALL,
    OUTBOX_ADD_ONE,
    OUTBOX_UNIQUE,
    TAKE_LOCKS,
    TAKE_SEQUENCE,
    TAKE_SEQUENCES,
    Conn,
    channel,
    lock_key,
    one_or_arrays,
)
from tidings.stores.postgres._url import PostgresURL
from tidings.stores.transaction import OutboxEntry, Params, Row, SequenceKey, Transaction

_PIPELINES = psycopg.AsyncPipeline.is_supported()
"""Whether libpq has pipeline mode (version 14+; psycopg[binary] bundles a recent one)."""


class PostgresTransaction(Transaction):
    """A transaction on one pooled connection (the store's `_begin`). Outbox rows are written
    just before COMMIT (or at `flush()`) by one statement that also queues a NOTIFY, which
    PostgreSQL delivers at commit to every process listening through `on_outbox`."""

    driver_errors = (psycopg.Error,)
    IMMEDIATE_CONSTRAINTS = "SET CONSTRAINTS ALL IMMEDIATE"

    def __init__(self, conn: Conn, config: PostgresURL) -> None:
        super().__init__()
        self._conn = conn
        self._config = config
        self._cursor = conn.cursor()
        """One cursor for every statement (its adapters are looked up once per transaction);
        each caller reads a statement's results before the next statement runs."""
        self._final: list[tuple[Any, list[Params]]] = []
        """Once finishing (see `Transaction.finish`), the last writes held back: (statement,
        parameter sets) to send in one pipeline with COMMIT (`take_final`)."""

    @property
    def cursor(self) -> psycopg.AsyncCursor[TupleRow]:
        return self._cursor

    def take_final(self) -> list[tuple[Any, list[Params]]]:
        """The last writes held back for COMMIT (cleared)."""
        final, self._final = self._final, []
        return final

    def _holding(self) -> bool:
        return self.finishing and _PIPELINES

    def _usable_after_interruption(self) -> bool:
        # cancelled (a timeout, a shutdown) before the statement finished: PostgreSQL may have
        # aborted the transaction, or be still running the statement
        return self._conn.info.transaction_status == TransactionStatus.INTRANS

    def _copy_params(self, params: Params) -> Params:
        return tuple(arguments(params))

    def _error(self, exc: Exception) -> Exception:
        """`exc` translated: TransactionAbortedError, IntegrityError, StorageError, or itself."""
        if isinstance(exc, psycopg.errors.InFailedSqlTransaction):
            return TransactionAbortedError(
                "PostgreSQL had aborted the transaction at an earlier statement; it can only be"
                " rolled back"
            )
        if isinstance(exc, psycopg.IntegrityError):
            return IntegrityError(str(exc), exc)
        if isinstance(exc, psycopg.OperationalError):
            return translate(exc, self._config, "in a transaction; it was rolled back")
        return exc

    async def _exec(
        self, query: Any, params: Sequence[Any], *, prepare: bool | None = None
    ) -> psycopg.AsyncCursor[TupleRow]:
        try:
            return await self._cursor.execute(query, params, prepare=prepare)
        except psycopg.Error as exc:
            error = self._error(exc)
            if error is exc:
                raise
            raise error from exc

    async def _run(self, statement: str, params: Params) -> psycopg.AsyncCursor[TupleRow]:
        return await self._exec(translate_placeholders(statement), arguments(params))

    async def _execute(self, sql: str, params: Params) -> int:
        return (await self._run(sql, params)).rowcount

    async def _fetchall(self, sql: str, params: Params) -> list[Row]:
        cursor = await self._run(sql, params)
        if cursor.description is None:
            return []
        return await cursor.fetchall()

    async def _lock(self, names: Sequence[str]) -> None:
        """Transaction-scoped advisory locks on keys hashed from the schema and each name,
        taken in the keys' order (a collision only makes two names share a lock)."""
        keys = sorted({lock_key("tidings.lock", self._config.schema, name) for name in names})
        await self._exec(TAKE_LOCKS, (keys,))

    async def _run_deferred(self, pending: Sequence[tuple[str, Params]]) -> None:
        """One pipeline: consecutive runs of the same statement as one `executemany`, one
        round trip for the lot (instead of one per statement). Without pipeline support in
        libpq (before version 14), one round trip per statement."""
        runs = _runs(pending)
        if self._holding():
            self._final.extend(runs)
            return
        try:
            await self._send(runs)
        except Exception as exc:
            error = self._error(exc)
            if error is exc:
                raise
            raise error from exc

    async def _send(self, runs: Sequence[tuple[Any, list[Params]]]) -> None:
        if not _PIPELINES:
            await self._execute_runs(runs)
            return
        failure: psycopg.Error | None = None
        try:
            async with self._conn.pipeline():
                try:
                    await self._execute_runs(runs)
                except psycopg.Error as exc:
                    failure = exc  # raised below: leaving the pipeline would log it otherwise
        except psycopg.Error as exc:
            failure = failure or first_failure(exc)
        if failure is not None:
            raise failure

    async def _execute_runs(self, runs: Sequence[tuple[Any, list[Params]]]) -> None:
        for statement, params in runs:
            await self._cursor.executemany(statement, params)

    def _hold(self, statement: Any, params: Sequence[Any]) -> bool:
        """Hold a last write back for COMMIT if finishing; False: run it now."""
        if not self._holding():
            return False
        self._final.append((statement, [params]))
        return True

    async def _write_outbox(self, rows: Sequence[OutboxEntry]) -> None:
        """One statement for the lot, which also queues the NOTIFY that wakes relays."""
        statement, params = one_or_arrays(
            [(t, e, m.key, m.value, encode_headers(m.headers)) for t, e, m in rows],
            OUTBOX_ADD_ONE,
            OUTBOX_ADD_ALL,
        )
        params += (channel(self._config.schema), self._config.schema)
        if self._hold(statement, params):
            return
        try:
            await self._cursor.execute(statement, params)
        except psycopg.Error as exc:
            error = self.final_error(exc)
            if error is exc:
                raise
            raise error from exc

    def final_error(self, exc: psycopg.Error) -> Exception:
        """`exc` of an outbox or inbox write (or of a statement sent with COMMIT) translated:
        DuplicateEventError, InboxConflictError, or as `_error`."""
        if isinstance(exc, psycopg.errors.UniqueViolation):
            detail = exc.diag.message_detail or exc
            if exc.diag.constraint_name == OUTBOX_UNIQUE:
                return DuplicateEventError(
                    "an event id was published twice to one topic in this transaction or while "
                    f"still in the outbox ({detail})"
                )
            if exc.diag.constraint_name == INBOX_PRIMARY_KEY:
                return InboxConflictError(f"an inbox row already exists for an event ({detail})")
        return self._error(exc)

    async def _take_sequences(
        self, counts: Sequence[tuple[SequenceKey, int]]
    ) -> dict[SequenceKey, int]:
        """One statement: an upsert that locks each key's row until the transaction ends
        (after the last writes held back so far, which keep their order)."""
        if self._final:
            try:
                await self._send(self.take_final())
            except psycopg.Error as exc:
                error = self.final_error(exc)
                if error is exc:
                    raise
                raise error from exc
        rows = [(scope, key, count) for (scope, key), count in counts]
        cursor = await self._exec(*one_or_arrays(rows, TAKE_SEQUENCE, TAKE_SEQUENCES))
        return {(scope, bytes(key)): last for scope, key, last in await cursor.fetchall()}

    async def _inbox_add(
        self, consumer: str, event_id: str, position: Position, status: InboxStatus
    ) -> bool:
        cursor = await self._exec(
            'INSERT INTO tidings_inbox (consumer, event_id, status, topic, partition, "offset")'
            " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            (consumer, event_id, status.value, *position),
        )
        return cursor.rowcount == 1

    async def _inbox_find(self, keys: Sequence[InboxKey]) -> set[InboxKey]:
        statement, params = one_or_arrays(keys, INBOX_FIND_ONE, INBOX_FIND)
        # INBOX_FIND is planned for each batch (see there)
        cursor = await self._exec(
            statement, params, prepare=None if statement is INBOX_FIND_ONE else False
        )
        return {(consumer, event_id) for consumer, event_id in await cursor.fetchall()}

    async def _inbox_add_all(self, entries: Sequence[tuple[str, str, Position]]) -> None:
        statement, params = one_or_arrays(
            [(consumer, event_id, *position) for consumer, event_id, position in entries],
            INBOX_ADD_ONE,
            INBOX_ADD_ALL,
        )
        if self._hold(statement, params):
            return
        try:
            await self._exec(statement, params)
        except IntegrityError as exc:
            orig = exc.orig
            if not (
                isinstance(orig, psycopg.errors.UniqueViolation)
                and orig.diag.constraint_name == INBOX_PRIMARY_KEY
            ):
                raise
            raise InboxConflictError(
                f"an inbox row already exists for one of {len(entries)} events "
                f"({orig.diag.message_detail or orig})"
            ) from orig

    async def _inbox_get(self, consumer: str, event_id: str) -> InboxStatus | None:
        cursor = await self._exec(
            "SELECT status FROM tidings_inbox WHERE consumer = %s AND event_id = %s",
            (consumer, event_id),
        )
        row = await cursor.fetchone()
        return None if row is None else InboxStatus(row[0])

    async def _inbox_delete(self, consumer: str, event_id: str) -> None:
        await self._exec(
            "DELETE FROM tidings_inbox WHERE consumer = %s AND event_id = %s",
            (consumer, event_id),
        )


def _runs(pending: Sequence[tuple[str, Params]]) -> list[tuple[Any, list[Params]]]:
    """Consecutive runs of one statement (translated), each with its parameter sets."""
    return [
        (translate_placeholders(statement), [params for _, params in run])
        for statement, run in itertools.groupby(pending, key=operator.itemgetter(0))
    ]
