"""The embedded broker's writer: publishes of the event loop written on its own thread, the
others (and those that would wait for the write lock) on a publishing thread."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Sequence
from typing import Final

from tidings import _sqlite
from tidings._notify import Peer
from tidings.brokers._local import appended
from tidings.brokers.sqlite._log import SQLiteLog
from tidings.errors import BrokerClosedError, StorageError
from tidings.records import Message, Published

log = logging.getLogger("tidings.sqlite")

MAX_WRITE_GROUP = 100_000
INLINE_COMMIT_MAX_S = 0.002
"""Publishes are written on the event loop's thread while the recent average COMMIT is faster
than this (else, a slow disk, on the publishing thread, not to hold up the loop)."""
INLINE_MAX_MESSAGES = 1_000
"""A publish of more messages goes to the publishing thread (its writing would hold up the loop)."""
MAINTAIN_INTERVAL_S = 1.0
"""Least time between two asks to the publishing thread, after publishes written on the event
loop, to enforce retention (which it also does after its own writes; at most every
`RETENTION_CHECK_S`)."""
CLOSE_JOIN_S = 2.0
"""How long `close` waits for the publishing thread to finish what it is writing."""

_Publish = tuple[str, Sequence[Message], concurrent.futures.Future[list[Published]]]
_Pending = tuple[str, Sequence[Message], "asyncio.Future[list[Published] | None]"]
"""A publish of the event loop waiting for its transaction; its future's result is None when
it is to go to the publishing thread instead (another connection holds the write lock)."""
_Outcome = list[Published] | BaseException
_MAINTAIN: Final[_Publish] = ("", (), concurrent.futures.Future())
"""Queued for the publishing thread: enforce retention if due."""


def _fail(publishes: Sequence[_Publish | _Pending], error: BaseException) -> None:
    for _, _, future in publishes:
        if not future.done():
            future.set_exception(error)


class Writer:
    """Writes publishes in transactions shared by the publishes ready together (group
    commit: concurrent publishers share one fsync).

    `publish` on the first event loop that publishes writes on that loop's thread, once the
    publishes ready in the same loop iteration have joined (no thread hand-off: that costs
    about as much CPU as the write). It goes to the publishing thread instead when another
    connection (process) holds the write lock, while commits are slow, for a publish of more
    than INLINE_MAX_MESSAGES, and from other loops; `submit` (any thread) always does. The
    thread drains its queue into one transaction, and enforces retention for both. Both
    connections checkpoint the WAL as SQLite does by default (in the commit that finds it over
    1000 pages, a few ms): a WAL that is not started over makes every fsync slower.

    Cancelling a publish is safe: one cancelled before its transaction starts is not written;
    once started it is written whole (or fails whole) with its result dropped. A publish that
    fails (unknown topic, a record that cannot be stored...) fails alone; a transaction that
    fails fails its own publishes. Should the thread stop, the publishes it held or had queued
    fail, and the next `submit` starts a new one; both are logged."""

    def __init__(self, log_: SQLiteLog, synchronous: str) -> None:
        self._log = log_
        self._db = _sqlite.Database(log_.path, synchronous=synchronous)
        self._queue: queue.SimpleQueue[_Publish | None] = queue.SimpleQueue()
        self._round_robin: dict[str, itertools.count[int]] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._stopped = False
        self._thread = self._start()
        self._commit_s = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_conn: sqlite3.Connection | None = None
        self._pending: list[_Pending] = []
        self._maintain_at = 0.0

    def _start(self) -> threading.Thread:
        thread = threading.Thread(target=self._run, name="tidings-writer", daemon=True)
        thread.start()
        return thread

    async def publish(self, topic: str, messages: Sequence[Message]) -> list[Published]:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._bind(loop)
        if (
            loop is self._loop
            and self._commit_s < INLINE_COMMIT_MAX_S
            and len(messages) <= INLINE_MAX_MESSAGES
        ):
            future: asyncio.Future[list[Published] | None] = loop.create_future()
            self._pending.append((topic, messages, future))
            if len(self._pending) == 1:
                loop.call_soon(self._flush)
            published = await future
            if published is not None:
                return published
        return await asyncio.wrap_future(self.submit(topic, messages))

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Write the publishes of `loop` on its thread, on a connection of its own that never
        waits for the write lock."""
        with self._lock:
            if self._closed:
                raise BrokerClosedError("broker is closed")
            if self._loop is not None:
                return
            conn = self._db.open_connection(busy_timeout_s=0)
            self._loop_conn, self._loop = conn, loop

    def _flush(self) -> None:
        """Write the loop's pending publishes (on its thread, from a callback: nothing can
        cancel them once started), or send them to the publishing thread if the write lock is
        taken."""
        pending, self._pending = self._pending, []
        group: list[_Pending] = []
        size = 0
        for item in pending:
            if size >= MAX_WRITE_GROUP:
                self._pending.append(item)
            elif not item[2].cancelled():
                group.append(item)
                size += len(item[1])
        if self._pending:
            asyncio.get_running_loop().call_soon(self._flush)
        if not group:
            return
        assert self._loop_conn is not None
        try:
            if self._closed:
                raise BrokerClosedError("broker is closed")
            (outcomes, peers), commit_s = self._db.try_write(
                self._loop_conn, lambda conn: self._append(conn, group)
            )
        except _sqlite.Busy:
            for _, _, future in group:
                future.set_result(None)
            return
        except BaseException as exc:
            _fail(group, exc)
            if not isinstance(exc, Exception):
                raise
            return
        self._commit_s = 0.8 * self._commit_s + 0.2 * commit_s
        self._settle(group, outcomes, peers)
        now = time.monotonic()
        if now >= self._maintain_at:
            self._maintain_at = now + MAINTAIN_INTERVAL_S
            with contextlib.suppress(BrokerClosedError):
                self._put(_MAINTAIN)

    def submit(
        self, topic: str, messages: Sequence[Message]
    ) -> concurrent.futures.Future[list[Published]]:
        future: concurrent.futures.Future[list[Published]] = concurrent.futures.Future()
        self._put((topic, messages, future))
        return future

    def _put(self, item: _Publish) -> None:
        with self._lock:
            if self._closed:
                raise BrokerClosedError("broker is closed")
            self._queue.put(item)
            if self._stopped or not self._thread.is_alive():
                log.error(
                    "%s: the publishing thread had stopped; starting a new one", self._log.path
                )
                self._stopped = False
                self._thread = self._start()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._queue.put(None)
            thread = self._thread
        thread.join(CLOSE_JOIN_S)
        _fail(self._drain(), BrokerClosedError("broker is closed"))  # left by a stopped thread
        if thread.is_alive():
            # still writing: waiting for a lock another process holds, say. Its publish may yet
            # commit or roll back (at-least-once either way); a daemon, it ends with the process.
            log.warning(
                "%s: the publishing thread is still writing; the broker closes without it",
                self._log.path,
            )
            return
        self._db.close()

    def _drain(self) -> list[_Publish]:
        """Take every queued publish that was not cancelled."""
        taken: list[_Publish] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return taken
            if (
                item is not None
                and item is not _MAINTAIN
                and item[2].set_running_or_notify_cancel()
            ):
                taken.append(item)

    def _take(self) -> tuple[list[_Publish], bool, bool]:
        """The next publishes to write together, waiting for the first, without those
        cancelled meanwhile; whether maintenance was asked for; and whether `close` asked the
        thread to stop."""
        group: list[_Publish] = []
        size = 0
        maintain = False
        item = self._queue.get()
        while True:
            if item is None:
                return group, maintain, True
            if item is _MAINTAIN:
                maintain = True
            elif item[2].set_running_or_notify_cancel():
                group.append(item)
                size += len(item[1])
            if size >= MAX_WRITE_GROUP:
                return group, maintain, False
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return group, maintain, False

    def _run(self) -> None:
        group: list[_Publish] = []
        try:
            while True:
                group, maintain, stop = self._take()
                if group:
                    try:
                        self._write(group)
                    except Exception as exc:
                        if not isinstance(exc, StorageError):
                            log.exception(
                                "%s: writing %d publishes failed", self._log.path, len(group)
                            )
                        _fail(group, exc)
                if group or maintain:
                    group = []
                    self._log.maybe_enforce_retention()
                if stop:
                    return
        except BaseException as exc:
            # Fail what this thread took (it may be half done: only SQLite knows); what is still
            # queued goes to a new thread, started now unless the broker is closing.
            with self._lock:
                if self._closed:
                    group += self._drain()
                elif self._queue.empty():
                    self._stopped = True  # the next submit starts a new one
                else:
                    self._thread = self._start()
            log.critical(
                "%s: the publishing thread stopped; a new one takes over",
                self._log.path,
                exc_info=True,
            )
            _fail(
                group,
                StorageError(
                    f"{self._log.path}: the publishing thread stopped ({exc!r}) while writing "
                    "this publish; it may or may not have been written"
                ),
            )

    def _write(self, group: list[_Publish]) -> None:
        """Write `group` on this thread's connection (waiting for the write lock)."""
        appended_: list[tuple[list[_Outcome], list[Peer]]] = []
        done = 0.0

        def tx(conn: sqlite3.Connection) -> None:
            nonlocal done
            appended_[:] = [self._append(conn, group)]
            done = time.perf_counter()

        self._db.write(tx)
        self._commit_s = 0.8 * self._commit_s + 0.2 * (time.perf_counter() - done)
        [(outcomes, peers)] = appended_
        self._settle(group, outcomes, peers)

    def _append(
        self, conn: sqlite3.Connection, group: Sequence[_Publish | _Pending]
    ) -> tuple[list[_Outcome], list[Peer]]:
        """Append each publish of `group` (in a write transaction): its places, or the error
        that failed it alone; and the processes to wake."""
        outcomes: list[_Outcome] = []
        now = _sqlite.now_ms()
        for topic, messages, _ in group:
            counter = self._round_robin.setdefault(topic, itertools.count())
            conn.execute("SAVEPOINT publish")
            try:
                outcomes.append(self._log.append(conn, topic, messages, counter, now))
            except sqlite3.Error:
                raise  # the file, not this publish: the whole transaction rolls back
            except Exception as exc:
                conn.execute("ROLLBACK TO publish")
                outcomes.append(exc)
            conn.execute("RELEASE publish")
        self._log.notifier.forget_dead(conn)
        return outcomes, self._log.notifier.peers(conn)

    def _settle(
        self,
        group: Sequence[_Publish | _Pending],
        outcomes: list[_Outcome],
        peers: list[Peer],
    ) -> None:
        """After the commit: wake the consumers of the topics written, settle each publish."""
        written = {
            topic
            for (topic, _, _), outcome in zip(group, outcomes, strict=True)
            if not isinstance(outcome, BaseException)
        }
        if written:  # consumers of other topics are not woken
            self._log.notifier.send(appended(written), peers)
        for (_, _, future), outcome in zip(group, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
