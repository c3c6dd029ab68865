"""Order-preserving dead letters (`@service.handler(..., ordered_dead_letters=True)`), as a user
meets them, on the embedded SQLite broker with SQLite stores and on Kafka with PostgreSQL: key
A's first event is poison and dead-lettered, A's later events wait (parked) while key B flows;
once the letter is replayed after the fix - or purged - A's events are applied in their order.
Durable across a restart; a parked event that fails once released holds the key again."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.backends import Backend, backend
from tests.support import eventually
from tidings import Event, EventModel, Retry, connect, ops
from tidings.cli import app
from tidings.ops import DeadLetterFilter
from tidings.runtime.parking import ORDERED
from tidings.service import Context, Service

pytestmark = pytest.mark.timeout(300)


class Step(EventModel, type="ORDERTEST_STEP", version=1):
    key: str
    n: int


BROKEN: set[str] = set()
"""`key:n` of the steps the handler fails on right now; the tests 'fix the code' by removing."""


@pytest.fixture(params=["sqlite", "kafka"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    BROKEN.clear()
    with backend(request.param, tmp_path) as chosen:
        yield chosen
    BROKEN.clear()


def ledger(where: Backend, name: str, topic: str) -> Service:
    service = Service(
        name,
        broker=where.broker,
        store=where.store(name),
        migrations=[
            "CREATE TABLE applied (key TEXT NOT NULL, pos INTEGER NOT NULL, n INTEGER NOT NULL)",
            "CREATE TABLE audited (event_id TEXT NOT NULL)",
        ],
        retry=Retry(immediate=1, max_attempts=2, initial_delay=0.01),
        topics={topic: 1},
    )

    @service.handler(topic, ordered_dead_letters=True)
    async def apply(event: Step, ctx: Context) -> None:
        await ctx.execute(
            "INSERT INTO applied (key, pos, n)"
            " VALUES (?, (SELECT count(*) FROM applied WHERE key = ?), ?)",
            (event.key, event.key, event.n),
        )
        if f"{event.key}:{event.n}" in BROKEN:
            raise RuntimeError(f"cannot apply {event.key}:{event.n}")

    @service.handler(topic)  # the same events, without the opt-in: never held back
    async def audit(event: Event, ctx: Context) -> None:
        await ctx.execute("INSERT INTO audited (event_id) VALUES (?)", (event.id,))

    return service


def step(key: str, n: int) -> Event:
    return Step(key=key, n=n).to_event(key=key)


async def applied(service: Service) -> dict[str, list[int]]:
    rows = await service.store.query("SELECT key, n FROM applied ORDER BY key, pos")
    result: dict[str, list[int]] = {}
    for key, n in rows:
        result.setdefault(str(key), []).append(int(n))
    return result


async def count(service: Service, sql: str) -> int:
    return int((await service.store.query(sql))[0][0])


async def settle(service: Service, want: dict[str, list[int]], audited: int) -> None:
    """Wait until `applied` is `want` and `audited` events were audited."""

    async def there() -> bool:
        have = await applied(service)
        return have == want and await count(service, "SELECT count(*) FROM audited") == audited

    try:
        await eventually(there, timeout=60)
    except AssertionError:
        raise AssertionError(f"applied {await applied(service)}, wanted {want}") from None


async def letters(where: Backend, service: str) -> list[ops.DeadLetter]:
    async with connect(where.broker) as broker:
        return await ops.select_dead_letters(broker, where=DeadLetterFilter(service=service))


async def one_letter(where: Backend, service: str) -> ops.DeadLetter:
    async def arrived() -> bool:
        return len(await letters(where, service)) == 1

    await eventually(arrived, timeout=60)
    [letter] = await letters(where, service)
    return letter


async def test_a_poison_event_holds_its_key_until_its_letter_is_replayed(
    where: Backend, running: Callable[[Service], Awaitable[None]]
) -> None:
    topic, name = where.name("ledger-events"), where.name("ledger")
    service = ledger(where, name, topic)
    BROKEN.add("A:1")
    await service.start()
    async with connect(where.broker) as broker:
        await broker.publish_events(topic, [step("A", 1), step("A", 2), step("B", 1)])
        await broker.publish_events(topic, [step("A", 3), step("B", 2)])
    first_run = await service.run_in_background()

    # A1 is dead-lettered; A2 and A3 wait behind it; B flows on the same partition
    letter = await one_letter(where, name)
    await settle(service, {"B": [1, 2]}, audited=5)
    assert (letter.reason, letter.handler, letter.attempts) == (
        "retries-exhausted",
        f"{name}.apply",
        2,
    )
    assert letter.event is not None and letter.event.data == {"key": "A", "n": 1}
    assert letter.headers[ORDERED] == f"{name}.apply"
    assert await count(service, "SELECT count(*) FROM tidings_parked") == 2
    assert service.stats.parked == 2

    # durable: a restart forgets nothing; a later A event waits too, B goes on
    service.stop()
    await asyncio.wait_for(first_run, 60)
    service = ledger(where, name, topic)
    await running(service)
    async with connect(where.broker) as broker:
        await broker.publish_events(topic, [step("A", 4), step("B", 3)])
    await settle(service, {"B": [1, 2, 3]}, audited=7)
    assert await count(service, "SELECT count(*) FROM tidings_parked") == 3

    # fixed; the letter replayed: A1 then A2, A3, A4 in order, each audited once only
    BROKEN.clear()
    async with connect(where.broker) as broker:
        result = await ops.replay_dead_letters(broker, await letters(where, name))
    assert len(result.replayed) == 1
    await settle(service, {"A": [1, 2, 3, 4], "B": [1, 2, 3]}, audited=7)
    assert await count(service, "SELECT count(*) FROM tidings_parked") == 0
    assert await count(service, "SELECT count(*) FROM tidings_held_keys") == 0
    async with connect(where.broker) as broker:  # and A flows again
        await broker.publish_events(topic, [step("A", 5)])
    await settle(service, {"A": [1, 2, 3, 4, 5], "B": [1, 2, 3]}, audited=8)
    assert await letters(where, name) == []


async def test_purging_the_letter_releases_the_parked_events_in_order(
    where: Backend, running: Callable[[Service], Awaitable[None]]
) -> None:
    topic, name = where.name("ledger-events"), where.name("ledger")
    service = ledger(where, name, topic)
    BROKEN.add("A:1")
    await service.start()
    async with connect(where.broker) as broker:
        await broker.publish_events(topic, [step("A", 1), step("A", 2), step("B", 1), step("A", 3)])
    await running(service)
    letter = await one_letter(where, name)
    await settle(service, {"B": [1]}, audited=4)

    # the user's way: `tidings dlq purge ID --yes`
    purge = await asyncio.to_thread(
        CliRunner().invoke,
        app,
        ["--broker", where.broker, "dlq", "purge", letter.position, "--yes", "--json"],
    )
    assert purge.exit_code == 0, purge.output
    assert [x["id"] for x in json.loads(purge.stdout)["purged"]] == [letter.id]
    await settle(service, {"A": [2, 3], "B": [1]}, audited=4)  # A1 never applied
    assert await count(service, "SELECT count(*) FROM tidings_held_keys") == 0
    assert await letters(where, name) == []


async def test_a_released_event_that_fails_holds_the_key_again(
    where: Backend, running: Callable[[Service], Awaitable[None]]
) -> None:
    topic, name = where.name("ledger-events"), where.name("ledger")
    service = ledger(where, name, topic)
    BROKEN.update({"A:1", "A:2"})
    await service.start()
    async with connect(where.broker) as broker:
        await broker.publish_events(topic, [step("A", 1), step("A", 2), step("A", 3), step("B", 1)])
    await running(service)
    first = await one_letter(where, name)
    await settle(service, {"B": [1]}, audited=4)

    BROKEN.discard("A:1")  # A2 still fails: released, it is dead-lettered and holds A again
    async with connect(where.broker) as broker:
        await ops.replay_dead_letters(broker, [first])
    second = await one_letter(where, name)
    assert second.event is not None and second.event.data == {"key": "A", "n": 2}
    assert second.original_offset == 1  # where A2 was, not where A1's replay landed
    await settle(service, {"A": [1], "B": [1]}, audited=4)
    assert await count(service, "SELECT count(*) FROM tidings_parked") == 1  # A3

    BROKEN.clear()
    async with connect(where.broker) as broker:
        await ops.replay_dead_letters(broker, [second])
    await settle(service, {"A": [1, 2, 3], "B": [1]}, audited=4)
    assert await count(service, "SELECT count(*) FROM tidings_held_keys") == 0
