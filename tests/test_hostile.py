"""A hostile corpus (`tidings.testing.hostile`) through a running service on every broker with
SQLite and PostgreSQL stores: every hostile record is dead-lettered with its reason or
acknowledged as of no interest, the valid records around them are applied once, the group's lag
returns to 0 and the service keeps running."""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from tests.support import eventually, postgres_schema, server_setting
from tidings import Message, connect, dlq, event_to_message
from tidings.schema import EventModel
from tidings.service import Context, Service
from tidings.testing.hostile import UNDECODABLE, UNKNOWN_TYPE, hostile_records


class Ping(EventModel, type="HOSTILE_PING", version=1):
    n: int = 0


BACKENDS = [
    ("memory", "sqlite"),
    ("sqlite", "sqlite"),
    ("sqlite", "postgres"),
    ("kafka", "sqlite"),
    ("kafka", "postgres"),
]


@contextlib.contextmanager
def backend_urls(broker: str, store: str, tmp_path: Path) -> Iterator[tuple[str, str]]:
    with contextlib.ExitStack() as stack:
        if broker == "memory":
            broker_url = f"memory://hostile-{uuid.uuid4().hex[:8]}"
        elif broker == "sqlite":
            broker_url = f"sqlite:///{tmp_path}/bus.db"
        else:
            broker_url = f"kafka://{server_setting('TIDINGS_KAFKA_BOOTSTRAP', 'kafka')}"
        if store == "sqlite":
            store_url = f"sqlite:///{tmp_path}/victim.db"
        else:
            store_url = stack.enter_context(postgres_schema("hostile"))
        yield broker_url, store_url


@pytest.mark.parametrize(("broker", "store"), BACKENDS, ids=["-".join(b) for b in BACKENDS])
async def test_hostile_records_are_set_aside_and_the_valid_ones_flow(
    broker: str, store: str, tmp_path: Path, running: Callable[[Service], Awaitable[None]]
) -> None:
    with backend_urls(broker, store, tmp_path) as (broker_url, store_url):
        await hostile_run(broker_url, store_url, running)


async def hostile_run(
    broker_url: str, store_url: str, running: Callable[[Service], Awaitable[None]]
) -> None:
    suffix = uuid.uuid4().hex[:8]
    topic = f"hostile-{suffix}"
    service = Service(
        f"victim-{suffix}",
        broker=broker_url,
        store=store_url,
        migrations=["CREATE TABLE pings (n INTEGER PRIMARY KEY)"],
        topics={topic: 2},
        session_timeout=6.0,
    )

    @service.handler(topic)
    async def ping(event: Ping, ctx: Context) -> None:
        await ctx.execute("INSERT INTO pings(n) VALUES (?)", (event.n,))

    await service.start()
    limit = service.broker.max_message_bytes
    corpora = [hostile_records("HOSTILE_PING", max_message_bytes=limit, seed=p) for p in (0, 1)]
    corpus = corpora[0]
    messages: list[Message] = []
    for n in range(len(corpus)):
        for partition in (0, 1):  # every hostile record amid valid ones, on both partitions
            valid_one = event_to_message(Ping(n=2 * n + partition).to_event())
            hostile = corpora[partition][n].message
            messages.append(Message(valid_one.value, None, valid_one.headers, partition))
            messages.append(Message(hostile.value, None, hostile.headers, partition))
    for start in range(0, len(messages), 10):
        await service.broker.publish(topic, messages[start : start + 10])
    valid = 2 * len(corpus)
    undecodable_extra = 0
    if broker_url.startswith("kafka://"):  # header names that are not UTF-8: only Kafka has them
        from tests.kafka_raw import produce_raw

        bad = (None, b'{"specversion": "1.0"}', [(b"\xff\xfe", b"v"), (b"ok", b"v")])
        now = int(time.time() * 1000)
        produce_raw(broker_url.removeprefix("kafka://"), topic, [bad], now)
        await service.broker.publish(topic, [event_to_message(Ping(n=-1).to_event())])
        valid, undecodable_extra = valid + 1, 1
    await running(service)

    async def settled() -> bool:
        applied = (await service.store.query("SELECT count(*) FROM pings"))[0][0]
        lag = (await service.broker.admin.describe_group(service.name)).lag
        return bool(applied == valid and lag == 0)

    await eventually(settled, timeout=120)
    expected = Counter(h.outcome for h in corpus if h.outcome != UNKNOWN_TYPE)
    async with connect(broker_url) as bus:

        async def all_dead_lettered() -> bool:
            letters = await dlq.list_dead_letters(bus, service=service.name)
            return len(letters) == 2 * sum(expected.values()) + undecodable_extra

        await eventually(all_dead_lettered, timeout=60)
        letters = await dlq.list_dead_letters(bus, service=service.name)
    reasons = Counter(letter.reason for letter in letters)
    expected_reasons = Counter({reason: 2 * count for reason, count in expected.items()})
    expected_reasons[UNDECODABLE] += undecodable_extra
    assert reasons == expected_reasons
    assert all(letter.message for letter in letters)  # each says why
    assert service.stats.skipped >= 2  # the unknown type, once per partition
    assert service.runner is not None  # still running
    assert await service.store.outbox_size() == 0
    assert os.environ.get("CI") != "true" or service.stats.dead_lettered == len(letters)
