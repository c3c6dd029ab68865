from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from tidings.stores.sqlite import CHECKPOINT_INTERVAL_S, SQLiteStore
from tidings.testing.store_contract import StoreContract


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
