"""Positions in a partition by time: the first offset appended at or after an instant.

Found by binary search over append timestamps with `CanRead` (about log2(records) reads of one
record each), so it costs the same on a topic of a thousand records or of a billion, on every
backend that can read. Append times are taken as non-decreasing within a partition (as Kafka's
`offsetsForTimes` does); a clock that stepped back makes the answer approximate, never wrong by
more than the records appended during the step."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from tidings.brokers.base import Broker, CanRead, require
from tidings.ops.records import partition_of
from tidings.records import TopicInfo


@dataclass(frozen=True, slots=True)
class PartitionSpan:
    """The offsets of `topic[partition]` appended in [since, until): `first` is the first one
    appended at or after `since`, `stop` the first at or after `until` (both `end` when none)."""

    topic: str
    partition: int
    first: int
    stop: int

    @property
    def records(self) -> int:
        return self.stop - self.first


async def offset_for_time(
    broker: Broker, info: TopicInfo, partition: int, when: datetime | int
) -> int:
    """The first offset of `info.name[partition]` appended at or after `when` (a datetime, or
    epoch milliseconds); the partition's end offset if every retained record is older.
    UnknownTopicError for a partition the topic does not have."""
    tp = partition_of(info, partition)
    bounds = info.partitions[partition]
    when_ms = when if isinstance(when, int) else int(when.timestamp() * 1000)
    reader = require(broker, CanRead, "read records without a consumer group")
    low, high = bounds.start_offset, bounds.end_offset
    # invariant: every record below `low` is older than `when_ms`; `high` is at or after it
    while low < high:
        middle = (low + high) // 2
        records = await reader.read(tp, middle, 1)
        record = records[0] if records else None
        if record is None or record.offset >= high:
            high = middle  # nothing retained in [middle, high)
        elif record.timestamp >= when_ms:
            high = record.offset
        else:
            low = record.offset + 1
    return low


async def span(
    broker: Broker,
    info: TopicInfo,
    partition: int,
    since: datetime | int,
    until: datetime | int | None = None,
) -> PartitionSpan:
    """The offsets of `info.name[partition]` appended in [since, until) (`until` None: up to
    the end as of `info`)."""
    first = await offset_for_time(broker, info, partition, since)
    stop = info.partitions[partition].end_offset
    if until is not None:
        stop = max(first, await offset_for_time(broker, info, partition, until))
    return PartitionSpan(info.name, partition, first, stop)
