"""One outbox row that can never be published no longer blocks its service's relay: it is set
aside with a dead letter (reason `unpublishable`) that `tidings dlq` lists, replays or purges;
rows after it are relayed, rows before it are never published twice, and SIGTERM ends a
service within its grace period whatever its relay is doing."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support import read_topic
from tidings import Message, connect, dlq
from tidings.brokers.base import Broker
from tidings.runtime.relay import Relay
from tidings.stores import connect_store
from tidings.stores.base import Store

LIMIT = 4096
DLQ = "billing.dlq"


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    bus = connect(f"sqlite:///{tmp_path}/bus.db?max_message_bytes={LIMIT}")
    for topic in ("a", "c", DLQ):
        await bus.admin.create_topic(topic, 1)
    yield bus
    await bus.close()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with connect_store(f"sqlite:///{tmp_path}/billing.db") as opened:
        yield opened


async def commit(store: Store, *rows: tuple[str, str, bytes]) -> None:
    """Outbox rows written as any transaction writes them (the checks of ctx.publish are
    bypassed, as for rows committed before a broker's limit was lowered or a topic deleted)."""
    async with store.transaction() as tx:
        for topic, event_id, value in rows:
            tx.add_outbox(topic, event_id, Message(value=value, key=event_id.encode()))


async def relay_all(relay: Relay) -> None:
    while await relay.relay_once():
        pass
    await relay.settle()


async def values(broker: Broker, topic: str) -> list[bytes]:
    return [r.value for r in await read_topic(broker, topic)]


async def unpublishable_rows(store: Store) -> list[tuple[str, str, str]]:
    return [
        (row[0], row[1], row[2])
        for row in await store.query(
            "SELECT topic, event_id, error FROM tidings_outbox_unpublishable ORDER BY seq"
        )
    ]


async def test_an_oversized_row_is_set_aside_and_later_rows_are_relayed(
    store: Store, broker: Broker
) -> None:
    """Was: the relay retried the oversized row for ever, re-publishing the rows before it."""
    await commit(store, ("a", "e1", b"1"), ("a", "big", b"x" * (LIMIT * 2)), ("a", "e3", b"3"))
    relay = Relay(store, broker, dead_letter_topic=DLQ)
    await relay_all(relay)
    assert await values(broker, "a") == [b"1", b"3"]
    assert await store.outbox_size() == 0
    [(topic, event_id, error)] = await unpublishable_rows(store)
    assert (topic, event_id) == ("a", "big") and "MessageTooLargeError" in error
    [letter] = await dlq.list_dead_letters(broker)
    assert letter.reason == dlq.REASON_UNPUBLISHABLE
    assert letter.original_topic == "a" and letter.event_id == "big"
    assert letter.record.value == b""  # too large for the broker even as a dead letter
    assert "tidings_outbox_unpublishable" in letter.headers[dlq.OMITTED]
    with pytest.raises(dlq.DeadLetterError, match="cannot be replayed through the broker"):
        await dlq.replay(broker, [letter])
    await dlq.purge(broker, [letter])
    assert await dlq.list_dead_letters(broker) == []


async def test_a_row_for_a_missing_topic_is_set_aside_and_can_be_replayed_once_it_exists(
    store: Store, broker: Broker
) -> None:
    await commit(store, ("a", "e1", b"1"), ("gone", "lost", b"2"), ("c", "e3", b"3"))
    relay = Relay(store, broker, dead_letter_topic=DLQ)
    await relay_all(relay)
    assert await values(broker, "a") == [b"1"]
    assert await values(broker, "c") == [b"3"]
    [letter] = await dlq.list_dead_letters(broker, reason=dlq.REASON_UNPUBLISHABLE)
    assert letter.original_topic == "gone" and letter.record.value == b"2"
    await broker.admin.create_topic("gone", 1)
    [replayed] = await dlq.replay(broker, [letter])
    assert replayed.topic == "gone"
    assert await values(broker, "gone") == [b"2"]


async def test_rows_published_before_a_failure_are_never_published_again(
    store: Store, broker: Broker
) -> None:
    """Was: each retry re-published every row of the claim before the failing one."""
    rows = [("a", f"a{n}", b"%d" % n) for n in range(5)] + [("gone", "x", b"x")]
    rows += [("c", f"c{n}", b"%d" % n) for n in range(5)]
    await commit(store, *rows)
    relay = Relay(store, broker, dead_letter_topic=DLQ)
    for _ in range(3):
        await relay_all(relay)
    assert await values(broker, "a") == [b"%d" % n for n in range(5)]
    assert await values(broker, "c") == [b"%d" % n for n in range(5)]
    assert len(await dlq.list_dead_letters(broker)) == 1


async def test_a_dead_letter_of_a_near_limit_record_is_truncated_to_fit() -> None:
    from tidings.records import Record

    record = Record("a", 0, 5, 0, b"v" * (LIMIT - 1500), b"k", ())
    headers = dlq.describe(
        record,
        reason=dlq.REASON_EXHAUSTED,
        error=RuntimeError("boom " * 100),
        traceback_text="Traceback...\n" * 200,
        handler="billing.charge",
        attempts=6,
    )
    message = Message(record.value, record.key, headers)
    assert message.size > LIMIT
    fitted = dlq.fit(message, LIMIT)
    assert fitted.size <= LIMIT
    kept = dict(fitted.headers)
    assert kept[dlq.REASON] == b"retries-exhausted" and kept[dlq.OFFSET] == b"5"
    assert kept[dlq.TRACEBACK].endswith(b"[truncated to fit the broker's message size limit]")
    assert kept[dlq.MESSAGE] == b"boom " * 100
    nearer = Message(b"v" * (LIMIT - 300), b"k", headers)
    assert dlq.fit(nearer, LIMIT).size <= LIMIT  # traceback and message emptied


async def test_claims_are_bounded_in_bytes(store: Store) -> None:
    await commit(store, *[("a", f"e{n}", b"x" * 1000) for n in range(10)])
    rows = await store.outbox_claim("relay-1", 100, 30.0, max_bytes=3500)
    assert rows is not None and len(rows) == 3
    one = await store.outbox_claim("relay-1", 100, 30.0, max_bytes=10)
    assert one is not None and len(one) == 1  # at least one row, however large


SERVICE = textwrap.dedent(
    """
    from tidings import Service

    service = Service("billing", store="sqlite:///billing.db", topics={"a": 1})
    """
)


def test_sigterm_ends_a_service_within_its_grace_period_while_its_relay_cannot_publish(
    tmp_path: Path,
) -> None:
    """The broker's file is write-locked by another process (a backup, a stuck tool): every
    publish waits for SQLite's busy timeout (two minutes). SIGTERM must still end the service
    within its grace period, leaving the rows for the next run."""
    (tmp_path / "svc.py").write_text(SERVICE)
    log = tmp_path / "service.log"
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    bus = f"sqlite:///{tmp_path}/bus.db"
    setup = subprocess.run(
        [sys.executable, "-c", "import asyncio, svc; asyncio.run(svc.service.start())"],
        cwd=tmp_path,
        env={**env, "TIDINGS_BROKER": bus},
        capture_output=True,
        timeout=60,
    )
    assert setup.returncode == 0, setup.stderr
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tidings.cli",
                "--broker",
                bus,
                "run",
                "svc:service",
                "--grace",
                "3",
            ],
            cwd=tmp_path,
            env=env,
            stderr=sink,
        )
    holder = sqlite3.connect(tmp_path / "bus.db", isolation_level=None)
    try:
        deadline = time.monotonic() + 30
        while b"running" not in log.read_bytes():
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        holder.execute("BEGIN IMMEDIATE")
        store = sqlite3.connect(tmp_path / "billing.db", isolation_level=None, timeout=30)
        store.execute(
            "INSERT INTO tidings_outbox(topic, event_id, key, value, headers, created_ms)"
            " VALUES ('a', 'e1', NULL, x'00', NULL, 0)"
        )
        store.close()
        time.sleep(2.0)  # the relay polls the outbox every second, then waits on the lock
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=45) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
        if holder.in_transaction:
            holder.execute("ROLLBACK")
        holder.close()
    assert "did not finish within the grace period" in log.read_text()
    rows = sqlite3.connect(tmp_path / "billing.db").execute("SELECT count(*) FROM tidings_outbox")
    assert rows.fetchone()[0] == 1  # left for the next run
