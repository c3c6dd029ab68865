"""The Broker interface: the transport every backend (memory, sqlite, kafka) implements.

A broker stores *records* in named, partitioned, append-only topics; it knows nothing about
events. Guarantees every backend gives:

* **Publish** is at-least-once and durable when it returns (per the backend's durability
  setting). Records of one call that land on the same partition keep their order; a key always
  lands on the same partition (Kafka's murmur2 partitioner) for a given partition count.
* **Subscribe** joins a consumer group. Each partition of the subscribed topics is owned by at
  most one live member of the group at a time; a member only receives batches of partitions it
  owns. Within a partition, batches arrive in offset order and the next batch of a partition is
  not delivered until the previous one is acked or nacked.
* **Commit** stores, per partition, the offset of the next record to process. A restarted
  consumer resumes exactly there: no gap, and no duplicate after a clean close. Commits for
  partitions the member no longer owns are refused (fencing).

A backend implements the core - `Broker` (publish, subscribe, close, admin), `Consumer`
(start, fetch, ack, nack, commit, assignment, close) and `Admin` (create_topic,
describe_topic): what services need to run - and declares what else it can do for tooling by
also deriving from capabilities:
`CanRead` (a broker reading records without a group: `tidings tail`, dead letters),
`CanSeek` (a consumer moving its partitions), `CanInspect` (an admin listing topics and groups
and telling lag), `CanResetOffsets` (`tidings replay`) and `CanEnforceRetention`. `require`
says clearly which one is missing.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Self, TypeVar

from tidings.records import (
    Batch,
    GroupInfo,
    Message,
    OffsetReset,
    Publishable,
    Published,
    Record,
    SeekTo,
    TopicInfo,
    TopicPartition,
)

C = TypeVar("C")

DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024

UNLIMITED = -1
"""`retention_ms` / `retention_bytes` of `Admin.create_topic`: never delete records (None means
the backend's default: unlimited on the embedded brokers, the cluster's default on Kafka)."""


# core ------------------------------------------------------------------------------------


class Consumer(abc.ABC):
    """A member of a consumer group. Use from one asyncio task at a time; not thread-safe.

    Delivery is at-least-once: records after the last committed offset are delivered again after
    a crash, a nack or a rebalance.
    """

    @abc.abstractmethod
    async def start(self) -> None:
        """Join the group and claim partitions now; otherwise the first fetch does. Also
        called by `async with consumer`."""

    @abc.abstractmethod
    async def fetch(self, timeout: float | None = None) -> Batch | None:
        """The next batch of any owned partition that has no batch in flight, or None on timeout."""

    def __aiter__(self) -> AsyncIterator[Batch]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Batch]:
        while True:
            batch = await self.fetch()
            if batch is not None:
                yield batch

    @abc.abstractmethod
    def ack(self, batch: Batch) -> None:
        """Mark `batch` processed: its partition may deliver again, and its offset is committed
        by the next `commit()`, the periodic auto-commit, a rebalance or `close()`."""

    @abc.abstractmethod
    def nack(self, batch: Batch, offset: int | None = None) -> None:
        """Mark `batch` not processed: its partition redelivers from `offset` (default: the
        batch's first offset)."""

    @abc.abstractmethod
    async def commit(self, batch: Batch | None = None) -> None:
        """Ack `batch` (if given) and durably commit every acked offset now.

        Raises CommitFailedError if a partition with an acked offset is no longer owned."""

    @abc.abstractmethod
    def assignment(self) -> frozenset[TopicPartition]:
        """The partitions this member owns right now."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Commit acked offsets, release partitions and leave the group. Idempotent."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class Admin(abc.ABC):
    """What a service needs of topic administration: its topics exist."""

    @abc.abstractmethod
    async def create_topic(
        self,
        name: str,
        partitions: int = 1,
        *,
        retention_ms: int | None = None,
        retention_bytes: int | None = None,
        exist_ok: bool = False,
    ) -> TopicInfo:
        """Create a topic. With `exist_ok`, an existing topic is returned unchanged.
        `retention_*` None means the backend's default; UNLIMITED (-1) never deletes."""

    @abc.abstractmethod
    async def describe_topic(self, name: str) -> TopicInfo:
        """Raises UnknownTopicError if the topic does not exist."""

    async def durability_warnings(self, topics: Sequence[str]) -> list[str]:
        """Settings of `topics` (or of the broker) under which an acknowledged publish can
        still be lost, each as a sentence for a log line; none by default."""
        return []


class Broker(abc.ABC):
    """A connection to an event log. Safe to share between tasks of one event loop."""

    url: str
    max_message_bytes: int
    """The largest message (`Message.size`) `publish` accepts; larger ones raise
    MessageTooLargeError before anything is written."""
    namespace: str = ""
    """Keeps environments sharing one cluster apart (Kafka's `group_prefix`): tidings' own
    topics, such as the schema registry, are named with it."""

    @property
    @abc.abstractmethod
    def admin(self) -> Admin: ...

    @abc.abstractmethod
    async def publish(self, topic: str, messages: Sequence[Message]) -> list[Published]:
        """Append `messages` to `topic`; returns where each landed, in order.

        Raises UnknownTopicError, MessageTooLargeError (nothing of the call written), TypeError
        for a message not made of bytes, or a backend error. Durable when it returns."""

    async def publish_events(
        self, topic: str, events: Sequence[Publishable], *, binary: bool = False
    ) -> list[Published]:
        """Publish events as CloudEvents records (structured JSON, or the Kafka binary binding
        with `binary=True`); same guarantees as `publish`. Partitioned by `event.key`."""
        return await self.publish(topic, [e.to_message(binary=binary) for e in events])

    @abc.abstractmethod
    def subscribe(
        self,
        group: str,
        topics: Sequence[str],
        *,
        auto_offset_reset: OffsetReset | str = OffsetReset.EARLIEST,
        max_batch: int = 1000,
        session_timeout: float = 10.0,
    ) -> Consumer:
        """Join consumer group `group` for `topics`; the consumer starts on first use.

        A member that stops heartbeating (crash, kill -9) loses its partitions to the survivors
        after `session_timeout` seconds. Heartbeats run in the background, so a slow handler
        does not make the member leave the group."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Flush pending publishes and release resources. Idempotent."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


# capabilities ----------------------------------------------------------------------------


class CanRead(abc.ABC):
    """A broker that reads records without a consumer group (tooling: tail, dead letters)."""

    @abc.abstractmethod
    async def read(self, tp: TopicPartition, offset: int, max_records: int) -> list[Record]:
        """Up to `max_records` records of one partition from `offset` on. Starts at the oldest
        retained record if `offset` was removed by retention."""


class CanSeek(abc.ABC):
    """A consumer that moves its own partitions."""

    @abc.abstractmethod
    async def seek(self, tp: TopicPartition, to: SeekTo) -> int:
        """Move an owned partition's position; returns the new offset. Drops any in-flight batch."""


class CanInspect(abc.ABC):
    """An admin that lists topics and groups and tells a group's lag."""

    @abc.abstractmethod
    async def list_topics(self) -> list[TopicInfo]: ...

    @abc.abstractmethod
    async def list_groups(self) -> list[str]: ...

    @abc.abstractmethod
    async def describe_group(self, name: str) -> GroupInfo:
        """Members and, per partition of every topic the group has committed to or subscribes
        to, the committed offset, end offset and lag."""


class CanResetOffsets(abc.ABC):
    """An admin that sets a group's committed offsets (`tidings replay`)."""

    @abc.abstractmethod
    async def reset_offsets(
        self, group: str, topics: Sequence[str], to: SeekTo
    ) -> dict[TopicPartition, int]:
        """Set the group's committed offsets for every partition of `topics`; returns them.

        Refused (ConfigError) while the group has live members."""


class CanEnforceRetention(abc.ABC):
    """An admin that deletes records past their topic's retention on demand."""

    @abc.abstractmethod
    async def enforce_retention(self) -> int:
        """Delete records past their topic's retention now; returns how many were deleted.

        Backends also do this on their own in the background; this forces it."""


def require(obj: object, capability: type[C], doing: str) -> C:
    """`obj` as `capability`, or ConfigError saying that its backend cannot do `doing`."""
    from tidings.errors import ConfigError

    if not isinstance(obj, capability):
        raise ConfigError(
            f"{type(obj).__name__} cannot {doing}: it does not implement {capability.__name__}"
        )
    return obj


# helpers for backends ----------------------------------------------------------------------

_TOPIC_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def validate_topic_name(name: str) -> str:
    """Kafka's rules: 1-249 characters of [a-zA-Z0-9._-], and not '.' or '..'."""
    from tidings.errors import TopicError

    if not isinstance(name, str) or not name:
        raise TopicError("topic name must be a non-empty string")
    if len(name) > 249:
        raise TopicError(f"topic name is {len(name)} characters long; the maximum is 249")
    if name in {".", ".."}:
        raise TopicError(f"topic name {name!r} is not allowed")
    bad = sorted(set(name) - _TOPIC_CHARS)
    if bad:
        raise TopicError(
            f"topic name {name!r} contains {''.join(bad)!r}; use letters, digits, '.', '_', '-'"
        )
    return name


def validate_partitions(partitions: int) -> int:
    from tidings.errors import TopicError

    if isinstance(partitions, bool) or not isinstance(partitions, int) or partitions < 1:
        raise TopicError(f"partition count must be an integer >= 1, got {partitions!r}")
    return partitions


def validate_retention(label: str, value: int | None) -> int | None:
    """None, UNLIMITED (-1) or a positive integer; ConfigError naming `label` otherwise."""
    from tidings.errors import ConfigError

    if value is None or (value == UNLIMITED and not isinstance(value, bool)):
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"{label} must be a positive integer, -1 (unlimited) or None (the default), "
            f"got {value!r}"
        )
    return value


def check_sizes(topic: str, messages: Sequence[Message], max_bytes: int) -> None:
    """Raise TypeError naming the first message that is not made of bytes (a `Message` does
    not check its fields when built, and one stored that way would be unreadable for every
    consumer), MessageTooLargeError naming the first one over `max_bytes`."""
    from tidings.errors import MessageTooLargeError

    for index, message in enumerate(messages):
        if not _well_formed(message):
            raise TypeError(
                f"message {index} for topic {topic!r}: value and key must be bytes (key may be "
                "None) and headers a tuple of (str, bytes) pairs (nothing of this publish was "
                f"written); got {message!r:.200}"
            )
        size = message.size
        if size > max_bytes:
            raise MessageTooLargeError(
                f"message {index} for topic {topic!r} is {size} bytes; the maximum is "
                f"{max_bytes} (nothing of this publish was written)"
            )


def _well_formed(message: Message) -> bool:
    key, headers = message.key, message.headers
    if message.value.__class__ is not bytes or not (key is None or key.__class__ is bytes):
        return False
    if headers.__class__ is not tuple:
        return False
    try:
        for name, value in headers:
            if name.__class__ is not str or value.__class__ is not bytes:
                return False
    except (TypeError, ValueError):
        return False
    return True


def check_subscription(
    group: str,
    topics: Sequence[str],
    auto_offset_reset: OffsetReset | str,
    max_batch: int,
    session_timeout: float,
) -> OffsetReset:
    """Validate `Broker.subscribe` arguments (ConfigError naming the problem); returns the
    offset reset policy."""
    from tidings.errors import ConfigError

    if not group:
        raise ConfigError("consumer group name must not be empty")
    if not topics:
        raise ConfigError("subscribe needs at least one topic")
    if max_batch < 1:
        raise ConfigError(f"max_batch must be >= 1, got {max_batch}")
    if session_timeout <= 0:
        raise ConfigError(f"session_timeout must be > 0, got {session_timeout}")
    try:
        return OffsetReset(auto_offset_reset)
    except ValueError:
        raise ConfigError(
            f"auto_offset_reset must be 'earliest' or 'latest', got {auto_offset_reset!r}"
        ) from None
