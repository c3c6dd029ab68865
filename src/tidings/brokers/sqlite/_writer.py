"""The embedded broker's publishing thread."""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import queue
import sqlite3
import threading
from collections.abc import Sequence

from tidings import _sqlite
from tidings._notify import Peer
from tidings.brokers._local import appended
from tidings.brokers.sqlite._log import SQLiteLog
from tidings.errors import BrokerClosedError, StorageError
from tidings.records import Message, Published

log = logging.getLogger("tidings.sqlite")

MAX_WRITE_GROUP = 100_000
CLOSE_JOIN_S = 2.0
"""How long `close` waits for the publishing thread to finish what it is writing."""

_Publish = tuple[str, Sequence[Message], concurrent.futures.Future[list[Published]]]


def _fail(publishes: Sequence[_Publish], error: BaseException) -> None:
    for _, _, future in publishes:
        if not future.done():
            future.set_exception(error)


class Writer:
    """The broker's publishing thread: drains queued publishes and writes them in one
    transaction (group commit), so concurrent publishers share one fsync.

    Cancelling a publish is safe: one cancelled before the thread takes it from the queue is
    not written; once taken it can no longer be cancelled, and is written whole (or fails
    whole) with its result dropped. A publish that fails (unknown topic, a record that cannot
    be stored...) fails alone; a transaction that fails fails its own publishes; the thread
    goes on. Should it stop all the same, the publishes it held or had queued fail, and the
    next `submit` starts a new one; both are logged."""

    def __init__(self, log_: SQLiteLog, synchronous: str) -> None:
        self._log = log_
        self._db = _sqlite.Database(log_.path, synchronous=synchronous)
        self._queue: queue.SimpleQueue[_Publish | None] = queue.SimpleQueue()
        self._round_robin: dict[str, itertools.count[int]] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._stopped = False
        self._thread = self._start()

    def _start(self) -> threading.Thread:
        thread = threading.Thread(target=self._run, name="tidings-writer", daemon=True)
        thread.start()
        return thread

    def submit(
        self, topic: str, messages: Sequence[Message]
    ) -> concurrent.futures.Future[list[Published]]:
        future: concurrent.futures.Future[list[Published]] = concurrent.futures.Future()
        with self._lock:
            if self._closed:
                raise BrokerClosedError("broker is closed")
            self._queue.put((topic, messages, future))
            if self._stopped or not self._thread.is_alive():
                log.error(
                    "%s: the publishing thread had stopped; starting a new one", self._log.path
                )
                self._stopped = False
                self._thread = self._start()
        return future

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
            if item is not None and item[2].set_running_or_notify_cancel():
                taken.append(item)

    def _take(self) -> tuple[list[_Publish], bool]:
        """The next publishes to write together, waiting for the first, without those
        cancelled meanwhile; and whether `close` asked the thread to stop."""
        group: list[_Publish] = []
        size = 0
        item = self._queue.get()
        while True:
            if item is None:
                return group, True
            if item[2].set_running_or_notify_cancel():
                group.append(item)
                size += len(item[1])
            if size >= MAX_WRITE_GROUP:
                return group, False
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return group, False

    def _run(self) -> None:
        group: list[_Publish] = []
        try:
            while True:
                group, stop = self._take()
                if group:
                    try:
                        self._write(group)
                    except Exception as exc:
                        if not isinstance(exc, StorageError):
                            log.exception(
                                "%s: writing %d publishes failed", self._log.path, len(group)
                            )
                        _fail(group, exc)
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
        outcomes: list[list[Published] | BaseException] = []

        def tx(conn: sqlite3.Connection) -> list[Peer]:
            outcomes.clear()
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
            return self._log.notifier.peers(conn)

        peers = self._db.write(tx)
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
