"""Topic and group administration of a Kafka cluster, through its admin API.

Group names are tidings' (without the `group_prefix` option); only the groups that have the
prefix are listed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Any

import confluent_kafka as ck
from confluent_kafka.admin._config import ConfigResource
from confluent_kafka.admin._listoffsets import OffsetSpec
from confluent_kafka.admin._metadata import ClusterMetadata
from confluent_kafka.admin._resource import ResourceType
from confluent_kafka.cimpl import NewTopic

from tidings.brokers.base import (
    Admin,
    CanEnforceRetention,
    CanInspect,
    CanResetOffsets,
    validate_partitions,
    validate_retention,
    validate_topic_name,
)
from tidings.brokers.kafka._cluster import Cluster, at_time, ktp, tp_list, tp_of
from tidings.brokers.kafka._errors import UNKNOWN_TOPIC, describe, error_code
from tidings.brokers.kafka._reader import Reader
from tidings.errors import (
    ConfigError,
    StorageError,
    TopicError,
    TopicExistsError,
    UnknownTopicError,
)
from tidings.records import (
    GroupInfo,
    MemberInfo,
    PartitionInfo,
    PartitionLag,
    Record,
    SeekTo,
    TopicInfo,
    TopicPartition,
)


class KafkaAdmin(Admin, CanInspect, CanResetOffsets, CanEnforceRetention):
    """Topic and group administration through Kafka's admin API."""

    def __init__(self, cluster: Cluster, reader: Reader) -> None:
        self._cluster = cluster
        self._reader = reader
        self._client = cluster.client
        self._timeout = cluster.timeout

    async def create_topic(
        self,
        name: str,
        partitions: int = 1,
        *,
        retention_ms: int | None = None,
        retention_bytes: int | None = None,
        exist_ok: bool = False,
    ) -> TopicInfo:
        """Create a topic with replication factor min(3, brokers) and `min.insync.replicas`
        min(2, replication factor) - so that with `acks=all` a publish is on two brokers when it
        returns (one on a single-broker cluster) - and wait until every partition has a leader.
        `retention_ms` / `retention_bytes` set `retention.ms` / `retention.bytes` (UNLIMITED
        sets -1: never delete; None leaves the cluster's default). With `exist_ok`, an existing
        topic is returned unchanged."""
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
            failure = error_code(exc)
            if failure == ck.KafkaError.TOPIC_ALREADY_EXISTS:
                if exist_ok:
                    return await self._describe_when_ready(name, None)
                raise TopicExistsError(f"topic {name!r} already exists") from None
            if failure in {
                ck.KafkaError.INVALID_PARTITIONS,
                ck.KafkaError.INVALID_CONFIG,
                ck.KafkaError.POLICY_VIOLATION,
                ck.KafkaError.INVALID_REPLICATION_FACTOR,
                ck.KafkaError.TOPIC_EXCEPTION,
            }:
                raise TopicError(f"Kafka refused topic {name!r}: {describe(exc)}") from None
            raise self._cluster.error(exc, f"creating topic {name!r}") from None
        return await self._describe_when_ready(name, partitions)

    async def _brokers(self) -> int:
        """How many brokers the cluster's metadata lists."""
        future = self._client.describe_cluster(request_timeout=self._timeout)
        try:
            cluster = await asyncio.wrap_future(future)
        except ck.KafkaException as exc:
            raise self._cluster.error(exc, "describing the cluster") from None
        return len(cluster.nodes)

    async def durability_warnings(self, topics: Sequence[str]) -> list[str]:
        """For each of `topics` that exists, a sentence per setting under which an acknowledged
        publish can be lost: fewer replicas than min(3, brokers), an effective
        `min.insync.replicas` below min(2, replicas), `unclean.leader.election.enable=true`."""
        md = await self._cluster.metadata()
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
            md = await self._cluster.metadata(name)
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
        md = await self._cluster.metadata()
        names = sorted(
            n for n, t in md.topics.items() if not n.startswith("__") and t.error is None
        )
        return await self._infos(names, md)

    async def describe_topic(self, name: str) -> TopicInfo:
        """Partitions with start and end offsets, and the topic's effective retention (Kafka's
        default is 7 days; None only when unlimited)."""
        md = await self._cluster.metadata(name)
        info = md.topics.get(name)
        if info is None or (info.error is not None and info.error.code() in UNKNOWN_TOPIC):
            raise UnknownTopicError(f"topic {name!r} does not exist")
        return (await self._infos([name], md))[0]

    async def _infos(self, names: Sequence[str], md: ClusterMetadata) -> list[TopicInfo]:
        if not names:
            return []
        tps = [TopicPartition(n, p) for n in names for p in sorted(md.topics[n].partitions)]
        marks, configs = await asyncio.gather(self._cluster.watermarks(tps), self._retention(names))
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
                if error_code(exc) not in UNKNOWN_TOPIC:
                    raise self._cluster.error(exc, f"describing topic {resource.name!r}") from None
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
            raise self._cluster.error(exc, "listing consumer groups") from None
        found = (self._cluster.group_name(g.group_id) for g in listed.valid)
        return sorted(name for name in found if name is not None)

    async def describe_group(self, name: str) -> GroupInfo:
        """Members with their assigned partitions, and per partition of every topic the group
        has committed to or is assigned: committed offset, start/end offsets, lag, owner. A
        member's topics are those of its partitions (the admin API does not return a classic
        member's subscription).

        Raises ConfigError if the group has neither members nor committed offsets."""
        members, committed = await asyncio.gather(self._members(name), self._committed(name))
        if not members and not committed:
            raise ConfigError(f"consumer group {name!r} does not exist")
        owners = {tp: m.member_id for m in members for tp in m.partitions}
        topics = {tp.topic for tp in committed} | {tp.topic for tp in owners}
        md = await self._cluster.metadata()
        tps = [
            TopicPartition(t, p)
            for t in sorted(topics)
            if t in md.topics and md.topics[t].error is None
            for p in sorted(md.topics[t].partitions)
        ]
        marks = await self._cluster.watermarks(tps)
        lags = tuple(
            PartitionLag(tp.topic, tp.partition, committed.get(tp), *marks[tp], owners.get(tp))
            for tp in tps
        )
        return GroupInfo(name, tuple(members), lags)

    async def _members(self, group: str) -> list[MemberInfo]:
        group_id = self._cluster.group_id(group)
        futures = self._client.describe_consumer_groups([group_id], request_timeout=self._timeout)
        try:
            description = await asyncio.wrap_future(futures[group_id])
        except ck.KafkaException as exc:
            if error_code(exc) == ck.KafkaError.GROUP_ID_NOT_FOUND:
                return []
            raise self._cluster.error(exc, f"describing group {group!r}") from None
        members = []
        for m in sorted(description.members or [], key=lambda m: m.member_id):
            assigned = m.assignment.topic_partitions if m.assignment is not None else []
            parts = tuple(
                sorted((tp_of(p) for p in assigned), key=lambda tp: (tp.topic, tp.partition))
            )
            members.append(
                MemberInfo(m.member_id, m.client_id, tuple(sorted({p.topic for p in parts})), parts)
            )
        return members

    async def _committed(self, group: str) -> dict[TopicPartition, int]:
        group_id = self._cluster.group_id(group)
        request = ck.ConsumerGroupTopicPartitions(group_id)
        futures = self._client.list_consumer_group_offsets([request], request_timeout=self._timeout)
        try:
            result = await asyncio.wrap_future(futures[group_id])
        except ck.KafkaException as exc:
            if error_code(exc) == ck.KafkaError.GROUP_ID_NOT_FOUND:
                return {}
            raise self._cluster.error(exc, f"listing offsets of group {group!r}") from None
        return {
            tp_of(p): p.offset
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
            count = await self._cluster.partition_count(topic, refresh=True)
            tps.extend(TopicPartition(topic, p) for p in range(count))
        offsets = await self._cluster.resolve(tps, to)
        group_id = self._cluster.group_id(group)
        request = ck.ConsumerGroupTopicPartitions(
            group_id, [ktp(tp, offset) for tp, offset in offsets.items()]
        )
        futures = self._client.alter_consumer_group_offsets(
            [request], request_timeout=self._timeout
        )
        try:
            result = await asyncio.wrap_future(futures[group_id])
        except ck.KafkaException as exc:
            if error_code(exc) in {ck.KafkaError.UNKNOWN_MEMBER_ID, ck.KafkaError.NON_EMPTY_GROUP}:
                raise ConfigError(
                    f"consumer group {group!r} has live members; stop them before resetting "
                    f"its offsets ({describe(exc)})"
                ) from None
            raise self._cluster.error(exc, f"resetting offsets of group {group!r}") from None
        failed = [p for p in result.topic_partitions or [] if p.error is not None]
        if failed:
            raise StorageError(
                f"resetting offsets of group {group!r} failed for "
                f"{tp_list(tp_of(p) for p in failed)}: {describe(failed[0].error)}"
            )
        return offsets

    async def enforce_retention(self) -> int:
        """Delete now, with DeleteRecords, what is past its topic's effective retention, in
        every topic of the cluster: by age up to the first record not older than `retention.ms`
        (ListOffsets by timestamp), by size down to the newest records whose key + value +
        headers fit in `retention.bytes`. Kafka's own cleaner deletes in the background, by
        whole segments, measuring bytes on disk: it may delete less, later. Returns how many
        records were deleted."""
        md = await self._cluster.metadata()
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
                    by_age[tp] = at_time(now - ms)
                if size is not None:
                    by_size[tp] = size
        tps = set(by_age) | set(by_size)
        if not tps:
            return 0
        marks, first_young = await asyncio.gather(
            self._cluster.watermarks(tps), self._cluster.list_offsets(by_age)
        )
        cuts: dict[TopicPartition, int] = {}
        for tp, offset in first_young.items():
            cuts[tp] = marks[tp][1] if offset < 0 else offset
        for tp, limit in by_size.items():
            start, end = marks[tp]
            if end - start <= 0:
                continue
            cut = await self._size_cut(tp, start, end, limit)
            cuts[tp] = max(cuts.get(tp, start), cut)
        doomed = {tp: cut for tp, cut in cuts.items() if cut > marks[tp][0]}
        if not doomed:
            return 0
        futures = self._client.delete_records(
            [ktp(tp, cut) for tp, cut in doomed.items()],
            request_timeout=self._timeout,
            operation_timeout=self._timeout,
        )
        removed = 0
        for kafka_tp, future in futures.items():
            tp = tp_of(kafka_tp)
            try:
                deleted = await asyncio.wrap_future(future)
            except ck.KafkaException as exc:
                raise self._cluster.error(exc, f"deleting records of {tp}") from None
            removed += max(0, int(deleted.low_watermark) - marks[tp][0])
        return removed

    async def _size_cut(self, tp: TopicPartition, start: int, end: int, limit: int) -> int:
        """The first offset to keep so that the newest records fit in `limit` bytes (at least
        one record is kept). Reads back from the end in growing windows, so the cost is about
        `limit` bytes of reading."""
        kept = 0
        cut = end
        position = end
        window = 256
        while position > start:
            low = max(start, position - window)
            records = await self._reader.read(tp, low, position - low, position)
            for record in reversed(records):
                size = _record_size(record)
                if cut < end and kept + size > limit:
                    return cut
                kept += size
                cut = record.offset
            position = low
            window *= 2
        return start


def _record_size(record: Record) -> int:
    """Bytes a record counts against retention.bytes: key + value + headers (like Message.size)."""
    size = len(record.value) + (len(record.key) if record.key is not None else 0)
    for name, value in record.headers:
        size += len(name) + len(value)
    return size
