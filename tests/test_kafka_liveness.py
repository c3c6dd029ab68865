"""Liveness of the Kafka consumer against a real broker: a record whose headers cannot be read
is delivered in order (marked, for the service to dead-letter) and the partition moves on; the
prefetch buffer stays bounded in bytes while the application does not fetch.

Needs `TIDINGS_KAFKA_BOOTSTRAP` (`eval "$(scripts/services env)"`); without it the module is
skipped, or fails under CI=true. Every test uses a group prefix of its own and deletes its
topics and groups at teardown.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import confluent_kafka as ck
import pytest
from confluent_kafka.admin import AdminClient

from tests.kafka_raw import produce_raw
from tests.support import server_setting
from tidings.brokers import connect
from tidings.brokers.kafka import KafkaConsumer
from tidings.brokers.kafka._records import KafkaRecords
from tidings.errors import DecodeError
from tidings.event import event_from_record
from tidings.records import UNREADABLE_HEADERS, Message, Record, TopicPartition
from tidings.testing.broker_contract import topic_name


@dataclass
class Cluster:
    bootstrap: str
    url: str
    topics: list[str] = field(default_factory=list)

    def topic(self) -> str:
        """A fresh topic name, deleted at teardown."""
        name = topic_name()
        self.topics.append(name)
        return name


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    bootstrap = server_setting("TIDINGS_KAFKA_BOOTSTRAP", "kafka")
    prefix = f"test-{uuid.uuid4().hex[:12]}."
    cluster = Cluster(bootstrap, f"kafka://{bootstrap}?group_prefix={prefix}")
    yield cluster
    admin = AdminClient({"bootstrap.servers": bootstrap})
    if cluster.topics:
        for future in admin.delete_topics(cluster.topics, request_timeout=10).values():
            with contextlib.suppress(ck.KafkaException):
                future.result()
    groups = admin.list_consumer_groups(request_timeout=10).result().valid
    ours = [g.group_id for g in groups if g.group_id.startswith(prefix)]
    if ours:
        for future in admin.delete_consumer_groups(ours, request_timeout=10).values():
            with contextlib.suppress(ck.KafkaException):
                future.result()


# a header name that is not UTF-8 -------------------------------------------------------------

NOT_UTF8 = ((UNREADABLE_HEADERS, b"a header name is not UTF-8"),)


@pytest.mark.parametrize("ahead", [False, True], ids=["built-when-read", "built-ahead"])
async def test_a_header_name_that_is_not_utf8_is_delivered_marked_in_order(
    cluster: Cluster, ahead: bool
) -> None:
    """confluent-kafka raises reading such a message's headers. The consumer still delivers it,
    in order, as a record with the UNREADABLE_HEADERS marker (which never decodes into an event),
    the records after it too, and commits past it - whether the record is built when the
    application reads it or ahead of time by the polling thread."""
    topic = cluster.topic()
    tp = TopicPartition(topic, 0)
    stamp = int(time.time() * 1000) - 60_000
    async with connect(cluster.url) as broker:
        await broker.admin.create_topic(topic, 1)
        async with broker.subscribe("unreadable", [topic]) as consumer:
            if ahead:  # a batch that was read makes the polling thread build what comes next
                await broker.publish(topic, [Message(b"primer")])
                batch = await consumer.fetch(timeout=30)
                assert batch is not None and [r.value for r in batch.records] == [b"primer"]
                await consumer.commit(batch)
            first = produce_raw(
                cluster.bootstrap,
                topic,
                [
                    (b"k1", b"before", [(b"a", b"1")]),
                    (b"k2", b"poison", [(b"ok", b"1"), (b"\xff\xfe", b"v"), (b"z", b"2")]),
                    (None, b"after", []),
                ],
                stamp,
            )
            await broker.publish(topic, [Message(b"later", key=b"k3")])
            got: list[Record] = []
            while len(got) < 4:
                batch = await consumer.fetch(timeout=30)
                assert batch is not None, [r.value for r in got]
                records = batch.records
                assert isinstance(records, KafkaRecords)
                if first + 1 in range(records.first_offset, records.next_offset):
                    kinds = {type(item) for item in records.items}  # the path under test:
                    assert kinds == ({Record} if ahead else {ck.Message})
                for index in range(len(records)):  # one record at a time, twice, then all
                    assert records[index] == records[index]
                got.extend(records)
                await consumer.commit(batch)
            group = await broker.admin.describe_group("unreadable")
        read = await broker.read(tp, first, 10)  # tooling (tail, dead letters) reads it too

    for records in (got, read):
        assert [r.value for r in records] == [b"before", b"poison", b"after", b"later"]
        before, poison, after, later = records
        assert [r.offset for r in (before, poison, after)] == [first, first + 1, first + 2]
        assert (poison.topic, poison.partition, poison.timestamp, poison.key) == (
            topic,
            0,
            stamp,
            b"k2",
        )
        assert poison.headers == NOT_UTF8
        assert before.headers == (("a", b"1"),) and after.headers == () == later.headers
    with pytest.raises(DecodeError, match="not UTF-8"):  # the service dead-letters it
        event_from_record(got[1])
    [lag] = group.partitions
    assert (lag.committed, lag.lag) == (got[-1].offset + 1, 0)


# the prefetch buffer in bytes ----------------------------------------------------------------

VALUE_BYTES = 16 * 1024
MAX_BUFFER_BYTES = 2 * 1024 * 1024
PARTITION_BUFFER_BYTES = MAX_BUFFER_BYTES // 4
# librdkafka prefetches 64 KiB, plus one fetch of at most 128 KiB, ahead of the consumer's thread
# (Kafka returns whole record batches, so the producer writes one message per batch): one poll
# brings at most that much, what a buffer may go over its bound by
LIBRDKAFKA = (
    "&consumer.queued.max.messages.kbytes=64&consumer.fetch.max.bytes=131072"
    "&consumer.message.max.bytes=131072&consumer.max.partition.fetch.bytes=65536"
    "&producer.batch.size=20000"
)
ONE_POLL = 64 * 1024 + 128 * 1024 + VALUE_BYTES


def _buffered(consumer: KafkaConsumer) -> dict[TopicPartition, int]:
    """Bytes (key + value) of the messages each partition's buffer holds now."""
    with consumer._lock:
        buffers = {tp: list(b.items) for tp, b in consumer._buffers.items()}
    return {tp: sum(map(_size, items)) for tp, items in buffers.items()}


def _size(item: ck.Message | Record) -> int:
    value, key = (item.value, item.key) if isinstance(item, Record) else (item.value(), item.key())
    return len(value or b"") + len(key or b"")


@pytest.mark.parametrize(
    ("partitions", "per_partition"),
    [(1, 1024 * 1024 + 512 * 1024), (8, 1024 * 1024)],
    ids=["one-partition", "eight-partitions"],
)
async def test_the_prefetch_buffer_stays_bounded_in_bytes_and_delivers_everything(
    cluster: Cluster, partitions: int, per_partition: int
) -> None:
    """With large messages and the application not fetching, each partition's buffer stays
    within a quarter of `max_buffer_bytes` (one partition) and all of them within
    `max_buffer_bytes` (eight partitions, whose quarters add up to more), each give or take one
    poll; once the application fetches, every record arrives in order, also after a nack."""
    topic = cluster.topic()
    count = per_partition // VALUE_BYTES
    url = f"{cluster.url}&max_buffer_bytes={MAX_BUFFER_BYTES}{LIBRDKAFKA}"
    async with connect(url) as broker:
        await broker.admin.create_topic(topic, partitions)
        for p in range(partitions):
            await broker.publish(
                topic,
                [
                    Message(f"{p}:{i}:".encode().ljust(VALUE_BYTES, b"."), b"k", partition=p)
                    for i in range(count)
                ],
            )
        consumer = broker.subscribe("bounded", [topic])
        assert isinstance(consumer, KafkaConsumer)
        async with consumer:
            # the application does not fetch: the buffers fill until every partition is paused
            deadline = time.monotonic() + 60
            while True:
                buffered = _buffered(consumer)
                assert max(buffered.values()) <= PARTITION_BUFFER_BYTES + ONE_POLL, buffered
                assert sum(buffered.values()) <= MAX_BUFFER_BYTES + ONE_POLL, buffered
                if len(consumer._paused) == partitions:
                    break
                assert time.monotonic() < deadline, ("never paused", buffered)
                await asyncio.sleep(0.02)
            filled = sum(_buffered(consumer).values())  # paused because full, not before
            assert filled >= min(MAX_BUFFER_BYTES, partitions * PARTITION_BUFFER_BYTES)

            got: dict[int, list[int]] = {p: [] for p in range(partitions)}
            nacked: set[int] = set()
            while sum(map(len, got.values())) < partitions * count:
                batch = await consumer.fetch(timeout=30)
                assert batch is not None, {p: len(v) for p, v in got.items()}
                numbers = [int(r.value.split(b":")[1]) for r in batch.records]
                if batch.partition not in nacked and len(batch) > 1:  # redelivered from memory
                    nacked.add(batch.partition)
                    consumer.nack(batch, batch.records[1].offset)
                    numbers = numbers[:1]
                else:
                    consumer.ack(batch)
                got[batch.partition] += numbers
    assert got == {p: list(range(count)) for p in range(partitions)}
