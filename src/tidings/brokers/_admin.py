"""Group administration shared by the brokers that coordinate groups themselves."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence

from tidings.brokers import _groups
from tidings.errors import ConfigError, UnknownTopicError
from tidings.records import GroupInfo, MemberInfo, PartitionLag, SeekTo, TopicPartition

PartitionCounts = Callable[[Collection[str]], dict[str, int]]
Watermarks = Callable[[Collection[TopicPartition]], dict[TopicPartition, tuple[int, int]]]
OffsetForTimestamp = Callable[[TopicPartition, int], int]


def _existing_counts(topics: Collection[str], partition_counts: PartitionCounts) -> dict[str, int]:
    counts = {}
    for topic in sorted(topics):
        try:
            counts.update(partition_counts([topic]))
        except UnknownTopicError:
            continue
    return counts


def describe_group(
    name: str,
    state: _groups.GroupState,
    partition_counts: PartitionCounts,
    watermarks: Watermarks,
) -> GroupInfo:
    """Members (live ones only: expire the state first) and per-partition lag."""
    topics = {t for m in state.members.values() for t in m.topics}
    topics |= {tp.topic for tp in state.offsets}
    counts = _existing_counts(topics, partition_counts)
    tps = [TopicPartition(t, p) for t, n in counts.items() for p in range(n)]
    marks = watermarks(tps)
    members = tuple(
        MemberInfo(
            m.member_id,
            m.client,
            m.topics,
            tuple(
                sorted(
                    (tp for tp, owner in state.owners.items() if owner == m.member_id),
                    key=lambda tp: (tp.topic, tp.partition),
                )
            ),
        )
        for m in sorted(state.members.values(), key=lambda m: m.member_id)
    )
    lags = tuple(
        PartitionLag(
            tp.topic,
            tp.partition,
            state.offsets.get(tp),
            marks[tp][0],
            marks[tp][1],
            state.owners.get(tp),
        )
        for tp in tps
    )
    return GroupInfo(name, members, lags)


def resolve_reset(
    group: str,
    state: _groups.GroupState,
    topics: Sequence[str],
    to: SeekTo,
    partition_counts: PartitionCounts,
    watermarks: Watermarks,
    offset_for_timestamp: OffsetForTimestamp,
) -> dict[TopicPartition, int]:
    """New committed offsets for every partition of `topics`; refuses while members are live."""
    _groups.expire(state, int(time.time() * 1000))
    if state.members:
        raise ConfigError(
            f"consumer group {group!r} has {len(state.members)} live member(s); stop them "
            "before resetting its offsets"
        )
    if not topics:
        raise ConfigError("reset_offsets needs at least one topic")
    counts = partition_counts(topics)
    tps = [TopicPartition(t, p) for t, n in counts.items() for p in range(n)]
    marks = watermarks(tps)
    offsets = {}
    for tp in tps:
        start, end = marks[tp]
        if to.earliest:
            offsets[tp] = start
        elif to.latest:
            offsets[tp] = end
        elif to.timestamp is not None:
            offsets[tp] = offset_for_timestamp(tp, int(to.timestamp.timestamp() * 1000))
        elif to.offset is not None:
            offsets[tp] = min(max(to.offset, start), end)
        else:
            raise ConfigError("SeekTo needs earliest, latest, timestamp or offset")
    return offsets
