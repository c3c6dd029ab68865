"""The SQLite store: a service's database in one SQLite file."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from tidings import _sqlite
from tidings._notify import Notifier, Peer
from tidings.errors import IntegrityError, MigrationError, StorageError
from tidings.records import Message
from tidings.stores._codec import decode_headers, encode_headers
from tidings.stores.base import OutboxRow, Params, Row, SetAside, Store
from tidings.stores.outbox import OutboxStats
from tidings.stores.sqlite._schema import create_schema, split_statements
from tidings.stores.sqlite._transaction import SQLiteTransaction

T = TypeVar("T")
log = logging.getLogger("tidings.store")

INBOX_CLEANUP = (
    "DELETE FROM tidings_inbox WHERE (consumer, event_id) IN ("
    " SELECT consumer, event_id FROM tidings_inbox INDEXED BY tidings_inbox_processed"
    " WHERE processed_ms < ? AND consumer >= ? AND consumer < ? AND status = 'done'"
    " AND topic = ? AND partition = ? AND offset < ? LIMIT ?)"
)
"""Through the index on `processed_ms`: only the rows past their retention are read. By the
primary key (the planner's choice for the consumer range, which covers the whole inbox) every
cleanup read every row while holding the write lock: ~1 s per million rows, each
INBOX_CLEANUP_S."""
CLEANUP_CHUNK = 5_000
"""Inbox rows removed per transaction, shared among the partitions (~20 ms of write lock)."""

OUTBOX_COMMITTED = b"o"
INLINE_COMMIT_MAX_S = 0.002
"""COMMIT runs on the event loop's thread while the recent average commit is faster."""
MAX_GROUP = 256
"""Transactions committed together at most (group commit: they share one COMMIT)."""
CHECKPOINT_INTERVAL_S = 0.25
"""Least time between two WAL checkpoints (one is started after a commit)."""


class SQLiteStore(Store):
    """The SQLite store. Share one instance per file and process."""

    OPTIONS = {"synchronous"}

    def __init__(self, url: str, *, synchronous: str | None = None) -> None:
        parsed = _sqlite.parse_url(url, allowed=self.OPTIONS)
        self.url = url
        self.path = parsed.path
        level = _sqlite.synchronous_option(synchronous or parsed.options.get("synchronous"))
        self._db = _sqlite.Database(self.path, synchronous=level, autocheckpoint=False)
        self._relay_db = _sqlite.Database(self.path, synchronous="normal", autocheckpoint=False)
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="tidings-store")
        self._checkpointing: asyncio.Task[None] | None = None
        self._next_checkpoint = 0.0
        self._commit_s = 0.0
        self._lock: asyncio.Lock | None = None
        self._joining = 0
        """Transactions waiting for `_lock` to begin: they can join the open group."""
        self._group: _Group | None = None
        """The transactions sharing the writer connection's open SQLite transaction."""
        self._background: set[asyncio.Task[None]] = set()
        self._conn: sqlite3.Connection | None = None
        self._relay_conn: sqlite3.Connection | None = None
        self._checkpoint_conn: sqlite3.Connection | None = None
        self.notifier = Notifier(self.path)
        self._started = False
        self._closed = False

    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._worker, fn, *args)

    async def _write(self, fn: Callable[[sqlite3.Connection], T], *, inline: bool = True) -> T:
        """A short relay/maintenance write outside `transaction()`, serialized with it: inline
        on the relay connection unless another process holds the write lock (or `inline` is
        false: long maintenance), then on the worker thread, waiting for the lock.

        Uses synchronous=normal, so its COMMIT does not fsync: losing one to a power cut only
        means a row is published again or a lease taken again, which at-least-once delivery
        already allows."""
        await self.start()
        assert self._lock is not None and self._relay_conn is not None
        conn = self._relay_conn
        await self._acquire()
        try:
            if self._group is not None:  # the writer connection holds SQLite's write lock
                await self._commit_uncancelled(self._group)
            began = False
            if inline:
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    began = True
                except sqlite3.OperationalError as exc:
                    if not _sqlite.is_busy(exc):
                        raise _sqlite.translate(exc, self.path) from exc
            if began:
                try:
                    with _sqlite.storage_errors(self.path):
                        result = fn(conn)
                        conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        self._rollback(conn)
                    raise
            else:
                result = await self._io(self._relay_db.write, fn)
        finally:
            self._lock.release()
        self._maybe_checkpoint()
        return result

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """`fn(conn)` outside any transaction: inline on the relay connection (a WAL reader
        does not wait for writers), or on a thread, retried, in the rare case SQLite reports
        the database busy (another connection recovering the WAL)."""
        await self.start()
        assert self._relay_conn is not None
        try:
            with _sqlite.storage_errors(self.path):
                return fn(self._relay_conn)
        except sqlite3.OperationalError as exc:
            if not _sqlite.is_busy(exc):
                raise
        return await asyncio.to_thread(self._relay_db.read, fn)

    async def start(self) -> None:
        if self._started:
            return
        if self._closed:
            raise StorageError(f"{self.path}: store is closed")
        self._lock = asyncio.Lock()
        await self._io(self._db.write, lambda conn: create_schema(conn, self.path))
        self._conn = await self._io(lambda: self._db.open_connection(busy_timeout_s=0))
        self._relay_conn = await self._io(lambda: self._relay_db.open_connection(busy_timeout_s=0))
        self._checkpoint_conn = await self._io(lambda: self._db.open_connection(busy_timeout_s=0))
        self._started = True

    async def migrate(self, migrations: Sequence[str]) -> int:
        await self.start()
        applied: dict[int, str] = {
            row[0]: row[1]
            for row in await self.query("SELECT id, statement FROM tidings_migrations")
        }
        ran = 0
        for number, statement in enumerate(migrations, start=1):
            if number in applied:
                if applied[number] != statement:
                    raise MigrationError(
                        f"{self.path}: migration {number} was changed after it was applied; "
                        "add a new migration instead of editing an applied one"
                    )
                continue
            try:
                async with self.transaction() as tx:
                    for part in split_statements(statement):
                        await tx.execute(part)
                    await tx.execute(
                        "INSERT INTO tidings_migrations(id, statement, applied_ms)"
                        " VALUES (?, ?, ?)",
                        (number, statement, _sqlite.now_ms()),
                    )
            except (sqlite3.Error, IntegrityError) as exc:
                raise MigrationError(f"{self.path}: migration {number} failed: {exc}") from exc
            ran += 1
        return ran

    async def _acquire(self, *, joining: bool = False) -> None:
        """Take the store's lock; a transaction about to begin is counted in `_joining`
        meanwhile (other waiters - relay writes, a group member waiting for its COMMIT, close -
        are not: a group is not held open for them)."""
        assert self._lock is not None
        if not joining:
            await self._lock.acquire()
            return
        self._joining += 1
        try:
            await self._lock.acquire()
        finally:
            self._joining -= 1

    @contextlib.asynccontextmanager
    async def _begin(self) -> AsyncIterator[SQLiteTransaction]:
        """A transaction of the service, committed together with the transactions waiting for
        the store when it ends (group commit: one COMMIT, one fsync with `synchronous=full`,
        for all of them).

        Transactions run one at a time under the store's lock, each in a savepoint of the
        writer connection's SQLite transaction: one that fails rolls back to its savepoint
        alone. When one ends and others are waiting, it lets them run in the same SQLite
        transaction and waits its turn again; whichever finds the group still open then - or
        finds nobody waiting, or `MAX_GROUP` transactions in it - commits it. Every
        transaction of a group returns (or raises, if its COMMIT failed) only once that COMMIT
        is done: nothing is acknowledged before it is on disk. A transaction may see what an
        earlier one of its group wrote before that is committed; both then commit, or fail,
        together, as if they had run one after the other.

        BEGIN IMMEDIATE runs inline, unless another process holds the write lock (then it waits
        on the worker thread). COMMIT runs inline while commits are fast (their recent average
        below INLINE_COMMIT_MAX_S), since a hop to a thread and back costs more than a fast
        fsync; on a slow disk it runs on the worker thread, so the event loop is never blocked
        long - and the transactions arriving meanwhile form the next group."""
        await self.start()
        assert self._lock is not None and self._conn is not None
        conn = self._conn
        await self._acquire(joining=True)
        group = self._group
        try:
            if group is None:
                await self._begin_immediate(conn)
                group = self._group = _Group(asyncio.get_running_loop().create_future())
            with _sqlite.storage_errors(self.path):
                conn.execute("SAVEPOINT tidings_tx")
        except BaseException:
            await asyncio.shield(self._leave_failed(conn, group))
            raise
        tx = SQLiteTransaction(conn, self.path)
        try:
            yield tx
            with _sqlite.storage_errors(self.path):
                conn.execute("RELEASE tidings_tx")
        except BaseException:
            await asyncio.shield(self._leave_failed(conn, group))
            raise
        group.members += 1
        group.outbox = group.outbox or bool(tx.outbox)
        await self._leave(group)

    async def _begin_immediate(self, conn: sqlite3.Connection) -> None:
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if not _sqlite.is_busy(exc):
                raise _sqlite.translate(exc, self.path) from exc
            await self._io(_sqlite.retry_busy, lambda: conn.execute("BEGIN IMMEDIATE"), self.path)

    async def _leave(self, group: _Group) -> None:
        """After a transaction of `group` (holding the lock): let the transactions waiting
        join the group and wait for its COMMIT, or commit it. Returns once it is committed;
        raises if that failed."""
        assert self._lock is not None
        await asyncio.sleep(0)  # transactions ready to start join this group
        if self._joining and group.members < MAX_GROUP:
            self._lock.release()
            try:
                await self._acquire()
            except BaseException:
                # cancelled while waiting its turn: the group is committed by whoever uses the
                # store next (a transaction, a relay write, close) - or by this task
                asyncio.get_running_loop().create_task(self._commit_soon(group))
                raise
            if group.done.done():
                self._lock.release()
                _raise_if_failed(group, self.path)
                return
        try:
            if group is self._group:
                await self._commit_uncancelled(group)
        finally:
            self._lock.release()
        _raise_if_failed(group, self.path)

    async def _leave_failed(self, conn: sqlite3.Connection, group: _Group | None) -> None:
        """After a transaction that failed (holding the lock): roll it back to its savepoint,
        and leave the group to the transactions waiting, or commit what the group did before
        it. If SQLite rolled back its whole transaction (an I/O error, a full disk), the group
        fails."""
        assert self._lock is not None
        try:
            if group is None or group is not self._group:
                return
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK TO tidings_tx")
                    conn.execute("RELEASE tidings_tx")
            if not conn.in_transaction:
                self._group = None
                _fail(group, StorageError(f"{self.path}: the transaction was rolled back"))
            elif self._joining:
                return  # they commit it
            elif group.members:
                await self._commit_uncancelled(group)
            else:
                self._group = None
                self._rollback(conn)
                group.done.set_result(None)
        finally:
            self._lock.release()

    async def _commit_soon(self, group: _Group) -> None:
        assert self._lock is not None
        await self._acquire()
        try:
            if group is self._group:
                await self._commit_uncancelled(group)
        finally:
            self._lock.release()

    async def _commit_uncancelled(self, group: _Group) -> None:
        """`_commit_group` (holding the lock). While commits are fast it is awaited directly:
        it never suspends then, so nothing else runs on the loop meanwhile. Else it runs as a
        task finished even if this task is cancelled meanwhile (the lock must not be released
        while the connection commits); a cancellation is raised afterwards."""
        if self._commit_s < INLINE_COMMIT_MAX_S:
            await self._commit_group(group)
            return
        task = asyncio.ensure_future(self._commit_group(group))
        cancelled = False
        while not task.done():
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                cancelled = True
        if cancelled:
            raise asyncio.CancelledError

    async def _commit_group(self, group: _Group) -> None:
        """COMMIT `group` (holding the lock) and settle its members: `group.done` is set, or
        fails with the error of the COMMIT. Never raises."""
        conn = self._conn
        assert conn is not None
        self._group = None
        try:
            if self._commit_s < INLINE_COMMIT_MAX_S:
                peers = self._commit(conn, group.outbox)
            else:
                peers = await self._io(self._commit, conn, group.outbox)
        except BaseException as exc:
            if conn.in_transaction:
                await asyncio.shield(self._io(self._rollback, conn))
            _fail(group, exc)
            return
        group.done.set_result(None)
        if group.outbox:
            self.notifier.send(OUTBOX_COMMITTED, peers)
        self._maybe_checkpoint()

    def _commit(self, conn: sqlite3.Connection, outbox: bool) -> list[Peer]:
        """COMMIT (on either thread); keeps the average commit time. Returns the processes to
        wake if the transaction wrote outbox rows."""
        with _sqlite.storage_errors(self.path):
            peers = self.notifier.peers(conn) if outbox else []
            started = time.perf_counter()
            conn.execute("COMMIT")
            self._commit_s = 0.8 * self._commit_s + 0.2 * (time.perf_counter() - started)
        return peers

    def _maybe_checkpoint(self) -> None:
        """Start a WAL checkpoint unless one ran recently or is running. The store's
        connections never checkpoint when they commit (that would block the event loop for the
        copy); a passive checkpoint on the worker thread copies what it can without waiting
        for anyone - a long-lived reader of the file (a `sqlite3` shell, a backup) never holds
        up a transaction - and the next writer starts the WAL over once it was all copied."""
        if self._checkpointing is not None or self._closed:
            return
        if time.monotonic() < self._next_checkpoint:
            return
        self._next_checkpoint = time.monotonic() + CHECKPOINT_INTERVAL_S
        self._checkpointing = asyncio.get_running_loop().create_task(self._checkpoint())

    async def _checkpoint(self) -> None:
        """A passive checkpoint on the worker thread: never waits for readers or writers."""
        conn = self._checkpoint_conn
        assert conn is not None
        try:
            await self._io(lambda: conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall())
        except Exception:
            log.exception("%s: WAL checkpoint failed; will retry", self.path)
        finally:
            self._checkpointing = None

    @staticmethod
    def _rollback(conn: sqlite3.Connection) -> None:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")

    async def query(self, sql: str, params: Params = ()) -> list[Row]:
        await self.start()
        return await asyncio.to_thread(self._db.read, lambda c: c.execute(sql, params).fetchall())

    # relay side -------------------------------------------------------------------------

    async def outbox_claim(
        self,
        relay: str,
        limit: int,
        lease_s: float,
        *,
        exclude: Collection[int] = (),
        max_bytes: int | None = None,
    ) -> list[OutboxRow] | None:
        """Writers are serialized, so seqs follow commit order and a claim's rows are the
        oldest ones: every row up to the highest excluded seq came from earlier claims, and
        the rows returned are those above it."""
        await self.start()
        lease_ms = int(lease_s * 1000)
        after = max(exclude, default=0)

        def read(conn: sqlite3.Connection) -> list[OutboxRow] | None:
            """The rows, if `relay` holds a lease with more than half of it left."""
            row = conn.execute(
                "SELECT holder, expires_ms FROM tidings_relay_lease WHERE name = 'outbox'"
            ).fetchone()
            if row is None or row[0] != relay or row[1] - _sqlite.now_ms() < lease_ms // 2:
                return None
            return _outbox_rows(conn, limit, after, max_bytes)

        def claim(conn: sqlite3.Connection) -> list[OutboxRow] | None:
            now = _sqlite.now_ms()
            row = conn.execute(
                "SELECT holder, expires_ms FROM tidings_relay_lease WHERE name = 'outbox'"
            ).fetchone()
            if row is not None and row[0] != relay and row[1] > now:
                return None
            conn.execute(
                "INSERT INTO tidings_relay_lease(name, holder, expires_ms) VALUES ('outbox', ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,"
                " expires_ms = excluded.expires_ms",
                (relay, now + lease_ms),
            )
            return _outbox_rows(conn, limit, after, max_bytes)

        rows = await self._read(read)
        if rows is not None:
            return rows
        return await self._write(claim)

    async def outbox_remove(self, relay: str, seqs: Sequence[int]) -> None:
        """One range delete per run of consecutive seqs (usually one): no other row can have a
        seq inside such a run."""
        if not seqs:
            return
        runs = _runs(sorted(seqs))

        def remove(conn: sqlite3.Connection) -> None:
            conn.executemany("DELETE FROM tidings_outbox WHERE seq BETWEEN ? AND ?", runs)

        await self._write(remove)

    async def outbox_set_aside(self, relay: str, items: Sequence[SetAside]) -> None:
        if not items:
            return
        now = _sqlite.now_ms()

        def set_aside(conn: sqlite3.Connection) -> list[Peer] | None:
            """Peers to wake if a notice was added, else None."""
            noticed = False
            for item in items:
                moved = conn.execute(
                    "INSERT INTO tidings_outbox_unpublishable"
                    "(seq, topic, event_id, key, value, headers, created_ms, error, set_aside_ms)"
                    " SELECT seq, topic, event_id, key, value, headers, created_ms, ?, ?"
                    " FROM tidings_outbox WHERE seq = ?",
                    (item.error, now, item.row.seq),
                ).rowcount
                if not moved:
                    continue
                conn.execute("DELETE FROM tidings_outbox WHERE seq = ?", (item.row.seq,))
                if item.notice is not None:
                    topic, notice_id, message = item.notice
                    conn.execute(
                        "INSERT INTO tidings_outbox"
                        "(topic, event_id, key, value, headers, created_ms)"
                        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                        (
                            topic,
                            notice_id,
                            message.key,
                            message.value,
                            encode_headers(message.headers),
                            now,
                        ),
                    )
                    noticed = True
            return self.notifier.peers(conn) if noticed else None

        peers = await self._write(set_aside)
        if peers is not None:
            self.notifier.send(OUTBOX_COMMITTED, peers)

    async def outbox_release(self, relay: str) -> None:
        def release(conn: sqlite3.Connection) -> None:
            conn.execute(
                "DELETE FROM tidings_relay_lease WHERE name = 'outbox' AND holder = ?", (relay,)
            )

        await self._write(release)

    async def outbox_stats(self) -> OutboxStats:
        [(pending, oldest)] = await self.query(
            "SELECT count(*), min(created_ms) FROM tidings_outbox"
        )
        age = None if oldest is None else max(0.0, (_sqlite.now_ms() - oldest) / 1000)
        return OutboxStats(int(pending), age)

    async def inbox_cleanup(
        self, consumer_prefix: str, committed: dict[tuple[str, int], int], older_than_s: float
    ) -> int:
        cutoff = _sqlite.now_ms() - int(older_than_s * 1000)

        prefix_range = (consumer_prefix, consumer_prefix + "\uffff")
        partitions = list(committed.items())
        limit = max(100, CLEANUP_CHUNK // max(1, len(partitions)))

        def chunk(conn: sqlite3.Connection) -> tuple[int, bool]:
            """Up to `limit` rows per partition; and whether any partition has more."""
            removed, more = 0, False
            for (topic, partition), offset in partitions:
                params = (cutoff, *prefix_range, topic, partition, offset, limit)
                count = conn.execute(INBOX_CLEANUP, params).rowcount
                removed += count
                more = more or count == limit
            return removed, more

        total, more = 0, bool(partitions)
        while more:  # a transaction per chunk: the write lock is never held long
            removed, more = await self._write(chunk, inline=False)
            total += removed
        return total

    def on_outbox(self, callback: Callable[[], None]) -> None:
        def on_signal(kind: bytes) -> None:
            if kind == OUTBOX_COMMITTED:
                callback()

        self.notifier.add(on_signal)
        self.notifier.listen(self._register_listener)

    def _register_listener(self, name: str, subjects: str | None) -> None:
        """Record this process's wake-up socket in the file. On an event loop, by a task that
        writes under the store's lock: a blocking write here could wait for the SQLite
        transaction of a group of this very loop, which cannot commit meanwhile."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._db.write(lambda c: Notifier.register_sql(c, name, subjects))
            return

        async def register() -> None:
            try:
                await self._write(lambda c: Notifier.register_sql(c, name, subjects))
            except Exception:
                log.exception("%s: recording the relay's wake-up socket failed", self.path)

        task = loop.create_task(register())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in list(self._background):
            task.cancel()
        if self._lock is not None:
            await self._acquire()
            try:
                if self._group is not None:
                    await self._commit_uncancelled(self._group)
            finally:
                self._lock.release()
        if self._checkpointing is not None:
            with contextlib.suppress(Exception):
                await self._checkpointing
        await self._io(self._close)
        self._worker.shutdown(wait=True)

    def _close(self) -> None:
        def unregister(name: str) -> None:
            self._db.write(lambda c: c.execute("DELETE FROM listeners WHERE name = ?", (name,)))

        self.notifier.close(unregister)
        self._db.close()
        self._relay_db.close()


def _outbox_rows(
    conn: sqlite3.Connection, limit: int, after: int, max_bytes: int | None
) -> list[OutboxRow]:
    rows: list[OutboxRow] = []
    total = 0
    for seq, topic, event_id, key, value, headers in conn.execute(
        "SELECT seq, topic, event_id, key, value, headers FROM tidings_outbox"
        " WHERE seq > ? ORDER BY seq LIMIT ?",
        (after, limit),
    ):
        if max_bytes is not None:
            total += len(value) + (len(key) if key else 0) + (len(headers) if headers else 0)
            if total > max_bytes and rows:
                break
        rows.append(
            OutboxRow(
                seq,
                topic,
                event_id,
                Message(value, key, decode_headers(headers) if headers else ()),
            )
        )
    return rows


def _runs(seqs: Sequence[int]) -> list[tuple[int, int]]:
    """Sorted `seqs` as (first, last) runs of consecutive integers."""
    runs: list[tuple[int, int]] = []
    for seq in seqs:
        if runs and runs[-1][1] == seq - 1:
            runs[-1] = (runs[-1][0], seq)
        else:
            runs.append((seq, seq))
    return runs


class _Group:
    """Transactions sharing one SQLite transaction of the writer connection, committed once."""

    __slots__ = ("done", "members", "outbox")

    def __init__(self, done: asyncio.Future[None]) -> None:
        self.done = done
        """Set once the COMMIT is done; its error if it failed."""
        self.members = 0
        """Transactions of the group that ended well (their work awaits the COMMIT)."""
        self.outbox = False


def _fail(group: _Group, error: BaseException) -> None:
    if not group.done.done():
        group.done.set_exception(error)


def _raise_if_failed(group: _Group, path: str) -> None:
    """The error of the group's COMMIT, raised for one of its transactions."""
    error = group.done.exception()
    if error is None:
        return
    if isinstance(error, StorageError | sqlite3.Error):
        raise StorageError(f"{path}: the commit failed: {error}") from error
    raise StorageError(f"{path}: the commit failed ({error!r})") from error
