"""Group commit on the SQLite store: transactions that wait for the store while another runs
share its COMMIT (one fsync), each still all-or-nothing, none acknowledged before it is on
disk."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from tidings import StorageError
from tidings.stores.sqlite import SQLiteStore


@pytest.fixture
async def store(tmp_path: Path) -> SQLiteStore:
    store = SQLiteStore(f"sqlite:///{tmp_path}/service.db")
    await store.migrate(["CREATE TABLE t (n INTEGER PRIMARY KEY)"])
    return store


def count_commits(store: SQLiteStore, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    commits: list[int] = []
    commit = store._commit

    def counting(conn: sqlite3.Connection, outbox: bool) -> list[str]:
        commits.append(1)
        return commit(conn, outbox)

    monkeypatch.setattr(store, "_commit", counting)
    return commits


async def insert(store: SQLiteStore, n: int) -> None:
    async with store.transaction() as tx:
        await tx.execute("INSERT INTO t VALUES (?)", (n,))
    # acknowledged: committed, so a reader outside the transaction sees it
    assert await store.query("SELECT n FROM t WHERE n = ?", (n,)) == [(n,)]


async def test_concurrent_transactions_share_commits_and_each_is_on_disk_when_it_returns(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    commits = count_commits(store, monkeypatch)
    try:
        for slow in (False, True):  # COMMIT inline, then on the worker thread
            store._commit_s = 1.0 if slow else 0.0
            before = len(commits)
            first = 100 * slow
            await asyncio.gather(*(insert(store, first + n) for n in range(20)))
            assert len(commits) - before < 20
        assert await store.query("SELECT count(*) FROM t") == [(40,)]
    finally:
        await store.close()


async def test_a_failing_transaction_rolls_back_alone(store: SQLiteStore) -> None:
    async def failing() -> None:
        async with store.transaction() as tx:
            await tx.execute("INSERT INTO t VALUES (1000)")
            raise ValueError("no")

    async def duplicate() -> None:  # a constraint error inside the group
        async with store.transaction() as tx:
            await tx.execute("INSERT INTO t VALUES (1)")

    try:
        results = await asyncio.gather(
            *(insert(store, n) for n in range(1, 5)),
            failing(),
            duplicate(),
            *(insert(store, n) for n in range(5, 9)),
            return_exceptions=True,
        )
        assert [type(r).__name__ for r in results[4:6]] == ["ValueError", "IntegrityError"]
        assert [r for r in results[:4] + results[6:] if r is not None] == []
        rows = await store.query("SELECT n FROM t ORDER BY n")
        assert rows == [(n,) for n in range(1, 9)]
    finally:
        await store.close()


async def test_a_failed_commit_fails_every_transaction_of_its_group(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_commit(conn: sqlite3.Connection, outbox: bool) -> list[str]:
        raise sqlite3.OperationalError("disk I/O error")

    async def put(n: int) -> None:
        async with store.transaction() as tx:
            await tx.execute("INSERT INTO t VALUES (?)", (n,))

    try:
        monkeypatch.setattr(store, "_commit", failing_commit)
        results = await asyncio.gather(*(put(n) for n in range(10)), return_exceptions=True)
        assert all(isinstance(r, StorageError) for r in results), results
        monkeypatch.undo()
        assert await store.query("SELECT count(*) FROM t") == [(0,)]
        await insert(store, 1)  # the store goes on
    finally:
        await store.close()


async def test_a_cancelled_transaction_leaves_the_group_and_the_store_usable(
    store: SQLiteStore,
) -> None:
    started = asyncio.Event()

    async def hanging() -> None:
        async with store.transaction() as tx:
            await tx.execute("INSERT INTO t VALUES (500)")
            started.set()
            await asyncio.sleep(3600)

    try:
        task = asyncio.create_task(hanging())
        await started.wait()
        waiting = [asyncio.create_task(insert(store, n)) for n in range(3)]
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(asyncio.gather(*waiting), 5)
        assert await store.query("SELECT n FROM t ORDER BY n") == [(0,), (1,), (2,)]
    finally:
        await store.close()


async def test_relay_writes_wait_for_the_open_group(store: SQLiteStore) -> None:
    """A write of the relay (on its own connection) commits the group first: never "database
    is locked", never a deadlock."""
    try:
        await asyncio.wait_for(
            asyncio.gather(
                *(insert(store, n) for n in range(20)),
                *(store.outbox_release(f"relay-{n}") for n in range(5)),
            ),
            10,
        )
        assert await store.query("SELECT count(*) FROM t") == [(20,)]
    finally:
        await store.close()
