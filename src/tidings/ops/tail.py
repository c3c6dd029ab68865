"""Follow a topic: its records as events, from a position on, through a private group."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

from tidings.brokers.base import Broker, CanSeek, Consumer, require
from tidings.errors import ConfigError
from tidings.ops.records import LogEntry, decode
from tidings.records import Batch, OffsetReset, SeekTo, TopicInfo, TopicPartition

POLL_S = 0.5
GROUP_PREFIX = "tidings-tail-"


class _Progress:
    """Per partition, the next offset to show; knows when the offsets the topic ended at when
    the tail started are reached (where a tail that does not follow stops)."""

    def __init__(self, info: TopicInfo, start: SeekTo) -> None:
        self.ends = {TopicPartition(info.name, p.partition): p.end_offset for p in info.partitions}
        self.seek_to = None if start.earliest or start.latest else start
        self.next: dict[TopicPartition, int] = {}
        if start.earliest:
            self.next = {
                TopicPartition(info.name, p.partition): p.start_offset for p in info.partitions
            }
        elif start.latest:
            self.next = dict(self.ends)

    async def place(self, consumer: Consumer, batch: Batch | None) -> Batch | None:
        """Seek partitions newly assigned to `consumer` (offset or time starts only); returns
        `batch` unless it came from such a partition (seeking discarded it)."""
        if self.seek_to is None:
            return batch
        seeker = require(consumer, CanSeek, "move its partitions")
        fresh = consumer.assignment() - self.next.keys()
        for tp in fresh:
            self.next[tp] = await seeker.seek(tp, self.seek_to)
        return None if batch is not None and batch.tp in fresh else batch

    def advance(self, tp: TopicPartition, offset: int) -> None:
        self.next[tp] = offset

    def skip_removed(self, info: TopicInfo) -> None:
        """Records deleted by retention will never arrive: count them as shown."""
        for p in info.partitions:
            tp = TopicPartition(info.name, p.partition)
            if tp in self.next:
                self.next[tp] = max(self.next[tp], p.start_offset)

    def caught_up(self) -> bool:
        return all(self.next.get(tp, -1) >= end for tp, end in self.ends.items())


async def tail(
    broker: Broker,
    topic: str,
    start: SeekTo | None = None,
    *,
    follow: bool = True,
    limit: int | None = None,
    poll: float = POLL_S,
) -> AsyncIterator[LogEntry]:
    """The records of `topic` from `start` (default: latest) as LogEntries, partition by
    partition in offset order; records that do not decode are yielded with their error.

    Stops after `limit` entries, or, unless `follow`, once every partition reached the offset
    it ended at when the tail started; otherwise waits for new records (polling every `poll`
    seconds). Reads through a private consumer group (`tidings-tail-...`) that never commits.
    UnknownTopicError for an unknown topic. Stop early with `contextlib.aclosing`."""
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be >= 1, got {limit}")
    start = start or SeekTo(latest=True)
    progress = _Progress(await broker.admin.describe_topic(topic), start)
    shown = 0

    def done() -> bool:
        return (not follow and progress.caught_up()) or (limit is not None and shown >= limit)

    if done():
        return
    reset = OffsetReset.EARLIEST if start.earliest else OffsetReset.LATEST
    group = f"{GROUP_PREFIX}{uuid.uuid4().hex[:12]}"
    timeout = 0.0
    async with broker.subscribe(group, [topic], auto_offset_reset=reset) as consumer:
        while not done():
            batch = await progress.place(consumer, await consumer.fetch(timeout))
            timeout = poll
            if batch is None:
                if not follow:
                    progress.skip_removed(await broker.admin.describe_topic(topic))
                continue
            records = batch.records if limit is None else batch.records[: limit - shown]
            # nack at the next offset moves on without acking: an ack would be committed.
            consumer.nack(batch, records[-1].offset + 1)
            progress.advance(batch.tp, records[-1].offset + 1)
            for record in records:
                shown += 1
                yield decode(record)
