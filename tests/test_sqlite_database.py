"""tidings._sqlite.Database: closing it while another thread uses it."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tidings._sqlite import Database
from tidings.errors import StorageError

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
