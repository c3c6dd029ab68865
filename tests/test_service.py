"""Services end to end on the embedded default: outbox -> relay -> broker -> handler with inbox,
correlation, retries, dead letters, sync handlers, several handlers per type."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from tests.support import eventually, read_topic
from tidings import Event, Message, SeekTo, connect, event_from_record
from tidings.retry import PermanentError, Retry
from tidings.schema import EventModel
from tidings.service import Context, Service, SyncContext


class ItemReserved(EventModel, type="TEST_ITEM_RESERVED", version=1):
    order_id: str
    quantity: int


class ThingPlacedV1(EventModel, type="TEST_THING_PLACED", version=1):
    order_id: str
    total: float


class ThingPlaced(EventModel, type="TEST_THING_PLACED", version=2):
    order_id: str
    total: float
    currency: str


@ThingPlaced.upcaster(from_version=1)
def _thing_v1_to_v2(data: dict[str, object]) -> dict[str, object]:
    return {**data, "currency": "USD"}


FAST = Retry(immediate=1, max_attempts=3, initial_delay=0.01, max_delay=0.02)


@pytest.fixture
def urls(tmp_path: Path) -> dict[str, str]:
    return {
        "broker": f"sqlite:///{tmp_path}/bus.db",
        "orders": f"sqlite:///{tmp_path}/orders.db",
        "inventory": f"sqlite:///{tmp_path}/inventory.db",
    }


def inventory_service(urls: dict[str, str], **kw: object) -> Service:
    return Service(
        "inventory",
        broker=urls["broker"],
        store=urls["inventory"],
        migrations=["CREATE TABLE reserved (order_id TEXT PRIMARY KEY, currency TEXT)"],
        topics={"inventory-events": 2},
        **kw,  # type: ignore[arg-type]
    )


async def test_outbox_to_handler_with_correlation_and_causation(
    urls: dict[str, str], running: Callable[[Service], Awaitable[None]]
) -> None:
    orders = Service(
        "orders",
        broker=urls["broker"],
        store=urls["orders"],
        migrations=["CREATE TABLE orders (id TEXT PRIMARY KEY, status TEXT NOT NULL)"],
        topics={"order-events": 4},
    )
    inventory = inventory_service(urls)

    @inventory.handler("order-events")
    async def reserve(event: ThingPlaced, ctx: Context) -> None:
        await ctx.execute(
            "INSERT INTO reserved(order_id, currency) VALUES (?, ?)",
            (event.order_id, event.currency),
        )
        ctx.publish("inventory-events", ItemReserved(order_id=event.order_id, quantity=1))

    @orders.handler("inventory-events")
    async def confirm(event: ItemReserved, ctx: Context) -> None:
        await ctx.execute("UPDATE orders SET status = 'CONFIRMED' WHERE id = ?", (event.order_id,))

    await running(orders)
    await running(inventory)
    placed: list[Event] = []
    for n in range(20):
        async with orders.transaction(correlation_id=f"req-{n}") as ctx:
            await ctx.execute("INSERT INTO orders(id, status) VALUES (?, 'PENDING')", (f"o{n}",))
            model: EventModel = (
                ThingPlacedV1(order_id=f"o{n}", total=n)
                if n % 2
                else ThingPlaced(order_id=f"o{n}", total=n, currency="EUR")
            )
            placed.append(ctx.publish("order-events", model, key=f"o{n}"))

    async def all_confirmed() -> bool:
        rows = await orders.store.query("SELECT count(*) FROM orders WHERE status = 'CONFIRMED'")
        return bool(rows[0][0] == 20)

    await eventually(all_confirmed)
    reserved = dict(await inventory.store.query("SELECT order_id, currency FROM reserved"))
    assert reserved["o1"] == "USD" and reserved["o2"] == "EUR"
    async with connect(urls["broker"]) as broker:
        follow_ups = {
            e.data["orderId"]: e
            for e in map(event_from_record, await read_topic(broker, "inventory-events"))
        }
    for n, original in enumerate(placed):
        assert original.correlation_id == f"req-{n}"
        follow = follow_ups[f"o{n}"]
        assert follow.correlation_id == f"req-{n}"
        assert follow.causation_id == original.id
        assert follow.source == "inventory"
        assert follow.key == f"o{n}"
    assert inventory.stats.processed == 20


async def test_redelivered_events_do_nothing(
    urls: dict[str, str], running: Callable[[Service], Awaitable[None]]
) -> None:
    inventory = inventory_service(urls)
    calls = 0

    @inventory.handler("order-events")
    async def reserve(event: ThingPlaced, ctx: Context) -> None:
        nonlocal calls
        calls += 1
        await ctx.execute("INSERT INTO reserved(order_id) VALUES (?)", (event.order_id,))

    async with connect(urls["broker"]) as broker:
        await broker.admin.create_topic("order-events", 2)
        events = [ThingPlaced(order_id=f"o{n}", total=1, currency="EUR") for n in range(10)]
        await broker.publish_events("order-events", [e.to_event(key=e.order_id) for e in events])
    await running(inventory)

    async def done() -> bool:
        return bool((await inventory.store.query("SELECT count(*) FROM reserved"))[0][0] == 10)

    await eventually(done)
    inventory.stop()
    await asyncio.sleep(0.5)
    async with connect(urls["broker"]) as broker:
        await broker.admin.reset_offsets("inventory", ["order-events"], SeekTo(earliest=True))
    again = inventory_service(urls)
    again.handler("order-events", name="reserve")(reserve)
    await running(again)

    async def redelivered() -> bool:
        return again.stats.duplicates == 10

    await eventually(redelivered)
    assert calls == 10
    assert (await again.store.query("SELECT count(*) FROM reserved"))[0][0] == 10


async def test_retries_then_dead_letter_and_the_partition_moves_on(
    urls: dict[str, str], running: Callable[[Service], Awaitable[None]]
) -> None:
    inventory = inventory_service(urls, retry=FAST)
    attempts: dict[str, int] = {}

    @inventory.handler("order-events")
    async def reserve(event: ThingPlaced, ctx: Context) -> None:
        attempts[event.order_id] = attempts.get(event.order_id, 0) + 1
        await ctx.execute("INSERT INTO reserved(order_id) VALUES (?)", (event.order_id,))
        if event.order_id == "flaky" and attempts["flaky"] < 3:
            raise ConnectionError("gateway timeout")
        if event.order_id == "broken":
            raise RuntimeError("always broken")

    async with connect(urls["broker"]) as broker:
        await broker.admin.create_topic("order-events", 1)
        names = ["a", "flaky", "broken", "b"]
        await broker.publish_events(
            "order-events",
            [ThingPlaced(order_id=n, total=1, currency="EUR").to_event(key=n) for n in names],
        )
    await running(inventory)

    async def settled() -> bool:
        rows = await inventory.store.query("SELECT order_id FROM reserved ORDER BY rowid")
        return [r[0] for r in rows] == ["a", "flaky", "b"] and inventory.stats.dead_lettered == 1

    await eventually(settled)
    # A failure rolls back the batch's transaction; the records before it are applied again
    # with a savepoint per handler (effects stay exactly-once: see `reserved` above). So "a"
    # ran twice, and "broken" once more than its 3 counted attempts.
    assert attempts == {"a": 2, "flaky": 3, "broken": 4, "b": 1}
    async with connect(urls["broker"]) as broker:

        async def dead_letter_published() -> bool:
            return len(await read_topic(broker, "inventory.dlq")) == 1

        await eventually(dead_letter_published)
        [letter] = await read_topic(broker, "inventory.dlq")
        original = (await read_topic(broker, "order-events"))[2]
    assert event_from_record(letter).id == event_from_record(original).id
    assert letter.value == original.value
    headers = {k: v.decode() for k, v in letter.headers}
    assert headers["tidings-dlq-reason"] == "retries-exhausted"
    assert headers["tidings-dlq-exception"] == "builtins.RuntimeError"
    assert headers["tidings-dlq-message"] == "always broken"
    assert "Traceback" in headers["tidings-dlq-traceback"]
    assert headers["tidings-dlq-topic"] == "order-events"
    assert headers["tidings-dlq-partition"] == "0"
    assert headers["tidings-dlq-offset"] == "2"
    assert headers["tidings-dlq-handler"] == "inventory.reserve"
    assert headers["tidings-dlq-attempts"] == "3"


async def test_bad_events_are_dead_lettered_without_retries(
    urls: dict[str, str], running: Callable[[Service], Awaitable[None]]
) -> None:
    inventory = inventory_service(urls, retry=FAST)
    seen: list[str] = []

    @inventory.handler("order-events")
    async def reserve(event: ThingPlaced, ctx: Context) -> None:
        seen.append(event.order_id)
        if event.order_id == "permanent":
            raise PermanentError("customer blocked")

    async with connect(urls["broker"]) as broker:
        await broker.admin.create_topic("order-events", 1)
        await broker.publish("order-events", [Message(b"not an event at all", key=b"x")])
        await broker.publish_events(
            "order-events",
            [
                Event(type="TEST_THING_PLACED", version=2, data={"orderId": "no-total"}),
                Event(type="TEST_THING_PLACED", version=3, data={"orderId": "future"}),
                ThingPlaced(order_id="permanent", total=1, currency="EUR").to_event(),
                Event(type="SOMETHING_ELSE", data={}),
                ThingPlaced(order_id="fine", total=1, currency="EUR").to_event(),
            ],
        )
    await running(inventory)

    async def settled() -> bool:
        return seen[-1:] == ["fine"] and inventory.stats.dead_lettered == 4

    await eventually(settled)
    assert inventory.stats.skipped == 1
    assert inventory.stats.retried == 0
    async with connect(urls["broker"]) as broker:

        async def four_letters() -> bool:
            return len(await read_topic(broker, "inventory.dlq")) == 4

        await eventually(four_letters)
        letters = await read_topic(broker, "inventory.dlq")
    reasons = [dict(r.headers)["tidings-dlq-reason"].decode() for r in letters]
    assert reasons == ["undecodable", "invalid-event", "invalid-event", "permanent-error"]
    messages = [dict(r.headers)["tidings-dlq-message"].decode() for r in letters]
    assert "total" in messages[1]
    assert "version 3" in messages[2]


async def test_sync_handlers_and_several_handlers_per_type(
    urls: dict[str, str], running: Callable[[Service], Awaitable[None]]
) -> None:
    inventory = inventory_service(urls, retry=FAST)
    audit_attempts = 0

    @inventory.handler("order-events")
    def reserve(event: ThingPlaced, ctx: SyncContext) -> None:
        ctx.execute("INSERT INTO reserved(order_id) VALUES (?)", (event.order_id,))
        assert ctx.fetchone("SELECT count(*) FROM reserved WHERE order_id = ?", (event.order_id,))

    @inventory.handler("order-events")
    async def audit(event: Event, ctx: Context) -> None:
        nonlocal audit_attempts
        audit_attempts += 1
        if audit_attempts <= 2:
            raise TimeoutError("audit store slow")
        ctx.publish("inventory-events", Event(type="AUDITED", data={"of": event.id}))

    async with connect(urls["broker"]) as broker:
        await broker.admin.create_topic("order-events", 1)
        await broker.publish_events(
            "order-events", [ThingPlaced(order_id="o1", total=1, currency="EUR").to_event()]
        )
    await running(inventory)

    async def both_done() -> bool:
        return inventory.stats.processed == 2

    await eventually(both_done)
    assert audit_attempts == 3
    assert (await inventory.store.query("SELECT count(*) FROM reserved"))[0][0] == 1
    assert inventory.stats.retried == 1


def test_handler_signatures_are_checked() -> None:
    service = Service("checks", broker="memory://", store="sqlite:///unused.db")
    with pytest.raises(Exception, match="annotate its first parameter"):

        @service.handler("t")
        async def untyped(event, ctx) -> None:  # type: ignore[no-untyped-def]
            pass

    with pytest.raises(Exception, match="must take"):

        @service.handler("t")
        async def one(event: Event) -> None:
            pass

    with pytest.raises(Exception, match="service name"):
        Service("bad name!")


async def test_a_slow_handler_keeps_its_group_membership(
    urls: dict[str, str], running: Callable[[Service], Awaitable[None]]
) -> None:
    inventory = inventory_service(urls, session_timeout=0.6)
    done: list[str] = []

    @inventory.handler("order-events")
    async def reserve(event: ThingPlaced, ctx: Context) -> None:
        await asyncio.sleep(2.0)
        done.append(event.order_id)

    async with connect(urls["broker"]) as broker:
        await broker.admin.create_topic("order-events", 1)
        await running(inventory)

        async def joined() -> bool:
            groups = await broker.admin.list_groups()
            return "inventory" in groups and bool(
                (await broker.admin.describe_group("inventory")).members
            )

        await eventually(joined)
        before = await broker.admin.describe_group("inventory")
        await broker.publish_events(
            "order-events",
            [ThingPlaced(order_id=f"o{n}", total=1, currency="EUR").to_event() for n in range(2)],
        )

        async def finished() -> bool:
            return len(done) == 2

        await eventually(finished)
        after = await broker.admin.describe_group("inventory")
    assert [m.member_id for m in after.members] == [m.member_id for m in before.members]
    assert done == ["o0", "o1"]
    assert inventory.stats.duplicates == 0


async def test_relay_killed_between_publish_and_mark_duplicates_nothing_downstream(
    urls: dict[str, str], running: Callable[[Service], Awaitable[None]]
) -> None:
    orders = Service("orders", broker=urls["broker"], store=urls["orders"])
    inventory = inventory_service(urls)

    @inventory.handler("order-events")
    async def reserve(event: ThingPlaced, ctx: Context) -> None:
        await ctx.execute("INSERT INTO reserved(order_id) VALUES (?)", (event.order_id,))

    await orders.broker.admin.create_topic("order-events", 4, exist_ok=True)
    async with orders.transaction() as ctx:
        for n in range(5):
            ctx.publish("order-events", ThingPlaced(order_id=f"o{n}", total=1, currency="EUR"))
    claimed = await orders.store.outbox_claim("relay-that-dies", 100, 0.2)
    assert claimed is not None and len(claimed) == 5
    for row in claimed:
        await orders.broker.publish(row.topic, [row.message])
    await running(orders)
    await running(inventory)

    async def all_seen_twice() -> bool:
        return inventory.stats.processed == 5 and inventory.stats.duplicates == 5

    await eventually(all_seen_twice)
    assert (await inventory.store.query("SELECT count(*) FROM reserved"))[0][0] == 5
    assert await orders.store.outbox_size() == 0


async def test_a_handler_publishing_one_event_twice_is_dead_lettered_not_stuck(
    urls: dict[str, str], running: Callable[[Service], Awaitable[None]]
) -> None:
    inventory = inventory_service(urls, retry=FAST)

    @inventory.handler("order-events")
    async def reserve(event: ThingPlaced, ctx: Context) -> None:
        await ctx.execute("INSERT INTO reserved(order_id) VALUES (?)", (event.order_id,))
        follow_up = Event(type="FOLLOW_UP", data={"of": event.order_id})
        ctx.publish("inventory-events", follow_up)
        if event.order_id == "twice":
            ctx.publish("inventory-events", follow_up)

    async with connect(urls["broker"]) as broker:
        await broker.admin.create_topic("order-events", 1)
        await broker.publish_events(
            "order-events",
            [
                ThingPlaced(order_id=n, total=1, currency="EUR").to_event()
                for n in ("before", "twice", "after")
            ],
        )
    await running(inventory)

    async def settled() -> bool:
        return inventory.stats.processed == 2 and inventory.stats.dead_lettered == 1

    await eventually(settled)
    rows = await inventory.store.query("SELECT order_id FROM reserved ORDER BY rowid")
    assert [r[0] for r in rows] == ["before", "after"]
    async with connect(urls["broker"]) as broker:

        async def one_letter() -> bool:
            return len(await read_topic(broker, "inventory.dlq")) == 1

        await eventually(one_letter)
        [letter] = await read_topic(broker, "inventory.dlq")
    headers = {k: v.decode() for k, v in letter.headers}
    assert headers["tidings-dlq-reason"] == "permanent-error"
    assert headers["tidings-dlq-exception"] == "tidings.errors.DuplicateEventError"
