"""SQLite files as the broker and the store use them (tidings._sqlite.Database): closing one
while another thread uses it, and the modes of the files and directories tidings creates."""

from __future__ import annotations

import os
import sqlite3
import stat
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
