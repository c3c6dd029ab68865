"""Per-key sequence numbers stamped by the outbox: `Event.sequence`, the CloudEvents `sequence`
attribute (`ce_sequence` in binary mode), monotonic per producing service and key, on the
embedded broker with SQLite stores and on Kafka with PostgreSQL stores."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from tests.sites import BACKENDS, Site, site
from tests.support import eventually, read_topic
from tidings import Context, Event, MessageTooLargeError, Service
from tidings.stores import connect_store
from tidings.stores.base import Store
from tidings.testing.sequence_contract import SequenceContract
from tidings.testing.store_contract import BUSINESS


class TestMemoryStoreSequences(SequenceContract):
    """`memory://`, the store of `tidings.testing.ServiceHarness`, numbers rows too."""

    @pytest.fixture
    async def store(self) -> AsyncIterator[Store]:
        async with connect_store("memory://") as store:
            await store.migrate([BUSINESS])
            yield store


@pytest.fixture(params=BACKENDS)
def where(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Site]:
    with site(request.param, tmp_path) as chosen:
        yield chosen


async def test_events_carry_their_number_per_producer_and_key(
    where: Site, running: Callable[[Service], object]
) -> None:
    topic, forwarded = where.name("stock"), where.name("forwarded")
    producer, consumer = where.name("warehouse"), where.name("shop")
    received: list[Event] = []
    source = Service(producer, broker=where.broker, store=where.store(producer), topics={topic: 3})
    sink = Service(
        consumer, broker=where.broker, store=where.store(consumer), topics={forwarded: 1}
    )

    @sink.handler(topic)
    async def count(event: Event, ctx: Context) -> None:
        received.append(event)
        if event.type == "FORWARD":
            ctx.publish(forwarded, event)  # still the warehouse's event: its number is kept
            ctx.publish(forwarded, Event(type="OWN", key=event.key, data="mine"))

    await running(source)  # type: ignore[misc]
    await running(sink)  # type: ignore[misc]
    async with source.transaction() as ctx:
        ctx.publish(topic, Event(type="SET", key="k1", data=1))
        ctx.publish(topic, Event(type="SET", key="k2", data=1), binary=True)
    async with source.transaction() as ctx:
        ctx.publish(topic, Event(type="SET", key="k1", data=2), binary=True)
        ctx.publish(topic, Event(type="SET", key="k1", data=3))
        ctx.publish(topic, Event(type="KEYLESS", data=0))

    async def publish_hot(n: int) -> None:
        async with source.transaction() as ctx:
            ctx.publish(topic, Event(type="SET", key="hot", data=n))

    await asyncio.gather(*(publish_hot(n) for n in range(12)))  # concurrent transactions
    async with source.transaction() as ctx:
        ctx.publish(topic, Event(type="FORWARD", key="k2", data="fwd"))

    async def all_received() -> bool:
        return len(received) == 18

    await eventually(all_received, timeout=60)
    by_key: dict[str | None, list[int | None]] = {}
    for event in received:
        by_key.setdefault(event.key, []).append(event.sequence)
    assert by_key == {"k1": [1, 2, 3], "k2": [1, 2], "hot": list(range(1, 13)), None: [None]}

    records = await read_topic(source.broker, topic)
    binary = [r for r in records if r.header("ce_specversion") is not None]
    assert sorted(r.header("ce_sequence") or b"" for r in binary) == [b"1", b"2"]
    structured = [json.loads(r.value) for r in records if r.header("ce_specversion") is None]
    assert sorted(
        x["sequence"] for x in structured if x["type"] == "SET" and x["partitionkey"] == "k1"
    ) == ["1", "3"]

    async def relayed() -> bool:
        return len(await read_topic(sink.broker, forwarded)) == 2

    await eventually(relayed)
    again, own = [json.loads(r.value) for r in await read_topic(sink.broker, forwarded)]
    assert (again["source"], again["sequence"]) == (producer, "2")
    assert (own["source"], own["sequence"]) == (consumer, "1")


async def test_the_number_is_counted_against_the_size_limit(tmp_path: Path) -> None:
    """An event keyed and stamped after the size check still fits the broker."""
    service = Service(
        "tight",
        broker=f"sqlite:///{tmp_path}/bus.db?max_message_bytes=2000",
        store=f"sqlite:///{tmp_path}/t.db",
        topics={"t": 1},
    )
    try:
        largest = 0
        async with service.transaction() as ctx:
            for size in range(1500, 2000):
                try:
                    ctx.publish("t", Event(type="T", id=f"e{size}", key="k", data="x" * size))
                except MessageTooLargeError:
                    break
                largest = size
            unkeyed = ctx.publish("t", Event(type="T", id="nokey", data="x" * (largest + 20)))
        assert 1500 < largest < 2000 and unkeyed.key is None
        rows = await service.store.outbox_claim("r", 1000, 30.0)
        assert rows is not None
        assert max(row.message.size for row in rows) <= 2000
        stamped = [r for r in rows if r.event_id == f"e{largest}"]
        assert json.loads(stamped[0].message.value)["sequence"] == str(largest - 1499)
    finally:
        await service.close()


async def test_a_service_can_do_without_numbers(tmp_path: Path) -> None:
    service = Service(
        "unnumbered",
        broker=f"sqlite:///{tmp_path}/bus.db",
        store=f"sqlite:///{tmp_path}/u.db",
        topics={"t": 1},
        sequence_numbers=False,
    )
    try:
        async with service.transaction() as ctx:
            ctx.publish("t", Event(type="T", key="k", data=1))
        rows = await service.store.outbox_claim("r", 10, 30.0)
        assert rows is not None and "sequence" not in json.loads(rows[0].message.value)
        assert await service.store.query("SELECT count(*) FROM tidings_sequences") == [(0,)]
    finally:
        await service.close()
