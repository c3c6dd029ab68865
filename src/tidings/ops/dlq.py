"""Dead letters for operators: list (whole or a page), find, select, replay, purge.

The letters and their format are `tidings.dlq`'s; this adds what a tool does with them.
Functions that change something take the letters chosen first (`select_dead_letters`), so a
tool can show them and ask before acting."""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tidings import dlq
from tidings.brokers.base import Broker, CanInspect, CanRead, require
from tidings.dlq import (
    DeadLetter,
    DeadLetterError,
    DeadLetterFilter,
    Replayed,
    dead_letter_from_record,
    read_resolutions,
)
from tidings.errors import ConfigError, UnknownTopicError
from tidings.ops.records import partition_of
from tidings.records import Message, Record, TopicPartition
from tidings.runtime.parking import ORDERED, PURGED_FOR


@dataclass(frozen=True, slots=True)
class DeadLetterPage:
    """One page of dead letters, oldest first; `cursor` continues after it (None: no more as
    of this call)."""

    letters: tuple[DeadLetter, ...]
    cursor: str | None


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """What a replay did: the letters re-delivered, and those left out because they do not
    decode into an event (replaying them would only dead-letter them again)."""

    replayed: tuple[Replayed, ...]
    skipped: tuple[DeadLetter, ...] = ()


def _filters(where: DeadLetterFilter | None) -> DeadLetterFilter:
    return where if where is not None else DeadLetterFilter()


async def _list(
    broker: Broker, where: DeadLetterFilter | None = None, *, include_resolved: bool = False
) -> list[DeadLetter]:
    """Every dead letter matching `where`, oldest first (`tidings.dlq.list_dead_letters`)."""
    w = _filters(where)
    return await dlq.list_dead_letters(
        broker,
        service=w.service,
        reason=w.reason,
        handler=w.handler,
        event_type=w.event_type,
        topic=w.topic,
        include_resolved=include_resolved,
    )


async def find_dead_letters(broker: Broker, ident: str) -> list[DeadLetter]:
    """The dead letters named by `ident` (an event id: one per handler that dead-lettered it;
    or a position `<dlq-topic>:<partition>:<offset>`): the unresolved ones, or if there are
    none the resolved ones. DeadLetterError if `ident` names none."""
    letters = [x for x in await _list(broker, include_resolved=True) if x.matches(ident)]
    if not letters:
        raise DeadLetterError(f"no dead letter with id {ident} (see `tidings dlq list`)")
    return [x for x in letters if x.resolution is None] or letters


async def select_dead_letters(
    broker: Broker, ids: Sequence[str] = (), where: DeadLetterFilter | None = None
) -> list[DeadLetter]:
    """The unresolved dead letters named by `ids` (within `where`), or every unresolved one
    matching `where` when no id is given. DeadLetterError for an id that names none, or only
    resolved ones."""
    w = _filters(where)
    if not ids:
        return await _list(broker, w)
    letters = await _list(broker, w, include_resolved=True)
    chosen: dict[str, DeadLetter] = {}
    for ident in ids:
        matching = [x for x in letters if x.matches(ident)]
        if not matching:
            within = " matching the filters" if w.given() else ""
            raise DeadLetterError(
                f"no dead letter with id {ident!r}{within} (see `tidings dlq list`)"
            )
        unresolved = [x for x in matching if x.resolution is None]
        if not unresolved:
            resolution = matching[-1].resolution
            assert resolution is not None
            raise DeadLetterError(
                f"dead letter {ident} was already {resolution.action} at "
                f"{resolution.at.isoformat(timespec='seconds')}"
            )
        for letter in unresolved:
            chosen.setdefault(letter.position, letter)
    return list(chosen.values())


async def replay_dead_letters(
    broker: Broker, letters: Sequence[DeadLetter], *, skip_undecodable: bool = False
) -> ReplayResult:
    """Re-deliver `letters` to their original topics for the handler that failed (same event
    id; see `tidings.dlq.replay`) and mark them replayed. With `skip_undecodable`, letters that
    do not decode into an event are left out and reported; otherwise such a letter fails the
    call (DeadLetterError, nothing replayed) unless it is an `unpublishable` outbox row."""
    skipped: list[DeadLetter] = []
    if skip_undecodable:
        skipped = [x for x in letters if x.event is None]
        letters = [x for x in letters if x.event is not None]
    return ReplayResult(tuple(await dlq.replay(broker, letters)), tuple(skipped))


async def purge_dead_letters(broker: Broker, letters: Sequence[DeadLetter]) -> list[DeadLetter]:
    """Mark `letters` purged (no longer listed or replayable; their records stay in the log).
    DeadLetterError, and nothing purged, if one is resolved already.

    A letter that holds its key (a handler with ordered dead letters, header
    `tidings-dlq-ordered`) first gets a purge marker in its original topic, so that its
    handler releases the events parked behind it, in order (`tidings.runtime.parking`)."""
    resolutions = await read_resolutions(broker)
    if all(x.resolution is None and x.position not in resolutions for x in letters):
        await _release_parked(broker, [x for x in letters if x.record.header(ORDERED)])
    return await dlq.purge(broker, letters)


async def _release_parked(broker: Broker, letters: Sequence[DeadLetter]) -> None:
    """Publish the purge marker of each of `letters` (a copy of the original record for no
    handler, naming the handler whose key it releases), before the purge is recorded: a crash
    in between leaves the letter listed, and purging it again sends a marker the handler
    ignores."""
    markers: dict[str, list[Message]] = {}
    for letter in letters:
        handler, topic = letter.record.header(ORDERED), letter.original_topic
        if handler is None or topic is None or letter.record.key is None:
            continue
        headers = (*dlq.strip(letter.record.headers), (dlq.REPLAY_FOR, b""), (PURGED_FOR, handler))
        markers.setdefault(topic, []).append(
            Message(letter.record.value, letter.record.key, headers)
        )
    for topic, messages in markers.items():
        try:
            await broker.publish(topic, messages)
        except UnknownTopicError:
            continue  # nothing can wait behind it there any more


async def get_dead_letter(broker: Broker, position: str) -> DeadLetter:
    """The dead letter at `position` (`<dlq-topic>:<partition>:<offset>`), resolved or not,
    read on its own. DeadLetterError if there is none there."""
    topic, partition, offset = _parse_position(position)
    try:
        info = await broker.admin.describe_topic(topic)
        tp = partition_of(info, partition)
    except UnknownTopicError as exc:
        raise DeadLetterError(f"no dead letter at {position}: {exc}") from None
    reader = require(broker, CanRead, "read records without a consumer group")
    records: list[Record] = []
    if offset < info.partitions[partition].end_offset:
        records = await reader.read(tp, offset, 1)
    if not records or records[0].offset != offset:
        raise DeadLetterError(f"no dead letter at {position} (not in the log, or removed)")
    resolutions = await read_resolutions(broker)
    return dead_letter_from_record(records[0], resolutions.get(position))


async def dead_letter_page(
    broker: Broker,
    where: DeadLetterFilter | None = None,
    *,
    include_resolved: bool = False,
    cursor: str | None = None,
    limit: int = 50,
) -> DeadLetterPage:
    """Up to `limit` dead letters matching `where`, oldest first (each partition in log order,
    merged by append time), after `cursor` (a page's `cursor`; None: from the start).

    Reads each dead-letter partition a chunk at a time and stops once the page is full, so a
    page costs about `limit` records per partition, not whole topics (a filter that matches
    few letters reads on until the page fills or the topics end; the resolutions topic is read
    whole). ConfigError for a malformed cursor or a limit below 1."""
    if limit < 1:
        raise ConfigError(f"limit must be >= 1, got {limit}")
    w = _filters(where)
    after = _parse_cursor(cursor)
    admin = require(broker.admin, CanInspect, "list topics, so it cannot find dead letters")
    reader = require(broker, CanRead, "read records without a consumer group")
    resolutions = await read_resolutions(broker)
    streams: list[_Stream] = []
    for info in await admin.list_topics():
        if w.covers(info.name):
            for p in info.partitions:
                tp = TopicPartition(info.name, p.partition)
                start = after.get(tp, p.start_offset)
                streams.append(_Stream(reader, tp, start, p.end_offset, limit))

    def accept(record: Record) -> DeadLetter | None:
        resolution = resolutions.get(f"{record.topic}:{record.partition}:{record.offset}")
        if resolution is not None and not include_resolved:
            return None
        letter = dead_letter_from_record(record, resolution)
        return letter if w.matches(letter) else None

    heads: list[_Head] = []
    for index in range(len(streams)):
        await _advance(heads, streams, index, accept)
    letters: list[DeadLetter] = []
    while heads and len(letters) < limit:
        _, index, letter = heapq.heappop(heads)
        letters.append(letter)
        streams[index].position = letter.dlq_offset + 1
        await _advance(heads, streams, index, accept)
    for _, index, letter in heads:
        streams[index].position = letter.dlq_offset
    if all(s.position >= s.end for s in streams):
        return DeadLetterPage(tuple(letters), None)
    return DeadLetterPage(
        tuple(letters), ",".join(f"{s.tp.topic}:{s.tp.partition}:{s.position}" for s in streams)
    )


_Head = tuple[tuple[int, str, int, int], int, DeadLetter]


class _Stream:
    """One dead-letter partition read forward in growing chunks. `position`: the next offset
    not taken yet (the letters before it were returned or did not match); `scan`: the next
    offset to read."""

    def __init__(
        self, reader: CanRead, tp: TopicPartition, start: int, end: int, chunk: int
    ) -> None:
        self.reader, self.tp, self.end = reader, tp, end
        self.position = self.scan = start
        self.chunk = min(dlq.READ_PAGE, chunk + 1)
        self.buffer: list[Record] = []

    async def next_record(self) -> Record | None:
        if not self.buffer and self.scan < self.end:
            want = min(self.chunk, self.end - self.scan)
            page = await self.reader.read(self.tp, self.scan, want)
            self.buffer = [r for r in reversed(page) if self.scan <= r.offset < self.end]
            self.chunk = min(dlq.READ_PAGE, self.chunk * 2)
            if not self.buffer:
                self.scan = self.end
        if not self.buffer:
            self.position = self.end
            return None
        record = self.buffer.pop()
        self.scan = record.offset + 1
        return record


async def _advance(
    heads: list[_Head],
    streams: list[_Stream],
    index: int,
    accept: Callable[[Record], DeadLetter | None],
) -> None:
    """Push stream `index`'s next matching letter (it has none in `heads`)."""
    stream = streams[index]
    while (record := await stream.next_record()) is not None:
        letter = accept(record)
        if letter is None:
            stream.position = record.offset + 1
            continue
        key = (record.timestamp, record.topic, record.partition, record.offset)
        heapq.heappush(heads, (key, index, letter))
        return


def _parse_position(text: str) -> tuple[str, int, int]:
    topic, partition, offset = _split_position(text, "dead-letter position")
    if not dlq.is_dead_letter_topic(topic):
        raise DeadLetterError(f"{text!r} is not in a dead-letter topic (<service>.dlq)")
    return topic, partition, offset


def _parse_cursor(cursor: str | None) -> dict[TopicPartition, int]:
    if not cursor:
        return {}
    positions = (_split_position(part, "dead-letter page cursor") for part in cursor.split(","))
    return {TopicPartition(t, p): o for t, p, o in positions}


def _split_position(text: str, what: str) -> tuple[str, int, int]:
    topic, _, rest = text.rpartition(":")
    topic, _, partition = topic.rpartition(":")
    try:
        numbers = int(partition), int(rest)
    except ValueError:
        numbers = (-1, -1)
    if not topic or min(numbers) < 0:
        raise ConfigError(f"malformed {what} {text!r}: expected TOPIC:PARTITION:OFFSET")
    return topic, *numbers
