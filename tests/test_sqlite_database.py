"""SQLite files as the broker and the store use them (tidings._sqlite.Database): closing one
while another thread uses it, and the modes of the files and directories tidings creates."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import sqlite3
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tidings import Message
from tidings._sqlite import Database
from tidings.brokers.sqlite import SQLiteBroker
from tidings.errors import StorageError
from tidings.stores import connect_store

COUNT_TO_3M = (
    "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3000000)"
    " SELECT count(*) FROM r"
)


def test_close_waits_for_a_statement_running_on_another_thread(tmp_path: Path) -> None:
    """Closing a connection under a running statement crashes the interpreter; close() must
    wait for it instead, and later use must be a clear error."""
    db = Database(str(tmp_path / "x.db"))
    started = threading.Event()
    results: list[int] = []

    def slow_read() -> None:
        def count(conn: object) -> int:
            started.set()
            return int(db.connection().execute(COUNT_TO_3M).fetchone()[0])

        results.append(db.read(count))

    reader = threading.Thread(target=slow_read)
    reader.start()
    assert started.wait(10)
    db.close()
    assert results == [3_000_000]  # close() returned only after the statement finished
    reader.join(30)
    with pytest.raises(StorageError, match="closed"):
        db.read(lambda conn: conn.execute("SELECT 1").fetchone())
    db.close()  # idempotent


@pytest.fixture(params=[0o022, 0o000], ids=["umask022", "umask000"])
def permissive_umask(request: pytest.FixtureRequest) -> Iterator[None]:
    old = os.umask(request.param)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> str:
    return oct(stat.S_IMODE(path.stat().st_mode))


def _modes(db: Path) -> dict[str, str]:
    """The modes of the database file, its -wal and -shm files, and its directories up to
    the test's own."""
    files = {
        name: _mode(db.parent / name) for name in (db.name, f"{db.name}-wal", f"{db.name}-shm")
    }
    return {**files, "dir": _mode(db.parent), "parent dir": _mode(db.parent.parent)}


PRIVATE = {"dir": "0o700", "parent dir": "0o700"}


async def test_a_broker_creates_private_directories_and_files(
    tmp_path: Path, permissive_umask: None
) -> None:
    db = tmp_path / "new" / "dir" / "bus.db"
    async with SQLiteBroker(f"sqlite:///{db}") as broker:
        await broker.admin.create_topic("t")
        await broker.publish("t", [Message(b"private")])
        modes = _modes(db)  # while open: the -wal and -shm files exist
    assert modes == {"bus.db": "0o600", "bus.db-wal": "0o600", "bus.db-shm": "0o600", **PRIVATE}


async def test_a_store_creates_private_directories_and_files(
    tmp_path: Path, permissive_umask: None
) -> None:
    db = tmp_path / "new" / "dir" / "s.db"
    async with connect_store(f"sqlite:///{db}") as store:
        async with store.transaction() as tx:
            await tx.execute("CREATE TABLE notes (text TEXT)")
            await tx.execute("INSERT INTO notes VALUES ('private')")
        modes = _modes(db)
    assert modes == {"s.db": "0o600", "s.db-wal": "0o600", "s.db-shm": "0o600", **PRIVATE}


def test_existing_directories_and_files_keep_their_modes(
    tmp_path: Path, permissive_umask: None
) -> None:
    """What the user made is theirs: tidings changes no mode it did not create."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    db = shared / "x.db"
    sqlite3.connect(db).close()
    db.chmod(0o640)
    database = Database(str(db))
    database.write(lambda conn: conn.execute("CREATE TABLE t (x)"))
    try:
        assert _modes(db) == {
            "x.db": "0o640",
            "x.db-wal": "0o640",
            "x.db-shm": "0o640",
            "dir": "0o755",
            "parent dir": _mode(tmp_path),
        }
    finally:
        database.close()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs mounted for the test. Skipped where it cannot be mounted (not root), but
    under CI=true (which runs as root) a failed mount fails the test."""
    disk = tmp_path / "disk"
    disk.mkdir()
    problem = None
    if os.geteuid() != 0:
        problem = "needs root to mount a small tmpfs"
    else:
        mount = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)],
            capture_output=True,
            text=True,
        )
        if mount.returncode != 0:
            problem = f"cannot mount a tmpfs: {mount.stderr.strip() or mount.returncode}"
    if problem is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(problem)
        pytest.skip(problem)
    try:
        yield disk
    finally:
        if subprocess.run(["umount", str(disk)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(disk)], check=True)


def _fill(disk: Path, leave: int) -> Path:
    """A file taking all the space of `disk` but about `leave` bytes."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as out:
        chunk = bytes(64 * 1024)
        try:
            while True:
                out.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler


def _integrity(db: Path) -> list[tuple[str]]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return conn.execute("PRAGMA integrity_check").fetchall()


async def test_a_broker_on_a_full_disk_fails_publishes_loses_nothing_and_resumes(
    small_disk: Path,
) -> None:
    """Publishes on a full disk raise StorageError naming the file and write nothing; those
    acknowledged before are kept; once space is freed, publishing works again."""
    db = small_disk / "bus.db"
    async with SQLiteBroker(f"sqlite:///{db}") as broker:
        await broker.admin.create_topic("t", 2)
        filler = _fill(small_disk, leave=256 * 1024)
        acked: list[bytes] = []
        failures: list[StorageError] = []
        for round_ in range(1000):
            # concurrent publishes: the broker writes them in one transaction
            calls = [
                [f"{round_}.{c}:{i}:".encode() + bytes(1000) for i in range(10)] for c in range(4)
            ]
            outcomes = await asyncio.gather(
                *(broker.publish("t", [Message(v, key=v[:6]) for v in vs]) for vs in calls),
                return_exceptions=True,
            )
            for values, outcome in zip(calls, outcomes, strict=True):
                if isinstance(outcome, StorageError):
                    failures.append(outcome)
                else:
                    assert isinstance(outcome, list), outcome
                    acked += values
            if len(failures) >= 3:  # failing again does not make matters worse
                break
        assert failures, "the disk never filled up"
        assert acked, "nothing could be published before the disk filled up"
        for failure in failures:
            assert str(db) in str(failure)
            assert "full" in str(failure)
        filler.unlink()
        after = [b"after the disk was freed"]
        await asyncio.wait_for(broker.publish("t", [Message(after[0])]), 60)
        records: list[bytes] = []
        async with broker.subscribe("checker", ["t"]) as consumer:
            while len(records) < len(acked) + 1:
                batch = await consumer.fetch(timeout=60)
                assert batch is not None, f"read stalled after {len(records)} records"
                records.extend(r.value for r in batch.records)
                consumer.ack(batch)
    assert sorted(records) == sorted(acked + after)
    assert _integrity(db) == [("ok",)]


async def test_a_store_on_a_full_disk_fails_transactions_loses_nothing_and_resumes(
    small_disk: Path,
) -> None:
    """Transactions on a full disk raise StorageError naming the file and commit nothing;
    those committed before are kept; once space is freed, transactions work again."""
    db = small_disk / "s.db"
    async with connect_store(f"sqlite:///{db}") as store:
        async with store.transaction() as tx:
            await tx.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body BLOB NOT NULL)")
        filler = _fill(small_disk, leave=256 * 1024)
        committed: list[int] = []
        failures: list[StorageError] = []
        for row in range(10_000):
            try:
                async with store.transaction() as tx:
                    await tx.execute(
                        "INSERT INTO notes (id, body) VALUES (?, ?)", (row, bytes(10_000))
                    )
            except StorageError as exc:
                failures.append(exc)
                if len(failures) == 3:
                    break
            else:
                committed.append(row)
        assert failures, "the disk never filled up"
        assert committed, "nothing could be committed before the disk filled up"
        for failure in failures:
            assert str(db) in str(failure)
            assert "full" in str(failure)
        filler.unlink()
        async with store.transaction() as tx:
            await tx.execute("INSERT INTO notes (id, body) VALUES (?, ?)", (-1, b"after"))
        rows = await store.query("SELECT id FROM notes ORDER BY id")
    assert [r[0] for r in rows] == [-1, *committed]
    assert _integrity(db) == [("ok",)]


def test_a_broker_opened_on_a_full_disk_is_refused_and_leaves_nothing_open(
    small_disk: Path,
) -> None:
    _fill(small_disk, leave=0)
    open_before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(StorageError, match=rf"{small_disk}/bus\.db: database or disk is full"):
        SQLiteBroker(f"sqlite:///{small_disk}/bus.db")
    assert len(os.listdir("/proc/self/fd")) == open_before
