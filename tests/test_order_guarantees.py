"""What order tidings guarantees, checked where the README states it (section "What order you
get"), on the embedded SQLite broker with SQLite stores and on Kafka with PostgreSQL:

* per key, a handler's effects commit in the order the events were published, across retries
  (the partition waits), batches, concurrent partitions and rebalances (a member joining, a
  member leaving) - each exactly once;
* a dead letter replayed later is applied after the later events of its key (they overtook it),
  unless the handler keeps order (`ordered_dead_letters=True`), where they wait for it;
* a rebuilt handler takes its events again in their order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.backends import Backend, backend
from tests.support import eventually
from tidings import ConfigError, Event, EventModel, Retry, connect, ops
from tidings.ops import DeadLetterFilter
from tidings.service import Context, Service

pytestmark = pytest.mark.timeout(300)

KEYS = 12
PER_KEY = 24


class Moved(EventModel, type="ORDERING_MOVED", version=1):
    key: str
    n: int


FAILED_ONCE: set[tuple[str, int]] = set()
BROKEN: set[tuple[str, int]] = set()


@pytest.fixture(params=["sqlite", "kafka"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    FAILED_ONCE.clear()
    BROKEN.clear()
    with backend(request.param, tmp_path) as chosen:
        yield chosen


def tracker(where: Backend, name: str, topic: str, *, ordered: bool = False) -> Service:
    """`follow` writes each event's effect with its position among its key's effects; it fails
    the first attempt of every seventh event, and every attempt of those in BROKEN. `copy`
    does the same in another table, without ordered dead letters and without the flakiness."""
    service = Service(
        name,
        broker=where.broker,
        store=where.store(name),
        migrations=[
            "CREATE TABLE followed (key TEXT NOT NULL, pos INTEGER NOT NULL, n INTEGER NOT NULL)",
            "CREATE TABLE plain (key TEXT NOT NULL, pos INTEGER NOT NULL, n INTEGER NOT NULL)",
        ],
        topics={topic: 4},
        retry=Retry(immediate=1, max_attempts=3, initial_delay=0.01),
        max_batch=7,
    )

    async def clear(ctx: Context) -> None:
        await ctx.execute("DELETE FROM followed")

    @service.handler(topic, reset=clear, ordered_dead_letters=ordered)
    async def follow(event: Moved, ctx: Context) -> None:
        await _record(ctx, "followed", event)
        if (event.key, event.n) in BROKEN:
            raise RuntimeError(f"{event.key}:{event.n} is broken")
        if event.n % 7 == 3 and (event.key, event.n) not in FAILED_ONCE:
            FAILED_ONCE.add((event.key, event.n))
            raise ConnectionError("flaky")

    @service.handler(topic)
    async def copy(event: Moved, ctx: Context) -> None:
        await _record(ctx, "plain", event)
        if (event.key, event.n) in BROKEN:
            raise RuntimeError(f"{event.key}:{event.n} is broken")

    return service


async def _record(ctx: Context, table: str, event: Moved) -> None:
    await ctx.execute(
        f"INSERT INTO {table} (key, pos, n)"  # noqa: S608 (a table of this test)
        f" VALUES (?, (SELECT count(*) FROM {table} WHERE key = ?), ?)",
        (event.key, event.key, event.n),
    )


def moves(first: int, last: int) -> list[Event]:
    return [
        Moved(key=f"key-{k}", n=n).to_event(key=f"key-{k}")
        for n in range(first, last)
        for k in range(KEYS)
    ]


async def sequences(service: Service, table: str) -> dict[str, list[int]]:
    rows = await service.store.query(f"SELECT key, n FROM {table} ORDER BY key, pos")  # noqa: S608
    result: dict[str, list[int]] = {}
    for key, n in rows:
        result.setdefault(str(key), []).append(int(n))
    return result


async def caught_up(service: Service, topic: str) -> None:
    async def committed() -> bool:
        try:
            info = await ops.describe_group(service.broker, service.name)
        except ConfigError:
            return False
        parts = [p for p in info.partitions if p.topic == topic]
        return bool(parts) and all(p.committed == p.end_offset for p in parts)

    await eventually(committed, timeout=90)


async def test_per_key_order_holds_across_retries_batches_and_rebalances(where: Backend) -> None:
    topic, name = where.name("moves"), where.name("tracker")
    first = tracker(where, name, topic)
    second = tracker(where, name, topic)  # a second member of the same service
    await first.start()
    async with connect(where.broker) as broker:
        await broker.publish_events(topic, moves(0, 8))
        one = await first.run_in_background()
        await broker.publish_events(topic, moves(8, 16))
        two = await second.run_in_background()  # joins: partitions move while events flow
        await broker.publish_events(topic, moves(16, 20))
        first.stop()  # leaves: its partitions move to the second member
        await broker.publish_events(topic, moves(20, PER_KEY))
        await asyncio.wait_for(one, 60)
        await caught_up(second, topic)
    second.stop()
    await asyncio.wait_for(two, 60)

    everything = {f"key-{k}": list(range(PER_KEY)) for k in range(KEYS)}
    assert await sequences(second, "followed") == everything
    assert await sequences(second, "plain") == everything
    assert len(FAILED_ONCE) == KEYS * len([n for n in range(PER_KEY) if n % 7 == 3])

    # a rebuilt handler takes them again, in the same order
    await ops.rebuild(second, "follow")
    await second.close()
    again = tracker(where, name, topic)
    task = await again.run_in_background()
    await caught_up(again, topic)
    again.stop()
    await asyncio.wait_for(task, 60)
    assert await sequences(again, "followed") == everything
    assert await sequences(again, "plain") == everything  # not re-run
    await again.close()


async def test_a_replayed_dead_letter_comes_after_its_keys_later_events_unless_ordered(
    where: Backend,
) -> None:
    topic, name = where.name("moves"), where.name("tracker")
    service = tracker(where, name, topic, ordered=True)
    BROKEN.add(("key-0", 0))
    await service.start()
    async with connect(where.broker) as broker:
        await broker.publish_events(
            topic, [Moved(key="key-0", n=n).to_event(key="key-0") for n in range(3)]
        )
    task = await service.run_in_background()
    try:

        async def two_letters() -> list[ops.DeadLetter]:
            async with connect(where.broker) as broker:
                return await ops.select_dead_letters(broker, where=DeadLetterFilter(service=name))

        async def dead_lettered() -> bool:
            plain = await sequences(service, "plain")
            return len(await two_letters()) == 2 and plain == {"key-0": [1, 2]}

        await eventually(dead_lettered, timeout=60)
        assert await sequences(service, "followed") == {}  # 1 and 2 wait behind 0

        BROKEN.clear()
        async with connect(where.broker) as broker:
            await ops.replay_dead_letters(broker, await two_letters())

        async def replayed() -> bool:
            return await sequences(service, "plain") == {"key-0": [1, 2, 0]} and (
                await sequences(service, "followed") == {"key-0": [0, 1, 2]}
            )

        await eventually(replayed, timeout=60)
    finally:
        service.stop()
        await asyncio.wait_for(task, 60)
