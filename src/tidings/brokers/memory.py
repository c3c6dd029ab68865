"""In-memory broker for unit tests: the full broker contract, no persistence.

`memory://` gives a private log; `memory://NAME` shares one log between every broker opened with
that name in this process (so a test can "restart" a broker). Thread-safe.
"""

from __future__ import annotations

import bisect
import itertools
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from tidings.brokers import _groups
from tidings.brokers._admin import describe_group, resolve_reset
from tidings.brokers._local import (
    DATA_APPENDED,
    GROUP_CHANGED,
    Listener,
    LocalBroker,
    LocalConsumer,
)
from tidings.brokers.base import (
    DEFAULT_MAX_MESSAGE_BYTES,
    UNLIMITED,
    Admin,
    CanEnforceRetention,
    CanInspect,
    CanRead,
    CanResetOffsets,
    check_sizes,
    validate_partitions,
    validate_retention,
    validate_topic_name,
)
from tidings.errors import BrokerClosedError, ConfigError, TopicExistsError, UnknownTopicError
from tidings.partitioner import partition_for_key
from tidings.records import (
    GroupInfo,
    Message,
    PartitionInfo,
    Published,
    Record,
    SeekTo,
    TopicInfo,
    TopicPartition,
)


@dataclass(slots=True)
class _Partition:
    records: list[Record] = field(default_factory=list)
    timestamps: list[int] = field(default_factory=list)
    start: int = 0
    bytes: int = 0

    @property
    def end(self) -> int:
        return self.start + len(self.records)


@dataclass(slots=True)
class _Topic:
    name: str
    partitions: list[_Partition]
    retention_ms: int | None
    retention_bytes: int | None
    round_robin: itertools.count[int] = field(default_factory=itertools.count)

    def info(self) -> TopicInfo:
        return TopicInfo(
            self.name,
            tuple(PartitionInfo(i, p.start, p.end) for i, p in enumerate(self.partitions)),
            self.retention_ms,
            self.retention_bytes,
        )


class MemoryLog:
    """The shared state behind memory brokers; implements LocalLog."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.topics: dict[str, _Topic] = {}
        self.groups: dict[str, _groups.GroupState] = {}
        self._listeners: list[Listener] = []

    def _notify(self, kind: bytes) -> None:
        for listener in list(self._listeners):
            listener(kind)

    def _topic(self, name: str) -> _Topic:
        topic = self.topics.get(name)
        if topic is None:
            raise UnknownTopicError(f"topic {name!r} does not exist")
        return topic

    def _partition(self, tp: TopicPartition) -> _Partition:
        topic = self._topic(tp.topic)
        if not 0 <= tp.partition < len(topic.partitions):
            raise UnknownTopicError(f"{tp} does not exist")
        return topic.partitions[tp.partition]

    # topics ---------------------------------------------------------------------------

    def create_topic(
        self,
        name: str,
        partitions: int,
        retention_ms: int | None,
        retention_bytes: int | None,
        exist_ok: bool,
    ) -> TopicInfo:
        validate_topic_name(name)
        validate_partitions(partitions)
        retention_ms = validate_retention("retention_ms", retention_ms)
        retention_bytes = validate_retention("retention_bytes", retention_bytes)
        if retention_ms == UNLIMITED:
            retention_ms = None
        if retention_bytes == UNLIMITED:
            retention_bytes = None
        with self._lock:
            existing = self.topics.get(name)
            if existing is not None:
                if exist_ok:
                    return existing.info()
                raise TopicExistsError(f"topic {name!r} already exists")
            topic = _Topic(
                name, [_Partition() for _ in range(partitions)], retention_ms, retention_bytes
            )
            self.topics[name] = topic
            return topic.info()

    def publish(self, topic_name: str, messages: Sequence[Message]) -> list[Published]:
        with self._lock:
            topic = self._topic(topic_name)
            count = len(topic.partitions)
            placed = []
            for message in messages:
                if message.partition is not None and not 0 <= message.partition < count:
                    raise UnknownTopicError(
                        f"topic {topic_name!r} has no partition {message.partition}"
                    )
            now = int(time.time() * 1000)
            for message in messages:
                if message.partition is not None:
                    index = message.partition
                elif message.key is not None:
                    index = partition_for_key(message.key, count)
                else:
                    index = next(topic.round_robin) % count
                part = topic.partitions[index]
                timestamp = max(now, part.timestamps[-1]) if part.timestamps else now
                offset = part.end
                part.records.append(
                    Record(
                        topic_name,
                        index,
                        offset,
                        timestamp,
                        message.value,
                        message.key,
                        message.headers,
                    )
                )
                part.timestamps.append(timestamp)
                part.bytes += message.size
                placed.append(Published(index, offset))
        self._notify(DATA_APPENDED)
        return placed

    def enforce_retention(self) -> int:
        removed = 0
        now = int(time.time() * 1000)
        with self._lock:
            for topic in self.topics.values():
                for part in topic.partitions:
                    drop = 0
                    if topic.retention_ms is not None:
                        drop = bisect.bisect_left(part.timestamps, now - topic.retention_ms)
                    if topic.retention_bytes is not None:
                        size = part.bytes - sum(r_size(r) for r in part.records[:drop])
                        while drop < len(part.records) and size > topic.retention_bytes:
                            size -= r_size(part.records[drop])
                            drop += 1
                    if drop:
                        part.bytes -= sum(r_size(r) for r in part.records[:drop])
                        del part.records[:drop]
                        del part.timestamps[:drop]
                        part.start += drop
                        removed += drop
        return removed

    # LocalLog -------------------------------------------------------------------------

    def partition_counts(self, topics: Collection[str]) -> dict[str, int]:
        with self._lock:
            return {name: len(self._topic(name).partitions) for name in topics}

    def read(self, tp: TopicPartition, offset: int, max_records: int) -> list[Record]:
        with self._lock:
            part = self._partition(tp)
            first = max(offset, part.start) - part.start
            return part.records[first : first + max_records]

    def watermarks(self, tps: Collection[TopicPartition]) -> dict[TopicPartition, tuple[int, int]]:
        with self._lock:
            marks = {}
            for tp in tps:
                part = self._partition(tp)
                marks[tp] = (part.start, part.end)
            return marks

    def offset_for_timestamp(self, tp: TopicPartition, timestamp_ms: int) -> int:
        with self._lock:
            part = self._partition(tp)
            return part.start + bisect.bisect_left(part.timestamps, timestamp_ms)

    def group_join(self, group: str, member: _groups.Member) -> None:
        with self._lock:
            _groups.join(self.groups.setdefault(group, _groups.GroupState()), member)
        self._notify(GROUP_CHANGED)

    def group_heartbeat(
        self,
        group: str,
        member_id: str,
        commit: Mapping[TopicPartition, int],
        release: Collection[TopicPartition],
    ) -> _groups.Heartbeat | None:
        with self._lock:
            state = self.groups.setdefault(group, _groups.GroupState())
            topics = {t for m in state.members.values() for t in m.topics}
            counts = {t: len(self.topics[t].partitions) for t in topics if t in self.topics}
            result = _groups.heartbeat(
                state, member_id, int(time.time() * 1000), counts, commit, release
            )
        if result is not None and result.changed:
            self._notify(GROUP_CHANGED)
        return result

    def group_leave(self, group: str, member_id: str, commit: Mapping[TopicPartition, int]) -> None:
        with self._lock:
            _groups.leave(self.groups.setdefault(group, _groups.GroupState()), member_id, commit)
        self._notify(GROUP_CHANGED)

    def committed(self, group: str, tps: Collection[TopicPartition]) -> dict[TopicPartition, int]:
        with self._lock:
            offsets = self.groups.get(group, _groups.GroupState()).offsets
            return {tp: offsets[tp] for tp in tps if tp in offsets}

    def add_listener(self, listener: Listener, topics: Collection[str] | None = None) -> None:
        with self._lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)


def r_size(record: Record) -> int:
    return (
        len(record.value)
        + (len(record.key) if record.key else 0)
        + sum(len(k) + len(v) for k, v in record.headers)
    )


_shared: dict[str, MemoryLog] = {}
_shared_lock = threading.Lock()


class MemoryBroker(LocalBroker, CanRead):
    """The in-memory broker. See the module docstring for sharing by name."""

    client = "memory"
    log: MemoryLog

    def __init__(
        self, url: str = "memory://", *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    ) -> None:
        if not url.startswith("memory://"):
            raise ConfigError(
                f"not a memory broker URL: {url!r} (expected memory:// or memory://NAME)"
            )
        name = url.removeprefix("memory://").strip("/")
        self.url = url
        self.max_message_bytes = max_message_bytes
        if name:
            with _shared_lock:
                self.log = _shared.setdefault(name, MemoryLog())
        else:
            self.log = MemoryLog()
        self._admin = MemoryAdmin(self.log)
        self._closed = False
        self._consumers: list[LocalConsumer] = []

    @property
    def admin(self) -> Admin:
        return self._admin

    async def publish(self, topic: str, messages: Sequence[Message]) -> list[Published]:
        if self._closed:
            raise BrokerClosedError("broker is closed")
        check_sizes(topic, messages, self.max_message_bytes)
        return self.log.publish(topic, messages)

    async def read(self, tp: TopicPartition, offset: int, max_records: int) -> list[Record]:
        return self.log.read(tp, offset, max_records)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._close_consumers()


class MemoryAdmin(Admin, CanInspect, CanResetOffsets, CanEnforceRetention):
    def __init__(self, log_: MemoryLog) -> None:
        self._log = log_

    async def create_topic(
        self,
        name: str,
        partitions: int = 1,
        *,
        retention_ms: int | None = None,
        retention_bytes: int | None = None,
        exist_ok: bool = False,
    ) -> TopicInfo:
        return self._log.create_topic(name, partitions, retention_ms, retention_bytes, exist_ok)

    async def list_topics(self) -> list[TopicInfo]:
        with self._log._lock:
            return [self._log.topics[n].info() for n in sorted(self._log.topics)]

    async def describe_topic(self, name: str) -> TopicInfo:
        with self._log._lock:
            return self._log._topic(name).info()

    async def list_groups(self) -> list[str]:
        with self._log._lock:
            return sorted(n for n, g in self._log.groups.items() if g.members or g.offsets)

    async def describe_group(self, name: str) -> GroupInfo:
        with self._log._lock:
            state = self._log.groups.get(name)
            if state is None:
                raise ConfigError(f"consumer group {name!r} does not exist")
            _groups.expire(state, int(time.time() * 1000))
            return describe_group(name, state, self._log.partition_counts, self._log.watermarks)

    async def reset_offsets(
        self, group: str, topics: Sequence[str], to: SeekTo
    ) -> dict[TopicPartition, int]:
        with self._log._lock:
            state = self._log.groups.setdefault(group, _groups.GroupState())
            offsets = resolve_reset(
                group,
                state,
                topics,
                to,
                self._log.partition_counts,
                self._log.watermarks,
                self._log.offset_for_timestamp,
            )
            state.offsets.update(offsets)
            return offsets

    async def enforce_retention(self) -> int:
        return self._log.enforce_retention()
