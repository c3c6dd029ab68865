"""The PostgreSQL store: a service's database in PostgreSQL (psycopg 3, async, pooled)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus
from psycopg_pool import AsyncConnectionPool

from tidings.errors import (
    DuplicateEventError,
    InboxConflictError,
    IntegrityError,
    MigrationError,
    StorageError,
    TransactionAbortedError,
)
from tidings.records import Message
from tidings.stores._codec import decode_headers, encode_headers
from tidings.stores.base import OutboxRow, Params, Row, SetAside, Store
from tidings.stores.outbox import OutboxStats
from tidings.stores.postgres._errors import (
    POOL_TIMEOUT_S,
    first_failure,
    is_connection_loss,
    translate,
)
from tidings.stores.postgres._placeholders import arguments, translate_placeholders
from tidings.stores.postgres._sql import (
    CLAIM,
    INBOX_CLEANUP,
    READ_WITH_LEASE,
    WITH_REMOVAL,
    Conn,
    channel,
    create_schema,
    lock_key,
    search_path,
)
from tidings.stores.postgres._transaction import PostgresTransaction
from tidings.stores.postgres._url import OPTIONS, parse_url, scrub
from tidings.stores.transaction import StatementFailedElsewhere

T = TypeVar("T")

REMOVAL_DELAY_S = 0.1
"""How long the removal of published outbox rows waits for a claim to go with."""

log = logging.getLogger("tidings.store.postgres")


class PostgresStore(Store):
    """The PostgreSQL store. One instance per process and database schema; safe to share between
    the tasks of one event loop. `url` is the store URL with its password masked."""

    OPTIONS = OPTIONS

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        pool_size: int | None = None,
        retry_s: float | None = None,
    ) -> None:
        self._config = parse_url(url, schema=schema, pool_size=pool_size, retry_s=retry_s)
        self.url = self._config.masked
        self.schema = self._config.schema
        self._search_path = search_path(self.schema)
        self._pool: AsyncConnectionPool[Conn] | None = None
        self._start_lock = asyncio.Lock()
        self._started = False
        self._closed = False
        self._fresh_leases: dict[str, float] = {}
        self._removals: set[int] = set()
        self._removal_flush: asyncio.TimerHandle | None = None
        self._removal_tasks: set[asyncio.Task[None]] = set()
        self._callbacks: list[Callable[[], None]] = []
        self._listener: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"PostgresStore({self.url!r})"

    # connections and errors -----------------------------------------------------------------

    def _translate(self, exc: psycopg.Error, context: str) -> Exception:
        return translate(exc, self._config, context)

    async def _connect(self, **kwargs: Any) -> Conn:
        """A new connection (autocommit), retried while the server is unreachable."""
        deadline = time.monotonic() + self._config.retry_s
        delay = 0.05
        while True:
            try:
                return await psycopg.AsyncConnection.connect(
                    self._config.conninfo, autocommit=True, **kwargs
                )
            except psycopg.OperationalError as exc:
                if not is_connection_loss(exc) or time.monotonic() + delay > deadline:
                    raise self._translate(exc, f"(retried for {self._config.retry_s:g}s)") from None
                log.warning(
                    "PostgreSQL at %s unreachable; retrying in %.2fs", self._config.where, delay
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _configure(self, conn: Conn) -> None:
        await conn.execute(self._search_path)

    async def _retrying(self, operation: Callable[[Conn], Awaitable[T]]) -> T:
        """Run `operation` on a pooled connection outside any transaction, retrying it on a
        fresh connection while the connection is lost (operations here are idempotent)."""
        await self.start()
        pool = self._pool
        assert pool is not None
        deadline = time.monotonic() + self._config.retry_s
        delay = 0.05
        while True:
            try:
                async with pool.connection() as conn:
                    return await operation(conn)
            except psycopg.OperationalError as exc:
                if not is_connection_loss(exc) or time.monotonic() + delay > deadline:
                    error = self._translate(exc, f"(retried for {self._config.retry_s:g}s)")
                    if error is exc:
                        raise
                    raise error from exc
                log.warning(
                    "connection to PostgreSQL at %s lost (%s); retrying in %.2fs",
                    self._config.where,
                    scrub(str(exc), self._config.secrets),
                    delay,
                )
                with contextlib.suppress(Exception):
                    await pool.check()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    # lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            return
        async with self._start_lock:
            if self._started:
                return
            if self._closed:
                raise StorageError(f"PostgreSQL store {self.url}: store is closed")
            conn = await self._connect()
            try:
                await create_schema(conn, self._config)
            finally:
                await conn.close()
            size = self._config.pool_size
            pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
                self._config.conninfo,
                kwargs={"autocommit": True},
                min_size=min(2, size),
                max_size=size,
                open=False,
                configure=self._configure,
                name=f"tidings-{self.schema}",
                timeout=POOL_TIMEOUT_S,
            )
            try:
                await pool.open(wait=True, timeout=max(self._config.retry_s, 5.0))
            except psycopg.Error as exc:
                await pool.close()
                raise self._translate(exc, "opening the pool") from None
            self._pool = pool
            self._started = True

    async def close(self) -> None:
        if self._closed:
            return
        with contextlib.suppress(Exception):  # else published again by the next relay
            await self._flush_removals()
        self._closed = True
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
            with contextlib.suppress(BaseException):
                await listener
        async with self._start_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    # transactions -----------------------------------------------------------------------------

    async def _checkout(self) -> tuple[Conn, AbstractAsyncContextManager[Any]]:
        """A pooled connection inside BEGIN. Connection loss up to here is retried: nothing of
        the caller's transaction has run yet."""
        pool = self._pool
        assert pool is not None
        deadline = time.monotonic() + self._config.retry_s
        delay = 0.05
        while True:
            try:
                conn = await pool.getconn()
            except psycopg.Error as exc:
                error = self._translate(exc, "checking out a connection")
                if error is exc:
                    raise
                raise error from exc
            block = conn.transaction()
            try:
                await block.__aenter__()
                return conn, block
            except psycopg.OperationalError as exc:
                await pool.putconn(conn)
                if not is_connection_loss(exc) or time.monotonic() + delay > deadline:
                    error = self._translate(exc, "at BEGIN")
                    if error is exc:
                        raise
                    raise error from exc
                with contextlib.suppress(Exception):
                    await pool.check()
            except BaseException:
                await pool.putconn(conn)
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    @contextlib.asynccontextmanager
    async def _begin(self) -> AsyncIterator[PostgresTransaction]:
        """A transaction on a pooled connection; transactions run concurrently (no store-wide
        writer lock). Connection loss while checking out a connection or at BEGIN is retried;
        inside the transaction it raises StorageError (nothing committed - or, if lost during
        COMMIT itself, an unknown outcome, which the inbox and at-least-once delivery absorb)."""
        await self.start()
        pool = self._pool
        assert pool is not None
        conn, block = await self._checkout()
        try:
            tx = PostgresTransaction(conn, self._config)
            try:
                yield tx
                if conn.info.transaction_status == TransactionStatus.INERROR:
                    raise TransactionAbortedError(
                        "a statement of this transaction failed and its error was caught, but"
                        " PostgreSQL had aborted the transaction: it was rolled back"
                    )
            except BaseException as exc:
                if not await block.__aexit__(type(exc), exc, exc.__traceback__):
                    raise
                return  # pragma: no cover - only psycopg.Rollback is swallowed
            final = tx.take_final()
            try:
                if final:
                    await _commit_with(conn, block, tx, final)
                else:
                    await block.__aexit__(None, None, None)
            except psycopg.Error as exc:
                raise self._commit_error(tx, exc) from exc
        finally:
            await pool.putconn(conn)

    def _commit_error(self, tx: PostgresTransaction, exc: psycopg.Error) -> BaseException:
        """What a failed COMMIT (with the writes sent along with it) raises: StorageError if
        the connection was lost (the outcome is unknown); else the transaction was rolled back
        and the error is the statement's - DuplicateEventError, InboxConflictError,
        IntegrityError (a constraint checked at COMMIT, or a held-back write's), or a deferred
        statement's own (StatementFailedElsewhere where deferred errors escape)."""
        if isinstance(exc, psycopg.errors.PipelineAborted):
            # libpq reported only that the writes sent with COMMIT stopped at a failed one
            error: Exception = TransactionAbortedError(
                "a statement sent with COMMIT (a deferred one, an outbox or inbox row) failed:"
                " the transaction was rolled back"
            )
            return StatementFailedElsewhere(error) if tx.deferred_errors_escape else error
        if is_connection_loss(exc):
            return self._translate(exc, "during COMMIT; its outcome is unknown")
        error = tx.final_error(exc)
        if isinstance(error, IntegrityError):
            return IntegrityError(f"at COMMIT: {exc}", exc)
        if isinstance(error, InboxConflictError | DuplicateEventError | StorageError):
            return error
        if tx.deferred_errors_escape:
            return StatementFailedElsewhere(error)
        return error

    async def migrate(self, migrations: Sequence[str]) -> int:
        """Apply the migrations not applied yet, each in its own transaction, under a session
        advisory lock so that processes starting together apply each one once. A migration may
        hold several statements (`;`-separated) but no transaction control."""
        key = lock_key("tidings.migrate", self.schema)

        async def run(conn: Conn) -> int:
            await conn.execute("SELECT pg_advisory_lock(%s)", (key,))
            try:
                return await self._migrate(conn, migrations)
            finally:
                with contextlib.suppress(psycopg.Error):
                    await conn.execute("SELECT pg_advisory_unlock(%s)", (key,))

        return await self._retrying(run)

    async def _migrate(self, conn: Conn, migrations: Sequence[str]) -> int:
        where = f"PostgreSQL at {self._config.where}, schema {self.schema!r}"
        cursor = await conn.execute("SELECT id, statement FROM tidings_migrations")
        applied: dict[int, str] = {row[0]: row[1] for row in await cursor.fetchall()}
        ran = 0
        for number, statement in enumerate(migrations, start=1):
            if number in applied:
                if applied[number] != statement:
                    raise MigrationError(
                        f"{where}: migration {number} was changed after it was applied; "
                        "add a new migration instead of editing an applied one"
                    )
                continue
            try:
                async with conn.transaction():
                    await conn.execute(statement)
                    await conn.execute(
                        "INSERT INTO tidings_migrations (id, statement) VALUES (%s, %s)",
                        (number, statement),
                    )
            except psycopg.Error as exc:
                if is_connection_loss(exc):
                    raise
                raise MigrationError(
                    f"{where}: migration {number} failed: {scrub(str(exc), ())}"
                ) from exc
            ran += 1
        return ran

    async def query(self, sql: str, params: Params = ()) -> list[Row]:
        query = translate_placeholders(sql)
        values = arguments(params)

        async def run(conn: Conn) -> list[Row]:
            cursor = await conn.execute(query, values)
            if cursor.description is None:
                return []
            return await cursor.fetchall()

        return await self._retrying(run)

    # relay side -------------------------------------------------------------------------------

    async def outbox_claim(
        self,
        relay: str,
        limit: int,
        lease_s: float,
        *,
        exclude: Collection[int] = (),
        max_bytes: int | None = None,
    ) -> list[OutboxRow] | None:
        """Rows only while `relay` holds the lease; renewed once half of it has passed.

        Never skipping a late commit: seqs come from an identity sequence when a row is
        inserted, but transactions commit in any order, so a row with a lower seq can become
        visible after rows with higher ones. So there is no watermark ("everything up to the
        highest seq seen"): a claim returns the lowest-seq rows visible now, excluded seqs
        are left out exactly, and `outbox_remove` deletes exactly the seqs it is given; a row
        that commits late is still there at the next claim. Rolled-back rows never appear.

        Only one publisher: the lease row is taken or renewed by one atomic upsert judged on
        the server's clock, and the rows are read in the same statement. `FOR UPDATE SKIP
        LOCKED` is deliberately not used: it would let a second relay publish a key's later
        rows while the first still publishes its earlier ones.

        Per-key order: rows are published in the order they become visible, in seq order
        among rows visible together. If transaction A commits before transaction B writes its
        outbox rows (B waited for A's row lock, or started after A committed, as consecutive
        deliveries of one partition do), A's seq is lower (the sequence has `CACHE 1`) and B
        cannot be visible without A: for transactions the application orders, publication
        order is commit order. Transactions that overlap without a common row have no order
        of their own; every consumer sees the one visibility order."""
        removing = list(self._removals)
        params: dict[str, Any] = {
            "relay": relay,
            "limit": limit,
            "lease_s": float(lease_s),
            "exclude": [*exclude, *removing],
            "max_bytes": 2**62 if max_bytes is None else max_bytes,
            "remove": removing,
        }

        async def read(conn: Conn, statement: str) -> list[tuple[Any, ...]]:
            async with conn.cursor(binary=True) as cursor:
                await cursor.execute(statement, params)
                return await cursor.fetchall()

        async def read_removing(conn: Conn, statement: str) -> list[tuple[Any, ...]]:
            if not removing:
                return await read(conn, statement)
            rows = await read(conn, WITH_REMOVAL[statement])
            self._removals.difference_update(removing)
            removing.clear()
            return rows

        if self._fresh_leases.get(relay, 0.0) > time.monotonic():
            rows = await self._retrying(lambda conn: read_removing(conn, READ_WITH_LEASE))
            if rows:
                return _outbox_rows(rows)
            self._fresh_leases.pop(relay, None)
        asked = time.monotonic()
        rows = await self._retrying(lambda conn: read_removing(conn, CLAIM))
        if not rows:
            self._fresh_leases.pop(relay, None)
            return None
        # The server set expires >= (its clock when asked) + lease_s, so locally the lease is
        # safely ours until asked + lease_s; renew once half of it has passed.
        self._fresh_leases[relay] = asked + lease_s / 2
        return _outbox_rows(rows)

    async def outbox_remove(self, relay: str, seqs: Sequence[int]) -> None:
        """Deletes exactly `seqs` (rows that committed late, with lower seqs, stay for the next
        claim) - with the next claim, in its round trip, or after REMOVAL_DELAY_S if none comes
        first (a relay that publishes one event at a time saves a transaction per publish).
        Until then claims and `outbox_stats` leave them out; `outbox_release` and `close` delete
        them first. A crash before that publishes them again (at least once)."""
        if not seqs:
            return
        self._removals.update(seqs)
        if self._removal_flush is None:
            loop = asyncio.get_running_loop()
            self._removal_flush = loop.call_later(REMOVAL_DELAY_S, self._start_removal)

    def _start_removal(self) -> None:
        self._removal_flush = None
        task = asyncio.get_running_loop().create_task(self._flush_removals_soon())
        self._removal_tasks.add(task)
        task.add_done_callback(self._removal_tasks.discard)

    async def _flush_removals_soon(self) -> None:
        try:
            await self._flush_removals()
        except Exception as exc:  # left for the next claim, which raises if it fails too
            log.warning("%s: removing published outbox rows failed (%r); retried", self, exc)

    async def _flush_removals(self) -> None:
        """Delete the rows whose removal was deferred."""
        if self._removal_flush is not None:
            self._removal_flush.cancel()
            self._removal_flush = None
        ids = list(self._removals)
        if not ids:
            return

        async def remove(conn: Conn) -> None:
            if len(ids) == 1:  # plain parameters: cheaper on both sides than an array
                await conn.execute("DELETE FROM tidings_outbox WHERE seq = %s", (ids[0],))
            else:
                await conn.execute(
                    "DELETE FROM tidings_outbox WHERE seq = ANY(%s::bigint[])", (ids,)
                )

        await self._retrying(remove)
        self._removals.difference_update(ids)

    async def outbox_set_aside(self, relay: str, items: Sequence[SetAside]) -> None:
        if not items:
            return

        async def set_aside(conn: Conn) -> None:
            async with conn.transaction():
                for item in items:
                    cursor = await conn.execute(
                        "WITH moved AS (DELETE FROM tidings_outbox WHERE seq = %s RETURNING *)"
                        " INSERT INTO tidings_outbox_unpublishable"
                        " (seq, topic, event_id, key, value, headers, created, error)"
                        " SELECT seq, topic, event_id, key, value, headers, created, %s FROM moved",
                        (item.row.seq, item.error),
                    )
                    if cursor.rowcount != 1 or item.notice is None:
                        continue
                    topic, notice_id, message = item.notice
                    await conn.execute(
                        "INSERT INTO tidings_outbox (topic, event_id, key, value, headers)"
                        " VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                        (
                            topic,
                            notice_id,
                            message.key,
                            message.value,
                            encode_headers(message.headers),
                        ),
                    )

        await self._retrying(set_aside)

    async def outbox_release(self, relay: str) -> None:
        self._fresh_leases.pop(relay, None)
        await self._flush_removals()

        async def release(conn: Conn) -> None:
            await conn.execute(
                "DELETE FROM tidings_relay_lease WHERE name = 'outbox' AND holder = %s", (relay,)
            )

        await self._retrying(release)

    async def outbox_stats(self) -> OutboxStats:
        [(pending, age)] = await self.query(
            "SELECT count(*), extract(epoch FROM clock_timestamp() - min(created))::float8"
            " FROM tidings_outbox WHERE seq <> ALL(?::bigint[])",
            (list(self._removals),),
        )
        return OutboxStats(int(pending), None if age is None else max(0.0, float(age)))

    async def inbox_cleanup(
        self, consumer_prefix: str, committed: dict[tuple[str, int], int], older_than_s: float
    ) -> int:
        if not committed:
            return 0
        topics = [topic for topic, _ in committed]
        partitions = [partition for _, partition in committed]
        offsets = list(committed.values())

        async def cleanup(conn: Conn) -> int:
            cursor = await conn.execute(
                INBOX_CLEANUP,
                (
                    topics,
                    partitions,
                    offsets,
                    consumer_prefix,
                    consumer_prefix,
                    float(older_than_s),
                ),
                prepare=False,  # planned with its cutoff (see INBOX_CLEANUP)
            )
            return cursor.rowcount

        return await self._retrying(cleanup)

    # wake-ups ---------------------------------------------------------------------------------

    def on_outbox(self, callback: Callable[[], None]) -> None:
        """Call `callback` when a transaction with outbox rows commits in any process using this
        database schema (LISTEN on a dedicated connection, reconnected with backoff; after a
        reconnect the callback runs once, since notifications may have been missed). Must be
        called with the store's event loop running."""
        self._callbacks.append(callback)
        if self._listener is None and not self._closed:
            loop = asyncio.get_running_loop()
            self._listener = loop.create_task(self._listen(), name="tidings-postgres-listen")

    def _wake(self) -> None:
        for callback in list(self._callbacks):
            try:
                callback()
            except Exception:
                log.exception("outbox wake-up callback failed")

    async def _listen(self) -> None:
        delay = 0.1
        missed = False
        while not self._closed:
            try:
                conn = await psycopg.AsyncConnection.connect(self._config.conninfo, autocommit=True)
                async with conn:
                    await conn.execute(
                        sql.SQL("LISTEN {}").format(sql.Identifier(channel(self.schema)))
                    )
                    if missed:
                        self._wake()
                    missed = False
                    delay = 0.1
                    while not self._closed:
                        async for notify in conn.notifies(timeout=30.0):
                            if notify.payload == self.schema:
                                self._wake()
                        # Quiet for a while: make sure the connection is still alive.
                        await asyncio.wait_for(conn.execute("SELECT 1"), 10.0)
            except asyncio.CancelledError:
                raise
            except (psycopg.Error, OSError, TimeoutError) as exc:
                missed = True
                log.warning(
                    "outbox LISTEN connection to PostgreSQL at %s failed (%s); reconnecting "
                    "in %.1fs",
                    self._config.where,
                    scrub(str(exc), self._config.secrets),
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)


def _outbox_rows(rows: list[tuple[Any, ...]]) -> list[OutboxRow]:
    return [
        OutboxRow(
            seq,
            topic,
            event_id,
            Message(value, key, decode_headers(headers) if headers else ()),
        )
        for seq, topic, event_id, key, value, headers in rows
        if seq is not None
    ]


async def _commit_with(
    conn: Conn,
    block: AbstractAsyncContextManager[Any],
    tx: PostgresTransaction,
    final: list[tuple[Any, list[Params]]],
) -> None:
    """COMMIT with the last writes held back before it, in one pipeline (one round trip).
    Raises the first error; the transaction is then rolled back."""
    failure: psycopg.Error | None = None
    committing = False
    try:
        async with conn.pipeline():
            try:
                for statement, params in final:
                    if len(params) == 1:  # its error is reported (executemany's may not be)
                        await tx.cursor.execute(statement, params[0])
                    else:
                        await tx.cursor.executemany(statement, params)
                committing = True
                await block.__aexit__(None, None, None)
            except psycopg.Error as exc:
                failure = exc  # raised below: leaving the pipeline would log it otherwise
    except psycopg.Error as exc:
        # the statement's own error, not the "pipeline aborted" of those skipped after it
        if failure is None or isinstance(failure, psycopg.errors.PipelineAborted):
            failure = first_failure(exc)
    if failure is None:
        return
    with contextlib.suppress(psycopg.Error):
        if not committing:
            await block.__aexit__(type(failure), failure, failure.__traceback__)
        elif conn.info.transaction_status != TransactionStatus.IDLE:
            await conn.rollback()
    raise failure
