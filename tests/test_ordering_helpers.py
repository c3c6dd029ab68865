"""`tidings.ordering`: last writer wins by sequence number or event time, and gap reports, in
handlers on the embedded broker with SQLite stores and on Kafka with PostgreSQL stores."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.sites import BACKENDS, Site, site
from tests.support import eventually
from tidings import (
    Context,
    Event,
    EventModel,
    Freshness,
    Gap,
    Service,
    SyncContext,
    last_writer_wins,
    last_writer_wins_sync,
    ordering,
)

PRICES = "CREATE TABLE prices (sku TEXT PRIMARY KEY, price REAL NOT NULL)"
UPSERT = (
    "INSERT INTO prices(sku, price) VALUES (?, ?)"
    " ON CONFLICT (sku) DO UPDATE SET price = excluded.price"
)
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


class PriceChanged(EventModel, type="PRICE_CHANGED", version=1):
    sku: str
    price: float


@pytest.fixture(params=BACKENDS)
def where(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Site]:
    with site(request.param, tmp_path) as chosen:
        yield chosen


def price(sku: str, value: float, **envelope: object) -> Event:
    return Event(
        type="PRICE_CHANGED",
        key=sku,
        data={"sku": sku, "price": value},
        source=str(envelope.pop("source", "catalog")),
        **envelope,  # type: ignore[arg-type]
    )


async def test_stale_updates_are_ignored_and_gaps_reported(
    where: Site, running: Callable[[Service], object]
) -> None:
    topic, name = where.name("prices"), where.name("shop")
    decisions: dict[str, list[tuple[int | None, bool, int | None, range]]] = {}
    gaps: list[Gap] = []
    shop = Service(name, broker=where.broker, store=where.store(name), migrations=[PRICES])

    async def report(gap: Gap) -> None:
        gaps.append(gap)

    @shop.handler(topic)
    async def on_price(event: PriceChanged, ctx: Context) -> None:
        fresh = await last_writer_wins(ctx, scope="prices", on_gap=report)
        decided = (fresh.position, fresh.apply, fresh.previous, fresh.missing)
        decisions.setdefault(event.sku, []).append(decided)
        if fresh:
            await ctx.execute(UPSERT, (event.sku, event.price))

    await shop.start()
    arrivals = [  # the order they arrive in: a replayed dead letter, another path...
        price("sku-1", 10.0, sequence=1),
        price("sku-1", 30.0, sequence=3),
        price("sku-1", 20.0, sequence=2),  # stale: 3 was applied
        price("sku-1", 50.0, sequence=5),
        price("sku-1", 99.0, sequence=7, source="importer"),  # another producer's numbers
        price("sku-1", 1.0),  # no number (not from an outbox): applied, not recorded
        price("sku-2", 7.0, sequence=4),  # a key's first event reports no gap
    ]
    await shop.broker.publish_events(topic, arrivals)
    await running(shop)  # type: ignore[misc]

    async def done() -> bool:  # decided, and committed
        rows = await shop.store.query("SELECT sku, price FROM prices ORDER BY sku")
        return sum(map(len, decisions.values())) == len(arrivals) and rows == [
            ("sku-1", 1.0),
            ("sku-2", 7.0),
        ]

    await eventually(done, timeout=60)
    assert decisions.pop("sku-2") == [(4, True, None, range(0))]
    assert decisions["sku-1"] == [
        (1, True, None, range(0)),
        (3, True, 1, range(2, 3)),
        (2, False, 3, range(0)),
        (5, True, 3, range(4, 5)),
        (7, True, None, range(0)),
        (None, True, None, range(0)),
    ]
    assert [(g.source, g.key, g.missing, g.event.sequence) for g in gaps] == [
        ("catalog", "sku-1", range(2, 3), 3),
        ("catalog", "sku-1", range(4, 5), 5),
    ]
    assert await shop.store.query("SELECT count(*) FROM tidings_last_applied") == [(3,)]


async def test_last_writer_wins_by_event_time_across_producers(
    where: Site, running: Callable[[Service], object]
) -> None:
    topic, name = where.name("profiles"), where.name("crm")
    decided: list[tuple[float, bool]] = []
    crm = Service(name, broker=where.broker, store=where.store(name), migrations=[PRICES])

    @crm.handler(topic)
    def on_price(event: PriceChanged, ctx: SyncContext) -> None:  # a `def` handler
        fresh = last_writer_wins_sync(ctx, scope="profiles", by="time")
        decided.append((event.price, fresh.apply))
        if fresh:
            ctx.execute(UPSERT, (event.sku, event.price))

    await crm.start()
    await crm.broker.publish_events(
        topic,
        [
            price("p", 2.0, time=T0 + timedelta(seconds=2), source="web"),
            price("p", 1.0, time=T0 + timedelta(seconds=1), source="mobile"),  # older: ignored
            price("p", 3.0, time=T0 + timedelta(seconds=3), source="mobile"),
            price("p", 2.5, time=T0 + timedelta(seconds=3), source="web"),  # a tie: not newer
        ],
    )
    await running(crm)  # type: ignore[misc]

    async def done() -> bool:  # decided, and committed
        return len(decided) == 4 and await crm.store.query("SELECT price FROM prices") == [(3.0,)]

    await eventually(done, timeout=60)
    assert decided == [(2.0, True), (1.0, False), (3.0, True), (2.5, False)]
    assert await crm.store.query("SELECT source, key FROM tidings_last_applied") == [("", "p")]


async def test_concurrent_equal_updates_apply_once(where: Site) -> None:
    """Two transactions checking the same position at once: the second waits for the first
    (its row lock on PostgreSQL, the write lock on SQLite) and finds it not newer."""
    name = where.name("racer")
    service = Service(name, broker=where.broker, store=where.store(name), migrations=[PRICES])
    await service.start()
    try:
        first_checked = asyncio.Event()
        results: dict[str, Freshness] = {}

        async def check(who: str, position: int) -> None:
            if who != "first":
                await first_checked.wait()
            async with service.transaction() as ctx:
                event = price("sku-9", 1.0, sequence=position)
                results[who] = await last_writer_wins(ctx, scope="race", event=event)
                if who == "first":
                    first_checked.set()
                    await asyncio.sleep(0.05)  # the others start meanwhile

        await asyncio.gather(check("first", 7), check("same", 7), check("newer", 8))
        assert results["first"].apply and not results["same"].apply
        assert results["newer"].apply and results["newer"].previous == 7
        assert await service.store.query(
            "SELECT last_value, prev_value FROM tidings_last_applied WHERE scope = 'race'"
        ) == [(8, 7)]
    finally:
        await service.close()


async def test_helper_arguments_are_checked(tmp_path: Path) -> None:
    service = Service(
        "checks", broker=f"sqlite:///{tmp_path}/bus.db", store=f"sqlite:///{tmp_path}/c.db"
    )
    try:
        async with service.transaction() as ctx:
            with pytest.raises(ValueError, match="needs an event"):
                await last_writer_wins(ctx, scope="s")
            with pytest.raises(ValueError, match="needs a scope"):
                await last_writer_wins(ctx, scope="", event=price("k", 1, sequence=1))
            with pytest.raises(ValueError, match="has no key"):
                await last_writer_wins(ctx, scope="s", event=Event(type="T", sequence=1))
            with pytest.raises(ValueError, match="by must be"):
                await last_writer_wins(ctx, scope="s", event=price("k", 1), by="size")  # type: ignore[arg-type]
            fresh = await ordering.last_writer_wins(
                ctx, scope="s", key="other", event=price("k", 1, sequence=2)
            )
            assert fresh and fresh.position == 2
        assert await service.store.query("SELECT key FROM tidings_last_applied") == [("other",)]
    finally:
        await service.close()
