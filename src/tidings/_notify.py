"""Cross-process wake-ups for processes sharing one SQLite file, without busy polling.

Each listening process binds a Linux abstract-namespace datagram socket and records its name
in the database's `listeners` table. A writer, after committing, sends a short datagram to the
listeners it read from that table inside its transaction. Datagrams are hints: a lost one only
delays the receiver until its fallback poll, so correctness never depends on them.

A notice may name subjects (the topics appended to, say): its first byte says what happened,
then each subject after a NUL byte. A listener that recorded the subjects it cares about
(`Notifier.listen`) is sent only notices naming one of them, or naming none.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterable

log = logging.getLogger("tidings.notify")

Callback = Callable[[bytes], None]
"""Called with what was sent: its first byte says what happened, the rest may say more (which
topics were appended to, say); a receiver that does not know the detail reads only the first."""
MAX_DATAGRAM = 4096

SCHEMA = """
CREATE TABLE IF NOT EXISTS listeners (
    name TEXT PRIMARY KEY,
    pid INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    subjects TEXT
)
"""
"""`subjects`: NUL-separated, or NULL for every notice (also for rows of older versions)."""

Peer = tuple[str, frozenset[bytes] | None]
"""A listener's name and the subjects it cares about (None: every notice)."""


def upgrade_schema(conn: sqlite3.Connection) -> None:
    """Add `subjects` to a `listeners` table written by an older version (in a write tx)."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(listeners)")}
    if "subjects" not in columns:
        conn.execute("ALTER TABLE listeners ADD COLUMN subjects TEXT")


def _subjects(kind: bytes) -> list[bytes]:
    return kind.split(b"\0")[1:]


class Notifier:
    """Sends wake-ups to other processes and delivers received ones to local callbacks.

    Thread-safe. Local callbacks also receive what this process sends (no datagram needed)."""

    def __init__(self, path: str) -> None:
        digest = hashlib.sha1(os.path.realpath(path).encode(), usedforsecurity=False)
        self._prefix = f"tidings-{digest.hexdigest()[:16]}-"
        self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sender.setblocking(False)
        self._lock = threading.Lock()
        self._callbacks: list[Callback] = []
        self._listener: socket.socket | None = None
        self.name: str | None = None
        self._dead: set[str] = set()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._interest: set[str] | None = set()
        self._listen_lock = threading.Lock()
        self._parsed: dict[str, frozenset[bytes]] = {}

    # listening ---------------------------------------------------------------------

    def listen(
        self,
        register: Callable[[str, str | None], None],
        subjects: Collection[str] | None = None,
    ) -> None:
        """Bind this process's socket (once) and widen what it is sent to notices naming
        `subjects` (None: every notice); `register(name, recorded)` records both (INSERT OR
        REPLACE: `register_sql`) the first time and whenever the interest widens."""
        with self._listen_lock:
            with self._lock:
                first = self._listener is None
                if first:
                    bound = f"{self._prefix}{os.getpid()}-{uuid.uuid4().hex[:8]}"
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                    sock.bind("\0" + bound)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
                    self._listener = sock
                    self.name = bound
                before = None if self._interest is None else set(self._interest)
                if subjects is None:
                    self._interest = None
                elif self._interest is not None:
                    self._interest.update(subjects)
                interest = None if self._interest is None else set(self._interest)
                name = self.name
            assert name is not None
            if first or interest != before:
                register(name, None if interest is None else "\0".join(sorted(interest)))
            if first:
                self._thread = threading.Thread(
                    target=self._receive, name="tidings-notify", daemon=True
                )
                self._thread.start()

    def add(self, callback: Callback) -> None:
        with self._lock:
            self._callbacks.append(callback)

    def remove(self, callback: Callback) -> None:
        with self._lock:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

    def _receive(self) -> None:
        sock = self._listener
        assert sock is not None
        while not self._closed:
            try:
                data = sock.recv(MAX_DATAGRAM)
            except OSError:
                return
            if not data or self._closed:
                continue
            self._deliver(data)

    def _deliver(self, kind: bytes) -> None:
        with self._lock:
            callbacks = list(self._callbacks)
        for callback in callbacks:
            try:
                callback(kind)
            except Exception:
                log.exception("wake-up callback failed")

    # sending -----------------------------------------------------------------------

    def peers(self, conn: sqlite3.Connection) -> list[Peer]:
        """The listeners, read inside the writer's transaction."""
        parsed = self._parsed
        peers: list[Peer] = []
        for name, subjects in conn.execute("SELECT name, subjects FROM listeners"):
            if subjects is None:
                peers.append((name, None))
                continue
            interest = parsed.get(subjects)
            if interest is None:
                if len(parsed) > 1024:
                    parsed.clear()
                interest = parsed[subjects] = frozenset(s.encode() for s in subjects.split("\0"))
            peers.append((name, interest))
        return peers

    def send(self, kind: bytes, peers: Iterable[Peer]) -> None:
        """Wake the peers that care about `kind` (and local callbacks). Never blocks; never
        raises."""
        subjects = _subjects(kind)
        for name, interest in peers:
            if name == self.name:
                continue
            if subjects and interest is not None and interest.isdisjoint(subjects):
                continue
            try:
                self._sender.sendto(kind, "\0" + name)
            except (ConnectionRefusedError, FileNotFoundError):
                with self._lock:
                    self._dead.add(name)
            except OSError:
                pass
        self._deliver(kind)

    def forget_dead(self, conn: sqlite3.Connection) -> None:
        """Delete listeners that refused datagrams (their process is gone); in a write tx."""
        with self._lock:
            dead, self._dead = self._dead, set()
        if dead:
            conn.executemany("DELETE FROM listeners WHERE name = ?", [(n,) for n in dead])

    @staticmethod
    def register_sql(conn: sqlite3.Connection, name: str, subjects: str | None = None) -> None:
        conn.execute(
            "INSERT OR REPLACE INTO listeners(name, pid, created_ms, subjects) VALUES (?, ?, ?, ?)",
            (name, os.getpid(), int(time.time() * 1000), subjects),
        )

    def close(self, unregister: Callable[[str], None] | None = None) -> None:
        self._closed = True
        name = self.name
        if name is not None and unregister is not None:
            with contextlib.suppress(Exception):
                unregister(name)
        if self._listener is not None and name is not None:
            with contextlib.suppress(OSError):
                self._sender.sendto(b"x", "\0" + name)
            if self._thread is not None:
                self._thread.join(timeout=1.0)
            self._listener.close()
        self._sender.close()
