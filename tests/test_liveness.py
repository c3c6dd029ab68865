"""No single input stops a partition: hostile records, records the store refuses, hung handlers,
and events that could never be relayed are set aside with a reason while the rest flows."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from tests.support import eventually, postgres_schema, read_topic
from tidings import (
    Event,
    Message,
    MessageTooLargeError,
    Retry,
    UnknownTopicError,
    connect,
    dlq,
    event_to_message,
)
from tidings.errors import ContextClosedError
from tidings.runtime import dispatch, watch
from tidings.schema import EventModel
from tidings.service import Context, Service, SyncContext

TOPIC = "hostile-events"
FAST = Retry(immediate=0, max_attempts=2, initial_delay=0.01, max_delay=0.01)


class Noted(EventModel, type="LIVENESS_NOTED", version=1):
    n: int


@pytest.fixture
def broker_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/bus.db"


def noting_service(broker: str, store: str, **options: object) -> Service:
    service = Service(
        "noter",
        broker=broker,
        store=store,
        migrations=["CREATE TABLE noted (n INTEGER PRIMARY KEY)"],
        topics={TOPIC: 1},
        **options,  # type: ignore[arg-type]
    )

    @service.handler(TOPIC)
    async def note(event: Noted, ctx: Context) -> None:
        await ctx.execute("INSERT INTO noted(n) VALUES (?)", (event.n,))

    return service


def noted(n: int) -> Message:
    return event_to_message(Noted(n=n).to_event(key="k"))


async def noted_count(service: Service) -> int:
    return int((await service.store.query("SELECT count(*) FROM noted"))[0][0])


async def lag(service: Service) -> int:
    return (await service.broker.admin.describe_group(service.name)).lag


async def dead_letters(broker: str) -> list[dlq.DeadLetter]:
    async with connect(broker) as bus:
        return await dlq.list_dead_letters(bus)


async def test_a_record_nested_too_deeply_is_dead_lettered_and_its_neighbours_commit(
    tmp_path: Path, broker_url: str, running: Callable[[Service], Awaitable[None]]
) -> None:
    """Was: RecursionError from the decoder, retried every second for ever; the records before
    it in the batch never committed."""
    service = noting_service(broker_url, f"sqlite:///{tmp_path}/noter.db")
    await service.start()
    deep = Noted(n=0).to_event()
    value = event_to_message(deep).value.replace(b'{"n":0}', b"[" * 3000 + b"]" * 3000)
    await service.broker.publish(TOPIC, [noted(1), Message(value), noted(2)])
    await running(service)

    async def done() -> bool:
        return await noted_count(service) == 2 and await lag(service) == 0

    await eventually(done)
    [letter] = await dead_letters(broker_url)
    assert letter.reason == dlq.REASON_UNDECODABLE
    assert "nested too deeply" in (letter.message or "")


REFUSE_SQLITE = """CREATE TRIGGER refuse_poison BEFORE INSERT ON tidings_inbox
    WHEN NEW.event_id LIKE 'poison%'
    BEGIN SELECT abs(-9223372036854775808); END"""
REFUSE_POSTGRES = [
    """CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.event_id LIKE 'poison%' THEN RAISE EXCEPTION 'refused by a trigger'; END IF;
        RETURN NEW;
    END $$""",
    """CREATE TRIGGER refuse_poison BEFORE INSERT ON tidings_inbox
    FOR EACH ROW EXECUTE FUNCTION refuse_poison()""",
]


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
async def test_a_record_the_store_refuses_is_dead_lettered_after_bounded_attempts(
    tmp_path: Path, broker_url: str, store: str, running: Callable[[Service], Awaitable[None]]
) -> None:
    """A failure outside the handler (here a database trigger refusing the event's inbox row:
    the store rejecting something about one record) used to be retried every second, for ever."""
    with contextlib.ExitStack() as stack:
        if store == "sqlite":
            url, migrations = f"sqlite:///{tmp_path}/noter.db", [REFUSE_SQLITE]
        else:
            url, migrations = stack.enter_context(postgres_schema("liveness")), REFUSE_POSTGRES
        await refused_record_is_set_aside(broker_url, url, migrations, running)


async def refused_record_is_set_aside(
    broker_url: str,
    url: str,
    migrations: list[str],
    running: Callable[[Service], Awaitable[None]],
) -> None:
    service = noting_service(broker_url, url)
    service.migrations += tuple(migrations)
    await service.start()
    poison = Noted(n=99).to_event(key="k")
    poison = Event(type=poison.type, data=poison.data, id="poison-1", key="k")
    await service.broker.publish(TOPIC, [noted(1), event_to_message(poison), noted(2)])
    await running(service)

    async def done() -> bool:
        return await noted_count(service) == 2 and await lag(service) == 0

    await eventually(done, timeout=60)
    [letter] = await dead_letters(broker_url)
    assert letter.reason == dlq.REASON_UNPROCESSABLE
    assert letter.event_id == "poison-1"
    assert letter.attempts == dispatch.MAX_UNEXPECTED_ATTEMPTS
    assert (await service.store.query("SELECT n FROM noted WHERE n = 99")) == []
    service.stop()  # before its schema is dropped

    async def stopped() -> bool:
        return service.runner is None

    await eventually(stopped)


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_a_hung_handler_times_out_is_dead_lettered_and_cannot_write_later(
    tmp_path: Path, broker_url: str, kind: str, running: Callable[[Service], Awaitable[None]]
) -> None:
    """Was: a hung handler held its partition silently and indefinitely."""
    policy = Retry(immediate=0, max_attempts=2, initial_delay=0.01, timeout=0.3)
    service = Service(
        "sleeper",
        broker=broker_url,
        store=f"sqlite:///{tmp_path}/sleeper.db",
        migrations=["CREATE TABLE seen (n INTEGER PRIMARY KEY)"],
        topics={TOPIC: 1},
        retry=policy,
    )
    release = threading.Event()
    late_errors: list[BaseException] = []

    if kind == "async":

        @service.handler(TOPIC)
        async def handle(event: Noted, ctx: Context) -> None:
            if event.n == 13:
                await asyncio.Event().wait()
            await ctx.execute("INSERT INTO seen(n) VALUES (?)", (event.n,))

    else:

        @service.handler(TOPIC)
        def handle_sync(event: Noted, ctx: SyncContext) -> None:
            if event.n == 13:
                release.wait(10)
                try:
                    ctx.execute("INSERT INTO seen(n) VALUES (?)", (event.n,))
                except BaseException as exc:
                    late_errors.append(exc)
                return
            ctx.execute("INSERT INTO seen(n) VALUES (?)", (event.n,))

    await service.start()
    await service.broker.publish(TOPIC, [noted(1), noted(13), noted(2)])
    await running(service)

    async def done() -> bool:
        seen = await service.store.query("SELECT n FROM seen ORDER BY n")
        return seen == [(1,), (2,)] and await lag(service) == 0

    await eventually(done)
    [letter] = await dead_letters(broker_url)
    assert letter.reason == dlq.REASON_EXHAUSTED
    assert letter.exception == "tidings.errors.HandlerTimeoutError"
    assert "did not finish within 0.3s" in (letter.message or "")
    if kind == "sync":
        release.set()

        async def zombie_refused() -> bool:
            return len(late_errors) >= 1

        await eventually(zombie_refused)
        assert all(isinstance(e, ContextClosedError) for e in late_errors)
        assert (await service.store.query("SELECT n FROM seen WHERE n = 13")) == []


async def test_a_partition_that_does_not_advance_is_logged(
    tmp_path: Path,
    broker_url: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    running: Callable[[Service], Awaitable[None]],
) -> None:
    monkeypatch.setattr(watch, "STALL_WARNING_S", 0.2)
    service = Service(
        "slow",
        broker=broker_url,
        store=f"sqlite:///{tmp_path}/slow.db",
        topics={TOPIC: 1},
    )
    finished = asyncio.Event()

    @service.handler(TOPIC)
    async def crawl(event: Noted, ctx: Context) -> None:
        await asyncio.sleep(1.0)
        finished.set()

    await service.start()
    await service.broker.publish(TOPIC, [noted(1)])
    with caplog.at_level(logging.WARNING, logger="tidings.dispatch"):
        await running(service)
        await asyncio.wait_for(finished.wait(), 10)
    stalls = [r.getMessage() for r in caplog.records if "has not advanced" in r.getMessage()]
    assert stalls, caplog.text
    assert f"{TOPIC}[0] has not advanced past offset 0" in stalls[0]
    assert "in handler slow.crawl" in stalls[0]


async def test_request_code_cannot_commit_an_event_that_could_never_be_relayed(
    tmp_path: Path, broker_url: str
) -> None:
    service = Service(
        "orders",
        broker=f"{broker_url}?max_message_bytes=2000",
        store=f"sqlite:///{tmp_path}/orders.db",
        migrations=["CREATE TABLE orders (id TEXT PRIMARY KEY)"],
        topics={TOPIC: 1},
    )
    try:
        with pytest.raises(UnknownTopicError, match="'no-such-topic', which does not exist"):
            async with service.transaction() as ctx:
                await ctx.execute("INSERT INTO orders(id) VALUES ('o1')")
                ctx.publish("no-such-topic", Noted(n=1))
        with pytest.raises(MessageTooLargeError, match="the broker accepts at most 2000"):
            async with service.transaction() as ctx:
                await ctx.execute("INSERT INTO orders(id) VALUES ('o2')")
                ctx.publish(TOPIC, Event(type="BIG", data="x" * 3000))
        async with service.transaction() as ctx:  # a topic that exists is fine
            await ctx.execute("INSERT INTO orders(id) VALUES ('o3')")
            ctx.publish(TOPIC, Noted(n=3))
        assert await service.store.query("SELECT id FROM orders") == [("o3",)]
        assert await service.store.outbox_size() == 1
        with pytest.raises(ContextClosedError):
            ctx.publish(TOPIC, Noted(n=4))
    finally:
        await service.close()


async def test_a_handler_publishing_to_a_missing_topic_is_dead_lettered_not_relayed(
    tmp_path: Path, broker_url: str, running: Callable[[Service], Awaitable[None]]
) -> None:
    service = noting_service(broker_url, f"sqlite:///{tmp_path}/noter.db", retry=FAST)

    @service.handler(TOPIC)
    async def forward(event: Noted, ctx: Context) -> None:
        ctx.publish("typo-events" if event.n == 2 else TOPIC + "-out", Noted(n=event.n))

    service.topics[TOPIC + "-out"] = 1
    await service.start()
    await service.broker.publish(TOPIC, [noted(1), noted(2), noted(3)])
    await running(service)

    async def done() -> bool:
        return await noted_count(service) == 3 and await lag(service) == 0

    await eventually(done)
    [letter] = await dead_letters(broker_url)
    assert letter.handler == "noter.forward" and "typo-events" in (letter.message or "")
    async with connect(broker_url) as bus:
        relayed = await read_topic(bus, TOPIC + "-out")
    assert len(relayed) == 2
    assert await service.store.outbox_size() == 0


async def test_a_long_lived_reader_of_the_store_file_does_not_stall_its_transactions(
    tmp_path: Path,
) -> None:
    """Was: the store's WAL checkpoint waited (up to its two-minute busy timeout) for readers
    of older snapshots while holding the store's write lock, so an open `sqlite3` shell or a
    backup stalled every transaction of the service."""
    import sqlite3

    from tidings.stores import connect_store

    async with connect_store(f"sqlite:///{tmp_path}/s.db") as store:
        await store.migrate(["CREATE TABLE t (n INTEGER)"])
        async with store.transaction() as tx:
            await tx.execute("INSERT INTO t(n) VALUES (0)")
        reader = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
        try:
            reader.execute("BEGIN")
            reader.execute("SELECT count(*) FROM t").fetchone()  # holds this snapshot

            async def write_for_a_while() -> None:
                for n in range(1, 200):
                    async with store.transaction() as tx:
                        await tx.execute("INSERT INTO t(n) VALUES (?)", (n,))
                    await asyncio.sleep(0.005)  # several checkpoint intervals

            await asyncio.wait_for(write_for_a_while(), 30)
        finally:
            reader.close()
        assert (await store.query("SELECT count(*) FROM t"))[0][0] == 200
