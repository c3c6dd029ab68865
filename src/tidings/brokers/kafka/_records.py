"""Records of consumed Kafka messages, built when first read or ahead of time.

The Kafka consumer buffers librdkafka's messages as they come, split into runs of one partition
(`split_runs`, in the polling thread); a batch's `records` is a `KafkaRecords` sequence over its
items that builds their `Record`s the first time they are read. A consumer that reads none of
its batches builds none of their records (about 1 µs each, most of the consumer's per-message
cost). Once the application reads its batches' records (the service runtime reads every one), the
polling thread builds them as they arrive instead (`build_records`), so that the work overlaps
the application's waits on I/O; the items of a batch are then `Record`s already, or a mix of both
around a change of mode. Each partition's items wait in a `PartitionBuffer`, which counts their
bytes for the consumer's pause rules.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from itertools import groupby
from typing import Any, Final, overload

import confluent_kafka as ck

from tidings.records import UNREADABLE_HEADERS, Headers, Record

_KEY: Final = ck.Message.key
_HEADERS: Final = ck.Message.headers


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


def build_records(topic: str, partition: int, messages: Sequence[ck.Message]) -> list[Record]:
    """The Records of consecutive messages of one partition: the consumer's hottest loop. Built
    with positional arguments; consecutive messages with equal headers share one headers tuple.
    A message whose headers cannot be read gets the single header UNREADABLE_HEADERS instead
    (`_raw_headers`)."""
    records: list[Record] = []
    append = records.append
    last_raw: object = None
    headers: Headers = ()
    for message, raw in zip(messages, _raw_headers(messages), strict=True):
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
                message.offset(),  # type: ignore[arg-type]  # a message without error has one
                message.timestamp()[1],
                message.value() or b"",
                message.key(),
                hs,
            )
        )
    return records


def _raw_headers(messages: Sequence[ck.Message]) -> list[object]:
    """Each message's `headers()`, or the UNREADABLE_HEADERS pair where that failed.

    confluent-kafka (2.16) fails on a header name that is not UTF-8 by returning a list with a
    NULL name while an exception is set. A call from Python bytecode may not notice (3.11's
    specialized method calls do not check), and the next comparison of that list crashes; a call
    from C (here `map`) checks every result and raises. The message keeps that list and returns
    it from the next `headers()` call without an exception: build a message's record once and
    keep it in the message's place."""
    raws: list[object] = []
    calls = map(_HEADERS, messages)
    while True:
        try:
            raws.extend(calls)
        except Exception as exc:  # nothing to pay per message on the happy path
            raws.append(_unreadable(exc))
        else:
            return raws


def message_bytes(messages: Sequence[ck.Message]) -> int:
    """The value + key bytes of `messages` (a message's `len` is its value's), counted in C."""
    return sum(map(len, messages)) + sum(map(len, filter(None, map(_KEY, messages))))


def item_bytes(items: Iterable[ck.Message | Record]) -> int:
    """The value + key bytes of messages and records alike."""
    size = 0
    for item in items:
        if isinstance(item, Record):
            size += len(item.value) + (len(item.key) if item.key is not None else 0)
        else:
            size += message_bytes((item,))
    return size


class PartitionBuffer:
    """One partition's buffered items (messages, or records built ahead) in offset order, added
    in runs, and `bytes`: the value + key bytes of every run not wholly taken yet. So `bytes` is
    at least what the items here hold, and more by at most the part already taken of the first
    run (taking costs nothing per item); it is 0 when the buffer is empty. Change it only
    through its methods (the consumer does so under its lock)."""

    __slots__ = ("_runs", "bytes", "items")

    def __init__(self) -> None:
        self.items: list[ck.Message | Record] = []
        self.bytes = 0
        self._runs: deque[list[int]] = deque()  # [items of the run still here, its bytes]

    def __len__(self) -> int:
        return len(self.items)

    def add(self, run: Sequence[ck.Message | Record], size: int) -> None:
        """Append the items of `run`, whose bytes are `size` (`message_bytes`)."""
        if run:
            self.items += run
            self._runs.append([len(run), size])
            self.bytes += size

    def take(self, count: int) -> list[ck.Message | Record]:
        """Remove and return the first `count` items (all of them if fewer)."""
        items = self.items
        if len(items) <= count:
            self.clear()
            return items
        taken = items[:count]
        del items[:count]
        runs = self._runs
        while count:
            run = runs[0]
            if run[0] > count:
                run[0] -= count
                break
            count -= run[0]
            self.bytes -= run[1]
            runs.popleft()
        return taken

    def put_back(self, items: list[ck.Message | Record]) -> None:
        """Put items taken before back in front, to be taken again."""
        if items:
            size = item_bytes(items)
            self.items[:0] = items
            self._runs.appendleft([len(items), size])
            self.bytes += size

    def clear(self) -> None:
        self.items = []
        self._runs.clear()
        self.bytes = 0


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
    record and keeps it in its message's place; `len`, `first_offset`, `next_offset` and `repr`
    build nothing. Not to be read from two threads at once (both would ask a message for its
    headers: see _raw_headers)."""

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
            built: list[Record] = []
            for kind, run in groupby(self.items, type):  # runs of messages or of records
                items: list[Any] = list(run)
                built += (
                    items if kind is Record else build_records(self.topic, self.partition, items)
                )
            self._built = built
            self.items = built  # type: ignore[assignment]  # the messages are not needed
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
            if isinstance(item, Record):
                return item
            record = self.items[index] = to_record(item)  # kept: see _raw_headers
            return record
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


def _unreadable(exc: Exception) -> list[tuple[str, bytes]]:
    """The headers a message gets when its `headers()` raised `exc`."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, UnicodeDecodeError):
        cause = cause.__cause__
    why = "a header name is not UTF-8" if cause is not None else f"unreadable ({exc!r})"
    return [(UNREADABLE_HEADERS, why.encode())]


def _header_value(value: str | bytes | None) -> bytes:
    if value is None:
        return b""
    return value.encode() if isinstance(value, str) else value
