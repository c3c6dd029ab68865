"""What the broker, its admin and its consumers ask the cluster: metadata, partition counts,
offsets, group ids and session bounds, through one admin client.

Start and end offsets are Kafka's log start offset and last stable offset (what a
`read_committed` consumer can read: the high watermark unless transactions are in flight).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection, Iterable, Mapping
from typing import Final

import confluent_kafka as ck
from confluent_kafka.admin import AdminClient

# The admin package does not re-export these for type checkers; their modules are stable.
from confluent_kafka.admin._config import ConfigResource
from confluent_kafka.admin._listoffsets import OffsetSpec
from confluent_kafka.admin._metadata import ClusterMetadata
from confluent_kafka.admin._resource import ResourceType

from tidings.brokers.kafka._errors import (
    RETRY_LIST_OFFSETS,
    UNKNOWN_TOPIC,
    describe,
    error_code,
    storage_error,
)
from tidings.brokers.kafka._settings import KafkaSettings
from tidings.errors import ConfigError, StorageError, UnknownTopicError
from tidings.records import SeekTo, TopicPartition

log = logging.getLogger("tidings.kafka")

METADATA_TTL: Final = 30.0
"""Seconds a topic's partition count is cached."""


def ktp(tp: TopicPartition, offset: int = ck.OFFSET_INVALID) -> ck.TopicPartition:
    return ck.TopicPartition(tp.topic, tp.partition, offset)


def tp_of(ktp: ck.TopicPartition) -> TopicPartition:
    return TopicPartition(ktp.topic, ktp.partition)


def tp_list(tps: Iterable[TopicPartition]) -> str:
    return ", ".join(sorted(str(tp) for tp in tps))


def earliest() -> OffsetSpec:
    spec: OffsetSpec = OffsetSpec.earliest()  # type: ignore[no-untyped-call]
    return spec


def latest() -> OffsetSpec:
    spec: OffsetSpec = OffsetSpec.latest()  # type: ignore[no-untyped-call]
    return spec


def at_time(ms: int) -> OffsetSpec:
    spec: OffsetSpec = OffsetSpec.for_timestamp(ms)
    return spec


class Cluster:
    """The cluster behind one broker. Every request is bounded by `timeout`
    (`request_timeout`); an unreachable cluster raises StorageError naming `bootstrap`."""

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        self.bootstrap = settings.bootstrap
        self.timeout = settings.request_timeout
        try:
            self.client = AdminClient(dict(settings.common))
        except (ck.KafkaException, ValueError, TypeError) as exc:
            raise ConfigError(f"invalid kafka settings: {describe(exc)}") from None
        self._partitions: dict[str, tuple[int, float]] = {}
        self._session_bounds: tuple[int, int] | None = None
        self._session_warned: set[float] = set()

    def error(self, exc: BaseException, action: str) -> Exception:
        """A tidings error for a librdkafka failure while doing `action`."""
        return storage_error(exc, action, self.bootstrap, self.timeout)

    async def metadata(self, topic: str | None = None) -> ClusterMetadata:
        """Cluster metadata (of one topic, or of all)."""
        try:
            return await asyncio.to_thread(self.client.list_topics, topic, timeout=self.timeout)
        except ck.KafkaException as exc:
            raise self.error(exc, "a metadata request") from None

    async def partition_count(self, topic: str, *, refresh: bool = False) -> int:
        """The topic's partition count (cached for METADATA_TTL). Raises UnknownTopicError."""
        cached = self._partitions.get(topic)
        if cached is not None and not refresh and cached[1] > time.monotonic():
            return cached[0]
        md = await self.metadata(topic)
        info = md.topics.get(topic)
        if info is None or (info.error is not None and info.error.code() in UNKNOWN_TOPIC):
            self._partitions.pop(topic, None)
            raise UnknownTopicError(f"topic {topic!r} does not exist")
        if info.error is not None and not info.partitions:
            raise StorageError(f"metadata of topic {topic!r}: {describe(info.error)}")
        count = len(info.partitions)
        self._partitions[topic] = (count, time.monotonic() + METADATA_TTL)
        return count

    def forget_topic(self, topic: str) -> None:
        """Drop the cached partition count of `topic` (it may be gone)."""
        self._partitions.pop(topic, None)

    async def list_offsets(
        self, specs: Mapping[TopicPartition, OffsetSpec]
    ) -> dict[TopicPartition, int]:
        """ListOffsets for each partition (-1 for a timestamp after the last record), retried
        while partition leaders are not known yet."""
        result: dict[TopicPartition, int] = {}
        pending = dict(specs)
        deadline = time.monotonic() + self.timeout
        while pending:
            futures = self.client.list_offsets(
                {ktp(tp): spec for tp, spec in pending.items()},
                isolation_level=ck.IsolationLevel.READ_COMMITTED,
                request_timeout=self.timeout,
            )
            retry: dict[TopicPartition, OffsetSpec] = {}
            for kafka_tp, future in futures.items():
                tp = tp_of(kafka_tp)
                try:
                    info = await asyncio.wrap_future(future)
                except ck.KafkaException as exc:
                    failure = error_code(exc)
                    if failure in RETRY_LIST_OFFSETS and time.monotonic() < deadline:
                        retry[tp] = pending[tp]
                        continue
                    if failure == ck.KafkaError.UNKNOWN_TOPIC_OR_PART:
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
            self.list_offsets(dict.fromkeys(tps, earliest())),
            self.list_offsets(dict.fromkeys(tps, latest())),
        )
        return {tp: (starts[tp], ends[tp]) for tp in tps}

    async def resolve(
        self, tps: Collection[TopicPartition], to: SeekTo
    ) -> dict[TopicPartition, int]:
        """The offset `to` designates in each partition (clamped to the retained range)."""
        if to.earliest:
            return await self.list_offsets(dict.fromkeys(tps, earliest()))
        if to.latest:
            return await self.list_offsets(dict.fromkeys(tps, latest()))
        if to.timestamp is not None:
            ms = int(to.timestamp.timestamp() * 1000)
            found, marks = await asyncio.gather(
                self.list_offsets(dict.fromkeys(tps, at_time(ms))),
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

    def group_name(self, group_id: str) -> str | None:
        """The tidings group of Kafka group id `group_id`; None if it lacks `group_prefix`."""
        prefix = self.settings.group_prefix
        return group_id.removeprefix(prefix) if group_id.startswith(prefix) else None

    async def session_timeout_ms(self, seconds: float) -> int:
        """`seconds` within the broker's group.min/max.session.timeout.ms; raised to the minimum
        (6 s by default) with a warning: a killed member's partitions move after that long."""
        wanted = int(seconds * 1000)
        if self._session_bounds is None:
            low, high = 6000, 1_800_000
            try:
                md = await self.metadata()
                broker_id = str(min(md.brokers)) if md.brokers else "0"
                resource = ConfigResource(ResourceType.BROKER, broker_id)
                futures = self.client.describe_configs([resource], request_timeout=self.timeout)
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
