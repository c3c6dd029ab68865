"""Consumer groups: list, describe (lag per partition), and reset offsets (replay)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tidings.brokers.base import Broker, CanInspect, CanResetOffsets, require
from tidings.errors import ConfigError
from tidings.records import GroupInfo, SeekTo


@dataclass(frozen=True, slots=True)
class GroupSummary:
    """A listed group; `info` is None when the broker lists it but cannot describe it (a group
    with only leftover assignment rows)."""

    name: str
    info: GroupInfo | None

    @property
    def members(self) -> int | None:
        return None if self.info is None else len(self.info.members)

    @property
    def lag(self) -> int | None:
        return None if self.info is None else self.info.lag


@dataclass(frozen=True, slots=True)
class GroupOffset:
    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class GroupReset:
    """Where `group` resumes after `reset_offsets`, sorted by topic and partition."""

    group: str
    offsets: tuple[GroupOffset, ...]


def _inspect(broker: Broker) -> CanInspect:
    return require(broker.admin, CanInspect, "list topics and groups")


async def list_groups(broker: Broker) -> list[GroupSummary]:
    """Every consumer group with its description (live members, lag)."""
    inspect = _inspect(broker)
    summaries: list[GroupSummary] = []
    for name in await inspect.list_groups():
        try:
            summaries.append(GroupSummary(name, await inspect.describe_group(name)))
        except ConfigError:
            summaries.append(GroupSummary(name, None))
    return summaries


async def describe_group(broker: Broker, name: str) -> GroupInfo:
    """Live members and, per partition, committed offset, end offset, lag and owner.
    ConfigError if the group does not exist."""
    return await _inspect(broker).describe_group(name)


async def reset_offsets(
    broker: Broker, group: str, to: SeekTo, topics: Sequence[str] = ()
) -> GroupReset:
    """Set `group`'s committed offsets on every partition of `topics` (default: every topic it
    has committed offsets on) to `to`, so it resumes there. ConfigError while the group has
    live members, for a group without committed offsets and no `topics`; UnknownTopicError for
    a topic that does not exist."""
    if not topics:
        info = await _inspect(broker).describe_group(group)
        topics = sorted({p.topic for p in info.partitions if p.committed is not None})
        if not topics:
            raise ConfigError(
                f"consumer group {group!r} has no committed offsets; name topics with --topic"
            )
    admin = require(broker.admin, CanResetOffsets, "reset a group's offsets")
    offsets = await admin.reset_offsets(group, list(topics), to)
    rows = sorted(offsets.items(), key=lambda item: (item[0].topic, item[0].partition))
    return GroupReset(group, tuple(GroupOffset(tp.topic, tp.partition, n) for tp, n in rows))
