"""SQLite plumbing shared by the sqlite broker and store: URLs, connections, write
transactions that never surface "database is locked", and clear storage errors."""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

from tidings.errors import ConfigError, StorageError

T = TypeVar("T")

SYNCHRONOUS = ("off", "normal", "full", "extra")
BUSY_DEADLINE_S = 120.0
CLOSE_WAIT_S = 10.0


@dataclass(frozen=True, slots=True)
class SQLiteURL:
    path: str
    options: dict[str, str]


def parse_url(url: str, *, allowed: set[str]) -> SQLiteURL:
    """`sqlite:///relative/path.db` or `sqlite:////absolute/path.db`, with `?option=value`."""
    parts = urlsplit(url)
    if parts.scheme != "sqlite":
        raise ConfigError(f"not a sqlite URL: {url!r}")
    if parts.netloc:
        raise ConfigError(
            f"sqlite URL {url!r} has a host {parts.netloc!r}; use sqlite:///relative/path.db "
            "or sqlite:////absolute/path.db"
        )
    path = unquote(parts.path)
    path = path[1:] if path.startswith("/") else path
    if not path or path.endswith("/"):
        raise ConfigError(f"sqlite URL {url!r} names no database file")
    if path == ":memory:" or path.startswith("file:"):
        raise ConfigError(
            f"sqlite URL {url!r}: an in-memory SQLite database cannot be shared between "
            "connections; use memory:// for an in-memory broker"
        )
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join(unknown)} in {url!r}; "
            f"known: {', '.join(sorted(allowed)) or 'none'}"
        )
    return SQLiteURL(path, options)


def now_ms() -> int:
    """Wall-clock milliseconds: how the SQLite files keep times."""
    return int(time.time() * 1000)


def synchronous_option(value: str | None, default: str = "full") -> str:
    level = (value or default).lower()
    if level not in SYNCHRONOUS:
        raise ConfigError(f"synchronous must be one of {', '.join(SYNCHRONOUS)}, got {value!r}")
    return level


_READONLY, _IOERR, _CORRUPT, _FULL, _CANTOPEN, _NOTADB = 8, 10, 11, 13, 14, 26
"""SQLite's primary result codes that mean the file, not the statement, is the problem."""


def translate(exc: sqlite3.Error, path: str) -> Exception:
    """StorageError naming the file for corruption, permission, space and I/O errors; `exc`
    itself for everything else (constraint violations, SQL errors, busy)."""
    code = getattr(exc, "sqlite_errorcode", None)
    text = str(exc)
    if code is None:  # raised by the sqlite3 module itself, not by SQLite
        return exc
    primary = code & 0xFF
    if primary == _READONLY:
        return StorageError(f"{path}: the database is read-only ({text})")
    if primary == _CANTOPEN:
        return StorageError(f"{path}: cannot open the database file ({text})")
    if primary in (_IOERR, _FULL):
        return StorageError(f"{path}: {text}")
    if primary in (_CORRUPT, _NOTADB):
        return StorageError(
            f"{path}: not a usable SQLite database; it is corrupt or not a database ({text})"
        )
    return exc


class storage_errors:
    """Turn SQLite's corruption, permission and I/O errors into StorageError naming the file.
    A class, not a generator: it wraps every statement on the hot paths."""

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if isinstance(exc, sqlite3.Error):
            translated = translate(exc, self.path)
            if translated is not exc:
                raise translated from exc


def is_busy(exc: sqlite3.Error) -> bool:
    text = str(exc)
    return "locked" in text or "busy" in text


def retry_busy(fn: Callable[[], T], path: str) -> T:
    """Run `fn`, retrying while SQLite reports the database busy or locked (bounded)."""
    deadline = time.monotonic() + BUSY_DEADLINE_S
    delay = 0.001
    while True:
        try:
            with storage_errors(path):
                return fn()
        except sqlite3.OperationalError as exc:
            if not is_busy(exc) or time.monotonic() > deadline:
                if is_busy(exc):
                    raise StorageError(
                        f"{path}: still locked by another process after {BUSY_DEADLINE_S:.0f}s"
                    ) from exc
                raise
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 0.05)


def _create_private(path: str) -> None:
    """Create the missing directories of `path` with mode 0700 and the database file itself
    with mode 0600 (SQLite gives its -wal and -shm files the database file's mode), so that
    data tidings creates is private whatever the umask. What exists already is left alone."""
    directory = os.path.dirname(os.path.abspath(path))
    missing = []
    while not os.path.isdir(directory):
        missing.append(directory)
        parent = os.path.dirname(directory)
        if parent == directory:
            break
        directory = parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            continue  # made meanwhile by someone else: theirs, left as it is
        except OSError as exc:
            raise StorageError(f"{path}: cannot create directory {directory}: {exc}") from exc
        os.chmod(directory, 0o700)  # the umask may have taken bits away
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return
    except OSError as exc:
        raise StorageError(f"{path}: cannot create the database file: {exc}") from exc
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


class Database:
    """One SQLite file in WAL mode; one connection per thread, created on first use.

    `write(fn)` runs `fn(conn)` in a BEGIN IMMEDIATE transaction (retried while busy) and
    commits; `read(fn)` runs it outside a transaction. Safe to use from any thread, also while
    another thread closes it: `close()` waits for reads and writes in progress (closing a
    connection under a running statement would crash the interpreter), and later ones raise
    StorageError. With
    `autocheckpoint=False` its connections never checkpoint the WAL when they commit (SQLite's
    default is to, in whichever connection's commit finds the WAL over 1000 pages); the owner
    must then call `checkpoint()` from time to time. A missing file is created private (see
    `_create_private`)."""

    def __init__(
        self, path: str, *, synchronous: str = "full", autocheckpoint: bool = True
    ) -> None:
        self.path = path
        self.synchronous = synchronous
        self.autocheckpoint = autocheckpoint
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._in_use = 0
        self.closed = False
        _create_private(path)

    def connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            if self.closed:
                raise StorageError(f"{self.path}: database is closed")
            conn = retry_busy(self._open, self.path)
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def open_connection(self, *, busy_timeout_s: float = BUSY_DEADLINE_S) -> sqlite3.Connection:
        """A new connection of its own (not the thread's), closed with the database."""
        conn = retry_busy(lambda: self._open(busy_timeout_s), self.path)
        with self._lock:
            self._all.append(conn)
        return conn

    def _open(self, busy_timeout_s: float = BUSY_DEADLINE_S) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=BUSY_DEADLINE_S
        )
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StorageError(f"{self.path}: cannot switch to WAL mode (got {mode!r})")
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
            if not self.autocheckpoint:
                conn.execute("PRAGMA wal_autocheckpoint=0")
        except BaseException:
            conn.close()
            raise
        return conn

    @contextlib.contextmanager
    def _using(self) -> Iterator[None]:
        """Count an operation in progress, so `close()` waits for it."""
        with self._lock:
            if self.closed:
                raise StorageError(f"{self.path}: database is closed")
            self._in_use += 1
        try:
            yield
        finally:
            with self._lock:
                self._in_use -= 1
                if not self._in_use:
                    self._idle.notify_all()

    def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._using():
            return self._write(fn)

    def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self.connection()

        def attempt() -> T:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise
            return result

        return retry_busy(attempt, self.path)

    def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._using():
            conn = self.connection()
            return retry_busy(lambda: fn(conn), self.path)

    def checkpoint(self) -> None:
        """Copy every committed WAL frame into the database file and make the next writer
        start the WAL over (a RESTART checkpoint: it waits, like a writer, for other writers
        and for readers of older snapshots), on this thread's connection."""
        self.read(lambda conn: conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchall())

    def close(self) -> None:
        """Close every connection once the operations in progress finished (waiting at most
        CLOSE_WAIT_S; connections still in use then are left open rather than pulled
        from under a running statement). Idempotent."""
        with self._lock:
            self.closed = True
            self._idle.wait_for(lambda: not self._in_use, timeout=CLOSE_WAIT_S)
            if self._in_use:
                return
            conns, self._all = self._all, []
        for conn in conns:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
