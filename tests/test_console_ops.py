"""What the console builds on in tidings.ops: positions by time, the event index, traces and
the topology, on the memory and SQLite brokers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tidings import Event, connect, dlq, ops
from tidings.brokers.base import Broker, CanRead, require
from tidings.ops.schemas import known_handles
from tidings.records import Record, TopicPartition
from tidings.registry import SchemaRegistry

TOPICS = ("order-events", "inventory-events")


@pytest.fixture(params=["memory", "sqlite"])
async def broker(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Broker]:
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/bus.db"
    async with connect(url) as opened:
        for topic in TOPICS:
            await opened.admin.create_topic(topic, 2)
        yield opened


def flow(order: str) -> list[tuple[str, Event]]:
    """An order's events as the services would publish them, chained by causation."""
    placed = Event(
        type="ORDER_PLACED", key=order, source="orders", correlation_id=f"corr-{order}", data={}
    )
    reserved = Event(
        type="INVENTORY_RESERVED",
        key=order,
        source="inventory",
        correlation_id=placed.correlation_id,
        causation_id=placed.id,
        data={},
    )
    confirmed = Event(
        type="ORDER_CONFIRMED",
        key=order,
        source="orders",
        correlation_id=placed.correlation_id,
        causation_id=reserved.id,
        data={},
    )
    return [("order-events", placed), ("inventory-events", reserved), ("order-events", confirmed)]


async def publish(broker: Broker, events: list[tuple[str, Event]]) -> None:
    for topic, event in events:
        await broker.publish_events(topic, [event])


async def consume_all(broker: Broker, group: str, topics: list[str]) -> None:
    """A group that read and committed everything there is now."""
    infos = [await broker.admin.describe_topic(t) for t in topics]
    total = sum(i.records for i in infos)
    seen = 0
    async with broker.subscribe(group, topics) as consumer:
        while seen < total:
            batch = await consumer.fetch(timeout=10)
            assert batch is not None
            seen += len(batch)
            await consumer.commit(batch)


async def test_offset_for_time_finds_the_first_record_at_or_after(broker: Broker) -> None:
    for i in range(3):
        await broker.publish_events(
            "order-events", [Event(type="T", key="k", data={"n": n}) for n in range(i * 5 + 1)]
        )
        await asyncio.sleep(0.03)
    info = await broker.admin.describe_topic("order-events")
    partition = next(p.partition for p in info.partitions if p.records)
    reader = require(broker, CanRead, "read")
    records: list[Record] = await reader.read(TopicPartition("order-events", partition), 0, 100)
    for record in records:
        first = await ops.offset_for_time(broker, info, partition, record.timestamp)
        assert records[first].timestamp == record.timestamp
        assert all(r.timestamp < record.timestamp for r in records[:first])
    end = info.partitions[partition].end_offset
    assert await ops.offset_for_time(broker, info, partition, records[-1].timestamp + 1) == end
    assert await ops.offset_for_time(broker, info, partition, 0) == 0
    span = await ops.span(broker, info, partition, 0, records[-1].timestamp)
    assert span.first == 0 and 0 < span.records < end


async def test_index_follows_the_log(broker: Broker, tmp_path: Path) -> None:
    a, b = flow("ord-1"), flow("ord-2")
    await publish(broker, a + b)
    index = ops.EventIndex(str(tmp_path / "index.db"), broker.url)
    try:
        status = await index.status(await ops.list_topics(broker))
        assert (status.read, status.behind, status.current) == (0, 6, False)
        assert await index.update(broker, budget=4) == 4  # a budget: it stops, and goes on
        assert await index.update(broker) == 2
        assert await index.update(broker) == 0
        status = await index.status(await ops.list_topics(broker))
        assert status.current and status.read == 6 and status.caught_up_at is not None

        found = await index.by_correlation("corr-ord-1")
        assert [e.type for e in found] == ["ORDER_PLACED", "INVENTORY_RESERVED", "ORDER_CONFIRMED"]
        placed = a[0][1]
        [child] = await index.children(placed.id)
        assert child.event_id == a[1][1].id and child.source == "inventory"
        [copy] = await index.by_event_id(placed.id)
        assert copy.position.startswith("order-events[")
        assert len(await index.by_key("ord-2")) == 3
        assert await index.correlations_for_key("ord-2") == ["corr-ord-2"]
        assert {(h.service, h.type) for h in await index.handles()} == {
            ("inventory", "ORDER_PLACED"),
            ("orders", "INVENTORY_RESERVED"),
        }

        # an event dead-lettered by email: in the flow as a dead letter, naming its handler
        tp = TopicPartition(copy.topic, copy.partition)
        [record] = await require(broker, CanRead, "read").read(tp, copy.offset, 1)
        letter = dlq.letter(
            record,
            reason="retries-exhausted",
            error=ValueError("x"),
            handler="email.send",
            attempts=3,
        )
        await broker.admin.create_topic("email.dlq", 1)
        await broker.publish("email.dlq", [letter])
        assert await index.update(broker) == 1
        dead = [e for e in await index.by_correlation("corr-ord-1") if e.dead_letter]
        assert [e.topic for e in dead] == ["email.dlq"]
        assert ops.Handles("email", "order-events", "ORDER_PLACED", "send") in await index.handles()
    finally:
        index.close()
    # a file made for another broker is emptied
    other = ops.EventIndex(str(tmp_path / "index.db"), "memory://elsewhere")
    try:
        assert await other.by_correlation("corr-ord-1") == []
    finally:
        other.close()


async def test_trace_tree_readers_and_reactions(broker: Broker, tmp_path: Path) -> None:
    events = flow("ord-7")
    await publish(broker, events)
    await consume_all(broker, "orders", list(TOPICS))
    await consume_all(broker, "email", ["order-events"])
    index = ops.EventIndex(str(tmp_path / "index.db"), broker.url)
    try:
        await index.update(broker)
        # loyalty has joined and committed nothing: everything is pending for it
        async with broker.subscribe("loyalty", ["order-events"]) as consumer:
            await consumer.start()
            flow_trace = await ops.trace(broker, index, "corr-ord-7")
    finally:
        index.close()
    [root] = flow_trace.roots
    chain = []
    node = root
    while True:
        chain.append(node.event.type)
        if not node.children:
            break
        [node] = node.children
    assert chain == ["ORDER_PLACED", "INVENTORY_RESERVED", "ORDER_CONFIRMED"]
    assert flow_trace.services == ("orders", "inventory")
    readers = {r.service: r.read for r in root.readers}
    assert readers == {"orders": True, "email": True, "loyalty": False}
    reactions = {r.service: r for r in flow_trace.reactions}
    assert set(reactions) == {"email", "loyalty"}
    assert [e.type for e in reactions["email"].read] == ["ORDER_PLACED", "ORDER_CONFIRMED"]
    assert [e.type for e in reactions["loyalty"].pending] == ["ORDER_PLACED", "ORDER_CONFIRMED"]
    assert flow_trace.start is not None and flow_trace.end is not None


def test_build_trace_survives_cycles_and_replays() -> None:
    now = datetime.now(UTC)

    def event(eid: str, cause: str | None, offset: int) -> ops.IndexedEvent:
        return ops.IndexedEvent("t", 0, offset, now, eid, "T", "s", None, "c", cause, None)

    # a causes b causes a: no root by causation, each is kept once; a replay is a copy
    looped = ops.build_trace("c", [event("a", "b", 0), event("b", "a", 1)])
    assert looped.roots == ()
    replayed = ops.build_trace("c", [event("a", None, 0), event("a", None, 5)])
    [root] = replayed.roots
    assert [c.offset for c in root.copies] == [5]


async def test_topology_services_topics_and_health(broker: Broker) -> None:
    await publish(broker, flow("ord-1"))
    await consume_all(broker, "orders", list(TOPICS))
    await consume_all(broker, "email", ["order-events"])
    await broker.admin.create_topic("email.dlq", 1)
    reader = require(broker, CanRead, "read")
    record = [*await reader.read(TopicPartition("order-events", 0), 0, 1)]
    record += await reader.read(TopicPartition("order-events", 1), 0, 1)
    letter = dlq.letter(record[0], reason="x", error=ValueError("x"), handler=None, attempts=1)
    await broker.publish("email.dlq", [letter, letter])
    first, _ = await ops.list_dead_letters(broker, service="email")
    await ops.purge_dead_letters(broker, [first])

    topology = await ops.topology(broker)
    assert [t.name for t in topology.topics] == sorted(TOPICS)
    services = {s.name: s for s in topology.services}
    assert set(services) == {"orders", "email", "inventory"}
    assert services["email"].dead_letters == 1 and services["email"].health == "down"
    assert services["inventory"].group is None and services["inventory"].health == "unknown"
    assert services["orders"].produces == ("order-events",)
    consumes = {(e.service, e.topic, e.lag) for e in topology.edges if e.kind == "consumes"}
    assert consumes == {
        ("orders", "order-events", 0),
        ("orders", "inventory-events", 0),
        ("email", "order-events", 0),
    }
    assert await ops.dead_letter_counts(broker) == {"email": 1}
    assert ops.is_internal_topic("email.dlq") and ops.is_internal_topic("tidings.dlq.resolutions")
    assert ops.is_tool_group("tidings-tail-abc") and not ops.is_tool_group("orders")


def test_internal_topics_follow_the_namespace() -> None:
    assert ops.is_internal_topic("env1.tidings.schemas", "env1.")
    assert not ops.is_internal_topic("env1.order-events", "env1.")
    assert ops.is_internal_topic("__consumer_offsets")


# what services declared in the schema registry --------------------------------------------


@dataclass
class _Model:
    event_type: str
    event_version: int


@dataclass
class _Handler:
    name: str
    topics: tuple[str, ...]
    model: Any = None


@dataclass
class _Service:
    """What `tidings.registry.describe` reads of a Service."""

    name: str
    handlers: list[_Handler]
    publications: dict[str, list[Any]] = field(default_factory=dict)
    topics: dict[str, int] = field(default_factory=dict)
    dead_letter_topic: str = ""


async def test_declared_handlers_make_topology_and_traces_exact(
    broker: Broker, tmp_path: Path
) -> None:
    await publish(broker, flow("ord-5"))
    await consume_all(broker, "orders", list(TOPICS))
    await consume_all(broker, "email", ["order-events"])
    await consume_all(broker, "loyalty", ["order-events"])
    index = ops.EventIndex(str(tmp_path / "index.db"), broker.url)
    try:
        await index.update(broker)
        inferred = await ops.topology(broker, handles=await index.handles())
        before = await ops.trace(broker, index, "corr-ord-5")
        # reading the registry never creates it
        assert "tidings.schemas" not in {i.name for i in await broker.admin.list_topics()}
        registry = SchemaRegistry(broker)
        confirmed = _Model("ORDER_CONFIRMED", 1)
        email = _Handler("send_confirmation", ("order-events",), confirmed)
        await registry.describe_service(_Service("email", [email], dead_letter_topic="email.dlq"))
        confirm = _Handler("confirm", ("inventory-events",), _Model("INVENTORY_RESERVED", 1))
        history = _Handler("history", ("order-events", "inventory-events"))  # every event
        await registry.describe_service(_Service("orders", [confirm, history]))
        exact = await ops.topology(broker, handles=await index.handles())
        after = await ops.trace(broker, index, "corr-ord-5")
    finally:
        index.close()

    # without records: what the log told (inventory and orders reacted to events) or nothing
    learnt = {s.name: s for s in inferred.services}
    assert not any(s.described for s in inferred.services)
    assert [(h.type, h.declared) for h in learnt["orders"].handles] == [
        ("INVENTORY_RESERVED", False)
    ]
    assert learnt["email"].handles == ()
    email_before = next(r for r in before.reactions if r.service == "email")
    assert [e.type for e in email_before.read] == ["ORDER_PLACED", "ORDER_CONFIRMED"]
    assert not email_before.exact

    # with records: exactly what each service declared; the others as before
    services = {s.name: s for s in exact.services}
    assert services["email"].described and services["orders"].described
    assert [(h.topic, h.type, h.handler, h.declared) for h in services["email"].handles] == [
        ("order-events", "ORDER_CONFIRMED", "send_confirmation", True)
    ]
    assert {(h.topic, h.type, h.handler) for h in services["orders"].handles} == {
        ("inventory-events", "*", "history"),
        ("inventory-events", "INVENTORY_RESERVED", "confirm"),
        ("order-events", "*", "history"),
    }
    assert not services["inventory"].described
    assert [(h.type, h.declared) for h in services["inventory"].handles] == [
        ("ORDER_PLACED", False)
    ]
    reactions = {r.service: r for r in after.reactions}
    assert [e.type for e in reactions["email"].read] == ["ORDER_CONFIRMED"]
    assert reactions["email"].handlers == ("send_confirmation",) and reactions["email"].exact
    loyalty = reactions["loyalty"]  # no record: every event it read on its topics
    assert [e.type for e in loyalty.read] == ["ORDER_PLACED", "ORDER_CONFIRMED"]
    assert not loyalty.exact and loyalty.handlers == ()
    [root] = after.roots
    assert root.event.type == "ORDER_PLACED"
    readers = {r.service: r for r in root.readers}
    assert readers["email"].handles is False and readers["email"].read
    assert readers["loyalty"].handles is None
    assert readers["orders"].handles is True and readers["orders"].handlers == ("history",)
    [reserved] = root.children
    by_orders = next(r for r in reserved.readers if r.service == "orders")
    assert set(by_orders.handlers) == {"confirm", "history"}


def test_known_handles_prefer_records_to_inference() -> None:
    from tidings.registry import HandlerRecord, ServiceRecord

    learnt = [
        ops.Handles("email", "order-events", "ORDER_PLACED", None),  # a guess from the log
        ops.Handles("loyalty", "order-events", "ORDER_CONFIRMED", "add_points"),
    ]
    record = ServiceRecord("email", (HandlerRecord("send", ("order-events",), "X", 2, (1, 2)),))
    known = known_handles({"email": record}, learnt)
    assert known == [
        ops.Handles("email", "order-events", "X", "send", declared=True, versions=(1, 2)),
        learnt[1],
    ]
    assert known[0].takes("X") and not known[0].takes("ORDER_PLACED")
    assert ops.Handles("s", "t", "*", None).takes("ANY")
