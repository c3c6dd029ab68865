"""Records of a topic as events: one partition a page at a time, with filters."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from tidings.brokers.base import Broker, CanRead, require
from tidings.errors import ConfigError, DecodeError, UnknownTopicError
from tidings.event import Event, event_from_record
from tidings.records import Record, TopicInfo, TopicPartition

READ_CHUNK = 500
"""The most records asked of the broker per read (the first read asks for the page's size)."""


@dataclass(frozen=True, slots=True)
class LogEntry:
    """A record and the event it decodes into, or why it does not (`error` names its position)."""

    record: Record
    event: Event | None
    error: str | None = None

    @property
    def position(self) -> str:
        """`topic[partition]@offset`."""
        return f"{self.record.topic}[{self.record.partition}]@{self.record.offset}"


def decode(record: Record) -> LogEntry:
    """`record` as a LogEntry: never raises for a record that is no event."""
    try:
        return LogEntry(record, event_from_record(record))
    except DecodeError as exc:
        return LogEntry(record, None, str(exc))


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which entries to take; the given fields combine with AND. A record that does not decode
    matches only the empty filter. `since` is inclusive, `until` exclusive (event time)."""

    key: str | None = None
    type: str | None = None
    correlation_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def given(self) -> bool:
        return any(
            value is not None
            for value in (self.key, self.type, self.correlation_id, self.since, self.until)
        )

    def matches(self, entry: LogEntry) -> bool:
        event = entry.event
        if event is None:
            return not self.given()
        return (
            (self.key is None or event.key == self.key)
            and (self.type is None or event.type == self.type)
            and (self.correlation_id is None or event.correlation_id == self.correlation_id)
            and (self.since is None or event.time >= self.since)
            and (self.until is None or event.time < self.until)
        )


@dataclass(frozen=True, slots=True)
class RecordPage:
    """Matching entries of one partition from an offset on, and where the next page starts.

    `next_offset` == `end_offset` means the partition was read to its end (as of this call)."""

    topic: str
    partition: int
    entries: tuple[LogEntry, ...]
    next_offset: int
    start_offset: int
    end_offset: int

    @property
    def at_end(self) -> bool:
        return self.next_offset >= self.end_offset


def partition_of(info: TopicInfo, partition: int) -> TopicPartition:
    """`info.name[partition]`; UnknownTopicError naming the valid range otherwise."""
    if not 0 <= partition < len(info.partitions):
        raise UnknownTopicError(
            f"topic {info.name!r} has {len(info.partitions)} partition(s) "
            f"(0..{len(info.partitions) - 1}); there is no partition {partition}"
        )
    return TopicPartition(info.name, partition)


async def read_records(
    broker: Broker,
    topic: str,
    partition: int = 0,
    offset: int | None = None,
    *,
    limit: int = 50,
    where: EventFilter | None = None,
    max_scan: int = 10_000,
) -> RecordPage:
    """Up to `limit` entries of `topic[partition]` matching `where`, from `offset` (default:
    the oldest retained record; an offset removed by retention starts there too) in log order.
    Reads at most `max_scan` records, so a filter that matches little costs one bounded call;
    continue from `next_offset`. UnknownTopicError for an unknown topic or partition,
    ConfigError for a negative offset or a limit below 1."""
    if offset is not None and offset < 0:
        raise ConfigError(f"offset must be >= 0, got {offset}")
    if limit < 1 or max_scan < 1:
        raise ConfigError(f"limit and max_scan must be >= 1, got {limit} and {max_scan}")
    reader = require(broker, CanRead, "read records without a consumer group")
    info = await broker.admin.describe_topic(topic)
    tp = partition_of(info, partition)
    bounds = info.partitions[partition]
    if offset is not None and offset > bounds.end_offset:
        raise ConfigError(f"offset {offset} is past the end of {tp} ({bounds.end_offset})")
    end = bounds.end_offset
    position = bounds.start_offset if offset is None else max(offset, bounds.start_offset)
    entries: list[LogEntry] = []
    scanned, chunk = 0, min(READ_CHUNK, limit)
    while position < end and len(entries) < limit and scanned < max_scan:
        want = min(chunk, max_scan - scanned, end - position)
        chunk = min(READ_CHUNK, chunk * 2)
        records = [r for r in await reader.read(tp, position, want) if position <= r.offset < end]
        if not records:
            position = end  # nothing retained in [position, end)
            break
        for record in records:
            scanned += 1
            position = record.offset + 1
            entry = decode(record)
            if where is None or where.matches(entry):
                entries.append(entry)
                if len(entries) == limit:
                    break
    return RecordPage(topic, partition, tuple(entries), position, bounds.start_offset, end)
