"""Rebuild by replay (`tidings rebuild`, `tidings.ops.rebuild`) on the embedded SQLite broker with
SQLite stores and on Kafka with PostgreSQL: a corrupted projection rebuilt from the beginning
and from a point in time equals the log again; the service's other handler never sees an event
twice; refused while the service runs; an interrupted rebuild stops the service from starting
until it is run again. The order system's analytics are rebuilt in tests/test_orders_rebuild.py."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.backends import Backend, backend
from tests.support import eventually, read_topic
from tidings import ConfigError, Event, connect, event_from_record, ops
from tidings.brokers.base import CanResetOffsets
from tidings.service import Context, Service

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(params=["sqlite", "kafka"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    with backend(request.param, tmp_path) as chosen:
        yield chosen


def catalog(where: Backend, name: str, topic: str) -> Service:
    """`project` keeps a row per event (a projection that can be rebuilt from any time);
    `audit`, on the same events, counts every time it runs."""
    service = Service(
        name,
        broker=where.broker,
        store=where.store(name),
        migrations=[
            "CREATE TABLE seen (event_id TEXT NOT NULL, key TEXT NOT NULL, at_ms BIGINT NOT NULL)",
            "CREATE TABLE project_runs (event_id TEXT NOT NULL)",
            "CREATE TABLE audit_runs (event_id TEXT NOT NULL)",
        ],
        topics={topic: 2},
    )

    async def clear(ctx: Context, since: datetime | None) -> None:
        if since is None:
            await ctx.execute("DELETE FROM seen")
        else:
            await ctx.execute("DELETE FROM seen WHERE at_ms >= ?", (_ms(since),))

    @service.handler(topic, reset=clear)
    async def project(event: Event, ctx: Context) -> None:
        await ctx.execute(
            "INSERT INTO seen (event_id, key, at_ms) VALUES (?, ?, ?)",
            (event.id, event.key, _ms(event.time)),
        )
        await ctx.execute("INSERT INTO project_runs (event_id) VALUES (?)", (event.id,))

    @service.handler(topic)
    async def audit(event: Event, ctx: Context) -> None:
        await ctx.execute("INSERT INTO audit_runs (event_id) VALUES (?)", (event.id,))

    return service


def _ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


async def rows(service: Service, sql: str) -> list[Any]:
    return [tuple(r) for r in await service.store.query(sql)]


async def count(service: Service, sql: str) -> int:
    return int((await service.store.query(sql))[0][0])


async def caught_up(service: Service, topic: str) -> None:
    """Wait until the service's group committed every record of `topic`."""

    async def committed() -> bool:
        try:
            info = await ops.describe_group(service.broker, service.name)
        except ConfigError:
            return False
        parts = [p for p in info.partitions if p.topic == topic]
        return bool(parts) and all(p.committed == p.end_offset for p in parts)

    await eventually(committed, timeout=60)


async def run_until_caught_up(service: Service, topic: str) -> None:
    task = await service.run_in_background()
    try:
        await caught_up(service, topic)
    finally:
        service.stop()
        await asyncio.wait_for(task, 60)


async def log_projection(where: Backend, topic: str) -> list[tuple[str, str, int]]:
    """What `seen` must hold: every event of the log, once."""
    async with connect(where.broker) as broker:
        events = [event_from_record(r) for r in await read_topic(broker, topic)]
    return sorted((e.id, str(e.key), _ms(e.time)) for e in events)


def events(prefix: str, n: int) -> list[Event]:
    return [
        Event(type="REBUILD_ITEM", key=f"k{i % 5}", data={"n": f"{prefix}{i}"}) for i in range(n)
    ]


async def test_a_corrupted_projection_is_rebuilt_for_its_handler_only(where: Backend) -> None:
    topic, name = where.name("catalog-events"), where.name("catalog")
    service = catalog(where, name, topic)
    await service.start()
    async with connect(where.broker) as broker:
        await broker.publish_events(topic, events("a", 12))
    await run_until_caught_up(service, topic)
    await asyncio.sleep(0.005)  # the second batch's append times come after `since`
    since = datetime.now(UTC)
    await asyncio.sleep(0.005)
    async with connect(where.broker) as broker:
        await broker.publish_events(topic, events("b", 8))
    await run_until_caught_up(service, topic)
    truth = await log_projection(where, topic)
    assert len(truth) == 20
    assert await rows(service, "SELECT event_id, key, at_ms FROM seen ORDER BY 1") == truth

    # corrupt it: an old row and a new row lost, a bogus row after `since`
    old, new = truth[0], next(r for r in truth if r[2] >= _ms(since))
    newer = [r for r in truth if r[2] >= _ms(since)]
    async with service.store.transaction() as tx:
        await tx.execute("DELETE FROM seen WHERE event_id IN (?, ?)", (old[0], new[0]))
        await tx.execute("INSERT INTO seen VALUES ('bogus', 'k0', ?)", (_ms(since) + 1,))

    # from a point in time: what is older stays as it is (the lost old row stays lost)
    rebuilt = await ops.rebuild(service, "project", since)
    assert rebuilt.handler == f"{name}.project" and rebuilt.since == since
    assert rebuilt.records == len(newer) == 8 and rebuilt.forgotten == 8
    await service.close()
    await run_until_caught_up(catalog(where, name, topic), topic)
    assert await rows(service, "SELECT event_id, key, at_ms FROM seen ORDER BY 1") == sorted(
        set(truth) - {old}
    )
    assert await count(service, "SELECT count(*) FROM project_runs") == 28  # 20 + 8 again
    assert await count(service, "SELECT count(*) FROM audit_runs") == 20  # never again

    # from the beginning: everything; new events flow to both handlers afterwards
    rebuilt = await ops.rebuild(service, f"{name}.project")
    assert rebuilt.since is None and rebuilt.records == 20
    await service.close()
    async with connect(where.broker) as broker:
        await broker.publish_events(topic, events("c", 3))
    await run_until_caught_up(catalog(where, name, topic), topic)
    assert await rows(service, "SELECT event_id, key, at_ms FROM seen ORDER BY 1") == (
        await log_projection(where, topic)
    )
    assert await count(service, "SELECT count(*) FROM project_runs") == 28 + 23
    assert await count(service, "SELECT count(*) FROM audit_runs") == 23
    markers = "SELECT count(*) FROM tidings_meta WHERE key LIKE 'rebuild:%'"
    assert await count(service, markers) == 2  # one per partition, until the next start
    await run_until_caught_up(catalog(where, name, topic), topic)
    assert await count(service, markers) == 0
    await service.close()


async def test_rebuild_is_refused_while_the_service_runs_and_resumes_when_interrupted(
    where: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic, name = where.name("catalog-events"), where.name("catalog")
    service = catalog(where, name, topic)
    await service.start()
    async with connect(where.broker) as broker:
        await broker.publish_events(topic, events("a", 6))
    task = await service.run_in_background()
    try:
        await caught_up(service, topic)
        other = catalog(where, name, topic)
        with pytest.raises(ConfigError, match="live member"):
            await ops.rebuild(other, "project")
        await other.close()
        with pytest.raises(ConfigError, match="no handler 'nope'"):
            await ops.rebuild(other, "nope")
        with pytest.raises(ConfigError, match="has no reset hook"):
            await ops.rebuild(other, "audit")
    finally:
        service.stop()
        await asyncio.wait_for(task, 60)
    async with service.store.transaction() as tx:
        await tx.execute("DELETE FROM seen")

    # interrupted after the store's side (reset hook, markers), before the group was rewound
    async def lost(*args: object, **kwargs: object) -> object:
        raise ConnectionError("the broker went away")

    admin_type = type(service.broker.admin)
    assert issubclass(admin_type, CanResetOffsets)
    with monkeypatch.context() as patch:
        patch.setattr(admin_type, "reset_offsets", lost)
        with pytest.raises(ConnectionError):
            await ops.rebuild(service, "project")
    await service.close()
    with pytest.raises(ConfigError, match="was interrupted"):
        await catalog(where, name, topic).run_in_background()

    # run again, it completes
    rebuilt = await ops.rebuild(service, "project")
    assert rebuilt.records == 6
    await service.close()
    await run_until_caught_up(catalog(where, name, topic), topic)
    assert await rows(service, "SELECT event_id, key, at_ms FROM seen ORDER BY 1") == (
        await log_projection(where, topic)
    )
    assert await count(service, "SELECT count(*) FROM audit_runs") == 6
    await service.close()
