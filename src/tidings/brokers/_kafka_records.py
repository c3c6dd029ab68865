"""Records of consumed Kafka messages, built when first read or ahead of time.

The Kafka consumer buffers librdkafka's messages as they come, split into runs of one partition
(`split_runs`, in the polling thread); a batch's `records` is a `KafkaRecords` sequence over its
items that builds their `Record`s the first time they are read. A consumer that reads none of
its batches builds none of their records (about 1 µs each, most of the consumer's per-message
cost). Once the application reads its batches' records (the service runtime reads every one), the
polling thread builds them as they arrive instead (`build_records`), so that the work overlaps
the application's waits on I/O; the items of a batch are then `Record`s already, or a mix of both
around a change of mode.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import overload

import confluent_kafka as ck

from tidings.brokers.base import Headers, Record


def split_runs(
    messages: list[ck.Message], only_topic: str | None = None
) -> tuple[list[tuple[str, int, list[ck.Message]]], list[ck.KafkaError]]:
    """The messages without error, in runs of one partition (librdkafka hands out each partition's
    messages in order, a fetched message set at a time), and the errors among them. `only_topic`:
    the one topic every message comes from (a consumer subscribed to one topic), which saves
    asking each message for it."""
    runs: list[tuple[str, int, list[ck.Message]]] = []
    errors: list[ck.KafkaError] = []
    topic = ""
    partition = -1
    run: list[ck.Message] = []
    append = run.append
    for message in messages:
        err = message.error()
        if err is not None:
            errors.append(err)
            continue
        p = message.partition()
        t = only_topic or message.topic()
        if p != partition or t != topic:
            assert t is not None and p is not None
            topic, partition, run = t, p, []
            append = run.append
            runs.append((t, p, run))
        append(message)
    return runs, errors


def to_record(message: ck.Message) -> Record:
    """The Record of one message without error."""
    topic = message.topic()
    partition = message.partition()
    assert topic is not None and partition is not None
    [record] = build_records(topic, partition, (message,))
    return record


def build_records(topic: str, partition: int, items: Iterable[ck.Message | Record]) -> list[Record]:
    """The Records of consecutive messages of one partition (items that are Records already are
    kept): the consumer's hottest loop. Built with positional arguments; consecutive messages with
    equal headers share one headers tuple."""
    records: list[Record] = []
    append = records.append
    last_raw: object = None
    headers: Headers = ()
    for item in items:
        if isinstance(item, Record):
            append(item)
            continue
        raw = item.headers()
        if raw is None:
            hs: Headers = ()
        elif raw == last_raw:
            hs = headers
        else:
            hs = headers = _headers(raw)
            last_raw = raw
        append(
            Record(
                topic,
                partition,
                item.offset(),  # type: ignore[arg-type]  # a message without error has one
                item.timestamp()[1],
                item.value() or b"",
                item.key(),
                hs,
            )
        )
    return records


def item_offset(item: ck.Message | Record) -> int:
    if isinstance(item, Record):
        return item.offset
    offset = item.offset()
    assert offset is not None  # a message without error has one
    return offset


class KafkaRecords(Sequence[Record]):
    """The records of consecutive messages of one partition, built when first read: iterating,
    slicing, `reversed`, `==`, `in`, `index` and `count` build them all once and keep them
    (`read` is then true; the messages are let go); an index before that builds just that
    record, anew each time; `len`, `first_offset`, `next_offset` and `repr` build nothing. Not
    meant to be read from two threads at once (both would build the records; no harm done but
    the time)."""

    __slots__ = ("_built", "items", "partition", "topic")

    def __init__(self, topic: str, partition: int, items: list[ck.Message | Record]) -> None:
        self.topic = topic
        self.partition = partition
        self.items = items
        self._built: list[Record] | None = None

    @property
    def read(self) -> bool:
        """Whether the records were read (built) as a whole."""
        return self._built is not None

    def built(self) -> list[Record]:
        if self._built is None:
            self._built = build_records(self.topic, self.partition, self.items)
            self.items = self._built  # type: ignore[assignment]  # the messages are not needed
        return self._built

    @property
    def first_offset(self) -> int:
        return item_offset(self.items[0])

    @property
    def next_offset(self) -> int:
        return item_offset(self.items[-1]) + 1

    def __len__(self) -> int:
        return len(self.items)

    @overload
    def __getitem__(self, index: int) -> Record: ...

    @overload
    def __getitem__(self, index: slice) -> list[Record]: ...

    def __getitem__(self, index: int | slice) -> Record | list[Record]:
        if self._built is None and not isinstance(index, slice):
            item = self.items[index]
            return item if isinstance(item, Record) else to_record(item)
        return self.built()[index]

    def __iter__(self) -> Iterator[Record]:
        return iter(self.built())

    def __reversed__(self) -> Iterator[Record]:
        return reversed(self.built())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, KafkaRecords):
            return self.built() == other.built()
        if isinstance(other, list):
            return self.built() == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # compares like the list it stands for

    def __repr__(self) -> str:
        if self._built is not None:
            return f"KafkaRecords({self._built!r})"
        return (
            f"KafkaRecords(topic={self.topic!r}, partition={self.partition}, {len(self)} records,"
            f" offsets {self.first_offset}..{self.next_offset - 1}, not built yet)"
        )


def _headers(raw: object) -> Headers:
    """librdkafka's headers (a list of (name, value) pairs; a null value is None) as a Record's."""
    pairs = raw.items() if isinstance(raw, dict) else raw
    assert isinstance(pairs, Iterable)
    return tuple((k, _header_value(v)) for k, v in pairs)


def _header_value(value: str | bytes | None) -> bytes:
    if value is None:
        return b""
    return value.encode() if isinstance(value, str) else value
