from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from tidings.stores.sqlite import CHECKPOINT_INTERVAL_S, SQLiteStore
from tidings.stores.sqlite._store import CLEANUP_CHUNK
from tidings.testing.store_contract import StoreContract

T = TypeVar("T")


class TestSQLiteStore(StoreContract):
    @pytest.fixture
    def store_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path}/service.db"


async def test_commit_runs_inline_while_fast_and_on_the_worker_thread_when_slow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SQLiteStore(f"sqlite:///{tmp_path}/service.db")
    await store.migrate(["CREATE TABLE t (n INTEGER)"])
    threads: list[int] = []
    commit = store._commit

    def recording_commit(conn: sqlite3.Connection, outbox: bool) -> list[str]:
        threads.append(threading.get_ident())
        return commit(conn, outbox)

    monkeypatch.setattr(store, "_commit", recording_commit)
    try:
        store._commit_s = 0.0  # as after fast fsyncs
        async with store.transaction() as tx:
            await tx.execute("INSERT INTO t VALUES (1)")
        store._commit_s = 1.0  # as after slow fsyncs
        async with store.transaction() as tx:
            await tx.execute("INSERT INTO t VALUES (2)")
        assert threads[0] == threading.get_ident()
        assert threads[1] != threading.get_ident()
        assert await store.query("SELECT n FROM t ORDER BY n") == [(1,), (2,)]
    finally:
        await store.close()


async def test_wal_is_checkpointed_in_the_background(tmp_path: Path) -> None:
    """The store's connections never checkpoint when they commit; a background thread does."""
    path = tmp_path / "service.db"
    store = SQLiteStore(f"sqlite:///{path}")
    await store.migrate(["CREATE TABLE blobs (b BLOB)"])
    try:
        assert store._conn is not None
        assert store._conn.execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)
        before = path.stat().st_size
        await asyncio.sleep(CHECKPOINT_INTERVAL_S)
        async with store.transaction() as tx:
            await tx.execute("INSERT INTO blobs VALUES (?)", (b"x" * 200_000,))
        for _ in range(100):
            if path.stat().st_size > before + 200_000:
                break
            await asyncio.sleep(0.02)
        assert path.stat().st_size > before + 200_000
    finally:
        await store.close()


async def test_wal_starts_over_after_checkpoints(tmp_path: Path) -> None:
    """Checkpoints let the WAL restart from its beginning: its file stays bounded by what is
    written between two checkpoints, not by everything ever written."""
    path = tmp_path / "service.db"
    store = SQLiteStore(f"sqlite:///{path}")
    await store.migrate(["CREATE TABLE blobs (b BLOB)"])
    try:
        for _ in range(40):
            async with store.transaction() as tx:
                await tx.execute("INSERT INTO blobs VALUES (?)", (b"x" * 200_000,))
            await asyncio.sleep(CHECKPOINT_INTERVAL_S / 8)
        assert (tmp_path / "service.db-wal").stat().st_size < 5_000_000  # 8 MB written
    finally:
        await store.close()


async def test_inbox_cleanup_reads_only_expired_rows_and_removes_them_in_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cleanup goes through the index on `processed_ms` (a file of an older version gets it
    when opened): rows within their retention are not read at all - before, each cleanup read
    the whole inbox with the write lock held - and expired rows go in transactions of at most
    CLEANUP_CHUNK, so the lock is never held long."""
    path = tmp_path / "service.db"
    store = SQLiteStore(f"sqlite:///{path}")
    await store.migrate([])
    await store.close()
    conn = sqlite3.connect(path)
    conn.execute("DROP INDEX tidings_inbox_processed")  # as a file of an older version
    now_ms = int(time.time() * 1000)
    rows = [("svc.h", f"e-{n}", "t", n % 2, n, now_ms - 3_600_000) for n in range(12_000)]
    rows += [("svc.h", f"f-{n}", "t", n % 2, 12_000 + n, now_ms) for n in range(30_000)]
    conn.executemany("INSERT INTO tidings_inbox VALUES (?, ?, 'done', ?, ?, ?, ?)", rows)
    conn.commit()
    conn.close()

    store = SQLiteStore(f"sqlite:///{path}")
    await store.migrate([])
    assert store._relay_db is not None
    steps: list[int] = []  # SQLite VM steps (in thousands) of each cleanup transaction
    write = store._relay_db.write

    def counted_write(fn: Callable[[sqlite3.Connection], T]) -> T:
        def counted(conn: sqlite3.Connection) -> T:
            steps.append(0)

            def step() -> int:
                steps[-1] += 1
                return 0

            conn.set_progress_handler(step, 1000)
            try:
                return fn(conn)
            finally:
                conn.set_progress_handler(None, 0)

        return write(counted)

    monkeypatch.setattr(store._relay_db, "write", counted_write)
    committed = {("t", 0): 50_000, ("t", 1): 50_000}
    try:
        assert await store.inbox_cleanup("svc.", committed, 600) == 12_000
        assert len(steps) >= 12_000 // CLEANUP_CHUNK
        left = await store.query("SELECT count(*), min(event_id) FROM tidings_inbox")
        assert left == [(30_000, "f-0")]
        steps.clear()
        assert await store.inbox_cleanup("svc.", committed, 600) == 0
        assert sum(steps) < 3, steps  # reading the 30,000 rows within retention: ~100
    finally:
        await store.close()
