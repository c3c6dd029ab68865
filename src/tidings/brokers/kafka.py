"""The Apache Kafka backend: `kafka://host:port[,host:port...]?setting=value`.

Built on confluent-kafka (librdkafka). The same application code runs on it as on the embedded
broker, and it passes the same contract suite; what differs is written down here.

Settings
--------
Query parameters and keyword arguments of `connect` are librdkafka settings (`security.protocol`,
`sasl.mechanism`, `sasl.username`, `ssl.ca.location`, `compression.type`, ...), passed to every
client; prefix one with `producer.` or `consumer.` to give it to that client only (librdkafka
warns about producer settings given to a consumer and vice versa). `sasl.password` is taken from
the environment variable `TIDINGS_KAFKA_SASL_PASSWORD` when not given (preferred: the URL is
shown by tooling); secrets are never logged and are masked in `broker.url`. tidings' own options:

* `max_message_bytes` (default 1 MiB - 1 KiB): larger messages are refused before anything is
  produced. The topic's `max.message.bytes` still applies to the record *batch*, framing
  included (up to 74 bytes plus 6 per header for a batch of one record): the default fits
  Kafka's default (1 MiB + 12 bytes) for messages of up to about 150 headers, uncompressed.
  A message Kafka refuses raises MessageTooLargeError too.
* `request_timeout` (seconds, default 15): bound of every metadata and admin request; an
  unreachable cluster raises StorageError naming the bootstrap servers after this long.
* `revoke_timeout` (seconds, default 10): how long a rebalance waits for the in-flight batch of
  a partition that moves to another member (see "Consumer").
* `max_buffer_bytes` (default 64 MiB): bound of what a consumer buffers ahead of the application
  (see "Consumer"), in bytes of key + value.
* `group_prefix` (default none): prepended to every consumer group name on Kafka, so that
  environments sharing a cluster keep apart; the admin shows and takes names without it and
  lists only the groups that have it.

The settings the guarantees below depend on are fixed and refused as options: `group.id`,
`enable.auto.commit`, `enable.auto.offset.store`, `partition.assignment.strategy`,
`group.protocol`, `enable.idempotence`, `acks`, `auto.offset.reset`, `session.timeout.ms`,
`enable.partition.eof` and `bootstrap.servers` (it comes from the URL).

Producer
--------
One idempotent producer per broker (`enable.idempotence=true`, `acks=all`, `linger.ms=5`):
`publish` produces every message of the call, then waits for every delivery report; a polling
thread serves the reports and resolves the call on the event loop, so nothing blocks the loop.
Any delivery failure raises (UnknownTopicError, MessageTooLargeError or StorageError naming the
topic and librdkafka's error): nothing is fire-and-forget. Records of one call that land on
the same partition keep their order (idempotence keeps it across retries). A keyed message goes
to `partition_for_key(key, partitions)` - what Kafka's Java client and librdkafka's
`murmur2_random` partitioner pick -, computed here from the topic's metadata (cached for 30 s);
a message without key or partition goes where librdkafka's sticky partitioner puts it.
"Durable when it returns" means acknowledged by all in-sync replicas (Kafka's `acks=all`;
Kafka itself does not fsync per write).

Topics
------
`create_topic` gives a topic replication factor min(3, brokers in the cluster) and
`min.insync.replicas` min(2, replication factor), so that with `acks=all` a publish is on two
brokers when it returns (one on a single-broker cluster). `retention_ms` / `retention_bytes` set
`retention.ms` / `retention.bytes` (UNLIMITED sets -1: never delete); None leaves the cluster's
default. `durability_warnings` names the settings of existing topics under which an acknowledged
publish can be lost: fewer replicas than min(3, brokers), an effective `min.insync.replicas`
below min(2, replicas), `unclean.leader.election.enable=true`.

Consumer
--------
`subscribe` returns a group member with the semantics of the embedded broker's consumer. One
thread per consumer owns the librdkafka consumer (it is not thread-safe) and polls it all the
time, also while handlers are slow, so `max.poll.interval.ms` is never exceeded; librdkafka's
messages are buffered per partition. A batch's `records` are built from its messages when first
read (a consumer that reads none of its batches builds none of their records); once the
application reads them, as the service runtime does, the polling thread builds them as it
buffers, overlapping that work with the application's waits on I/O (`_kafka_records`).
A partition whose buffer is full is paused, not left unpolled, until the application drains it
below full: full is 8 batches (at least 5000 messages), a quarter of `max_buffer_bytes` of key +
value, or anything at all while the buffers of all the consumer's partitions together hold
`max_buffer_bytes`. A poll's messages are buffered whole, so a buffer may exceed that by what one
poll brings (librdkafka's own prefetch, up to `queued.max.messages.kbytes`, 64 MiB by default,
plus a fetch, comes on top in any case).
Heartbeats run in librdkafka's own thread. `fetch` hands out consecutive records of one
partition with no batch in flight. Offsets are committed explicitly (auto-commit is off) and only
for acked batches - never past an unprocessed record -: periodically (every second), on `commit`,
when partitions are revoked and on `close`. A commit that meets a rebalance in progress
(REBALANCE_IN_PROGRESS, ILLEGAL_GENERATION) is retried until the rebalance is over; `commit()`
raises CommitFailedError if a partition left this member (revoked or lost) with an acked offset
that could not be committed, StorageError if Kafka does not take it within `request_timeout`.
The consumer sets `fetch.queue.backoff.ms=10` (librdkafka's default, 1000, stalls fetching for a
second whenever the application falls behind the fetcher); `consumer.fetch.queue.backoff.ms`
overrides it.

Rebalancing is cooperative (`cooperative-sticky`): a join or leave moves only the partitions that
change owner. When a partition is revoked, the member stops delivering it, waits up to
`revoke_timeout` for its in-flight batch to be acked or nacked, commits what was acked, and only
then lets the rebalance go on - Kafka's protocol holds the whole group's rebalance meanwhile. A
batch still unacked after that is redelivered to the new owner; its late ack is ignored and
`commit(batch)` raises CommitFailedError. A starting member waits up to `revoke_timeout` + a
session timeout for its first assignment.

Where the contract fits Kafka less well
---------------------------------------
* `session_timeout` is raised to the broker's `group.min.session.timeout.ms` (6 s by default;
  the contract suite asks for 2-3 s), with a warning: a killed member's partitions move after
  that long.
* The starting offset of a partition without a committed offset is resolved when it is assigned
  (`latest` = the end offset at that moment). A committed offset removed by retention resumes at
  the oldest retained record whatever `auto_offset_reset` says, like the embedded broker.
* `enforce_retention` does now what Kafka does in the background, at record rather than segment
  granularity, with `DeleteRecords`: by age up to the first record not older than `retention.ms`
  (`ListOffsets` by timestamp), and by size down to the newest records whose key + value +
  headers fit in `retention.bytes` (read back from the end of the partition, so it costs
  about `retention.bytes` of reading per partition). Kafka's own cleaner may delete less, later,
  and by whole segments: it measures bytes on disk.
  It applies to every topic of the cluster with its effective retention (Kafka's default is
  7 days), and `describe_topic` reports that effective retention (None only when unlimited).
* Start and end offsets are Kafka's log start offset and last stable offset (what a
  `read_committed` consumer can read; the high watermark unless transactions are in flight).
* `describe_group` shows a member's assigned partitions and the topics of those partitions (the
  admin API does not return a classic member's subscription).
* `read` uses one consumer per broker that is assigned partitions directly: it never joins a
  group nor commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import queue
import re
import socket
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import confluent_kafka as ck
from confluent_kafka.admin import AdminClient

# The admin package does not re-export these for type checkers; their modules are stable.
from confluent_kafka.admin._config import ConfigResource
from confluent_kafka.admin._listoffsets import OffsetSpec
from confluent_kafka.admin._metadata import ClusterMetadata
from confluent_kafka.admin._resource import ResourceType
from confluent_kafka.cimpl import NewTopic

from tidings.brokers._kafka_records import (
    KafkaRecords,
    PartitionBuffer,
    build_records,
    item_offset,
    message_bytes,
    split_runs,
    to_record,
)
from tidings.brokers.base import (
    DEFAULT_MAX_MESSAGE_BYTES,
    Admin,
    Broker,
    CanEnforceRetention,
    CanInspect,
    CanRead,
    CanResetOffsets,
    CanSeek,
    Consumer,
    check_sizes,
    check_subscription,
    validate_partitions,
    validate_retention,
    validate_topic_name,
)
from tidings.errors import (
    BrokerClosedError,
    CommitFailedError,
    ConfigError,
    MessageTooLargeError,
    StorageError,
    TopicError,
    TopicExistsError,
    UnknownTopicError,
)
from tidings.partitioner import partition_for_key
from tidings.records import (
    Batch,
    GroupInfo,
    MemberInfo,
    Message,
    OffsetReset,
    PartitionInfo,
    PartitionLag,
    Published,
    Record,
    SeekTo,
    TopicInfo,
    TopicPartition,
)

log = logging.getLogger("tidings.kafka")
_rdkafka_log = logging.getLogger("tidings.kafka.librdkafka")

T = TypeVar("T")

PASSWORD_ENV: Final = "TIDINGS_KAFKA_SASL_PASSWORD"  # noqa: S105 (a variable name)
DEFAULT_PORT: Final = 9092
DEFAULT_REQUEST_TIMEOUT: Final = 15.0
DEFAULT_REVOKE_TIMEOUT: Final = 10.0
DEFAULT_MAX_BUFFER_BYTES: Final = 64 * 1024 * 1024
KAFKA_MAX_MESSAGE_BYTES: Final = DEFAULT_MAX_MESSAGE_BYTES - 1024
METADATA_TTL: Final = 30.0
COMMIT_INTERVAL: Final = 1.0
"""Seconds between the consumer's background commits of acked offsets."""
POLL_TIMEOUT: Final = 0.05
"""Seconds one poll of the consumer thread may block: the latency of seeks, commits, resumes."""
MAX_POLL_INTERVAL_MS: Final = 300_000
CONSUMER_DEFAULTS: Final[Mapping[str, Any]] = {"fetch.queue.backoff.ms": 10}
"""librdkafka settings of every group consumer that options may override. librdkafka (2.4+)
waits `fetch.queue.backoff.ms` (default 1000) before fetching again once its local queue holds
`queued.min.messages`; a consumer slower than the fetcher then idles for most of each second
(consumption measured 2-2.5x slower with the default, see BENCHMARKS.md)."""

_OPTIONS: Final = frozenset(
    {"max_message_bytes", "request_timeout", "revoke_timeout", "group_prefix", "max_buffer_bytes"}
)
_FIXED: Final = frozenset(
    {
        "bootstrap.servers",
        "metadata.broker.list",
        "group.id",
        "enable.auto.commit",
        "enable.auto.offset.store",
        "partition.assignment.strategy",
        "group.protocol",
        "enable.idempotence",
        "acks",
        "request.required.acks",
        "auto.offset.reset",
        "session.timeout.ms",
        "enable.partition.eof",
    }
)
_SECRET = re.compile(r"password|secret|token", re.IGNORECASE)
_CLIENT_ID_CHARS = re.compile(r"[^A-Za-z0-9._-]")

_UNREACHABLE = frozenset(
    {
        ck.KafkaError._TRANSPORT,
        ck.KafkaError._TIMED_OUT,
        ck.KafkaError._ALL_BROKERS_DOWN,
        ck.KafkaError._RESOLVE,
        ck.KafkaError.REQUEST_TIMED_OUT,
        ck.KafkaError._WAIT_COORD,
    }
)
_UNKNOWN_TOPIC = frozenset(
    {
        ck.KafkaError.UNKNOWN_TOPIC_OR_PART,
        ck.KafkaError._UNKNOWN_TOPIC,
        ck.KafkaError._UNKNOWN_PARTITION,
        ck.KafkaError.UNKNOWN_TOPIC_ID,
    }
)
_TOO_LARGE = frozenset(
    {
        ck.KafkaError.MSG_SIZE_TOO_LARGE,
        ck.KafkaError.RECORD_LIST_TOO_LARGE,
        ck.KafkaError.INVALID_MSG_SIZE,
    }
)
_RETRY_LIST_OFFSETS = frozenset(
    {
        ck.KafkaError.LEADER_NOT_AVAILABLE,
        ck.KafkaError.NOT_LEADER_FOR_PARTITION,
        ck.KafkaError.UNKNOWN_TOPIC_OR_PART,
        ck.KafkaError.OFFSET_NOT_AVAILABLE,
        ck.KafkaError.REPLICA_NOT_AVAILABLE,
        ck.KafkaError.UNKNOWN_LEADER_EPOCH,
        ck.KafkaError.FENCED_LEADER_EPOCH,
        ck.KafkaError._UNKNOWN_PARTITION,
    }
)
_COMMIT_RETRY = frozenset(
    {
        ck.KafkaError.REBALANCE_IN_PROGRESS,
        ck.KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        ck.KafkaError.COORDINATOR_NOT_AVAILABLE,
        ck.KafkaError.NOT_COORDINATOR,
        ck.KafkaError.REQUEST_TIMED_OUT,
        ck.KafkaError._TIMED_OUT,
        ck.KafkaError._WAIT_COORD,
        ck.KafkaError._TRANSPORT,
        ck.KafkaError._IN_PROGRESS,
        ck.KafkaError._PREV_IN_PROGRESS,
        ck.KafkaError._STATE,
        # a rebalance is under way (the member rejoined, the group moved on to a new
        # generation): once it completes, the commit succeeds for the partitions still owned,
        # and the lost ones are reported by on_lost
        ck.KafkaError.ILLEGAL_GENERATION,
        ck.KafkaError.UNKNOWN_MEMBER_ID,
        ck.KafkaError.STALE_MEMBER_EPOCH,
        ck.KafkaError._ASSIGNMENT_LOST,
    }
)
_COMMIT_FENCED = frozenset({ck.KafkaError.FENCED_INSTANCE_ID, ck.KafkaError._FENCED})


# settings ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KafkaSettings:
    """A parsed `kafka://` URL plus options."""

    url: str
    """The URL with secrets masked."""
    bootstrap: str
    common: dict[str, Any] = field(repr=False)
    producer: dict[str, Any] = field(repr=False)
    consumer: dict[str, Any] = field(repr=False)
    max_message_bytes: int = KAFKA_MAX_MESSAGE_BYTES
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    revoke_timeout: float = DEFAULT_REVOKE_TIMEOUT
    group_prefix: str = ""
    max_buffer_bytes: int = DEFAULT_MAX_BUFFER_BYTES


def parse_settings(url: str, options: Mapping[str, Any]) -> KafkaSettings:
    """Parse `kafka://host:port[,host:port]?setting=value` and keyword options (which win).

    Raises ConfigError naming the problem."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "kafka":
        raise ConfigError(f"not a kafka URL: {_mask_url(url)!r}")
    if "@" in parts.netloc:
        raise ConfigError(
            "kafka URL must not contain credentials; give sasl.username as an option and the "
            f"password in ${PASSWORD_ENV}"
        )
    if parts.path not in {"", "/"} or parts.fragment:
        raise ConfigError(
            f"kafka URL {_mask_url(url)!r} has a path; expected kafka://host:port[,host:port]"
        )
    servers = []
    for item in parts.netloc.split(","):
        host, sep, port = item.strip().rpartition(":")
        if not sep:
            host, port = port, str(DEFAULT_PORT)
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(
                f"kafka URL {_mask_url(url)!r}: {item!r} is not host:port; "
                "expected kafka://host:port[,host:port]"
            )
        servers.append(f"{host}:{int(port)}")
    given: dict[str, Any] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in given:
            raise ConfigError(f"kafka URL option {key!r} is given twice")
        given[key] = value
    given.update(options)

    own = {k: given.pop(k) for k in list(given) if k in _OPTIONS}
    unknown = sorted(k for k in given if "." not in k and k not in _OPTIONS)
    if unknown:
        raise ConfigError(
            f"unknown kafka option(s) {', '.join(unknown)}; tidings options are "
            f"{', '.join(sorted(_OPTIONS))}, librdkafka settings contain a dot "
            "(e.g. security.protocol)"
        )
    common: dict[str, Any] = {}
    producer: dict[str, Any] = {}
    consumer: dict[str, Any] = {}
    for key, value in given.items():
        target, name = common, key
        if key.startswith("producer."):
            target, name = producer, key.removeprefix("producer.")
        elif key.startswith("consumer."):
            target, name = consumer, key.removeprefix("consumer.")
        if name in _FIXED:
            raise ConfigError(
                f"kafka setting {key!r} is managed by tidings and cannot be set "
                "(see tidings.brokers.kafka)"
            )
        target[name] = value
    if "sasl.password" not in common and os.environ.get(PASSWORD_ENV):
        uses_sasl = "sasl" in str(common.get("security.protocol", "")).lower() or any(
            k.startswith("sasl.") for k in common
        )
        if uses_sasl:
            common["sasl.password"] = os.environ[PASSWORD_ENV]
    common["bootstrap.servers"] = ",".join(servers)
    common.setdefault("client.id", _default_client_id())

    return KafkaSettings(
        url=_mask_url(url),
        bootstrap=",".join(servers),
        common=common,
        producer=producer,
        consumer=consumer,
        max_message_bytes=_positive_int(
            "max_message_bytes", own.get("max_message_bytes"), KAFKA_MAX_MESSAGE_BYTES
        ),
        request_timeout=_positive_float(
            "request_timeout", own.get("request_timeout"), DEFAULT_REQUEST_TIMEOUT
        ),
        revoke_timeout=_positive_float(
            "revoke_timeout", own.get("revoke_timeout"), DEFAULT_REVOKE_TIMEOUT
        ),
        group_prefix=str(own.get("group_prefix") or ""),
        max_buffer_bytes=_positive_int(
            "max_buffer_bytes", own.get("max_buffer_bytes"), DEFAULT_MAX_BUFFER_BYTES
        ),
    )


def _positive_int(name: str, value: object, default: int) -> int:
    if value is None:
        return default
    try:
        number = int(str(value))
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {value!r}") from None
    if number < 1:
        raise ConfigError(f"{name} must be >= 1, got {number}")
    return number


def _positive_float(name: str, value: object, default: float) -> float:
    if value is None:
        return default
    try:
        number = float(str(value))
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, got {value!r}") from None
    if not number > 0:
        raise ConfigError(f"{name} must be > 0, got {number}")
    return number


def _mask_url(url: str) -> str:
    """`url` with the values of secret-looking query parameters replaced by ***."""
    parts = urlsplit(url)
    if not parts.query:
        return url
    query = "&".join(
        f"{k}={'***' if _SECRET.search(k) else v}"
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
    )
    return urlunsplit(parts._replace(query=query))


def _default_client_id() -> str:
    host = _CLIENT_ID_CHARS.sub("-", socket.gethostname())[:40] or "host"
    return f"tidings-{host}-{os.getpid()}"


# errors --------------------------------------------------------------------------------------


def _kafka_error(exc: BaseException) -> ck.KafkaError | None:
    if isinstance(exc, ck.KafkaException) and exc.args and isinstance(exc.args[0], ck.KafkaError):
        return exc.args[0]
    return None


def _code(exc: BaseException) -> int | None:
    err = _kafka_error(exc)
    return None if err is None else err.code()


def _describe(err: ck.KafkaError | BaseException | None) -> str:
    if isinstance(err, BaseException):
        err = _kafka_error(err) or err
    if isinstance(err, ck.KafkaError):
        return f"{err.str()} ({err.name()})"
    return str(err)


def _earliest() -> OffsetSpec:
    spec: OffsetSpec = OffsetSpec.earliest()  # type: ignore[no-untyped-call]
    return spec


def _latest() -> OffsetSpec:
    spec: OffsetSpec = OffsetSpec.latest()  # type: ignore[no-untyped-call]
    return spec


def _at_time(ms: int) -> OffsetSpec:
    spec: OffsetSpec = OffsetSpec.for_timestamp(ms)
    return spec


def _record_size(record: Record) -> int:
    """Bytes a record counts against retention.bytes: key + value + headers (like Message.size)."""
    size = len(record.value) + (len(record.key) if record.key is not None else 0)
    for name, value in record.headers:
        size += len(name) + len(value)
    return size


def _ktp(tp: TopicPartition, offset: int = ck.OFFSET_INVALID) -> ck.TopicPartition:
    return ck.TopicPartition(tp.topic, tp.partition, offset)


def _tp(ktp: ck.TopicPartition) -> TopicPartition:
    return TopicPartition(ktp.topic, ktp.partition)


def _consume(consumer: ck.Consumer, count: int, timeout: float) -> list[ck.Message]:
    """Up to `count` messages: what is there now, else wait up to `timeout` for the first one
    (librdkafka's consume() would wait the whole timeout for `count` messages)."""
    messages = consumer.consume(count, 0)
    if messages:
        return messages
    first = consumer.poll(timeout)
    if first is None:
        return []
    return [first, *consumer.consume(count - 1, 0)] if count > 1 else [first]


def _names(tps: Iterable[TopicPartition]) -> str:
    return ", ".join(sorted(str(tp) for tp in tps))


# producer ------------------------------------------------------------------------------------


class _Delivery:
    """The delivery reports of one publish call. Reports arrive on the producer's polling
    thread; the call's future is resolved on its event loop once every report arrived."""

    def __init__(self, loop: asyncio.AbstractEventLoop, count: int) -> None:
        self._loop = loop
        self.future: asyncio.Future[None] = loop.create_future()
        self.results: list[Published | None] = [None] * count
        self.error: ck.KafkaError | None = None
        self._pending = count
        self._lock = threading.Lock()

    def report(self, index: int, err: ck.KafkaError | None, message: ck.Message) -> None:
        with self._lock:
            if err is not None:
                if self.error is None:
                    self.error = err
            else:
                partition, offset = message.partition(), message.offset()
                assert partition is not None and offset is not None
                self.results[index] = Published(partition, offset)
            self._pending -= 1
            done = self._pending == 0
        if done:
            self._resolve()

    def abandon(self, count: int) -> None:
        """`count` messages were never produced: expect no report for them."""
        with self._lock:
            self._pending -= count
            done = self._pending == 0
        if done:
            self._resolve()

    def _resolve(self) -> None:
        def finish() -> None:
            if not self.future.done():
                self.future.set_result(None)

        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting
            self._loop.call_soon_threadsafe(finish)


class _ProducerThread:
    """The broker's producer and the thread that serves its delivery reports."""

    def __init__(self, config: dict[str, Any], flush_timeout: float) -> None:
        self.fatal: ck.KafkaError | None = None
        self._flush_timeout = flush_timeout
        self._last_error = 0.0
        self.producer = ck.Producer({**config, "error_cb": self._on_error})
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="tidings-kafka-producer", daemon=True
        )
        self._thread.start()

    def _on_error(self, err: ck.KafkaError) -> None:
        if err.fatal():
            self.fatal = err
            log.error("kafka producer: fatal error %s; a new producer is created", _describe(err))
        elif time.monotonic() - self._last_error > 10:
            self._last_error = time.monotonic()
            log.warning("kafka producer: %s", _describe(err))

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.producer.poll(0.1)
            except Exception:
                log.exception("kafka producer: delivery report handling failed")
        left = self.producer.flush(self._flush_timeout)
        if left:
            log.error("kafka producer: %d message(s) still undelivered at close", left)

    def close(self) -> None:
        """Deliver what is pending (bounded by the message timeout), then stop."""
        self._stop.set()
        self._thread.join()


# broker --------------------------------------------------------------------------------------


class KafkaBroker(Broker, CanRead):
    """A connection to a Kafka cluster. Safe to share between the tasks of one event loop.

    Creating it does not contact Kafka; the first operation does, and raises StorageError naming
    the bootstrap servers if they do not answer within `request_timeout`."""

    def __init__(self, url: str, **options: Any) -> None:
        self.settings = parse_settings(url, options)
        self.url = self.settings.url
        self.bootstrap_servers = self.settings.bootstrap
        self.max_message_bytes = self.settings.max_message_bytes
        self.request_timeout = self.settings.request_timeout
        try:
            self.client = AdminClient(dict(self.settings.common))
        except (ck.KafkaException, ValueError, TypeError) as exc:
            raise ConfigError(f"invalid kafka settings: {_describe(exc)}") from None
        self._admin = KafkaAdmin(self)
        self._producer: _ProducerThread | None = None
        self._producer_lock = threading.Lock()
        self._partitions: dict[str, tuple[int, float]] = {}
        self._session_bounds: tuple[int, int] | None = None
        self._session_warned: set[float] = set()
        self._reader_pool = ThreadPoolExecutor(1, thread_name_prefix="tidings-kafka-read")
        self._reader: ck.Consumer | None = None
        self._consumers: list[KafkaConsumer] = []
        self._closed = False

    def __repr__(self) -> str:
        return f"KafkaBroker({self.url!r})"

    @property
    def admin(self) -> Admin:
        return self._admin

    # publishing ------------------------------------------------------------------------

    async def publish(self, topic: str, messages: Sequence[Message]) -> list[Published]:
        """Produce `messages` and wait for every delivery report (see the module docs)."""
        self._check_open()
        if not messages:
            return []
        check_sizes(topic, messages, self.max_message_bytes)
        count = await self.partition_count(topic)
        partitions: list[int] = []
        for message in messages:
            if message.partition is not None:
                if not 0 <= message.partition < count:
                    count = await self.partition_count(topic, refresh=True)
                    if not 0 <= message.partition < count:
                        raise UnknownTopicError(
                            f"topic {topic!r} has no partition {message.partition} (it has {count})"
                        )
                partitions.append(message.partition)
            elif message.key is not None:
                partitions.append(partition_for_key(message.key, count))
            else:
                partitions.append(-1)
        producer = self._get_producer()
        delivery = _Delivery(asyncio.get_running_loop(), len(messages))
        produced = 0
        try:
            for index, (message, partition) in enumerate(zip(messages, partitions, strict=True)):
                while True:
                    try:
                        producer.produce(
                            topic,
                            message.value,
                            message.key,
                            partition,
                            on_delivery=functools.partial(delivery.report, index),
                            headers=list(message.headers) if message.headers else None,
                        )
                        break
                    except BufferError:  # librdkafka's queue is full: let it drain
                        await asyncio.sleep(0.005)
                produced += 1
                if produced % 1000 == 0:
                    await asyncio.sleep(0)
        except BaseException as exc:
            delivery.abandon(len(messages) - produced)
            if produced:
                await asyncio.shield(delivery.future)
            if isinstance(exc, ck.KafkaException):
                raise self._publish_error(topic, _kafka_error(exc) or exc) from None
            raise
        await asyncio.shield(delivery.future)
        if delivery.error is not None:
            written = sum(p is not None for p in delivery.results)
            error = self._publish_error(topic, delivery.error, written, len(messages))
            if not isinstance(error, UnknownTopicError):
                try:  # was the topic deleted meanwhile?
                    await self.partition_count(topic, refresh=True)
                except UnknownTopicError:
                    raise UnknownTopicError(
                        f"publish to topic {topic!r} failed: the topic does not exist "
                        f"({_describe(delivery.error)}; {written} of {len(messages)} "
                        "messages were written)"
                    ) from None
                except StorageError:
                    pass
            raise error
        return [p for p in delivery.results if p is not None]

    def _publish_error(
        self, topic: str, err: ck.KafkaError | BaseException, written: int = 0, total: int = 0
    ) -> Exception:
        code = err.code() if isinstance(err, ck.KafkaError) else None
        text = _describe(err)
        if total:
            text += f"; {written} of {total} messages were written"
        if code in _UNKNOWN_TOPIC:
            self._partitions.pop(topic, None)
            return UnknownTopicError(f"publish to topic {topic!r} failed: {text}")
        if code in _TOO_LARGE:
            return MessageTooLargeError(
                f"publish to topic {topic!r} failed: Kafka refused a message as too large: {text}"
            )
        return StorageError(
            f"publish to topic {topic!r} on Kafka at {self.bootstrap_servers} failed: {text}"
        )

    def _get_producer(self) -> ck.Producer:
        with self._producer_lock:
            current = self._producer
            if current is not None and current.fatal is None:
                return current.producer
            if current is not None:
                threading.Thread(target=current.close, daemon=True).start()
            config: dict[str, Any] = {
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "partitioner": "murmur2_random",
                "message.timeout.ms": 120_000,
                "message.max.bytes": max(1_000_000, self.max_message_bytes + 65_536),
                "logger": _rdkafka_log,
                **self.settings.common,
                **self.settings.producer,
            }
            timeout = float(config["message.timeout.ms"]) / 1000 + 5
            try:
                self._producer = _ProducerThread(config, timeout)
            except (ck.KafkaException, ValueError, TypeError) as exc:
                raise ConfigError(f"invalid kafka producer settings: {_describe(exc)}") from None
            return self._producer.producer

    # reading ---------------------------------------------------------------------------

    async def read(self, tp: TopicPartition, offset: int, max_records: int) -> list[Record]:
        """Up to `max_records` records from `offset` on, read by a group-less consumer (no
        offsets are committed); starts at the oldest retained record if `offset` is gone."""
        self._check_open()
        count = await self.partition_count(tp.topic)
        if not 0 <= tp.partition < count:
            raise UnknownTopicError(f"{tp} does not exist (topic {tp.topic!r} has {count})")
        if max_records < 1:
            return []
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._reader_pool, self._read_blocking, tp, offset, max_records, None
        )

    def _read_blocking(
        self, tp: TopicPartition, offset: int, max_records: int, stop: int | None
    ) -> list[Record]:
        """On the reader thread: records with offsets >= `offset` (and < `stop`)."""
        reader = self._reader
        if reader is None:
            config = {
                "logger": _rdkafka_log,
                **self.settings.common,
                **self.settings.consumer,
                "group.id": f"tidings-reader-{os.getpid()}",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "enable.partition.eof": True,
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": 20,  # reach end-of-partition quickly
            }
            try:
                reader = self._reader = ck.Consumer(config)
            except (ck.KafkaException, ValueError, TypeError) as exc:
                raise ConfigError(f"invalid kafka consumer settings: {_describe(exc)}") from None
        try:
            low, high = reader.get_watermark_offsets(_ktp(tp), timeout=self.request_timeout)
        except ck.KafkaException as exc:
            raise self.error(exc, f"reading {tp}") from None
        end = high if stop is None else min(high, stop)
        if offset >= end:
            return []
        reader.assign([_ktp(tp, max(offset, low))])
        records: list[Record] = []
        deadline = time.monotonic() + self.request_timeout
        try:
            while len(records) < max_records:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise StorageError(
                        f"reading {tp} from Kafka at {self.bootstrap_servers} timed out after "
                        f"{self.request_timeout:g}s"
                    )
                batch = _consume(reader, min(1000, max_records - len(records)), min(remaining, 0.2))
                for message in batch:
                    err = message.error()
                    if err is not None:
                        if err.code() == ck.KafkaError._PARTITION_EOF:
                            return records
                        if err.code() in _UNKNOWN_TOPIC:
                            raise UnknownTopicError(f"{tp} does not exist: {_describe(err)}")
                        if err.fatal():
                            raise StorageError(f"reading {tp} failed: {_describe(err)}")
                        continue
                    record = to_record(message)
                    if record.offset >= end and stop is not None:
                        return records
                    records.append(record)
                    if len(records) >= max_records or record.offset >= end - 1:
                        return records
            return records
        finally:
            reader.unassign()

    # subscribing -----------------------------------------------------------------------

    def subscribe(
        self,
        group: str,
        topics: Sequence[str],
        *,
        auto_offset_reset: OffsetReset | str = OffsetReset.EARLIEST,
        max_batch: int = 1000,
        session_timeout: float = 10.0,
    ) -> Consumer:
        """A member of consumer group `group` (see the module docs for the Kafka specifics)."""
        self._check_open()
        consumer = KafkaConsumer(
            self,
            group,
            topics,
            auto_offset_reset=auto_offset_reset,
            max_batch=max_batch,
            session_timeout=session_timeout,
        )
        self._consumers = [c for c in self._consumers if not c.closed]
        self._consumers.append(consumer)
        return consumer

    async def close(self) -> None:
        """Close consumers (committing acked offsets), deliver pending publishes, release."""
        if self._closed:
            return
        self._closed = True
        await asyncio.gather(*(c.close() for c in self._consumers), return_exceptions=True)
        producer, self._producer = self._producer, None
        if producer is not None:
            await asyncio.to_thread(producer.close)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._reader_pool, self._close_reader)
        self._reader_pool.shutdown(wait=False)

    def _close_reader(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            with contextlib.suppress(Exception):
                reader.close()

    def _check_open(self) -> None:
        if self._closed:
            raise BrokerClosedError("broker is closed")

    # metadata and offsets (shared by the admin and consumers) --------------------------

    def error(self, exc: BaseException, action: str) -> Exception:
        """A tidings error for a librdkafka failure while doing `action`."""
        code = _code(exc)
        if code in _UNREACHABLE:
            return StorageError(
                f"Kafka at {self.bootstrap_servers} did not answer {action} within "
                f"{self.request_timeout:g}s ({_describe(exc)}); is it running and reachable?"
            )
        return StorageError(f"Kafka at {self.bootstrap_servers}: {action} failed: {_describe(exc)}")

    async def metadata(self, topic: str | None = None) -> ClusterMetadata:
        """Cluster metadata (of one topic, or of all). Raises StorageError if unreachable."""
        try:
            return await asyncio.to_thread(
                self.client.list_topics, topic, timeout=self.request_timeout
            )
        except ck.KafkaException as exc:
            raise self.error(exc, "a metadata request") from None

    async def partition_count(self, topic: str, *, refresh: bool = False) -> int:
        """The topic's partition count (cached for METADATA_TTL). Raises UnknownTopicError."""
        cached = self._partitions.get(topic)
        if cached is not None and not refresh and cached[1] > time.monotonic():
            return cached[0]
        md = await self.metadata(topic)
        info = md.topics.get(topic)
        if info is None or (info.error is not None and info.error.code() in _UNKNOWN_TOPIC):
            self._partitions.pop(topic, None)
            raise UnknownTopicError(f"topic {topic!r} does not exist")
        if info.error is not None and not info.partitions:
            raise StorageError(f"metadata of topic {topic!r}: {_describe(info.error)}")
        count = len(info.partitions)
        self._partitions[topic] = (count, time.monotonic() + METADATA_TTL)
        return count

    async def list_offsets(
        self, specs: Mapping[TopicPartition, OffsetSpec]
    ) -> dict[TopicPartition, int]:
        """ListOffsets for each partition (-1 for a timestamp after the last record). Retries
        while partition leaders are not known yet (just after a topic was created)."""
        result: dict[TopicPartition, int] = {}
        pending = dict(specs)
        deadline = time.monotonic() + self.request_timeout
        while pending:
            futures = self.client.list_offsets(
                {_ktp(tp): spec for tp, spec in pending.items()},
                isolation_level=ck.IsolationLevel.READ_COMMITTED,  # what consumers can read
                request_timeout=self.request_timeout,
            )
            retry: dict[TopicPartition, OffsetSpec] = {}
            for ktp, future in futures.items():
                tp = _tp(ktp)
                try:
                    info = await asyncio.wrap_future(future)
                except ck.KafkaException as exc:
                    code = _code(exc)
                    if code in _RETRY_LIST_OFFSETS and time.monotonic() < deadline:
                        retry[tp] = pending[tp]
                        continue
                    if code == ck.KafkaError.UNKNOWN_TOPIC_OR_PART:
                        raise UnknownTopicError(f"{tp} does not exist") from None
                    raise self.error(exc, f"listing offsets of {tp}") from None
                result[tp] = int(info.offset)
            pending = retry
            if pending:
                await asyncio.sleep(0.1)
        return result

    async def watermarks(
        self, tps: Collection[TopicPartition]
    ) -> dict[TopicPartition, tuple[int, int]]:
        """(start offset, end offset) per partition."""
        if not tps:
            return {}
        starts, ends = await asyncio.gather(
            self.list_offsets(dict.fromkeys(tps, _earliest())),
            self.list_offsets(dict.fromkeys(tps, _latest())),
        )
        return {tp: (starts[tp], ends[tp]) for tp in tps}

    async def resolve(
        self, tps: Collection[TopicPartition], to: SeekTo
    ) -> dict[TopicPartition, int]:
        """The offset `to` designates in each partition (clamped to the retained range)."""
        if to.earliest:
            return await self.list_offsets(dict.fromkeys(tps, _earliest()))
        if to.latest:
            return await self.list_offsets(dict.fromkeys(tps, _latest()))
        if to.timestamp is not None:
            ms = int(to.timestamp.timestamp() * 1000)
            found, marks = await asyncio.gather(
                self.list_offsets(dict.fromkeys(tps, _at_time(ms))),
                self.watermarks(tps),
            )
            return {
                tp: marks[tp][1] if found[tp] < 0 else max(found[tp], marks[tp][0]) for tp in tps
            }
        if to.offset is not None:
            marks = await self.watermarks(tps)
            return {tp: min(max(to.offset, marks[tp][0]), marks[tp][1]) for tp in tps}
        raise ConfigError("SeekTo needs earliest, latest, timestamp or offset")

    def group_id(self, group: str) -> str:
        """The Kafka group id of tidings group `group` (with the `group_prefix` option)."""
        return self.settings.group_prefix + group

    async def session_timeout_ms(self, seconds: float) -> int:
        """`seconds` within the broker's group.min/max.session.timeout.ms."""
        wanted = int(seconds * 1000)
        if self._session_bounds is None:
            low, high = 6000, 1_800_000
            try:
                md = await self.metadata()
                broker_id = str(min(md.brokers)) if md.brokers else "0"
                resource = ConfigResource(ResourceType.BROKER, broker_id)
                futures = self.client.describe_configs(
                    [resource], request_timeout=self.request_timeout
                )
                entries = await asyncio.wrap_future(futures[resource])
                low = int(entries["group.min.session.timeout.ms"].value)
                high = int(entries["group.max.session.timeout.ms"].value)
            except (ck.KafkaException, KeyError, ValueError, TypeError) as exc:
                log.debug("could not read the group session bounds (%s); assuming defaults", exc)
            self._session_bounds = (low, high)
        low, high = self._session_bounds
        if wanted < low:
            if seconds in self._session_warned:
                return low
            self._session_warned.add(seconds)
            log.warning(
                "session_timeout %.1fs is below the Kafka broker's group.min.session.timeout.ms "
                "(%d ms); using %.1fs",
                seconds,
                low,
                low / 1000,
            )
            return low
        return min(wanted, high)


# admin ---------------------------------------------------------------------------------------


class KafkaAdmin(Admin, CanInspect, CanResetOffsets, CanEnforceRetention):
    """Topic and group administration through Kafka's admin API (see the module docs)."""

    def __init__(self, broker: KafkaBroker) -> None:
        self._broker = broker

    @property
    def _client(self) -> AdminClient:
        return self._broker.client

    @property
    def _timeout(self) -> float:
        return self._broker.request_timeout

    async def create_topic(
        self,
        name: str,
        partitions: int = 1,
        *,
        retention_ms: int | None = None,
        retention_bytes: int | None = None,
        exist_ok: bool = False,
    ) -> TopicInfo:
        """Create a topic with the durability settings of the module docs ("Topics") and wait
        until every partition has a leader. With `exist_ok`, an existing topic is returned
        unchanged."""
        validate_topic_name(name)
        validate_partitions(partitions)
        config: dict[str, str] = {}
        for label, key, value in (
            ("retention_ms", "retention.ms", retention_ms),
            ("retention_bytes", "retention.bytes", retention_bytes),
        ):
            if validate_retention(label, value) is not None:
                config[key] = str(value)
        replicas = min(3, await self._brokers())
        config["min.insync.replicas"] = str(min(2, replicas))
        futures = self._client.create_topics(
            [NewTopic(name, partitions, replicas, config=config)],
            request_timeout=self._timeout,
            operation_timeout=self._timeout,
        )
        try:
            await asyncio.wrap_future(futures[name])
        except ck.KafkaException as exc:
            code = _code(exc)
            if code == ck.KafkaError.TOPIC_ALREADY_EXISTS:
                if exist_ok:
                    return await self._describe_when_ready(name, None)
                raise TopicExistsError(f"topic {name!r} already exists") from None
            if code in {
                ck.KafkaError.INVALID_PARTITIONS,
                ck.KafkaError.INVALID_CONFIG,
                ck.KafkaError.POLICY_VIOLATION,
                ck.KafkaError.INVALID_REPLICATION_FACTOR,
                ck.KafkaError.TOPIC_EXCEPTION,
            }:
                raise TopicError(f"Kafka refused topic {name!r}: {_describe(exc)}") from None
            raise self._broker.error(exc, f"creating topic {name!r}") from None
        return await self._describe_when_ready(name, partitions)

    async def _brokers(self) -> int:
        """How many brokers the cluster's metadata lists."""
        future = self._client.describe_cluster(request_timeout=self._timeout)
        try:
            cluster = await asyncio.wrap_future(future)
        except ck.KafkaException as exc:
            raise self._broker.error(exc, "describing the cluster") from None
        return len(cluster.nodes)

    async def durability_warnings(self, topics: Sequence[str]) -> list[str]:
        """For each of `topics` that exists, a sentence per setting under which an acknowledged
        publish can be lost (see the module docs, "Topics")."""
        md = await self._broker.metadata()
        names = [n for n in dict.fromkeys(topics) if n in md.topics and md.topics[n].error is None]
        configs = await self._configs(names, skip_missing=True)
        warnings = []
        for name, config in configs.items():
            partitions = md.topics[name].partitions.values()
            replicas = min((len(p.replicas) for p in partitions), default=0)
            wanted = min(3, len(md.brokers))
            if replicas < wanted:
                warnings.append(
                    f"topic {name!r} has replication factor {replicas} on a cluster of "
                    f"{len(md.brokers)} brokers: losing {replicas} of them loses acknowledged "
                    f"events; recreate it with replication factor {wanted}"
                )
            entry = config.get("min.insync.replicas")
            insync = int(entry.value) if entry is not None and entry.value is not None else 1
            if insync < min(2, replicas):
                warnings.append(
                    f"topic {name!r} has min.insync.replicas={insync} with replication factor "
                    f"{replicas}: a publish is acknowledged when one broker has it, and lost if "
                    f"that broker fails before another copies it; set min.insync.replicas="
                    f"{min(2, replicas)}"
                )
            entry = config.get("unclean.leader.election.enable")
            if entry is not None and str(entry.value).lower() == "true":
                warnings.append(
                    f"topic {name!r} has unclean.leader.election.enable=true: a replica that is "
                    "out of sync can become leader and drop acknowledged events; set it to false"
                )
        return warnings

    async def _describe_when_ready(self, name: str, partitions: int | None) -> TopicInfo:
        """Describe `name` once the broker's metadata shows it with leaders (KRaft applies a
        new topic asynchronously after CreateTopics returns)."""
        deadline = time.monotonic() + self._timeout
        while True:
            md = await self._broker.metadata(name)
            info = md.topics.get(name)
            ready = (
                info is not None
                and info.error is None
                and info.partitions
                and (partitions is None or len(info.partitions) == partitions)
                and all(p.leader >= 0 for p in info.partitions.values())
            )
            if ready:
                return await self.describe_topic(name)
            if time.monotonic() > deadline:
                raise StorageError(
                    f"topic {name!r} was created but has no leader after {self._timeout:g}s"
                )
            await asyncio.sleep(0.05)

    async def list_topics(self) -> list[TopicInfo]:
        """Every topic except Kafka's internal ones (names starting with `__`)."""
        md = await self._broker.metadata()
        names = sorted(
            n for n, t in md.topics.items() if not n.startswith("__") and t.error is None
        )
        return await self._infos(names, md)

    async def describe_topic(self, name: str) -> TopicInfo:
        """Partitions with start (low watermark) and end (high watermark) offsets, and the
        topic's effective retention (None when unlimited)."""
        md = await self._broker.metadata(name)
        info = md.topics.get(name)
        if info is None or (info.error is not None and info.error.code() in _UNKNOWN_TOPIC):
            raise UnknownTopicError(f"topic {name!r} does not exist")
        return (await self._infos([name], md))[0]

    async def _infos(self, names: Sequence[str], md: ClusterMetadata) -> list[TopicInfo]:
        if not names:
            return []
        tps = [TopicPartition(n, p) for n in names for p in sorted(md.topics[n].partitions)]
        marks, configs = await asyncio.gather(self._broker.watermarks(tps), self._retention(names))
        return [
            TopicInfo(
                name,
                tuple(
                    PartitionInfo(p, *marks[TopicPartition(name, p)])
                    for p in sorted(md.topics[name].partitions)
                ),
                configs[name][0],
                configs[name][1],
            )
            for name in names
        ]

    async def _configs(
        self, names: Sequence[str], *, skip_missing: bool = False
    ) -> dict[str, Mapping[str, Any]]:
        """The effective configuration entries (ConfigEntry by name) of each topic. Raises
        UnknownTopicError for a topic that does not exist, unless `skip_missing`."""
        if not names:
            return {}
        resources = [ConfigResource(ResourceType.TOPIC, n) for n in names]
        futures = self._client.describe_configs(resources, request_timeout=self._timeout)
        result: dict[str, Mapping[str, Any]] = {}
        for resource in resources:
            try:
                result[resource.name] = await asyncio.wrap_future(futures[resource])
            except ck.KafkaException as exc:
                if _code(exc) not in _UNKNOWN_TOPIC:
                    raise self._broker.error(exc, f"describing topic {resource.name!r}") from None
                if not skip_missing:
                    raise UnknownTopicError(f"topic {resource.name!r} does not exist") from None
        return result

    async def _retention(
        self, names: Sequence[str]
    ) -> dict[str, tuple[int | None, int | None, bool]]:
        """(retention.ms, retention.bytes, cleanup.policy includes delete) per topic."""
        result: dict[str, tuple[int | None, int | None, bool]] = {}
        for name, entries in (await self._configs(names)).items():

            def number(key: str, entries: Mapping[str, Any] = entries) -> int | None:
                entry = entries.get(key)
                if entry is None or entry.value is None:
                    return None
                value = int(entry.value)
                return None if value < 0 else value

            policy = entries.get("cleanup.policy")
            deletes = policy is None or "delete" in str(policy.value)
            result[name] = (number("retention.ms"), number("retention.bytes"), deletes)
        return result

    async def list_groups(self) -> list[str]:
        future = self._client.list_consumer_groups(request_timeout=self._timeout)
        try:
            listed = await asyncio.wrap_future(future)
        except ck.KafkaException as exc:
            raise self._broker.error(exc, "listing consumer groups") from None
        prefix = self._broker.settings.group_prefix
        return sorted(
            g.group_id.removeprefix(prefix) for g in listed.valid if g.group_id.startswith(prefix)
        )

    async def describe_group(self, name: str) -> GroupInfo:
        """Members with their assigned partitions, and per partition of every topic the group
        has committed to or is assigned: committed offset, start/end offsets, lag, owner.

        Raises ConfigError if the group has neither members nor committed offsets."""
        members, committed = await asyncio.gather(self._members(name), self._committed(name))
        if not members and not committed:
            raise ConfigError(f"consumer group {name!r} does not exist")
        owners = {tp: m.member_id for m in members for tp in m.partitions}
        topics = {tp.topic for tp in committed} | {tp.topic for tp in owners}
        md = await self._broker.metadata()
        tps = [
            TopicPartition(t, p)
            for t in sorted(topics)
            if t in md.topics and md.topics[t].error is None
            for p in sorted(md.topics[t].partitions)
        ]
        marks = await self._broker.watermarks(tps)
        lags = tuple(
            PartitionLag(tp.topic, tp.partition, committed.get(tp), *marks[tp], owners.get(tp))
            for tp in tps
        )
        return GroupInfo(name, tuple(members), lags)

    async def _members(self, group: str) -> list[MemberInfo]:
        group_id = self._broker.group_id(group)
        futures = self._client.describe_consumer_groups([group_id], request_timeout=self._timeout)
        try:
            description = await asyncio.wrap_future(futures[group_id])
        except ck.KafkaException as exc:
            if _code(exc) == ck.KafkaError.GROUP_ID_NOT_FOUND:
                return []
            raise self._broker.error(exc, f"describing group {group!r}") from None
        members = []
        for m in sorted(description.members or [], key=lambda m: m.member_id):
            assigned = m.assignment.topic_partitions if m.assignment is not None else []
            parts = tuple(
                sorted((_tp(p) for p in assigned), key=lambda tp: (tp.topic, tp.partition))
            )
            members.append(
                MemberInfo(m.member_id, m.client_id, tuple(sorted({p.topic for p in parts})), parts)
            )
        return members

    async def _committed(self, group: str) -> dict[TopicPartition, int]:
        group_id = self._broker.group_id(group)
        request = ck.ConsumerGroupTopicPartitions(group_id)
        futures = self._client.list_consumer_group_offsets([request], request_timeout=self._timeout)
        try:
            result = await asyncio.wrap_future(futures[group_id])
        except ck.KafkaException as exc:
            if _code(exc) == ck.KafkaError.GROUP_ID_NOT_FOUND:
                return {}
            raise self._broker.error(exc, f"listing offsets of group {group!r}") from None
        return {
            _tp(p): p.offset
            for p in result.topic_partitions or []
            if p.offset >= 0 and p.error is None
        }

    async def reset_offsets(
        self, group: str, topics: Sequence[str], to: SeekTo
    ) -> dict[TopicPartition, int]:
        """Set the group's committed offsets (AlterConsumerGroupOffsets); refused with
        ConfigError while the group has members."""
        members = await self._members(group)
        if members:
            raise ConfigError(
                f"consumer group {group!r} has {len(members)} live member(s); stop them "
                "before resetting its offsets"
            )
        if not topics:
            raise ConfigError("reset_offsets needs at least one topic")
        tps: list[TopicPartition] = []
        for topic in dict.fromkeys(topics):
            count = await self._broker.partition_count(topic, refresh=True)
            tps.extend(TopicPartition(topic, p) for p in range(count))
        offsets = await self._broker.resolve(tps, to)
        group_id = self._broker.group_id(group)
        request = ck.ConsumerGroupTopicPartitions(
            group_id, [_ktp(tp, offset) for tp, offset in offsets.items()]
        )
        futures = self._client.alter_consumer_group_offsets(
            [request], request_timeout=self._timeout
        )
        try:
            result = await asyncio.wrap_future(futures[group_id])
        except ck.KafkaException as exc:
            if _code(exc) in {ck.KafkaError.UNKNOWN_MEMBER_ID, ck.KafkaError.NON_EMPTY_GROUP}:
                raise ConfigError(
                    f"consumer group {group!r} has live members; stop them before resetting "
                    f"its offsets ({_describe(exc)})"
                ) from None
            raise self._broker.error(exc, f"resetting offsets of group {group!r}") from None
        failed = [p for p in result.topic_partitions or [] if p.error is not None]
        if failed:
            raise StorageError(
                f"resetting offsets of group {group!r} failed for "
                f"{_names(_tp(p) for p in failed)}: {_describe(failed[0].error)}"
            )
        return offsets

    async def enforce_retention(self) -> int:
        """Delete records past their topic's retention now (DeleteRecords; see the module docs
        for how this relates to Kafka's own cleaner). Returns how many records were deleted."""
        md = await self._broker.metadata()
        names = sorted(
            n for n, t in md.topics.items() if not n.startswith("__") and t.error is None
        )
        if not names:
            return 0
        retention = await self._retention(names)
        by_age: dict[TopicPartition, OffsetSpec] = {}
        by_size: dict[TopicPartition, int] = {}
        now = int(time.time() * 1000)
        for name in names:
            ms, size, deletes = retention[name]
            if not deletes:
                continue
            for p in md.topics[name].partitions:
                tp = TopicPartition(name, p)
                if ms is not None:
                    by_age[tp] = _at_time(now - ms)
                if size is not None:
                    by_size[tp] = size
        tps = set(by_age) | set(by_size)
        if not tps:
            return 0
        marks, first_young = await asyncio.gather(
            self._broker.watermarks(tps), self._broker.list_offsets(by_age)
        )
        cuts: dict[TopicPartition, int] = {}
        for tp, offset in first_young.items():
            cuts[tp] = marks[tp][1] if offset < 0 else offset
        loop = asyncio.get_running_loop()
        for tp, limit in by_size.items():
            start, end = marks[tp]
            if end - start <= 0:
                continue
            cut = await loop.run_in_executor(
                self._broker._reader_pool, self._size_cut, tp, start, end, limit
            )
            cuts[tp] = max(cuts.get(tp, start), cut)
        doomed = {tp: cut for tp, cut in cuts.items() if cut > marks[tp][0]}
        if not doomed:
            return 0
        futures = self._client.delete_records(
            [_ktp(tp, cut) for tp, cut in doomed.items()],
            request_timeout=self._timeout,
            operation_timeout=self._timeout,
        )
        removed = 0
        for ktp, future in futures.items():
            tp = _tp(ktp)
            try:
                deleted = await asyncio.wrap_future(future)
            except ck.KafkaException as exc:
                raise self._broker.error(exc, f"deleting records of {tp}") from None
            removed += max(0, int(deleted.low_watermark) - marks[tp][0])
        return removed

    def _size_cut(self, tp: TopicPartition, start: int, end: int, limit: int) -> int:
        """On the reader thread: the first offset to keep so that the newest records fit in
        `limit` bytes (at least one record is kept). Reads back from the end in growing
        windows, so the cost is about `limit` bytes of reading."""
        kept = 0
        cut = end
        position = end
        window = 256
        while position > start:
            low = max(start, position - window)
            records = self._broker._read_blocking(tp, low, position - low, position)
            for record in reversed(records):
                size = _record_size(record)
                if cut < end and kept + size > limit:
                    return cut
                kept += size
                cut = record.offset
            position = low
            window *= 2
        return start


# consumer ------------------------------------------------------------------------------------


class KafkaConsumer(Consumer, CanSeek):
    """A member of a Kafka consumer group. Create through `KafkaBroker.subscribe`.

    The asyncio side (fetch/ack/nack/commit/seek) and the polling thread share the state below
    under `_lock`; only the polling thread touches the librdkafka consumer."""

    def __init__(
        self,
        broker: KafkaBroker,
        group: str,
        topics: Sequence[str],
        *,
        auto_offset_reset: OffsetReset | str,
        max_batch: int,
        session_timeout: float,
    ) -> None:
        self._reset = check_subscription(
            group, topics, auto_offset_reset, max_batch, session_timeout
        )
        self._broker = broker
        self.group = group
        self.topics = tuple(dict.fromkeys(topics))
        self._max_batch = max_batch
        # Pausing a partition drops librdkafka's prefetched messages for it, so pause only when
        # far ahead of the application: a limit of one batch made consumption 4x slower.
        self._buffer_limit = max(8 * max_batch, 5000)
        self._max_buffer_bytes = broker.settings.max_buffer_bytes
        self._partition_buffer_bytes = max(1, self._max_buffer_bytes // 4)
        self._session = session_timeout
        self._timeout = broker.request_timeout
        self._revoke_timeout = broker.settings.revoke_timeout
        self.member_id = ""

        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._owned: set[TopicPartition] = set()
        self._buffers: dict[TopicPartition, PartitionBuffer] = {}
        # whether the last acked batch's records were read: the polling thread then builds the
        # records of what it buffers (see _kafka_records); set on the loop, read by the thread
        self._build_ahead = False
        self._inflight: dict[TopicPartition, Batch] = {}
        self._acked: dict[TopicPartition, int] = {}
        self._revoking: set[TopicPartition] = set()
        self._seeks: dict[TopicPartition, int] = {}
        self._dropped: set[TopicPartition] = set()
        """Partitions that left with an acked offset not committed: the next commit() fails."""
        self._rotation = 0
        self._error: BaseException | None = None

        # polling thread only
        self._paused: set[TopicPartition] = set()
        self._commit_requests: queue.SimpleQueue[asyncio.Future[None]] = queue.SimpleQueue()
        self._waiting_commits: list[tuple[asyncio.Future[None], float]] = []
        self._last_error_log: dict[int, float] = {}

        self._state = "new"
        self._closing = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._wakeup: asyncio.Event | None = None
        self._joined: asyncio.Future[None] | None = None
        self._stopped: asyncio.Future[None] | None = None
        self._start_lock: asyncio.Lock | None = None

    @property
    def closed(self) -> bool:
        return self._state == "closed"

    # lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Check the topics exist, join the group and wait (bounded) for the first assignment."""
        if self._state == "started":
            return
        if self._state == "closed":
            raise BrokerClosedError("consumer is closed")
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._state != "new":
                self._raise_if_failed()
                return
            for topic in self.topics:
                await self._broker.partition_count(topic, refresh=True)
            session_ms = await self._broker.session_timeout_ms(self._session)
            config = self._config(session_ms)
            loop = asyncio.get_running_loop()
            self._loop = loop
            self._loop_thread = threading.get_ident()
            self._wakeup = asyncio.Event()
            self._joined = loop.create_future()
            self._stopped = loop.create_future()
            self._thread = threading.Thread(
                target=self._run, args=(config,), name=f"tidings-kafka-{self.group}", daemon=True
            )
            self._state = "started"
            self._thread.start()
            join_timeout = self._revoke_timeout + session_ms / 1000
            try:
                await asyncio.wait_for(asyncio.shield(self._joined), join_timeout)
            except TimeoutError:
                log.warning(
                    "group %s: no assignment within %.0fs; partitions are claimed in the "
                    "background",
                    self.group,
                    join_timeout,
                )
            self._raise_if_failed()

    def _config(self, session_ms: int) -> dict[str, Any]:
        settings = self._broker.settings
        config: dict[str, Any] = {
            "heartbeat.interval.ms": max(100, min(1000, session_ms // 10)),
            "max.poll.interval.ms": MAX_POLL_INTERVAL_MS,
            **CONSUMER_DEFAULTS,
            "logger": _rdkafka_log,
            **settings.common,
            **settings.consumer,
            "group.id": self._broker.group_id(self.group),
            "group.protocol": "classic",
            "partition.assignment.strategy": "cooperative-sticky",
            "session.timeout.ms": session_ms,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": False,
            "auto.offset.reset": "earliest",
            "error_cb": self._on_client_error,
        }
        max_poll = int(config["max.poll.interval.ms"])
        if max_poll < session_ms or self._revoke_timeout * 1000 >= max_poll:
            raise ConfigError(
                f"max.poll.interval.ms ({max_poll}) must be >= the session timeout "
                f"({session_ms} ms) and > revoke_timeout ({self._revoke_timeout:g}s)"
            )
        return config

    async def close(self) -> None:
        """Commit acked offsets, leave the group (its partitions move at once). Idempotent."""
        if self._state == "closed":
            return
        started = self._state == "started"
        self._state = "closed"
        self._wake()
        if not started:
            return
        self._closing = True
        with self._cond:
            self._cond.notify_all()
        self._stop.set()
        assert self._stopped is not None
        limit = self._timeout + self._session + 5
        try:
            await asyncio.wait_for(asyncio.shield(self._stopped), limit)
        except TimeoutError:
            log.warning(
                "group %s: the Kafka consumer did not close within %.0fs", self.group, limit
            )
        with self._lock:
            self._owned.clear()
            self._buffers.clear()
            self._inflight.clear()
            self._acked.clear()

    # delivery ----------------------------------------------------------------------------

    async def fetch(self, timeout: float | None = None) -> Batch | None:
        await self.start()
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            # cleared before looking at any state: the polling thread skips waking a set event
            self._wakeup.clear()
            if self._state == "closed":
                raise BrokerClosedError("consumer is closed")
            self._raise_if_failed()
            batch = self._take()
            if batch is not None:
                return batch
            if deadline is None:
                await self._wakeup.wait()
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), remaining)

    def _take(self) -> Batch | None:
        with self._lock:
            ready = [
                tp
                for tp, buffer in self._buffers.items()
                if buffer
                and tp not in self._inflight
                and tp not in self._revoking
                and tp not in self._seeks
            ]
            if not ready:
                return None
            self._rotation += 1
            tp = ready[self._rotation % len(ready)]
            items = self._buffers[tp].take(self._max_batch)
            batch = Batch(tp.topic, tp.partition, KafkaRecords(tp.topic, tp.partition, items))
            self._inflight[tp] = batch
            return batch

    def ack(self, batch: Batch) -> None:
        self._ack(batch)

    def _ack(self, batch: Batch) -> bool:
        tp = batch.tp
        records = batch.records
        with self._cond:
            if self._inflight.get(tp) is not batch:
                return False
            assert isinstance(records, KafkaRecords)  # a batch of this consumer's
            del self._inflight[tp]
            self._acked[tp] = records.next_offset
            self._cond.notify_all()
        self._build_ahead = records.read
        self._wake()
        return True

    def nack(self, batch: Batch, offset: int | None = None) -> None:
        tp = batch.tp
        records = batch.records
        with self._cond:
            if self._inflight.get(tp) is not batch:
                return
            assert isinstance(records, KafkaRecords)  # a batch of this consumer's
            del self._inflight[tp]
            target = records.first_offset if offset is None else offset
            buffer = self._buffers.get(tp)
            if buffer is not None and records.first_offset <= target <= records.next_offset:
                # the batch's items and the buffer are consecutive: redeliver from memory
                # (offsets may have gaps: compaction, transaction markers)
                buffer.put_back([m for m in records.items if item_offset(m) >= target])
            elif buffer is not None:
                buffer.clear()
                self._seeks[tp] = target
            self._cond.notify_all()
        self._wake()

    async def commit(self, batch: Batch | None = None) -> None:
        if batch is not None and not self._ack(batch):
            with self._lock:
                owned = batch.tp in self._owned and batch.tp not in self._revoking
            if not owned:
                raise CommitFailedError(
                    f"group {self.group!r}: partition {batch.tp} is no longer owned by this "
                    f"member; offset {batch.next_offset} was not committed"
                )
        if self._state != "started":
            if self._state == "closed":
                raise BrokerClosedError("consumer is closed")
            return
        self._raise_if_failed()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._commit_requests.put(future)
        with self._cond:
            self._cond.notify_all()  # a revocation waiting for acks serves commits meanwhile
        await future

    async def seek(self, tp: TopicPartition, to: SeekTo) -> int:
        await self.start()
        self._check_owned(tp)
        offset = (await self._broker.resolve([tp], to))[tp]
        with self._cond:
            self._check_owned(tp)
            self._inflight.pop(tp, None)
            self._buffers[tp].clear()
            self._seeks[tp] = offset
            self._cond.notify_all()
        self._wake()
        return offset

    def _check_owned(self, tp: TopicPartition) -> None:
        if tp not in self._owned or tp in self._revoking:
            raise ConfigError(f"cannot seek {tp}: not owned by this member")

    def assignment(self) -> frozenset[TopicPartition]:
        with self._lock:
            return frozenset(self._owned)

    # asyncio plumbing ----------------------------------------------------------------------

    def _wake(self) -> None:
        loop, event = self._loop, self._wakeup
        if loop is None or event is None:
            return
        if threading.get_ident() == self._loop_thread:
            event.set()
        elif not event.is_set():
            # A set event means fetch() has not cleared it yet: it looks at the buffers after
            # clearing, so it sees what this thread has just buffered. No wake-up is needed.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(event.set)

    def _call(self, fn: Callable[..., object], *args: object) -> None:
        """Run `fn(*args)` on the event loop (from the polling thread)."""
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(fn, *args)

    def _settle(self, future: asyncio.Future[None] | None, error: BaseException | None) -> None:
        def settle() -> None:
            if future is None or future.done():
                return
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)

        self._call(settle)

    def _raise_if_failed(self) -> None:
        error = self._error
        if error is not None:
            raise error

    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        self._settle(self._joined, error)
        self._wake()

    # polling thread --------------------------------------------------------------------------

    def _run(self, config: dict[str, Any]) -> None:
        consumer: ck.Consumer | None = None
        try:
            try:
                consumer = ck.Consumer(config)
            except (ck.KafkaException, ValueError, TypeError) as exc:
                raise ConfigError(f"invalid kafka consumer settings: {_describe(exc)}") from None
            consumer.subscribe(
                list(self.topics),
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_lost,
            )
            next_commit = time.monotonic() + COMMIT_INTERVAL
            while not self._stop.is_set():
                self._serve(consumer)
                messages = _consume(consumer, 1000, POLL_TIMEOUT)
                if messages:
                    self._buffer(messages)
                if time.monotonic() >= next_commit:
                    next_commit = time.monotonic() + COMMIT_INTERVAL
                    with contextlib.suppress(CommitFailedError, StorageError):
                        self._commit_acked(consumer)
            self._final_commit(consumer)
        except BaseException as exc:
            if not isinstance(exc, ConfigError | StorageError):
                log.exception("group %s: the Kafka consumer failed", self.group)
                exc = StorageError(f"group {self.group!r}: the Kafka consumer failed: {exc}")
            self._fail(exc)
        finally:
            self._closing = True
            if consumer is not None:
                try:
                    # librdkafka (2.16) skips the LeaveGroup in close() for a cooperative member
                    # without partitions; an explicit unsubscribe first always leaves at once
                    consumer.unsubscribe()
                    consumer.close()
                except Exception as exc:
                    log.warning("group %s: closing the Kafka consumer: %s", self.group, exc)
            closed = BrokerClosedError("consumer is closed")
            for future, _ in self._waiting_commits:
                self._settle(future, self._error or closed)
            while True:
                try:
                    self._settle(self._commit_requests.get_nowait(), self._error or closed)
                except queue.Empty:
                    break
            self._settle(self._joined, None)
            self._settle(self._stopped, None)

    def _serve(self, consumer: ck.Consumer) -> None:
        """Apply what the asyncio side asked for: commits, seeks, pauses and resumes."""
        self._serve_commits(consumer)
        self._apply_seeks(consumer)
        self._apply_pauses(consumer)

    def _serve_commits(self, consumer: ck.Consumer) -> None:
        while True:
            try:
                future = self._commit_requests.get_nowait()
            except queue.Empty:
                break
            self._waiting_commits.append((future, time.monotonic() + self._timeout))
        if self._waiting_commits:
            try:
                done = self._commit_acked(consumer)
            except (CommitFailedError, StorageError) as exc:
                for future, _ in self._waiting_commits:
                    self._settle(future, exc)
                self._waiting_commits.clear()
            else:
                failure: CommitFailedError | None = None
                if done:
                    with self._lock:
                        dropped, self._dropped = self._dropped, set()
                    if dropped:
                        failure = CommitFailedError(
                            f"group {self.group!r}: partitions {_names(dropped)} are no longer "
                            "owned by this member; their acked offsets were not committed"
                        )
                now = time.monotonic()
                keep = []
                for future, deadline in self._waiting_commits:
                    if done:
                        self._settle(future, failure)
                    elif now > deadline:
                        self._settle(
                            future,
                            StorageError(
                                f"group {self.group!r}: offsets could not be committed within "
                                f"{self._timeout:g}s"
                            ),
                        )
                    else:
                        keep.append((future, deadline))
                self._waiting_commits = keep

    def _commit_acked(self, consumer: ck.Consumer) -> bool:
        """Commit every acked offset once. True if nothing is left to commit, False after an
        error worth retrying; raises CommitFailedError when the member was fenced."""
        with self._lock:
            offsets = {tp: o for tp, o in self._acked.items() if tp in self._owned}
        if not offsets:
            return True
        err = self._commit(consumer, offsets)
        if err is None:
            with self._lock:
                for tp, offset in offsets.items():
                    if self._acked.get(tp) == offset:
                        del self._acked[tp]
            return True
        if err.code() in _COMMIT_FENCED:
            raise CommitFailedError(
                f"group {self.group!r}: this member lost its partitions ({_describe(err)}); "
                f"offsets of {_names(offsets)} were not committed"
            )
        if err.code() in _COMMIT_RETRY or err.retriable():
            log.debug("group %s: commit will be retried: %s", self.group, _describe(err))
            return False
        raise StorageError(f"group {self.group!r}: committing offsets failed: {_describe(err)}")

    def _commit(
        self, consumer: ck.Consumer, offsets: Mapping[TopicPartition, int]
    ) -> ck.KafkaError | None:
        try:
            results = consumer.commit(
                offsets=[_ktp(tp, o) for tp, o in offsets.items()], asynchronous=False
            )
        except ck.KafkaException as exc:
            err = _kafka_error(exc)
            if err is None:
                raise
            return None if err.code() == ck.KafkaError._NO_OFFSET else err
        for result in results or []:
            if result.error is not None:
                return result.error
        return None

    def _final_commit(self, consumer: ck.Consumer) -> None:
        deadline = time.monotonic() + self._timeout
        while True:
            try:
                if self._commit_acked(consumer):
                    return
            except (CommitFailedError, StorageError) as exc:
                log.warning("group %s: %s", self.group, exc)
                return
            if time.monotonic() > deadline:
                log.warning("group %s: acked offsets not committed at close", self.group)
                return
            _consume(consumer, 1000, POLL_TIMEOUT)  # serve a rebalance in progress

    def _buffer(self, messages: list[ck.Message]) -> None:
        runs, errors = split_runs(messages, self.topics[0] if len(self.topics) == 1 else None)
        sizes = [message_bytes(run) for _, _, run in runs]
        items: Sequence[tuple[str, int, Sequence[ck.Message | Record]]] = runs
        if self._build_ahead:
            items = [(t, p, build_records(t, p, run)) for t, p, run in runs]
        appended = False
        with self._lock:
            for (topic, partition, run), size in zip(items, sizes, strict=True):
                tp = TopicPartition(topic, partition)
                buffer = self._buffers.get(tp)
                if buffer is None or tp in self._revoking or tp in self._seeks:
                    continue
                buffer.add(run, size)
                appended = True
        if appended:
            self._wake()
        for err in errors:
            self._on_client_error(err)

    def _on_client_error(self, err: ck.KafkaError) -> None:
        code = err.code()
        if err.fatal():
            self._fail(StorageError(f"group {self.group!r}: fatal Kafka error: {_describe(err)}"))
        elif code == ck.KafkaError.INVALID_SESSION_TIMEOUT:
            self._fail(ConfigError(f"group {self.group!r}: {_describe(err)}"))
        elif time.monotonic() - self._last_error_log.get(code, 0.0) > 10:
            self._last_error_log[code] = time.monotonic()
            log.warning("group %s: %s", self.group, _describe(err))

    def _apply_seeks(self, consumer: ck.Consumer) -> None:
        with self._lock:
            if not self._seeks:
                return
            seeks = dict(self._seeks)
        for tp, offset in seeks.items():
            try:
                consumer.seek(_ktp(tp, offset))
            except ck.KafkaException:
                # e.g. not fetching yet right after assignment: re-assign at the new offset
                try:
                    consumer.incremental_unassign([_ktp(tp)])
                    consumer.incremental_assign([_ktp(tp, offset)])
                    self._paused.discard(tp)
                except ck.KafkaException as exc:
                    log.debug("group %s: seek %s to %d deferred: %s", self.group, tp, offset, exc)
                    continue
            with self._lock:
                if self._seeks.get(tp) == offset:
                    del self._seeks[tp]
                    buffer = self._buffers.get(tp)
                    if buffer is not None:
                        buffer.clear()
        self._wake()

    def _apply_pauses(self, consumer: ck.Consumer) -> None:
        """Pause the partitions whose buffer is full, resume the others (see the module docs)."""
        with self._lock:
            buffers = self._buffers
            over = sum(b.bytes for b in buffers.values()) >= self._max_buffer_bytes
            full = {
                tp
                for tp, b in buffers.items()
                if len(b) >= self._buffer_limit
                or b.bytes >= self._partition_buffer_bytes
                or (over and b.bytes > 0)
            }
            self._paused &= self._owned
        pause = full - self._paused
        resume = self._paused - full
        try:
            if pause:
                consumer.pause([_ktp(tp) for tp in pause])
                self._paused |= pause
            if resume:
                consumer.resume([_ktp(tp) for tp in resume])
                self._paused -= resume
        except ck.KafkaException as exc:
            log.debug("group %s: pause/resume: %s", self.group, exc)

    # rebalance callbacks (on the polling thread, inside consume) ------------------------------

    def _on_assign(self, consumer: ck.Consumer, partitions: list[ck.TopicPartition]) -> None:
        positioned = partitions
        if partitions:
            try:
                positioned = self._starting_offsets(consumer, partitions)
            except ck.KafkaException as exc:
                log.warning(
                    "group %s: could not read committed offsets (%s); librdkafka resolves them",
                    self.group,
                    _describe(exc),
                )
                positioned = [ck.TopicPartition(p.topic, p.partition) for p in partitions]
        consumer.incremental_assign(positioned)
        with self._lock:
            for p in positioned:
                tp = _tp(p)
                self._owned.add(tp)
                self._buffers[tp] = PartitionBuffer()
        self.member_id = consumer.memberid() or self.member_id
        log.debug("group %s: assigned %s", self.group, _names(_tp(p) for p in partitions))
        self._settle(self._joined, None)
        self._wake()

    def _starting_offsets(
        self, consumer: ck.Consumer, partitions: list[ck.TopicPartition]
    ) -> list[ck.TopicPartition]:
        """Committed offsets; else the start (earliest) or the current end offset (latest)."""
        committed = consumer.committed(
            [ck.TopicPartition(p.topic, p.partition) for p in partitions], timeout=self._timeout
        )
        result = []
        for p in committed:
            if p.error is not None:
                raise ck.KafkaException(p.error)
            if p.offset >= 0:
                result.append(ck.TopicPartition(p.topic, p.partition, p.offset))
            elif self._reset is OffsetReset.EARLIEST:
                result.append(ck.TopicPartition(p.topic, p.partition, ck.OFFSET_BEGINNING))
            else:
                _, end = consumer.get_watermark_offsets(
                    ck.TopicPartition(p.topic, p.partition), timeout=self._timeout
                )
                result.append(ck.TopicPartition(p.topic, p.partition, end))
        return result

    def _on_revoke(self, consumer: ck.Consumer, partitions: list[ck.TopicPartition]) -> None:
        tps = {_tp(p) for p in partitions}
        with self._cond:
            self._revoking |= tps & self._owned
            for tp in tps:
                self._seeks.pop(tp, None)
                buffer = self._buffers.get(tp)
                if buffer is not None:
                    buffer.clear()
        self._wake()
        deadline = time.monotonic() + self._revoke_timeout
        while True:
            with self._cond:
                waiting = [tp for tp in tps if tp in self._inflight]
                if self._closing or not waiting:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    log.warning(
                        "group %s: giving up %s with a batch still in flight after %.0fs "
                        "(revoke_timeout); the new owner receives it again",
                        self.group,
                        _names(waiting),
                        self._revoke_timeout,
                    )
                    break
                if self._commit_requests.empty():
                    self._cond.wait(min(remaining, 0.5))
            self._serve_commits(consumer)  # a handler may commit one batch before acking another
        with self._cond:
            commit = {tp: self._acked[tp] for tp in tps if tp in self._acked}
        for attempt in range(3):
            if not commit:
                break
            err = self._commit(consumer, commit)
            if err is None:
                with self._lock:
                    for tp, offset in commit.items():
                        if self._acked.get(tp) == offset:
                            del self._acked[tp]
                break
            if attempt == 2 or err.code() not in _COMMIT_RETRY:
                log.warning(
                    "group %s: committing revoked %s failed: %s",
                    self.group,
                    _names(commit),
                    _describe(err),
                )
                break
            time.sleep(0.1)
        with self._cond:
            for tp in tps:
                self._forget(tp)
        self._paused -= tps
        log.debug("group %s: revoked %s", self.group, _names(tps))
        self._wake()

    def _on_lost(self, consumer: ck.Consumer, partitions: list[ck.TopicPartition]) -> None:
        tps = {_tp(p) for p in partitions}
        log.warning(
            "group %s: lost %s (the member missed its session timeout); acked offsets not yet "
            "committed are redelivered",
            self.group,
            _names(tps),
        )
        with self._cond:
            for tp in tps:
                self._forget(tp)
            self._cond.notify_all()
        self._paused -= tps
        self._wake()

    def _forget(self, tp: TopicPartition) -> None:
        self._owned.discard(tp)
        self._buffers.pop(tp, None)
        self._inflight.pop(tp, None)
        if self._acked.pop(tp, None) is not None:
            self._dropped.add(tp)
        self._revoking.discard(tp)
        self._seeks.pop(tp, None)
