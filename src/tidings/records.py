"""Plain values that cross every layer: what a broker stores and returns (Message, Record,
Batch...), what tooling reports (TopicInfo, GroupInfo...), and `Publishable`, what can become a
Message. No behaviour beyond their own fields; nothing here imports the rest of tidings but
its errors."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import msgspec

from tidings.errors import ConfigError

Headers = tuple[tuple[str, bytes], ...]


UNREADABLE_HEADERS = "tidings-unreadable-headers"
"""A header a consumer puts on a record whose original headers it could not read (say, a Kafka
header name that is not UTF-8), in place of those headers; its value says why. Such a record
never decodes into an event: it is dead-lettered with that reason, and the partition moves on."""


class TopicPartition(msgspec.Struct, frozen=True, gc=False):
    """A partition of a topic; hashable (a dict key on every consumer's hot path, hence a
    Struct: hashing and comparing it stays in C)."""

    topic: str
    partition: int

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]"


class Message(msgspec.Struct, frozen=True, gc=False):
    """A record to publish. `partition=None` lets the broker choose: by key, else round-robin."""

    value: bytes
    key: bytes | None = None
    headers: Headers = ()
    partition: int | None = None

    @property
    def size(self) -> int:
        """Bytes counted against the broker's maximum message size."""
        size = len(self.value)
        if self.key is not None:
            size += len(self.key)
        for name, value in self.headers:
            size += len(name) + len(value)
        return size


class Record(msgspec.Struct, frozen=True, gc=False):
    """A record read back from a topic; `timestamp` is its append time in epoch milliseconds."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    value: bytes
    key: bytes | None = None
    headers: Headers = ()

    def header(self, name: str) -> bytes | None:
        """The last value of header `name`, or None."""
        for k, v in reversed(self.headers):
            if k == name:
                return v
        return None


class Batch(msgspec.Struct, frozen=True):
    """Consecutive records of one partition, in offset order."""

    topic: str
    partition: int
    records: Sequence[Record]

    @property
    def tp(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)

    @property
    def first_offset(self) -> int:
        return self.records[0].offset

    @property
    def next_offset(self) -> int:
        """The offset to commit once every record of this batch is processed."""
        return self.records[-1].offset + 1

    def __len__(self) -> int:
        return len(self.records)


class Published(msgspec.Struct, frozen=True, gc=False):
    """Where one published message landed."""

    partition: int
    offset: int


class OffsetReset(enum.StrEnum):
    """Where a group without a committed offset starts."""

    EARLIEST = "earliest"
    LATEST = "latest"


@dataclass(frozen=True, slots=True)
class SeekTo:
    """A position to seek to: exactly one of earliest, latest, a timestamp or an offset."""

    earliest: bool = False
    latest: bool = False
    timestamp: datetime | None = None
    offset: int | None = None

    @classmethod
    def parse(cls, text: str) -> SeekTo:
        """`earliest`, `latest`, an integer offset or an ISO-8601 time (naive means UTC)."""
        value = text.strip()
        if value == "earliest":
            return cls(earliest=True)
        if value == "latest":
            return cls(latest=True)
        try:
            offset = int(value)
        except ValueError:
            pass
        else:
            if offset < 0:
                raise ConfigError(f"offset must be >= 0, got {offset}")
            return cls(offset=offset)
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            raise ConfigError(
                f"cannot seek to {text!r}: expected earliest, latest, an offset or an ISO time"
            ) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return cls(timestamp=when)


@dataclass(frozen=True, slots=True)
class PartitionInfo:
    partition: int
    start_offset: int
    end_offset: int

    @property
    def records(self) -> int:
        return self.end_offset - self.start_offset


@dataclass(frozen=True, slots=True)
class TopicInfo:
    name: str
    partitions: tuple[PartitionInfo, ...]
    retention_ms: int | None = None
    retention_bytes: int | None = None

    @property
    def records(self) -> int:
        return sum(p.records for p in self.partitions)


@dataclass(frozen=True, slots=True)
class PartitionLag:
    topic: str
    partition: int
    committed: int | None
    start_offset: int
    end_offset: int
    owner: str | None

    @property
    def lag(self) -> int:
        """Retained records the group has not committed yet."""
        position = self.start_offset if self.committed is None else self.committed
        return max(0, self.end_offset - max(position, self.start_offset))


@dataclass(frozen=True, slots=True)
class MemberInfo:
    member_id: str
    client: str
    topics: tuple[str, ...]
    partitions: tuple[TopicPartition, ...]


@dataclass(frozen=True, slots=True)
class GroupInfo:
    name: str
    members: tuple[MemberInfo, ...]
    partitions: tuple[PartitionLag, ...] = field(default=())

    @property
    def lag(self) -> int:
        return sum(p.lag for p in self.partitions)


class Publishable(Protocol):
    """What `Broker.publish_events` takes: anything that becomes a message (a `tidings.Event`)."""

    def to_message(self, *, binary: bool = False) -> Message: ...
