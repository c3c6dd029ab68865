"""The broker contract: every broker backend subclasses `BrokerContract` and passes it.

Cases follow Watermill's universal Pub/Sub tests, adapted to consumer groups and offsets, plus
commit/resume exactness, seek, lag, retention and bad input. A subclass provides `url` (a
fixture giving a broker URL whose log survives closing and reopening the broker).
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import pytest

from tidings.brokers import connect
from tidings.brokers.base import (
    Broker,
    CanEnforceRetention,
    CanInspect,
    CanResetOffsets,
    CanSeek,
    Consumer,
)
from tidings.errors import (
    ConfigError,
    MessageTooLargeError,
    TopicError,
    TopicExistsError,
    UnknownTopicError,
)
from tidings.records import Batch, Message, SeekTo, TopicPartition

C = TypeVar("C")


def _need(obj: object, capability: type[C]) -> C:
    """`obj` as `capability`, or skip the test: its backend does not declare it."""
    if not isinstance(obj, capability):
        pytest.skip(f"{type(obj).__name__} does not implement {capability.__name__}")
    return obj


def topic_name() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


def messages(n: int, *, prefix: str = "m", keys: int | None = None) -> list[Message]:
    return [
        Message(
            value=f"{prefix}-{i}".encode(),
            key=None if keys is None else f"k{i % keys}".encode(),
            headers=(("n", str(i).encode()),),
        )
        for i in range(n)
    ]


async def drain(
    consumer: Consumer,
    expected: int,
    *,
    timeout: float = 30.0,
    ack: Callable[[Batch], bool] | None = None,
) -> list[Batch]:
    """Fetch and ack batches until `expected` records arrived (or fail after `timeout`)."""
    batches: list[Batch] = []
    got = 0
    deadline = time.monotonic() + timeout
    while got < expected:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"received {got} of {expected} records within {timeout}s"
        batch = await consumer.fetch(timeout=min(remaining, 1.0))
        if batch is None:
            continue
        if ack is None or ack(batch):
            consumer.ack(batch)
            batches.append(batch)
            got += len(batch)
    return batches


def values(batches: list[Batch]) -> list[bytes]:
    return [r.value for b in batches for r in b.records]


class BrokerContract:
    """Subclass per backend; provide the `url` fixture."""

    session_timeout = 3.0

    @pytest.fixture
    def url(self) -> str:
        raise NotImplementedError

    @pytest.fixture
    async def broker(self, url: str) -> AsyncIterator[Broker]:
        broker = connect(url)
        yield broker
        await broker.close()

    def subscribe(self, broker: Broker, group: str, topics: list[str], **kw: object) -> Consumer:
        kw.setdefault("session_timeout", self.session_timeout)
        return broker.subscribe(group, topics, **kw)  # type: ignore[arg-type]

    # publish / subscribe -------------------------------------------------------------

    async def test_publish_then_subscribe_keeps_payload_key_and_headers(
        self, broker: Broker
    ) -> None:
        topic = topic_name()
        await broker.admin.create_topic(topic, 3)
        sent = [
            Message(b"\x00binary\xff" * 10, key=b"order-1", headers=(("a", b"1"), ("b", b""))),
            Message(b"{}", key=None, headers=()),
            Message("unicodé ✓".encode(), key="ключ".encode(), headers=(("x", b"\x01\x02"),)),
        ]
        before = int(time.time() * 1000)
        placed = await broker.publish(topic, sent)
        assert len(placed) == 3
        async with self.subscribe(broker, "g", [topic]) as consumer:
            batches = await drain(consumer, 3)
        records = {r.value: r for b in batches for r in b.records}
        for message, where in zip(sent, placed, strict=True):
            record = records[message.value]
            assert record.key == message.key
            assert record.headers == message.headers
            assert (record.partition, record.offset) == (where.partition, where.offset)
            assert record.topic == topic
            assert before - 5 <= record.timestamp <= int(time.time() * 1000) + 5

    async def test_same_key_lands_on_same_partition(self, broker: Broker) -> None:
        topic = topic_name()
        await broker.admin.create_topic(topic, 8)
        placed = await broker.publish(topic, [Message(b"x", key=b"same")] * 20)
        assert len({p.partition for p in placed}) == 1
        assert [p.offset for p in placed] == list(range(20))

    async def test_explicit_partition(self, broker: Broker) -> None:
        topic = topic_name()
        await broker.admin.create_topic(topic, 4)
        placed = await broker.publish(topic, [Message(b"x", partition=3)])
        assert placed[0].partition == 3
        with pytest.raises(UnknownTopicError):
            await broker.publish(topic, [Message(b"x", partition=4)])

    async def test_concurrent_publishers_and_subscribers_lose_nothing(self, broker: Broker) -> None:
        topic = topic_name()
        await broker.admin.create_topic(topic, 6)
        publishers, per_publisher = 8, 500

        async def publish(n: int) -> None:
            for chunk in range(0, per_publisher, 50):
                await broker.publish(
                    topic,
                    [
                        Message(f"{n}-{i}".encode(), key=f"{n}-{i % 7}".encode())
                        for i in range(chunk, chunk + 50)
                    ],
                )

        received: list[bytes] = []
        consumers = [self.subscribe(broker, "many", [topic]) for _ in range(3)]
        done = asyncio.Event()

        async def consume(consumer: Consumer) -> None:
            while not done.is_set():
                batch = await consumer.fetch(timeout=0.2)
                if batch is not None:
                    received.extend(r.value for r in batch.records)
                    consumer.ack(batch)
                    if len(received) >= publishers * per_publisher:
                        done.set()

        tasks = [asyncio.create_task(consume(c)) for c in consumers]
        await asyncio.gather(*(publish(n) for n in range(publishers)))
        await asyncio.wait_for(done.wait(), 60)
        await asyncio.gather(*tasks)
        for c in consumers:
            await c.close()
        expected = {f"{n}-{i}".encode() for n in range(publishers) for i in range(per_publisher)}
        assert len(received) == len(expected)
        assert set(received) == expected

    async def test_many_topics_at_once(self, broker: Broker) -> None:
        topics = [topic_name() for _ in range(15)]
        for t in topics:
            await broker.admin.create_topic(t, 2)
        await asyncio.gather(*(broker.publish(t, messages(40, prefix=t)) for t in topics))
        async with self.subscribe(broker, "all", topics) as consumer:
            batches = await drain(consumer, 15 * 40)
        by_topic: dict[str, set[bytes]] = defaultdict(set)
        for b in batches:
            by_topic[b.topic].update(r.value for r in b.records)
        for t in topics:
            assert by_topic[t] == {f"{t}-{i}".encode() for i in range(40)}

    async def test_topic_isolation(self, broker: Broker) -> None:
        a, b = topic_name(), topic_name()
        await broker.admin.create_topic(a)
        await broker.admin.create_topic(b)
        await broker.publish(a, messages(10, prefix="a"))
        await broker.publish(b, messages(5, prefix="b"))
        async with self.subscribe(broker, "iso", [b]) as consumer:
            batches = await drain(consumer, 5)
            assert await consumer.fetch(timeout=0.3) is None
        assert sorted(values(batches)) == sorted(f"b-{i}".encode() for i in range(5))

    # acknowledgement and ordering ----------------------------------------------------

    async def test_nack_redelivers_same_records(self, broker: Broker) -> None:
        topic = topic_name()
        await broker.admin.create_topic(topic)
        await broker.publish(topic, messages(5))
        async with self.subscribe(broker, "nack", [topic]) as consumer:
            first = await consumer.fetch(timeout=5)
            assert first is not None
            consumer.nack(first)
            again = await consumer.fetch(timeout=5)
            assert again is not None
            assert values([again]) == values([first])
            consumer.nack(again, offset=again.first_offset + 2)
            rest = await consumer.fetch(timeout=5)
            assert rest is not None
            assert rest.first_offset == 2

    async def test_no_next_delivery_while_batch_unacked(self, broker: Broker) -> None:
        topic = topic_name()
        await broker.admin.create_topic(topic)
        await broker.publish(topic, messages(3))
        async with self.subscribe(broker, "ordered", [topic], max_batch=1) as consumer:
            first = await consumer.fetch(timeout=5)
            assert first is not None and first.first_offset == 0
            assert await consumer.fetch(timeout=0.5) is None
            consumer.ack(first)
            second = await consumer.fetch(timeout=5)
            assert second is not None and second.first_offset == 1

    async def test_per_key_order_with_many_keys_and_consumers(self, broker: Broker) -> None:
        topic = topic_name()
        await broker.admin.create_topic(topic, 4)
        keys, per_key = 100, 20
        for round_ in range(per_key):
            await broker.publish(
                topic,
                [Message(f"{k}:{round_}".encode(), key=f"key-{k}".encode()) for k in range(keys)],
            )
        seen: dict[str, list[int]] = defaultdict(list)
        consumers = [self.subscribe(broker, "order", [topic], max_batch=37) for _ in range(3)]

        async def consume(consumer: Consumer) -> None:
            while sum(len(v) for v in seen.values()) < keys * per_key:
                batch = await consumer.fetch(timeout=0.2)
                if batch is None:
                    continue
                for r in batch.records:
                    k, n = r.value.decode().split(":")
                    seen[k].append(int(n))
                await asyncio.sleep(0)
                consumer.ack(batch)

        await asyncio.wait_for(asyncio.gather(*(consume(c) for c in consumers)), 60)
        for c in consumers:
            await c.close()
        assert len(seen) == keys
        for sequence in seen.values():
            assert sequence == list(range(per_key))

    async def test_continue_after_errors(self, broker: Broker) -> None:
        topic = topic_name()
        await broker.admin.create_topic(topic)
        await broker.publish(topic, messages(20))
        failures: defaultdict[int, int] = defaultdict(int)

        def flaky(batch: Batch) -> bool:
            failures[batch.first_offset] += 1
            if failures[batch.first_offset] < 3:
                consumer.nack(batch)
                return False
            return True

        async with self.subscribe(broker, "flaky", [topic], max_batch=4) as consumer:
            batches = await drain(consumer, 20, ack=flaky)
        assert values(batches) == [f"m-{i}".encode() for i in range(20)]

    # groups, commits and restarts ----------------------------------------------------

    async def test_commit_and_resume_without_gap_or_duplicate(self, url: str) -> None:
        topic = topic_name()
        async with connect(url) as broker:
            await broker.admin.create_topic(topic, 2)
            await broker.publish(topic, messages(100, keys=10))
            consumer = self.subscribe(broker, "resume", [topic], max_batch=7)
            first = await drain(consumer, 40)
            await consumer.commit()
            await consumer.close()
        async with connect(url) as broker:
            await broker.publish(topic, messages(50, prefix="late", keys=10))
            async with self.subscribe(broker, "resume", [topic], max_batch=7) as consumer:
                rest = await drain(consumer, 150 - len(values(first)))
                assert await consumer.fetch(timeout=0.3) is None
        everything = values(first) + values(rest)
        assert len(everything) == 150
        assert set(everything) == {f"m-{i}".encode() for i in range(100)} | {
            f"late-{i}".encode() for i in range(50)
        }

    async def test_continue_after_subscriber_close_and_reopen(self, broker: Broker) -> None:
        topic = topic_name()
        await broker.admin.create_topic(topic, 3)
        await broker.publish(topic, messages(90, keys=9))
        received: list[bytes] = []
        for _ in range(6):
            async with self.subscribe(broker, "reopen", [topic], max_batch=5) as consumer:
                batch = await consumer.fetch(timeout=5)
                if batch is not None:
                    received.extend(values([batch]))
                    consumer.ack(batch)
        async with self.subscribe(broker, "reopen", [topic]) as consumer:
            rest = await drain(consumer, 90 - len(received))
        received.extend(values(rest))
        assert sorted(received) == sorted(f"m-{i}".encode() for i in range(90))

    async def test_concurrent_close(self, broker: Broker) -> None:
        topic = topic_name()
        await broker.admin.create_topic(topic, 4)
        await broker.publish(topic, messages(200, keys=20))
        consumers = [self.subscribe(broker, "closing", [topic]) for _ in range(5)]
        for c in consumers:
            await c.fetch(timeout=0.5)
        await asyncio.wait_for(asyncio.gather(*(c.close() for c in consumers)), 20)
        async with self.subscribe(broker, "closing", [topic]) as consumer:
            assert consumer.assignment() or await consumer.fetch(timeout=5) is not None

    async def test_new_group_receives_old_events(self, broker: Broker) -> None:
        topic = topic_name()
        await broker.admin.create_topic(topic, 2)
        await broker.publish(topic, messages(30))
        async with self.subscribe(broker, "newcomer", [topic]) as consumer:
            batches = await drain(consumer, 30)
        assert sorted(values(batches)) == sorted(f"m-{i}".encode() for i in range(30))

    async def test_latest_reset_skips_old_events(self, broker: Broker) -> None:
        topic = topic_name()
        await broker.admin.create_topic(topic)
        await broker.publish(topic, messages(10, prefix="old"))
        consumer = self.subscribe(broker, "latest", [topic], auto_offset_reset="latest")
        async with consumer:
            assert await consumer.fetch(timeout=0.3) is None
            await broker.publish(topic, messages(3, prefix="new"))
            batches = await drain(consumer, 3)
        assert values(batches) == [f"new-{i}".encode() for i in range(3)]

    async def test_two_groups_each_receive_everything(self, broker: Broker) -> None:
        topic = topic_name()
        await broker.admin.create_topic(topic, 3)
        await broker.publish(topic, messages(60, keys=6))
        async with (
            self.subscribe(broker, "one", [topic]) as a,
            self.subscribe(broker, "two", [topic]) as b,
        ):
            got_a, got_b = await asyncio.gather(drain(a, 60), drain(b, 60))
        assert sorted(values(got_a)) == sorted(values(got_b))
        assert len(set(values(got_a))) == 60

    async def test_publisher_close_flushes(self, url: str) -> None:
        topic = topic_name()
        broker = connect(url)
        await broker.admin.create_topic(topic, 2)
        pending = [asyncio.create_task(broker.publish(topic, messages(100))) for _ in range(10)]
        await asyncio.gather(*pending)
        await broker.close()
        async with connect(url) as again:
            info = await again.admin.describe_topic(topic)
        assert info.records == 1000

    async def test_broker_restart_mid_stream_loses_nothing(self, url: str) -> None:
        topic = topic_name()
        received: list[bytes] = []
        for round_ in range(3):
            async with connect(url) as broker:
                await broker.admin.create_topic(topic, 2, exist_ok=True)
                await broker.publish(topic, messages(50, prefix=f"r{round_}", keys=5))
                async with self.subscribe(broker, "restart", [topic], max_batch=20) as consumer:
                    batches = await drain(consumer, 30 if round_ < 2 else 150 - len(received))
                    received.extend(values(batches))
                    await consumer.commit()
        assert sorted(received) == sorted(f"r{r}-{i}".encode() for r in range(3) for i in range(50))

    async def test_rebalance_moves_partitions_on_join_and_leave(self, broker: Broker) -> None:
        topic = topic_name()
        await broker.admin.create_topic(topic, 4)
        all_tps = {TopicPartition(topic, p) for p in range(4)}
        a = self.subscribe(broker, "rebalance", [topic])
        await a.fetch(timeout=0.1)
        assert a.assignment() == all_tps
        b = self.subscribe(broker, "rebalance", [topic])
        await b.fetch(timeout=0.1)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            await a.fetch(timeout=0.05)
            await b.fetch(timeout=0.05)
            assert not (a.assignment() & b.assignment()), "a partition had two owners"
            if len(a.assignment()) == 2 and len(b.assignment()) == 2:
                break
        assert len(a.assignment()) == 2 and len(b.assignment()) == 2
        await a.close()
        deadline = time.monotonic() + 10
        while b.assignment() != all_tps and time.monotonic() < deadline:
            await b.fetch(timeout=0.05)
        assert b.assignment() == all_tps
        info = await _need(broker.admin, CanInspect).describe_group("rebalance")
        assert len(info.members) == 1
        await b.close()

    async def test_partition_is_not_shared_while_owned(self, broker: Broker) -> None:
        topic = topic_name()
        await broker.admin.create_topic(topic, 1)
        await broker.publish(topic, messages(5))
        async with self.subscribe(broker, "fenced", [topic]) as a:
            batch = await a.fetch(timeout=5)
            assert batch is not None
            b = self.subscribe(broker, "fenced", [topic])
            await b.fetch(timeout=0.1)
            assert b.assignment() == frozenset()
            a.nack(batch)
            await b.close()

    # seek, lag, retention --------------------------------------------------------------

    async def test_seek_earliest_latest_offset_and_timestamp(self, broker: Broker) -> None:
        topic = topic_name()
        await broker.admin.create_topic(topic)
        await broker.publish(topic, messages(10, prefix="early"))
        await asyncio.sleep(0.05)
        middle = datetime.now(UTC)
        await asyncio.sleep(0.05)
        await broker.publish(topic, messages(10, prefix="late"))
        tp = TopicPartition(topic, 0)
        async with self.subscribe(broker, "seeker", [topic], max_batch=100) as consumer:
            await consumer.fetch(timeout=0.1)
            assert await _need(consumer, CanSeek).seek(tp, SeekTo(timestamp=middle)) == 10
            batch = await consumer.fetch(timeout=5)
            assert batch is not None and values([batch])[0] == b"late-0"
            assert await _need(consumer, CanSeek).seek(tp, SeekTo(earliest=True)) == 0
            batch = await consumer.fetch(timeout=5)
            assert batch is not None and batch.first_offset == 0
            assert await _need(consumer, CanSeek).seek(tp, SeekTo(offset=15)) == 15
            batch = await consumer.fetch(timeout=5)
            assert batch is not None and values([batch])[0] == b"late-5"
            assert await _need(consumer, CanSeek).seek(tp, SeekTo(latest=True)) == 20
            assert await consumer.fetch(timeout=0.3) is None

    async def test_lag_figures(self, broker: Broker) -> None:
        topic = topic_name()
        await broker.admin.create_topic(topic, 2)
        await broker.publish(topic, [Message(b"x", partition=0)] * 10)
        await broker.publish(topic, [Message(b"y", partition=1)] * 4)
        async with self.subscribe(broker, "lagging", [topic], max_batch=6) as consumer:
            batch = await consumer.fetch(timeout=5)
            assert batch is not None
            await consumer.commit(batch)
            info = await _need(broker.admin, CanInspect).describe_group("lagging")
            assert len(info.members) == 1
            assert set(info.members[0].partitions) == {TopicPartition(topic, p) for p in (0, 1)}
        info = await _need(broker.admin, CanInspect).describe_group("lagging")
        by_partition = {p.partition: p for p in info.partitions}
        assert by_partition[batch.partition].committed == batch.next_offset
        other = 1 - batch.partition
        assert by_partition[other].committed is None
        ends = {0: 10, 1: 4}
        assert by_partition[batch.partition].lag == ends[batch.partition] - batch.next_offset
        assert by_partition[other].lag == ends[other]
        assert info.lag == 14 - len(batch)
        assert "lagging" in await _need(broker.admin, CanInspect).list_groups()

    async def test_reset_offsets_replays(self, broker: Broker) -> None:
        resetter = _need(broker.admin, CanResetOffsets)
        topic = topic_name()
        await broker.admin.create_topic(topic, 2)
        await broker.publish(topic, messages(20, keys=4))
        async with self.subscribe(broker, "replayer", [topic]) as consumer:
            await drain(consumer, 20)
            await consumer.commit()
            with pytest.raises(ConfigError, match="live member"):
                await resetter.reset_offsets("replayer", [topic], SeekTo(earliest=True))
        offsets = await resetter.reset_offsets("replayer", [topic], SeekTo(earliest=True))
        assert set(offsets.values()) == {0}
        async with self.subscribe(broker, "replayer", [topic]) as consumer:
            again = await drain(consumer, 20)
        assert len(values(again)) == 20
        await resetter.reset_offsets("replayer", [topic], SeekTo(latest=True))
        info = await _need(broker.admin, CanInspect).describe_group("replayer")
        assert info.lag == 0

    async def test_retention_by_age_and_size_keeps_committed_offsets_usable(
        self, broker: Broker
    ) -> None:
        aged, sized = topic_name(), topic_name()
        await broker.admin.create_topic(aged, 1, retention_ms=200)
        await broker.admin.create_topic(sized, 1, retention_bytes=1000)
        await broker.publish(aged, messages(10, prefix="old"))
        for _ in range(30):
            await broker.publish(sized, [Message(b"x" * 100)])
        async with self.subscribe(broker, "retained", [aged]) as consumer:
            batches = await drain(consumer, 4, timeout=10)
            await consumer.commit()
            assert values(batches)[:4] == [f"old-{i}".encode() for i in range(4)]
        await asyncio.sleep(0.3)
        await broker.publish(aged, messages(5, prefix="new"))
        removed = await _need(broker.admin, CanEnforceRetention).enforce_retention()
        assert removed >= 10 + 20
        aged_info = await broker.admin.describe_topic(aged)
        assert aged_info.partitions[0].start_offset >= 10
        assert aged_info.partitions[0].end_offset == 15
        sized_info = await broker.admin.describe_topic(sized)
        assert sized_info.partitions[0].end_offset == 30
        assert 1 <= sized_info.partitions[0].records <= 10
        async with self.subscribe(broker, "retained", [aged]) as consumer:
            rest = await drain(consumer, 5)
        assert values(rest) == [f"new-{i}".encode() for i in range(5)]

    # admin and bad input -------------------------------------------------------------

    async def test_topic_admin(self, broker: Broker) -> None:
        topic = topic_name()
        created = await broker.admin.create_topic(topic, 3, retention_ms=60_000)
        assert [p.partition for p in created.partitions] == [0, 1, 2]
        assert created.retention_ms == 60_000
        assert topic in [t.name for t in await _need(broker.admin, CanInspect).list_topics()]
        with pytest.raises(TopicExistsError):
            await broker.admin.create_topic(topic, 3)
        same = await broker.admin.create_topic(topic, 3, exist_ok=True)
        assert same.name == topic
        await broker.publish(topic, messages(6, keys=3))
        info = await broker.admin.describe_topic(topic)
        assert info.records == 6
        with pytest.raises(UnknownTopicError):
            await broker.admin.describe_topic("no-such-topic")

    @pytest.mark.parametrize("name", ["", "has space", "slash/es", "a" * 250, ".", "..", "ü"])
    async def test_bad_topic_names_are_refused(self, broker: Broker, name: str) -> None:
        with pytest.raises(TopicError):
            await broker.admin.create_topic(name)

    @pytest.mark.parametrize("partitions", [0, -1, 1.5, "2"])
    async def test_bad_partition_counts_are_refused(
        self, broker: Broker, partitions: object
    ) -> None:
        with pytest.raises(TopicError, match="partition count"):
            await broker.admin.create_topic(topic_name(), partitions)  # type: ignore[arg-type]

    async def test_oversized_message_is_refused_and_nothing_written(self, broker: Broker) -> None:
        topic = topic_name()
        await broker.admin.create_topic(topic)
        batch = [Message(b"ok"), Message(b"x" * (1024 * 1024 + 1)), Message(b"ok")]
        with pytest.raises(MessageTooLargeError, match="message 1"):
            await broker.publish(topic, batch)
        assert (await broker.admin.describe_topic(topic)).records == 0

    async def test_unknown_topic(self, broker: Broker) -> None:
        with pytest.raises(UnknownTopicError, match="no-such"):
            await broker.publish("no-such", messages(1))
        consumer = self.subscribe(broker, "g", ["no-such"])
        with pytest.raises(UnknownTopicError, match="no-such"):
            await consumer.fetch(timeout=0.1)
        await consumer.close()

    async def test_bad_consumer_settings(self, broker: Broker) -> None:
        with pytest.raises(ConfigError, match="auto_offset_reset"):
            broker.subscribe("g", ["t"], auto_offset_reset="sometimes")
        with pytest.raises(ConfigError, match="max_batch"):
            broker.subscribe("g", ["t"], max_batch=0)
        with pytest.raises(ConfigError, match="group"):
            broker.subscribe("", ["t"])


class ProcessContract:
    """Cases for backends shared between OS processes (sqlite, kafka); mix into the subclass."""

    async def test_killed_member_process_partitions_move_to_survivor(
        self, url: str, tmp_path: Path
    ) -> None:
        topic, group = topic_name(), "killed"
        out = tmp_path / "processed.txt"
        session = 2.0
        async with connect(url) as broker:
            await broker.admin.create_topic(topic, 4)
            members = [
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "tidings.testing._member_process",
                        url,
                        group,
                        topic,
                        str(out),
                        str(session),
                    ],
                )
                for _ in range(2)
            ]
            try:
                await self._wait_for_members(broker, group, 2, each_owning=2)
                await broker.publish(topic, messages(200, prefix="before", keys=40))
                await self._wait_for_lines(out, 200)
                victim = members[0]
                victim.send_signal(signal.SIGKILL)
                victim.wait()
                await broker.publish(topic, messages(200, prefix="after", keys=40))
                await self._wait_for_members(broker, group, 1, each_owning=4, timeout=session * 5)
                info = await _need(broker.admin, CanInspect).describe_group(group)
                assert info.members[0].member_id.startswith(info.members[0].client)
                await self._wait_for_lines(out, 400)
                for _ in range(100):
                    info = await _need(broker.admin, CanInspect).describe_group(group)
                    if info.lag == 0:
                        break
                    await asyncio.sleep(0.1)
                assert info.lag == 0
            finally:
                for member in members:
                    if member.poll() is None:
                        member.terminate()
                        member.wait(timeout=20)
        lines = [line.split() for line in out.read_text().splitlines() if "ready" not in line]
        processed = [value for _, _, _, value in lines]
        expected = {f"before-{i}" for i in range(200)} | {f"after-{i}" for i in range(200)}
        assert set(processed) == expected
        by_position: dict[tuple[str, str], set[str]] = defaultdict(set)
        for pid, partition, offset, _ in lines:
            by_position[(partition, offset)].add(pid)
        survivor_pid = str(members[1].pid)
        for pids in by_position.values():
            if len(pids) > 1:
                assert survivor_pid in pids, "only the killed member's uncommitted work repeats"

    async def _wait_for_members(
        self, broker: Broker, group: str, count: int, *, each_owning: int, timeout: float = 30
    ) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                info = await _need(broker.admin, CanInspect).describe_group(group)
            except ConfigError:
                info = None
            if (
                info is not None
                and len(info.members) == count
                and all(len(m.partitions) == each_owning for m in info.members)
            ):
                return
            assert time.monotonic() < deadline, f"group did not settle: {info}"
            await asyncio.sleep(0.05)

    async def _wait_for_lines(self, out: Path, count: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            text = out.read_text() if out.exists() else ""
            values_ = {line.split()[3] for line in text.splitlines() if "ready" not in line}
            if len(values_) >= count:
                return
            assert time.monotonic() < deadline, f"only {len(values_)} of {count} processed"
            await asyncio.sleep(0.05)
