"""SQLite-specific behaviour beyond the broker contract: several writer processes, wake-ups
across processes, bad URLs, damaged or read-only database files, rows bounded in bytes,
unlimited retention and the durability warning."""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tidings import Message, StorageError, connect
from tidings.brokers.base import UNLIMITED
from tidings.brokers.sqlite import MAX_ROW_BYTES, ROW_HEADROOM, SQLiteBroker
from tidings.errors import ConfigError, MessageTooLargeError
from tidings.records import Published, Record, SeekTo, TopicPartition

ROOT = Path(__file__).resolve().parents[1]

WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from tidings import Message, connect

    async def main(url, name, count):
        async with connect(url) as broker:
            sent = 0
            size = 1
            while sent < count:
                n = min(size, count - sent)
                await broker.publish(sys.argv[4], [
                    Message(f"{name}-{sent + i}".encode(), key=f"{name}-{(sent + i) % 13}".encode())
                    for i in range(n)
                ])
                sent += n
                size = size % 97 + 1

    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
    """
)


async def test_concurrent_writer_processes_never_see_locked_errors(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/bus.db"
    async with connect(url) as broker:
        await broker.admin.create_topic("shared", 4)
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, url, f"w{n}", "3000", "shared"],
            cwd=ROOT,
            stderr=subprocess.PIPE,
        )
        for n in range(4)
    ]
    async with connect(url) as broker:
        consumer = broker.subscribe("reader", ["shared"])
        received: list[bytes] = []
        async with consumer:
            while len(received) < 12_000:
                batch = await consumer.fetch(timeout=30)
                assert batch is not None, f"stalled at {len(received)}"
                received.extend(r.value for r in batch.records)
                consumer.ack(batch)
    for writer in writers:
        _, err = writer.communicate(timeout=60)
        assert writer.returncode == 0, err.decode()
        assert b"locked" not in err
    assert sorted(received) == sorted(f"w{n}-{i}".encode() for n in range(4) for i in range(3000))


async def test_idle_consumer_is_woken_by_another_process_without_polling(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/bus.db"
    async with connect(url) as broker:
        await broker.admin.create_topic("wake", 2)
        consumer = broker.subscribe("idle", ["wake"], auto_offset_reset="latest")
        consumer._poll_interval = 3600  # type: ignore[attr-defined]
        async with consumer:
            assert await consumer.fetch(timeout=0.2) is None
            publisher = subprocess.run(
                [sys.executable, "-c", WRITER, url, "p", "1", "wake"],
                cwd=ROOT,
                capture_output=True,
                timeout=60,
            )
            assert publisher.returncode == 0, publisher.stderr.decode()
            batch = await consumer.fetch(timeout=20)
            assert batch is not None
            assert batch.records[0].value == b"p-0"


async def test_a_lost_wake_up_delays_a_drained_consumer_only_until_its_poll(
    tmp_path: Path,
) -> None:
    """A consumer at the end of its partitions does not read the log again until a wake-up
    says records were appended; when that datagram is lost, its poll still finds them."""
    url = f"sqlite:///{tmp_path}/bus.db"
    async with connect(url) as broker, connect(url) as muted:
        await broker.admin.create_topic("quiet", 2)
        consumer = broker.subscribe("drained", ["quiet"])
        consumer._poll_interval = 0.3  # type: ignore[attr-defined]
        async with consumer:
            await broker.publish("quiet", [Message(b"first", key=b"k")])
            batch = await consumer.fetch(timeout=20)
            assert batch is not None and batch.records[0].value == b"first"
            consumer.ack(batch)
            assert await consumer.fetch(timeout=0.1) is None  # at the end, ends known
            muted.log.notifier.send = lambda kind, peers: None  # type: ignore[attr-defined]
            await muted.publish("quiet", [Message(b"second", key=b"k")])
            batch = await consumer.fetch(timeout=20)
            assert batch is not None and batch.records[0].value == b"second"


async def test_a_process_is_woken_only_for_the_topics_it_consumes(tmp_path: Path) -> None:
    """The writer sends a process the notices naming its consumers' topics (and those naming
    none); the others' records never wake it."""
    url = f"sqlite:///{tmp_path}/bus.db"
    async with connect(url) as reader, connect(url) as writer:
        await writer.admin.create_topic("mine", 2)
        await writer.admin.create_topic("theirs", 2)
        notices: list[bytes] = []
        reader.log.notifier.add(notices.append)  # type: ignore[attr-defined]
        consumer = reader.subscribe("picky", ["mine"])
        async with consumer:
            assert await consumer.fetch(timeout=0.1) is None
            await writer.publish("theirs", [Message(b"not for me")])
            await writer.publish("mine", [Message(b"for me")])
            batch = await consumer.fetch(timeout=20)
            assert batch is not None and batch.records[0].value == b"for me"
        assert b"d\0mine" in notices
        assert not [n for n in notices if b"theirs" in n]


async def test_a_later_consumer_of_another_topic_widens_what_its_process_is_sent(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path}/bus.db"
    async with connect(url) as reader, connect(url) as writer:
        await writer.admin.create_topic("first", 1)
        await writer.admin.create_topic("second", 1)
        notices: list[bytes] = []
        reader.log.notifier.add(notices.append)  # type: ignore[attr-defined]
        early = reader.subscribe("early", ["first"])
        late = reader.subscribe("late", ["second"])
        late._poll_interval = 3600  # type: ignore[attr-defined]  # only a wake-up finds it
        async with early, late:
            assert await early.fetch(timeout=0.1) is None
            assert await late.fetch(timeout=0.1) is None
            await writer.publish("second", [Message(b"for the late one")])
            batch = await late.fetch(timeout=20)
            assert batch is not None and batch.records[0].value == b"for the late one"
        assert b"d\0second" in notices
        with sqlite3.connect(tmp_path / "bus.db") as conn:
            recorded = conn.execute(
                "SELECT subjects FROM listeners WHERE name = ?",
                (reader.log.notifier.name,),  # type: ignore[attr-defined]
            ).fetchall()
        assert recorded == [("first\0second",)]


async def test_a_file_from_before_listener_subjects_is_upgraded(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/bus.db"
    async with connect(url) as broker:
        await broker.admin.create_topic("t")
    with sqlite3.connect(tmp_path / "bus.db") as conn:
        conn.execute("ALTER TABLE listeners DROP COLUMN subjects")
    async with connect(url) as broker:
        consumer = broker.subscribe("g", ["t"])
        async with consumer:
            await broker.publish("t", [Message(b"after the upgrade")])
            batch = await consumer.fetch(timeout=20)
            assert batch is not None and batch.records[0].value == b"after the upgrade"
    with sqlite3.connect(tmp_path / "bus.db") as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(listeners)")]
    assert "subjects" in columns


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("sqlite://host/bus.db", "has a host"),
        ("sqlite:///", "names no database file"),
        ("sqlite:///:memory:", "memory://"),
        ("sqlite:///x.db?fsync=yes", "unknown option"),
        ("sqlite:///x.db?synchronous=sometimes", "synchronous"),
        ("sqlite:///x.db?max_message_bytes=big", "max_message_bytes"),
        ("kafka2://x", "unknown broker scheme"),
        ("bus.db", "malformed"),
    ],
)
def test_bad_urls_name_the_problem(url: str, problem: str, tmp_path: Path) -> None:
    os.chdir(tmp_path)
    with pytest.raises(ConfigError, match=problem):
        connect(url)


def test_a_file_that_is_not_a_database_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "bus.db"
    garbage = b"this is my thesis, not a database" * 100
    path.write_bytes(garbage)
    with pytest.raises(StorageError, match=r"bus\.db.*corrupt or not a database"):
        SQLiteBroker(f"sqlite:///{path}")
    assert path.read_bytes() == garbage


async def test_a_corrupt_batch_is_reported_with_its_position(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/bus.db"
    async with connect(url) as broker:
        await broker.admin.create_topic("t")
        await broker.publish("t", [Message(b"one")])
        await broker.publish("t", [Message(b"two")])
    with sqlite3.connect(tmp_path / "bus.db") as db:
        db.execute("UPDATE batches SET payload = x'c1c1' WHERE base_offset = 1")
    async with connect(url) as broker:
        consumer = broker.subscribe("g", ["t"], max_batch=1)
        async with consumer:
            first = await consumer.fetch(timeout=5)
            assert first is not None and first.records[0].value == b"one"
            consumer.ack(first)
            with pytest.raises(StorageError, match=r"t\[0\] offset 1 is corrupt"):
                await consumer.fetch(timeout=5)


async def test_reads_taking_part_of_a_stored_batch_return_the_right_records(
    tmp_path: Path,
) -> None:
    """A producer's batch is one stored row; consumers taking fewer records than it holds read
    it again at each position (and reuse its decoding): every read returns exactly the records
    at its offsets, whatever was read before."""
    async with connect(f"sqlite:///{tmp_path}/bus.db") as broker:
        await broker.admin.create_topic("t")
        await broker.publish("t", [Message(f"a{i}".encode()) for i in range(10)])
        await broker.publish("t", [Message(f"b{i}".encode()) for i in range(5)])
        values = [f"a{i}".encode() for i in range(10)] + [f"b{i}".encode() for i in range(5)]
        assert isinstance(broker, SQLiteBroker)
        tp = TopicPartition("t", 0)
        for offset, count in [(0, 3), (3, 3), (8, 5), (1, 2), (12, 1), (9, 1), (0, 15), (14, 4)]:
            records = await broker.read(tp, offset, count)
            assert [r.offset for r in records] == list(range(offset, min(offset + count, 15)))
            assert [r.value for r in records] == values[offset : offset + count]
        consumer = broker.subscribe("g", ["t"], max_batch=3)
        async with consumer:
            seen: list[bytes] = []
            while len(seen) < 15:
                batch = await consumer.fetch(timeout=5)
                assert batch is not None and len(batch.records) <= 3
                seen += [r.value for r in batch.records]
                consumer.ack(batch)
        assert seen == values


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to an unprivileged user")
def test_a_read_only_database_gives_a_clear_error_and_keeps_its_data(tmp_path: Path) -> None:
    shared = Path("/tmp") / f"tidings-ro-{os.getpid()}"
    shared.mkdir(mode=0o755, exist_ok=True)
    try:
        url = f"sqlite:///{shared}/bus.db"

        async def fill() -> None:
            async with connect(url) as broker:
                await broker.admin.create_topic("t")
                await broker.publish("t", [Message(b"kept")])

        asyncio.run(fill())
        for name in os.listdir(shared):
            os.chmod(shared / name, 0o444)
        script = textwrap.dedent(
            """
            import asyncio, os, sys
            from tidings import Message, connect, StorageError
            import tidings.brokers.sqlite
            os.setgid(65534); os.setuid(65534)
            async def main():
                try:
                    async with connect(sys.argv[1]) as broker:
                        await broker.publish("t", [Message(b"lost?")])
                except StorageError as exc:
                    print("StorageError:", exc)
            asyncio.run(main())
            """
        )
        result = subprocess.run(
            [sys.executable, "-c", script, url],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        )
        assert "StorageError:" in result.stdout, result.stdout + result.stderr
        assert "read-only" in result.stdout or "cannot open" in result.stdout
        with sqlite3.connect(f"file:{shared}/bus.db?mode=ro", uri=True) as db:
            assert db.execute("SELECT count(*) FROM batches").fetchone()[0] == 1
    finally:
        for name in os.listdir(shared):
            os.chmod(shared / name, 0o644)
            os.unlink(shared / name)
        shared.rmdir()


async def _read_all(broker: SQLiteBroker, group: str, topic: str, count: int) -> list[Record]:
    records: list[Record] = []
    async with broker.subscribe(group, [topic]) as consumer:
        while len(records) < count:
            batch = await consumer.fetch(timeout=30)
            assert batch is not None, f"stalled after {len(records)} of {count} records"
            records.extend(batch.records)
            consumer.ack(batch)
    return records


async def test_large_messages_are_stored_in_rows_bounded_by_bytes(tmp_path: Path) -> None:
    """A publish of large messages is stored in several rows, none over MAX_ROW_BYTES unless it
    holds a single record; every record reads back exactly, also from inside a row."""
    path = tmp_path / "bus.db"
    rng = random.Random(7)
    values = [rng.randbytes(300_000) for _ in range(30)]
    values.insert(12, rng.randbytes(MAX_ROW_BYTES + 100_000))  # alone in its row
    values += [f"small {i}".encode() for i in range(600)]
    url = f"sqlite:///{path}?max_message_bytes={8 * 1024 * 1024}"
    async with SQLiteBroker(url) as broker:
        await broker.admin.create_topic("big")
        placed = await broker.publish("big", [Message(v, key=b"k") for v in values])
        assert [p.offset for p in placed] == list(range(len(values)))
        records = await _read_all(broker, "everything", "big", len(values))
        assert [r.value for r in records] == values
        assert [r.offset for r in records] == list(range(len(values)))
        await broker.admin.reset_offsets("middle", ["big"], SeekTo(offset=5))
        assert [r.value for r in await _read_all(broker, "middle", "big", len(values) - 5)] == (
            values[5:]
        )
    with sqlite3.connect(path) as db:
        rows = db.execute(
            "SELECT base_offset, last_offset, length(payload) FROM batches ORDER BY base_offset"
        ).fetchall()
    assert len(rows) >= 4
    assert [first for first, _, _ in rows] == [0] + [last + 1 for _, last, _ in rows[:-1]]
    assert rows[-1][1] == len(values) - 1
    for first, last, size in rows:
        assert size <= MAX_ROW_BYTES or first == last, (first, last, size)
    assert (12, 12) in [(first, last) for first, last, _ in rows]


async def test_a_record_over_sqlites_length_limit_fails_only_its_own_publish(
    tmp_path: Path,
) -> None:
    """With SQLite's limit on one value set low (as in a build with a small
    SQLITE_MAX_LENGTH; set here on the broker's record of it), rows stay under it, and a record
    that cannot fit fails its publish alone, writing nothing of it."""
    async with SQLiteBroker(f"sqlite:///{tmp_path}/bus.db") as broker:
        await broker.admin.create_topic("t")
        broker.log.length_limit = 100_000
        fits = [Message(bytes([i]) * 40_000) for i in range(5)]
        too_big = [Message(b"a"), Message(b"b" * 150_000)]
        results = await asyncio.gather(
            broker.publish("t", fits), broker.publish("t", too_big), return_exceptions=True
        )
        assert results[0] == [Published(0, i) for i in range(5)]
        assert isinstance(results[1], MessageTooLargeError), results[1]
        assert "nothing of this publish was written" in str(results[1])
        assert [r.value for r in await _read_all(broker, "g", "t", 5)] == [m.value for m in fits]
    with sqlite3.connect(tmp_path / "bus.db") as db:
        sizes = [row[0] for row in db.execute("SELECT length(payload) FROM batches")]
    assert len(sizes) >= 2 and max(sizes) <= 100_000


def test_a_max_message_bytes_sqlite_cannot_store_is_refused(tmp_path: Path) -> None:
    limit = sqlite3.connect(":memory:").getlimit(sqlite3.SQLITE_LIMIT_LENGTH)
    with pytest.raises(ConfigError, match=rf"max_message_bytes=.*SQLite's limit.*{limit}"):
        SQLiteBroker(f"sqlite:///{tmp_path}/bus.db?max_message_bytes={limit}")
    with pytest.raises(ConfigError, match="max_message_bytes"):
        SQLiteBroker(f"sqlite:///{tmp_path}/bus.db", max_message_bytes=10**12)
    largest = limit - ROW_HEADROOM
    broker = SQLiteBroker(f"sqlite:///{tmp_path}/bus.db", max_message_bytes=largest)
    assert broker.max_message_bytes == largest
    asyncio.run(broker.close())


async def test_unlimited_retention_is_stored_as_none(tmp_path: Path) -> None:
    path = tmp_path / "bus.db"
    async with SQLiteBroker(f"sqlite:///{path}") as broker:
        info = await broker.admin.create_topic(
            "kept", retention_ms=UNLIMITED, retention_bytes=UNLIMITED
        )
        assert (info.retention_ms, info.retention_bytes) == (None, None)
        await broker.publish("kept", [Message(b"old")])
        assert await broker.admin.enforce_retention() == 0
        for bad in (0, -2, True, 1.5, "10"):
            with pytest.raises(ConfigError, match=r"retention_ms .*-1 \(unlimited\)"):
                await broker.admin.create_topic("bad", retention_ms=bad)  # type: ignore[arg-type]
        assert [t.name for t in await broker.admin.list_topics()] == ["kept"]
    with sqlite3.connect(path) as db:
        stored = db.execute("SELECT retention_ms, retention_bytes FROM topics").fetchall()
    assert stored == [(None, None)]


@pytest.mark.parametrize("level", ["normal", "off"])
async def test_a_broker_that_does_not_fsync_warns_that_power_cuts_lose_publishes(
    tmp_path: Path, level: str
) -> None:
    path = tmp_path / "bus.db"
    async with SQLiteBroker(f"sqlite:///{path}?synchronous={level}") as broker:
        await broker.admin.create_topic("t")
        [warning] = await broker.admin.durability_warnings(["t"])
    assert str(path) in warning
    assert f"synchronous={level}" in warning
    assert "power cut" in warning


@pytest.mark.parametrize("level", ["full", "extra"])
async def test_a_broker_that_fsyncs_has_no_durability_warning(tmp_path: Path, level: str) -> None:
    async with SQLiteBroker(f"sqlite:///{tmp_path}/bus.db?synchronous={level}") as broker:
        assert await broker.admin.durability_warnings(["t"]) == []


@pytest.mark.parametrize("url", ["memory://", "sqlite"])
async def test_a_message_not_made_of_bytes_is_refused_before_anything_is_written(
    url: str, tmp_path: Path
) -> None:
    """Was: a str value was stored, and every later read of its partition failed."""
    if url == "sqlite":
        url = f"sqlite:///{tmp_path}/bus.db"
    async with connect(url) as broker:
        await broker.admin.create_topic("t", 1)
        for bad in (
            Message("text"),  # type: ignore[arg-type]
            Message(b"v", key="k"),  # type: ignore[arg-type]
            Message(b"v", headers=(("h", "text"),)),  # type: ignore[arg-type]
            Message(b"v", headers=[("h", b"v")]),  # type: ignore[arg-type]
            Message(b"v", headers=(("h",),)),  # type: ignore[arg-type]
        ):
            with pytest.raises(TypeError, match="must be bytes"):
                await broker.publish("t", [Message(b"ok"), bad])
        await broker.publish("t", [Message(b"fine")])
        records = await broker.read(TopicPartition("t", 0), 0, 10)
        assert [r.value for r in records] == [b"fine"]
