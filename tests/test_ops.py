"""tidings.ops on the memory and SQLite brokers: results as data, paging, and clear errors."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tidings import ConfigError, DecodeError, Event, Message, connect, dlq, event_to_message, ops
from tidings.brokers.base import UNLIMITED, Admin, Broker, CanRead, Consumer
from tidings.errors import TopicError, TopicExistsError, UnknownTopicError
from tidings.ops import DeadLetterError, DeadLetterFilter, EventFilter, SeekTo
from tidings.records import (
    Batch,
    OffsetReset,
    Published,
    Record,
    TopicInfo,
    TopicPartition,
)


@pytest.fixture(params=["memory", "sqlite"])
async def broker(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Broker]:
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/bus.db"
    async with connect(url) as opened:
        yield opened


def events(n: int, *, type_: str = "order.placed", **fields: object) -> list[Message]:
    return [
        event_to_message(Event(type=type_, data={"n": i}, **fields))  # type: ignore[arg-type]
        for i in range(n)
    ]


async def commit(broker: Broker, group: str, topic: str, count: int) -> None:
    async with broker.subscribe(group, [topic], max_batch=count) as consumer:
        batch = await consumer.fetch(timeout=10)
        assert batch is not None and len(batch) == count
        await consumer.commit(batch)


# topics --------------------------------------------------------------------------------


async def test_topics_create_list_describe(broker: Broker) -> None:
    created = await ops.create_topic(broker, "orders", 3, retention_ms=60_000)
    assert (created.info.name, len(created.info.partitions), created.mismatched) == (
        "orders",
        3,
        (),
    )
    await broker.publish("orders", events(2))
    [listed] = await ops.list_topics(broker)
    assert (listed.name, listed.records, listed.retention_ms) == ("orders", 2, 60_000)
    assert (await ops.describe_topic(broker, "orders")).records == 2

    again = await ops.create_topic(broker, "orders", 5, retention_bytes=4096, exist_ok=True)
    assert again.mismatched == ("partitions", "retention_bytes")
    assert len(again.info.partitions) == 3
    assert (await ops.create_topic(broker, "orders", 3, exist_ok=True)).mismatched == ()
    forever = await ops.create_topic(broker, "audit", retention_ms=UNLIMITED)
    assert forever.mismatched == () and len(forever.info.partitions) == 1


async def test_topics_bad_input(broker: Broker) -> None:
    with pytest.raises(UnknownTopicError, match="topic 'nope' does not exist"):
        await ops.describe_topic(broker, "nope")
    with pytest.raises(TopicError, match="contains"):
        await ops.create_topic(broker, "bad name")
    with pytest.raises(TopicError, match="partition count"):
        await ops.create_topic(broker, "zero", 0)
    await ops.create_topic(broker, "orders")
    with pytest.raises(TopicExistsError):
        await ops.create_topic(broker, "orders")


# groups --------------------------------------------------------------------------------


async def test_groups_list_describe_and_reset(broker: Broker) -> None:
    assert await ops.list_groups(broker) == []
    await ops.create_topic(broker, "orders")
    await ops.create_topic(broker, "audit")
    await broker.publish("orders", events(10))
    await broker.publish("audit", events(3))
    await commit(broker, "billing", "orders", 4)

    [summary] = await ops.list_groups(broker)
    assert (summary.name, summary.members, summary.lag) == ("billing", 0, 6)
    info = await ops.describe_group(broker, "billing")
    [partition] = info.partitions
    assert (partition.committed, partition.end_offset, partition.lag) == (4, 10, 6)

    reset = await ops.reset_offsets(broker, "billing", SeekTo(earliest=True))
    assert reset == ops.GroupReset("billing", (ops.GroupOffset("orders", 0, 0),))
    both = await ops.reset_offsets(broker, "billing", SeekTo.parse("7"), ["orders", "audit"])
    assert [(o.topic, o.offset) for o in both.offsets] == [("audit", 3), ("orders", 7)]
    future = SeekTo(timestamp=datetime.now(UTC) + timedelta(hours=1))
    latest = await ops.reset_offsets(broker, "billing", future, ["orders"])
    assert latest.offsets == (ops.GroupOffset("orders", 0, 10),)


async def test_groups_bad_input(broker: Broker) -> None:
    await ops.create_topic(broker, "orders")
    with pytest.raises(ConfigError, match="consumer group 'nope' does not exist"):
        await ops.describe_group(broker, "nope")
    with pytest.raises(ConfigError, match="consumer group 'nope' does not exist"):
        await ops.reset_offsets(broker, "nope", SeekTo(earliest=True))
    with pytest.raises(UnknownTopicError, match="'missing'"):
        await ops.reset_offsets(broker, "fresh", SeekTo(earliest=True), ["missing"])
    with pytest.raises(ConfigError, match="offset must be >= 0"):
        SeekTo.parse("-1")

    await broker.publish("orders", events(2))
    await commit(broker, "billing", "orders", 1)
    async with broker.subscribe("billing", ["orders"]) as live:
        await live.fetch(timeout=0)
        with pytest.raises(ConfigError, match="live member"):
            await ops.reset_offsets(broker, "billing", SeekTo(earliest=True))
    info = await ops.describe_group(broker, "billing")
    assert info.partitions[0].committed == 1  # the live member acked nothing


# records -------------------------------------------------------------------------------


async def test_read_records_pages_through_a_partition(broker: Broker) -> None:
    await ops.create_topic(broker, "orders", 2)
    await broker.publish(
        "orders",
        [Message(m.value, m.key, m.headers, 0) for m in events(5)]
        + [Message(b"\x00 no event", partition=0)]
        + [Message(m.value, m.key, m.headers, 0) for m in events(2, type_="order.paid")],
    )
    first = await ops.read_records(broker, "orders", 0, limit=3)
    assert [e.record.offset for e in first.entries] == [0, 1, 2]
    assert (first.next_offset, first.end_offset, first.at_end) == (3, 8, False)
    rest = await ops.read_records(broker, "orders", 0, first.next_offset, limit=100)
    assert [e.record.offset for e in rest.entries] == [3, 4, 5, 6, 7] and rest.at_end
    bad = rest.entries[2]
    assert bad.event is None and bad.error and bad.error.startswith("cannot decode")
    assert bad.position == "orders[0]@5"

    paid = await ops.read_records(broker, "orders", 0, where=EventFilter(type="order.paid"))
    assert [e.record.offset for e in paid.entries] == [6, 7]
    assert all(e.event is not None and e.event.type == "order.paid" for e in paid.entries)
    assert (await ops.read_records(broker, "orders", 1)).entries == ()
    at_end = await ops.read_records(broker, "orders", 0, 8)
    assert at_end.entries == () and at_end.at_end


async def test_read_records_filters_and_bounds_its_scan(broker: Broker) -> None:
    await ops.create_topic(broker, "orders")
    await broker.publish("orders", events(3, key="k1", correlation_id="c1"))
    await broker.publish("orders", events(3, key="k2"))
    by_key = await ops.read_records(broker, "orders", where=EventFilter(key="k2"))
    assert [e.record.offset for e in by_key.entries] == [3, 4, 5]
    by_corr = await ops.read_records(broker, "orders", where=EventFilter(correlation_id="c1"))
    assert len(by_corr.entries) == 3
    later = datetime.now(UTC) + timedelta(hours=1)
    assert (await ops.read_records(broker, "orders", where=EventFilter(since=later))).entries == ()
    until = await ops.read_records(broker, "orders", where=EventFilter(until=later))
    assert len(until.entries) == 6

    bounded = await ops.read_records(broker, "orders", where=EventFilter(type="x"), max_scan=4)
    assert (bounded.entries, bounded.next_offset, bounded.at_end) == ((), 4, False)


async def test_read_records_bad_input(broker: Broker) -> None:
    await ops.create_topic(broker, "orders", 2)
    await broker.publish("orders", events(1))
    with pytest.raises(UnknownTopicError, match="topic 'nope' does not exist"):
        await ops.read_records(broker, "nope")
    with pytest.raises(
        UnknownTopicError, match=r"2 partition\(s\) \(0..1\); there is no partition 2"
    ):
        await ops.read_records(broker, "orders", 2)
    with pytest.raises(ConfigError, match="offset must be >= 0"):
        await ops.read_records(broker, "orders", 0, -1)
    with pytest.raises(ConfigError, match="past the end"):
        await ops.read_records(broker, "orders", 0, 99)
    with pytest.raises(ConfigError, match="limit"):
        await ops.read_records(broker, "orders", limit=0)


# tail ----------------------------------------------------------------------------------


async def entries_of(broker: Broker, topic: str, start: SeekTo, **kw: object) -> list[ops.LogEntry]:
    return [entry async for entry in ops.tail(broker, topic, start, **kw)]  # type: ignore[arg-type]


async def test_tail_without_following(broker: Broker) -> None:
    await ops.create_topic(broker, "orders", 3)
    await broker.publish("orders", [Message(m.value, partition=0) for m in events(3)])
    await broker.publish("orders", [Message(b"junk", partition=2)])
    everything = await entries_of(broker, "orders", SeekTo(earliest=True), follow=False)
    assert sorted((e.record.partition, e.record.offset) for e in everything) == [
        (0, 0),
        (0, 1),
        (0, 2),
        (2, 0),
    ]
    [junk] = [e for e in everything if e.event is None]
    assert junk.error and "orders[2]@0" in junk.error
    limited = await entries_of(broker, "orders", SeekTo(earliest=True), limit=2)
    assert len(limited) == 2
    from_offset = await entries_of(broker, "orders", SeekTo(offset=2), follow=False)
    assert [(e.record.partition, e.record.offset) for e in from_offset] == [(0, 2)]
    assert await entries_of(broker, "orders", SeekTo(latest=True), follow=False) == []
    future = SeekTo(timestamp=datetime.now(UTC) + timedelta(hours=1))
    assert await entries_of(broker, "orders", future, follow=False) == []


async def test_tail_follows_and_commits_nothing(broker: Broker) -> None:
    await ops.create_topic(broker, "orders")
    await broker.publish("orders", events(1))
    seen: list[ops.LogEntry] = []

    async def follow() -> None:
        async with contextlib.aclosing(ops.tail(broker, "orders", SeekTo(earliest=True))) as it:
            async for entry in it:
                seen.append(entry)
                if len(seen) == 2:
                    return

    task = asyncio.create_task(follow())
    while not seen:
        await asyncio.sleep(0.01)
    await broker.publish("orders", events(1))
    await asyncio.wait_for(task, 10)
    assert [e.record.offset for e in seen] == [0, 1]
    for summary in await ops.list_groups(broker):
        assert summary.name.startswith("tidings-tail-")
        if summary.info is not None:
            assert all(p.committed is None for p in summary.info.partitions)


async def test_tail_bad_input(broker: Broker) -> None:
    await ops.create_topic(broker, "orders")
    with pytest.raises(UnknownTopicError, match="topic 'nope' does not exist"):
        await entries_of(broker, "nope", SeekTo(earliest=True))
    with pytest.raises(ConfigError, match="limit must be >= 1"):
        await entries_of(broker, "orders", SeekTo(earliest=True), limit=0)


# dead letters --------------------------------------------------------------------------


def dead_letter(
    event: Event | None, *, topic: str, offset: int, handler: str | None, reason: str
) -> Message:
    """A dead letter as the runtime writes it, of the record at `topic[0]@offset`."""
    original = event_to_message(event) if event is not None else Message(b"\x00 junk")
    record = Record(topic, 0, offset, 0, original.value, original.key, original.headers)
    error = DecodeError("cannot decode") if event is None else ValueError("nope")
    return dlq.letter(record, reason=reason, error=error, handler=handler, attempts=1)


async def seed_letters(broker: Broker) -> list[Event]:
    """billing.dlq: 3 letters (one undecodable); shipping.dlq (2 partitions): 4 letters."""
    await ops.create_topic(broker, "orders")
    await ops.create_topic(broker, "billing.dlq")
    await ops.create_topic(broker, "shipping.dlq", 2)
    await ops.create_topic(broker, "billing.dlq-archive")  # not a dead-letter topic
    made = [Event(type="order.placed", id=f"ev-{n}", key=f"k{n}", data={"n": n}) for n in range(6)]
    await broker.publish(
        "billing.dlq",
        [
            dead_letter(made[0], topic="orders", offset=0, handler="billing.charge", reason="x"),
            dead_letter(None, topic="orders", offset=1, handler=None, reason="undecodable"),
            dead_letter(made[1], topic="orders", offset=2, handler="billing.charge", reason="x"),
        ],
    )
    await broker.publish("billing.dlq-archive", [Message(b"not a letter")])
    for n in range(2, 6):
        letter = dead_letter(made[n], topic="orders", offset=n, handler="shipping.ship", reason="y")
        await broker.publish("shipping.dlq", [Message(letter.value, None, letter.headers, n % 2)])
    return made


async def all_pages(
    broker: Broker, limit: int, where: DeadLetterFilter | None = None, **kw: bool
) -> list[list[str]]:
    pages: list[list[str]] = []
    cursor = None
    while True:
        page = await ops.dead_letter_page(broker, where, cursor=cursor, limit=limit, **kw)
        pages.append([x.position for x in page.letters])
        if page.cursor is None:
            return pages
        cursor = page.cursor
        assert len(pages) < 20


async def test_dead_letter_pages_cover_every_letter_once_in_order(broker: Broker) -> None:
    await seed_letters(broker)
    listed = [x.position for x in await ops.list_dead_letters(broker)]
    assert len(listed) == 7
    pages = await all_pages(broker, 2)
    flat = [position for page in pages for position in page]
    assert sorted(flat) == sorted(listed) and len(set(flat)) == 7
    assert all(len(page) <= 2 for page in pages)
    assert len(await all_pages(broker, 100)) == 1

    shipping = await all_pages(broker, 3, DeadLetterFilter(service="shipping"))
    assert sorted(p for page in shipping for p in page) == sorted(
        p for p in listed if p.startswith("shipping.dlq")
    )
    undecodable = await ops.dead_letter_page(broker, DeadLetterFilter(reason="undecodable"))
    assert [x.id for x in undecodable.letters] == ["billing.dlq:0:1"]
    assert undecodable.cursor is None
    handler = await ops.dead_letter_page(broker, DeadLetterFilter(handler="charge"))
    assert [x.event_id for x in handler.letters] == ["ev-0", "ev-1"]


async def test_a_page_reads_about_its_size_not_the_whole_topic(broker: Broker) -> None:
    await ops.create_topic(broker, "big.dlq")
    letters = [
        dead_letter(Event(type="T", data={"n": n}), topic="t", offset=n, handler=None, reason="r")
        for n in range(2500)
    ]
    await broker.publish("big.dlq", letters)
    counting = CountingReads(broker)
    page = await ops.dead_letter_page(counting, limit=10)
    assert len(page.letters) == 10 and page.cursor == "big.dlq:0:10"
    assert counting.records <= 11
    second = await ops.dead_letter_page(counting, cursor=page.cursor, limit=10)
    assert [x.dlq_offset for x in second.letters] == list(range(10, 20))
    assert counting.records <= 22
    records = await ops.read_records(counting, "big.dlq", limit=5)
    assert len(records.entries) == 5 and counting.records <= 27


async def test_resolved_letters_and_selection(broker: Broker) -> None:
    made = await seed_letters(broker)
    await ops.create_topic(broker, "orders", exist_ok=True)
    chosen = await ops.select_dead_letters(broker, ["ev-0", "billing.dlq:0:1"])
    assert [x.position for x in chosen] == ["billing.dlq:0:0", "billing.dlq:0:1"]
    with pytest.raises(DeadLetterError, match="does not decode"):
        await ops.replay_dead_letters(broker, chosen)
    result = await ops.replay_dead_letters(broker, chosen, skip_undecodable=True)
    assert [r.letter.event_id for r in result.replayed] == ["ev-0"]
    assert [x.position for x in result.skipped] == ["billing.dlq:0:1"]
    [record] = await broker.read(TopicPartition("orders", 0), 0, 10)  # type: ignore[attr-defined]
    assert record.header(dlq.REPLAY_FOR) == b"billing.charge"
    assert record.key == made[0].key.encode()  # type: ignore[union-attr]

    with pytest.raises(DeadLetterError, match="ev-0 was already replayed"):
        await ops.select_dead_letters(broker, ["ev-0"])
    with pytest.raises(DeadLetterError, match="no dead letter with id 'ev-2' matching"):
        await ops.select_dead_letters(broker, ["ev-2"], DeadLetterFilter(service="billing"))
    purged = await ops.purge_dead_letters(broker, await ops.select_dead_letters(broker, ["ev-1"]))
    assert [x.event_id for x in purged] == ["ev-1"]
    with pytest.raises(DeadLetterError, match="already purged"):
        await ops.purge_dead_letters(broker, purged)

    unresolved = await all_pages(broker, 10)
    assert len(unresolved[0]) == 5
    with_resolved = await ops.dead_letter_page(broker, include_resolved=True, limit=10)
    statuses = {x.event_id: x.resolution and x.resolution.action for x in with_resolved.letters}
    assert (statuses["ev-0"], statuses["ev-1"], statuses["ev-2"]) == ("replayed", "purged", None)
    [shown] = await ops.find_dead_letters(broker, "ev-1")
    assert shown.resolution is not None and shown.resolution.action == "purged"
    with pytest.raises(DeadLetterError, match="no dead letter with id nope"):
        await ops.find_dead_letters(broker, "nope")


async def test_get_dead_letter_by_position(broker: Broker) -> None:
    await seed_letters(broker)
    letter = await ops.get_dead_letter(broker, "billing.dlq:0:2")
    assert (letter.event_id, letter.handler, letter.origin) == (
        "ev-1",
        "billing.charge",
        "orders[0]@2",
    )
    assert (await ops.get_dead_letter(broker, "shipping.dlq:1:0")).event_id == "ev-3"
    for position, message in [
        ("billing.dlq:0:3", "no dead letter at billing.dlq:0:3"),
        ("billing.dlq:1:0", "there is no partition 1"),
        ("gone.dlq:0:0", "topic 'gone.dlq' does not exist"),
        ("orders:0:0", "not in a dead-letter topic"),
    ]:
        with pytest.raises(DeadLetterError, match=message):
            await ops.get_dead_letter(broker, position)
    for malformed in ("billing.dlq", "billing.dlq:0", "billing.dlq:x:1", ":0:1", "a.dlq:0:-1"):
        with pytest.raises(ConfigError, match="malformed dead-letter position"):
            await ops.get_dead_letter(broker, malformed)


async def test_dead_letter_page_bad_input(broker: Broker) -> None:
    await seed_letters(broker)
    with pytest.raises(ConfigError, match="malformed dead-letter page cursor"):
        await ops.dead_letter_page(broker, cursor="billing.dlq:0")
    with pytest.raises(ConfigError, match="limit must be >= 1"):
        await ops.dead_letter_page(broker, limit=0)


# capabilities --------------------------------------------------------------------------


class CountingReads(Broker, CanRead):
    """`broker`, counting the records its reads return."""

    def __init__(self, broker: Broker) -> None:
        self.inner, self.url, self.records = broker, broker.url, 0
        self.max_message_bytes = broker.max_message_bytes

    @property
    def admin(self) -> Admin:
        return self.inner.admin

    async def read(self, tp: TopicPartition, offset: int, max_records: int) -> list[Record]:
        records = await self.inner.read(tp, offset, max_records)  # type: ignore[attr-defined]
        self.records += len(records)
        return list(records)

    async def publish(self, topic: str, messages: Sequence[Message]) -> list[Published]:
        return await self.inner.publish(topic, messages)

    def subscribe(self, group: str, topics: Sequence[str], **kw: object) -> Consumer:  # type: ignore[override]
        return self.inner.subscribe(group, topics, **kw)  # type: ignore[arg-type]

    async def close(self) -> None:
        await self.inner.close()


class CoreAdmin(Admin):
    def __init__(self, inner: Admin) -> None:
        self.inner = inner

    async def create_topic(self, name: str, partitions: int = 1, **kw: object) -> TopicInfo:  # type: ignore[override]
        return await self.inner.create_topic(name, partitions, **kw)  # type: ignore[arg-type]

    async def describe_topic(self, name: str) -> TopicInfo:
        return await self.inner.describe_topic(name)


class CoreConsumer(Consumer):
    """A consumer that cannot seek."""

    def __init__(self, inner: Consumer) -> None:
        self.inner = inner

    async def start(self) -> None:
        await self.inner.start()

    async def fetch(self, timeout: float | None = None) -> Batch | None:
        return await self.inner.fetch(timeout)

    def ack(self, batch: Batch) -> None:
        self.inner.ack(batch)

    def nack(self, batch: Batch, offset: int | None = None) -> None:
        self.inner.nack(batch, offset)

    async def commit(self, batch: Batch | None = None) -> None:
        await self.inner.commit(batch)

    def assignment(self) -> frozenset[TopicPartition]:
        return self.inner.assignment()

    async def close(self) -> None:
        await self.inner.close()


class CoreBroker(Broker):
    """Only the core interface: no capability a tool needs."""

    def __init__(self, inner: Broker) -> None:
        self.inner, self.url = inner, inner.url
        self.max_message_bytes = inner.max_message_bytes
        self._admin = CoreAdmin(inner.admin)

    @property
    def admin(self) -> Admin:
        return self._admin

    async def publish(self, topic: str, messages: Sequence[Message]) -> list[Published]:
        return await self.inner.publish(topic, messages)

    def subscribe(  # type: ignore[override]
        self,
        group: str,
        topics: Sequence[str],
        *,
        auto_offset_reset: OffsetReset | str = "earliest",
        **kw: object,
    ) -> Consumer:
        return CoreConsumer(
            self.inner.subscribe(group, topics, auto_offset_reset=auto_offset_reset)
        )

    async def close(self) -> None:
        await self.inner.close()


async def test_a_backend_without_a_capability_gets_a_clear_error(broker: Broker) -> None:
    core = CoreBroker(broker)
    await ops.create_topic(core, "orders")
    await core.publish("orders", events(2))
    assert (await ops.describe_topic(core, "orders")).records == 2
    assert len(await entries_of(core, "orders", SeekTo(earliest=True), follow=False)) == 2
    for call, capability in [
        (ops.list_topics(core), "CanInspect"),
        (ops.list_groups(core), "CanInspect"),
        (ops.describe_group(core, "g"), "CanInspect"),
        (ops.reset_offsets(core, "g", SeekTo(earliest=True), ["orders"]), "CanResetOffsets"),
        (ops.read_records(core, "orders"), "CanRead"),
        (ops.list_dead_letters(core), "CanInspect"),
        (ops.dead_letter_page(core), "CanInspect"),
        (entries_of(core, "orders", SeekTo(offset=1), follow=False), "CanSeek"),
    ]:
        with pytest.raises(ConfigError, match=f"cannot .* it does not implement {capability}"):
            await call
