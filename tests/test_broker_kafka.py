"""The broker contract against a real Apache Kafka, plus Kafka-specific cases.

Needs `TIDINGS_KAFKA_BOOTSTRAP` (`scripts/services start kafka`, then
`eval "$(scripts/services env)"`); without it the module is skipped, or fails under CI=true.

Every test gets its own `group_prefix`, so runs sharing the broker (several engineers, CI) never
see each other's consumer groups; at teardown a test deletes exactly the topics it created and
its own groups. The broker restart test stops and starts the shared Kafka, so it only runs with
TIDINGS_KAFKA_RESTART_TEST=1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import confluent_kafka as ck
import pytest
from confluent_kafka.admin import AdminClient, ConfigResource, ConfigSource, ResourceType
from confluent_kafka.cimpl import NewTopic
from typer.testing import CliRunner

from tidings.brokers import connect
from tidings.brokers.base import UNLIMITED
from tidings.brokers.kafka import (
    CONSUMER_DEFAULTS,
    PASSWORD_ENV,
    KafkaAdmin,
    KafkaBroker,
    KafkaConsumer,
    parse_settings,
)
from tidings.brokers.kafka._records import KafkaRecords, build_records, split_runs
from tidings.cli import app
from tidings.errors import (
    CommitFailedError,
    ConfigError,
    MessageTooLargeError,
    StorageError,
    UnknownTopicError,
)
from tidings.partitioner import partition_for_key
from tidings.records import Batch, Message, Record, TopicPartition
from tidings.testing.broker_contract import (
    BrokerContract,
    ProcessContract,
    drain,
    messages,
    topic_name,
    values,
)

BOOTSTRAP = os.environ.get("TIDINGS_KAFKA_BOOTSTRAP", "")
ROOT = Path(__file__).resolve().parents[1]

if not BOOTSTRAP:
    reason = (
        "TIDINGS_KAFKA_BOOTSTRAP is not set: run `scripts/services start kafka` and "
        '`eval "$(scripts/services env)"`'
    )
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def _admin() -> AdminClient:
    return AdminClient({"bootstrap.servers": BOOTSTRAP})


@pytest.fixture
def isolated_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A URL with a group prefix of its own; deletes the test's topics and groups afterwards."""
    prefix = f"test-{uuid.uuid4().hex[:12]}."
    created: list[str] = []
    create_topic = KafkaAdmin.create_topic

    async def recording(self: KafkaAdmin, name: str, *args: Any, **kwargs: Any) -> Any:
        info = await create_topic(self, name, *args, **kwargs)
        created.append(name)
        return info

    monkeypatch.setattr(KafkaAdmin, "create_topic", recording)
    yield f"kafka://{BOOTSTRAP}?group_prefix={prefix}"
    admin = _admin()
    if created:
        for future in admin.delete_topics(sorted(set(created)), request_timeout=10).values():
            with contextlib.suppress(ck.KafkaException):
                future.result()
    groups = admin.list_consumer_groups(request_timeout=10).result().valid
    ours = [g.group_id for g in groups if g.group_id.startswith(prefix)]
    if ours:
        for future in admin.delete_consumer_groups(ours, request_timeout=10).values():
            # fails for a killed member still in its session: the group expires on its own
            with contextlib.suppress(ck.KafkaException):
                future.result()


@pytest.fixture
def url(isolated_url: str) -> str:
    return isolated_url


class TestKafkaBroker(BrokerContract, ProcessContract):
    """The whole shared contract, each test isolated by `isolated_url`."""

    @pytest.fixture
    def url(self, isolated_url: str) -> str:
        return isolated_url


# producer ------------------------------------------------------------------------------------


async def test_keyed_messages_land_where_partition_for_key_and_librdkafka_say(url: str) -> None:
    topic = topic_name()
    keys = [f"order-{i}".encode() for i in range(300)]
    async with connect(url) as broker:
        await broker.admin.create_topic(topic, 12)
        placed = await broker.publish(topic, [Message(b"v", key=k) for k in keys])
        assert [p.partition for p in placed] == [partition_for_key(k, 12) for k in keys]
        for partition in range(12):
            records = await broker.read(TopicPartition(topic, partition), 0, 1000)
            assert all(partition_for_key(r.key or b"", 12) == partition for r in records)
    # Kafka's own client partitioner (librdkafka murmur2_random = the Java default) agrees.
    producer = ck.Producer({"bootstrap.servers": BOOTSTRAP, "partitioner": "murmur2_random"})
    landed: dict[bytes, int] = {}

    def report(err: ck.KafkaError | None, message: ck.Message) -> None:
        assert err is None, err
        key, partition = message.key(), message.partition()
        assert key is not None and partition is not None
        landed[key] = partition

    for key in keys:
        producer.produce(topic, b"raw", key, on_delivery=report)
    assert producer.flush(30) == 0
    assert landed == {k: partition_for_key(k, 12) for k in keys}


async def test_publish_to_a_deleted_topic_raises_naming_it(url: str) -> None:
    topic = topic_name()
    async with connect(url, **{"producer.message.timeout.ms": 5000}) as broker:
        await broker.admin.create_topic(topic, 2)
        await broker.publish(topic, messages(3))
        assert isinstance(broker, KafkaBroker)
        await asyncio.wrap_future(broker.client.delete_topics([topic])[topic])
        started = time.monotonic()
        with pytest.raises((UnknownTopicError, StorageError), match=topic):
            await broker.publish(topic, messages(5, keys=2))
        assert time.monotonic() - started < 30
        with pytest.raises(UnknownTopicError, match=topic):
            await broker.publish(topic, messages(1))


async def test_a_message_kafka_refuses_as_too_large_raises(url: str) -> None:
    topic = topic_name()
    admin = _admin()
    admin.create_topics([NewTopic(topic, 1, config={"max.message.bytes": "2000"})])[topic].result()
    try:
        async with connect(url) as broker:
            await broker.admin.describe_topic(topic)
            with pytest.raises(MessageTooLargeError, match=topic):
                await broker.publish(topic, [Message(b"x" * 5000)])
            assert (await broker.admin.describe_topic(topic)).records == 0
    finally:
        admin.delete_topics([topic])[topic].result()


async def test_what_publish_accepts_fits_a_topic_with_kafkas_default_limit(url: str) -> None:
    """A message of exactly the default max_message_bytes, with headers, is taken by Kafka on a
    topic with its default max.message.bytes (which also counts the record batch's framing)."""
    topic = topic_name()
    headers = tuple((f"h{i}", b"v") for i in range(20))
    async with connect(url) as broker:
        await broker.admin.create_topic(topic, 1)
        framing = Message(b"", key=b"order-1", headers=headers).size
        value = b"x" * (broker.max_message_bytes - framing)
        await broker.publish(topic, [Message(value, key=b"order-1", headers=headers)])
        [record] = await broker.read(TopicPartition(topic, 0), 0, 1)
        assert (record.value, record.headers) == (value, headers)
    assert _topic_config(topic)["max.message.bytes"].value == "1048588"  # Kafka's default


async def test_unreachable_bootstrap_fails_within_the_request_timeout() -> None:
    async with connect("kafka://127.0.0.1:9,127.0.0.1:7?request_timeout=2") as broker:
        started = time.monotonic()
        with pytest.raises(StorageError, match=r"127\.0\.0\.1:9,127\.0\.0\.1:7"):
            await broker.admin.list_topics()
        with pytest.raises(StorageError, match="did not answer"):
            await broker.publish("t", messages(1))
        with pytest.raises(StorageError):
            await broker.subscribe("g", ["t"]).fetch(timeout=0.1)
        assert time.monotonic() - started < 15


# consumer ------------------------------------------------------------------------------------


async def committed(broker: Any, group: str) -> dict[int, int | None]:
    info = await broker.admin.describe_group(group)
    return {p.partition: p.committed for p in info.partitions}


async def test_commit_never_passes_an_unprocessed_batch(url: str) -> None:
    topic = topic_name()
    async with connect(url) as broker:
        await broker.admin.create_topic(topic)
        await broker.publish(topic, messages(10))
        consumer = broker.subscribe("exact", [topic], max_batch=3)
        first = await consumer.fetch(timeout=10)
        assert first is not None
        consumer.ack(first)
        second = await consumer.fetch(timeout=10)
        assert second is not None and second.first_offset == 3
        await consumer.commit()
        assert await committed(broker, "exact") == {0: 3}
        await consumer.close()  # `second` was never acked: nothing past 3 is committed
        assert await committed(broker, "exact") == {0: 3}
        async with broker.subscribe("exact", [topic], max_batch=3) as again:
            batch = await again.fetch(timeout=10)
            assert batch is not None and batch.first_offset == 3


async def test_a_slow_handler_does_not_exceed_max_poll_interval(url: str) -> None:
    """The event loop is blocked longer than max.poll.interval.ms: the member stays."""
    topic = topic_name()
    options = {"consumer.max.poll.interval.ms": 7000, "revoke_timeout": 2}
    async with connect(url, **options) as broker:
        await broker.admin.create_topic(topic)
        await broker.publish(topic, messages(4))
        async with broker.subscribe("slow", [topic], max_batch=2, session_timeout=6) as consumer:
            batch = await consumer.fetch(timeout=10)
            assert batch is not None
            member = (await broker.admin.describe_group("slow")).members[0].member_id
            time.sleep(9)  # a handler hogging the loop for longer than max.poll.interval.ms
            await consumer.commit(batch)
            after = await broker.admin.describe_group("slow")
            assert [m.member_id for m in after.members] == [member]
            assert consumer.assignment() == {TopicPartition(topic, 0)}
            assert {p.partition: p.committed for p in after.partitions} == {0: 2}


async def test_revocation_waits_for_the_in_flight_batch_and_commits_it(url: str) -> None:
    topic = topic_name()
    async with connect(url) as broker:
        await broker.admin.create_topic(topic, 2)
        for partition in (0, 1):
            await broker.publish(topic, [Message(b"x", partition=partition)] * 20)
        first = broker.subscribe("handover", [topic], max_batch=5)
        held = [await first.fetch(timeout=10), await first.fetch(timeout=10)]
        assert all(b is not None for b in held)
        by_partition: dict[int, Batch] = {b.partition: b for b in held if b is not None}
        assert set(by_partition) == {0, 1}

        async def finish_later() -> None:
            await asyncio.sleep(2)
            for partition in (0, 1):  # committing one while the other is still in flight
                await first.commit(by_partition[partition])

        started = time.monotonic()
        finishing = asyncio.create_task(finish_later())
        second = broker.subscribe("handover", [topic], max_batch=5)
        received: list[Batch] = []
        deadline = time.monotonic() + 30
        while not received:
            assert time.monotonic() < deadline, "the second member never received a batch"
            assert not (first.assignment() & second.assignment()), "a partition had two owners"
            batch = await second.fetch(timeout=0.1)
            if batch is not None:
                received.append(batch)
        await finishing
        moved = received[0].partition
        elapsed = time.monotonic() - started
        assert elapsed >= 1.5, "the rebalance did not wait for the batch"
        assert elapsed < 8, "a commit waited for the revocation (revoke_timeout is 10 s)"
        assert received[0].first_offset == by_partition[moved].next_offset == 5
        assert first.assignment() == {TopicPartition(topic, 1 - moved)}
        with pytest.raises(CommitFailedError, match=f"{topic}\\[{moved}\\]"):
            await first.commit(received[0])  # not this member's batch any more
        other = await first.fetch(timeout=10)
        assert other is not None and other.partition == 1 - moved
        await first.close()
        await second.close()


async def test_a_member_without_partitions_leaves_the_group_at_once_on_close(url: str) -> None:
    """librdkafka skips the LeaveGroup of a cooperative member without partitions; tidings
    unsubscribes first, so the group does not wait a session timeout for it."""
    topic = topic_name()
    async with connect(url) as broker:
        await broker.admin.create_topic(topic, 1)
        async with broker.subscribe("idle", [topic]) as owner:
            idle = broker.subscribe("idle", [topic])
            await idle.start()
            assert idle.assignment() == frozenset() and len(owner.assignment()) == 1
            await idle.close()
            deadline = time.monotonic() + 2  # the session timeout is 10 s
            while len((await broker.admin.describe_group("idle")).members) != 1:
                assert time.monotonic() < deadline, "the closed member is still in the group"
                await asyncio.sleep(0.1)


# admin and settings --------------------------------------------------------------------------


def test_cli_topic_and_group_admin_work_on_kafka(url: str) -> None:
    topic = topic_name()
    runner = CliRunner()

    def cli(*args: str) -> Any:
        result = runner.invoke(app, ["--broker", url, *args])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    created = cli(
        "topics", "create", topic, "--partitions", "2", "--retention-ms", "60000", "--json"
    )
    assert (created["name"], len(created["partitions"]), created["retention_ms"]) == (
        topic,
        2,
        60000,
    )

    async def publish_and_consume() -> None:
        async with connect(url) as broker:
            await broker.publish(topic, messages(10, keys=5))
            async with broker.subscribe("cli", [topic]) as consumer:
                await drain(consumer, 10)
                await consumer.commit()

    asyncio.run(publish_and_consume())
    assert topic in [t["name"] for t in cli("topics", "list", "--json")]
    assert cli("topics", "describe", topic, "--json")["records"] == 10
    group = cli("groups", "describe", "cli", "--json")
    assert (group["members"], group["lag"]) == ([], 0)
    assert "cli" in [g["name"] for g in cli("groups", "list", "--json")]
    replayed = cli("replay", "cli", "--to", "earliest", "--json")
    assert {o["offset"] for o in replayed["offsets"]} == {0}
    assert cli("groups", "describe", "cli", "--json")["lag"] == 10


# durability ----------------------------------------------------------------------------------


def _topic_config(topic: str) -> dict[str, Any]:
    """The topic's effective configuration entries, as Kafka's admin API describes them."""
    admin = _admin()  # kept until the answer arrives
    resource = ConfigResource(ResourceType.TOPIC, topic)
    entries: dict[str, Any] = admin.describe_configs([resource])[resource].result(timeout=10)
    return entries


async def test_created_topics_get_durable_replication_and_the_retention_asked_for(
    url: str,
) -> None:
    """Replication factor min(3, brokers) and min.insync.replicas min(2, replicas), set on the
    topic (1 and 1 on this single-broker cluster); UNLIMITED retention is -1 (never delete)."""
    plain, forever, hour = topic_name(), topic_name(), topic_name()
    async with connect(url) as broker:
        admin = broker.admin
        await admin.create_topic(plain, 3)
        created = await admin.create_topic(
            forever, 1, retention_ms=UNLIMITED, retention_bytes=UNLIMITED
        )
        assert (created.retention_ms, created.retention_bytes) == (None, None)
        assert (await admin.describe_topic(forever)).retention_ms is None
        assert (await admin.create_topic(hour, 1, retention_ms=3_600_000)).retention_ms == 3_600_000
        for bad in (0, -2, True):
            with pytest.raises(ConfigError, match="retention_bytes"):
                await admin.create_topic(topic_name(), 1, retention_bytes=bad)
    metadata = _admin().list_topics(timeout=10)
    replicas = min(3, len(metadata.brokers))
    for topic in (plain, forever, hour):
        assert {len(p.replicas) for p in metadata.topics[topic].partitions.values()} == {replicas}
        insync = _topic_config(topic)["min.insync.replicas"]
        assert insync.value == str(min(2, replicas))
        assert insync.source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value  # set, not inherited
    config = _topic_config(forever)
    assert (config["retention.ms"].value, config["retention.bytes"].value) == ("-1", "-1")
    assert _topic_config(hour)["retention.ms"].value == "3600000"
    assert _topic_config(plain)["retention.ms"].source != ConfigSource.DYNAMIC_TOPIC_CONFIG.value


async def test_durability_warnings_name_the_topic_and_the_setting(url: str) -> None:
    ours, unclean = topic_name(), topic_name()
    admin = _admin()
    new = NewTopic(unclean, 1, config={"unclean.leader.election.enable": "true"})
    admin.create_topics([new], request_timeout=10)[unclean].result()
    try:
        async with connect(url) as broker:
            await broker.admin.create_topic(ours, 2)
            deadline = time.monotonic() + 30  # KRaft shows a new topic a little later
            while unclean not in admin.list_topics(timeout=10).topics:
                assert time.monotonic() < deadline, f"{unclean} not in the cluster's metadata"
                await asyncio.sleep(0.05)
            missing = f"missing-{uuid.uuid4().hex[:8]}"
            assert await broker.admin.durability_warnings([ours, missing]) == []
            [warning] = await broker.admin.durability_warnings([ours, unclean, missing])
    finally:
        admin.delete_topics([unclean], request_timeout=10)[unclean].result()
    assert repr(unclean) in warning and "unclean.leader.election.enable=true" in warning


def test_url_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = parse_settings(
        "kafka://a:1,b?security.protocol=SASL_SSL&sasl.mechanism=PLAIN&sasl.username=u"
        "&producer.linger.ms=20&max_message_bytes=2048&max_buffer_bytes=4096",
        {"consumer.fetch.wait.max.ms": 100},
    )
    assert settings.bootstrap == "a:1,b:9092"
    assert settings.producer == {"linger.ms": "20"}
    assert settings.consumer == {"fetch.wait.max.ms": 100}
    assert (settings.max_message_bytes, settings.max_buffer_bytes) == (2048, 4096)
    assert parse_settings("kafka://a:1", {}).max_buffer_bytes == 64 * 1024 * 1024
    assert "sasl.password" not in settings.common
    monkeypatch.setenv(PASSWORD_ENV, "s3cret")
    settings = parse_settings("kafka://a:1?sasl.mechanism=PLAIN&sasl.username=u", {})
    assert settings.common["sasl.password"] == "s3cret"
    assert "s3cret" not in repr(settings)
    masked = parse_settings("kafka://a:1?sasl.password=hunter2&sasl.username=u", {})
    assert "hunter2" not in masked.url and "sasl.password=***" in masked.url
    for bad, problem in [
        ("kafka://", "not host:port"),
        ("kafka://a:b", "not host:port"),
        ("kafka://u:p@a:1", "credentials"),
        ("kafka://a:1/x", "path"),
        ("kafka://a:1?enable.auto.commit=true", "managed by tidings"),
        ("kafka://a:1?consumer.group.id=x", "managed by tidings"),
        ("kafka://a:1?lingerms=5", "unknown kafka option"),
        ("kafka://a:1?request_timeout=soon", "request_timeout"),
        ("kafka://a:1?max_buffer_bytes=0", "max_buffer_bytes must be >= 1"),
    ]:
        with pytest.raises(ConfigError, match=problem):
            parse_settings(bad, {})
    with pytest.raises(ConfigError, match=r"no\.such\.setting"):
        connect("kafka://a:1?no.such.setting=1")


def test_consumer_fetch_settings_default_and_override() -> None:
    assert CONSUMER_DEFAULTS == {"fetch.queue.backoff.ms": 10}
    plain = KafkaBroker("kafka://a:1")
    tuned = KafkaBroker("kafka://a:1?consumer.fetch.queue.backoff.ms=500")
    try:
        consumer = plain.subscribe("g", ["t"])
        assert isinstance(consumer, KafkaConsumer)
        assert consumer._config(6000)["fetch.queue.backoff.ms"] == 10
        consumer = tuned.subscribe("g", ["t"])
        assert isinstance(consumer, KafkaConsumer)
        assert consumer._config(6000)["fetch.queue.backoff.ms"] == "500"
    finally:
        asyncio.run(plain.close())
        asyncio.run(tuned.close())


def _message(partition: int, offset: int, **kwargs: Any) -> ck.Message:
    return ck.Message(
        topic="t", partition=partition, offset=offset, timestamp=(1, 1000 + offset), **kwargs
    )


def test_records_are_built_per_partition_run_with_headers_tombstones_and_errors() -> None:
    error = ck.KafkaError(ck.KafkaError._TRANSPORT, "down")
    messages = [
        _message(0, 5, value=b"a", key=b"k", headers=[("ct", b"json")]),
        _message(0, 6, value=b"b", headers=[("ct", b"json")]),
        _message(1, 9, value=None, headers=[("null", None), ("s", b"x")]),
        ck.Message(error=error),
        _message(1, 10, value=b"c"),
        _message(0, 7, value=b"d", headers=[("ct", b"xml")]),
    ]
    split, errors = split_runs(messages)
    assert [e.code() for e in errors] == [ck.KafkaError._TRANSPORT]
    assert split_runs(messages, only_topic="t")[0] == split  # one topic: not asked per message
    runs = [(t, p, KafkaRecords(t, p, run)) for t, p, run in split]
    assert [(t, p, [r.offset for r in rs]) for t, p, rs in runs] == [
        ("t", 0, [5, 6]),
        ("t", 1, [9, 10]),
        ("t", 0, [7]),
    ]
    first, second = runs[0][2]
    assert (first.value, first.key, first.timestamp, first.headers) == (
        b"a",
        b"k",
        1005,
        (("ct", b"json"),),
    )
    assert second.headers == (("ct", b"json"),) and second.key is None
    tombstone, plain = runs[1][2]
    assert tombstone.value == b"" and tombstone.headers == (("null", b""), ("s", b"x"))
    assert plain.headers == ()
    assert runs[2][2][0].headers == (("ct", b"xml"),)


def test_kafka_records_read_like_a_list_of_the_same_records() -> None:
    messages = [_message(3, offset, value=b"v%d" % offset) for offset in (4, 5, 8)]
    records = KafkaRecords("t", 3, messages)
    expected = [Record("t", 3, o, 1000 + o, b"v%d" % o) for o in (4, 5, 8)]
    assert len(records) == 3 and (records.first_offset, records.next_offset) == (4, 9)
    assert "3 records, offsets 4..8, not built yet" in repr(records) and not records.read
    # an index before anything is built: that record alone, equal to the one built later
    assert records[0] == expected[0] and records[-1] == expected[-1]
    assert records[1:] == expected[1:]
    assert list(records) == expected and list(reversed(records)) == expected[::-1]
    assert records == expected and records == KafkaRecords("t", 3, messages)
    assert records != expected[:2] and records != "t"
    assert expected[2] in records and records.index(expected[1]) == 1
    assert records[0] is records[0] and records.read  # built once, then kept
    assert records.items == expected and repr(records) == f"KafkaRecords({expected!r})"
    batch = Batch("t", 3, records)
    assert (batch.first_offset, batch.next_offset, len(batch)) == (4, 9, 3)


def test_kafka_records_mix_messages_and_records_built_ahead() -> None:
    messages = [_message(0, offset, value=b"v%d" % offset) for offset in range(4)]
    built = build_records("t", 0, messages[:2])
    records = KafkaRecords("t", 0, [*built, *messages[2:]])
    assert not records.read and records[0] is built[0] and records[3].value == b"v3"
    assert [r.offset for r in records] == [0, 1, 2, 3] and records.read
    assert records == build_records("t", 0, messages)


async def test_records_stay_whole_and_in_order_whether_read_or_not(url: str) -> None:
    """The consumer builds records lazily while its batches go unread and ahead of time once
    they are read; switching between the two, with redeliveries, loses and repeats nothing."""
    sent = messages(120)
    async with connect(url) as broker:
        topic = topic_name()
        await broker.admin.create_topic(topic, 1)
        published = 0
        seen: list[bytes] = []
        kinds: set[str] = set()
        async with broker.subscribe("modes", [topic], max_batch=7) as consumer:
            n = 0
            while len(seen) < 120:
                if published == len(seen):  # all consumed: the next ones are buffered the way
                    # the last ack asked for (built ahead if its batch was read)
                    await broker.publish(topic, sent[published : published + 10])
                    published += 10
                batch = await consumer.fetch(timeout=30)
                assert batch is not None, seen
                assert isinstance(batch.records, KafkaRecords)
                kinds.update(type(item).__name__ for item in batch.records.items)
                n += 1
                if n % 3 == 0:  # unread: acked first, looked at afterwards for the check
                    consumer.ack(batch)
                    seen.extend(r.value for r in batch.records)
                    continue
                values = [r.value for r in batch.records]
                if n % 5 == 1 and len(batch) > 2:  # redelivered from its third record
                    consumer.nack(batch, batch.records[2].offset)
                    seen.extend(values[:2])
                else:
                    consumer.ack(batch)
                    seen.extend(values)
        assert seen == [m.value for m in sent]
        assert kinds == {"Message", "Record"}  # both ways of building were exercised


async def test_null_header_values_and_tombstones_from_other_producers(url: str) -> None:
    async with connect(url) as broker:
        topic = topic_name()
        await broker.admin.create_topic(topic, 1)
        producer = ck.Producer({"bootstrap.servers": BOOTSTRAP})
        producer.produce(topic, value=None, key=b"k", headers=[("a", None), ("b", b"1")])
        producer.produce(topic, value=b"v", headers=[("a", None), ("b", b"1")])
        producer.produce(topic, value=b"w")
        assert producer.flush(10) == 0
        consumer = broker.subscribe("foreign", [topic])
        try:
            batches = await drain(consumer, 3)
        finally:
            await consumer.close()
        records = [r for b in batches for r in b.records]
        read = await broker.read(TopicPartition(topic, 0), 0, 10)
        for got in (records, read):
            assert [(r.value, r.key, r.headers) for r in got] == [
                (b"", b"k", (("a", b""), ("b", b"1"))),
                (b"v", None, (("a", b""), ("b", b"1"))),
                (b"w", None, ()),
            ]


# broker restart ------------------------------------------------------------------------------


def _services(*args: str) -> None:
    subprocess.run([str(ROOT / "scripts" / "services"), *args], check=True, timeout=180)


@pytest.mark.skipif(
    os.environ.get("TIDINGS_KAFKA_RESTART_TEST") != "1",
    reason="stops and starts the shared Kafka: set TIDINGS_KAFKA_RESTART_TEST=1",
)
@pytest.mark.timeout(300)
async def test_kafka_restart_mid_stream_loses_nothing(url: str) -> None:
    topic = topic_name()
    async with connect(url) as broker:
        await broker.admin.create_topic(topic, 2)
        await broker.publish(topic, messages(100, prefix="before", keys=10))
        consumer = broker.subscribe("restarted", [topic], max_batch=10)
        got = values(await drain(consumer, 50))
        await consumer.commit()
        await asyncio.to_thread(_services, "stop", "kafka")
        publishing = asyncio.create_task(
            broker.publish(topic, messages(100, prefix="during", keys=10))
        )
        await asyncio.sleep(2)
        assert not publishing.done()
        await asyncio.to_thread(_services, "start", "kafka")
        await asyncio.wait_for(publishing, 120)
        got += values(await drain(consumer, 200 - len(got), timeout=120))
        await consumer.close()
    expected = {f"before-{i}".encode() for i in range(100)}
    expected |= {f"during-{i}".encode() for i in range(100)}
    assert set(got) == expected
