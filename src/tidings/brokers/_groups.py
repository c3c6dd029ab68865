"""Consumer-group coordination without a coordinator process.

Every member runs the same deterministic steps on the group's shared state (held in memory for
the memory broker, in SQLite rows for the sqlite broker, always under one lock/transaction):

1. its own heartbeat is recorded; members silent for longer than their session timeout are
   removed and their partitions become free;
2. the target assignment is recomputed from the live members (balanced, sticky);
3. the member claims target partitions that nobody owns;
4. partitions it owns but which are now targeted elsewhere are reported for revocation: the
   member finishes in-flight work, commits and releases them, and only then can the new target
   claim them. Two live members never own one partition.

Offset commits are fenced: they are stored only for partitions the committing member owns.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from tidings.records import TopicPartition


@dataclass(slots=True)
class Member:
    member_id: str
    client: str
    topics: tuple[str, ...]
    session_ms: int
    heartbeat_ms: int


@dataclass(slots=True)
class GroupState:
    """Everything the coordination steps read and write for one group."""

    members: dict[str, Member] = field(default_factory=dict)
    owners: dict[TopicPartition, str] = field(default_factory=dict)
    targets: dict[TopicPartition, str] = field(default_factory=dict)
    offsets: dict[TopicPartition, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """What a member learns from one heartbeat."""

    owned: frozenset[TopicPartition]
    revoke: frozenset[TopicPartition]
    rejected: frozenset[TopicPartition]
    changed: bool


def assign(
    members: Mapping[str, Collection[str]],
    partitions: Mapping[str, int],
    previous: Mapping[TopicPartition, str],
) -> dict[TopicPartition, str]:
    """A balanced assignment of every partition of the subscribed topics to members.

    Per topic, its subscribers get floor or ceil of an even share; the extra partitions go to
    the members with the least load so far, so many single-partition topics still spread out.
    A partition stays with its previous member whenever that member has room (sticky).
    Deterministic: the same inputs give the same result in every process.
    """
    load = dict.fromkeys(members, 0)
    result: dict[TopicPartition, str] = {}
    for topic in sorted(partitions):
        eligible = sorted(m for m, topics in members.items() if topic in topics)
        if not eligible:
            continue
        count = partitions[topic]
        base, extra = divmod(count, len(eligible))
        by_load = sorted(eligible, key=lambda m: (load[m], m))
        quota = {m: base + (1 if i < extra else 0) for i, m in enumerate(by_load)}
        unplaced: list[TopicPartition] = []
        for p in range(count):
            tp = TopicPartition(topic, p)
            owner = previous.get(tp)
            if owner in quota and quota[owner] > 0:
                result[tp] = owner
                quota[owner] -= 1
            else:
                unplaced.append(tp)
        for tp in unplaced:
            member = next(m for m in eligible if quota[m] > 0)
            result[tp] = member
            quota[member] -= 1
        for tp in (TopicPartition(topic, p) for p in range(count)):
            load[result[tp]] += 1
    return result


def join(state: GroupState, member: Member) -> None:
    state.members[member.member_id] = member


def expire(state: GroupState, now_ms: int) -> bool:
    """Remove members whose session ran out and free their partitions; True if any."""
    dead = [m.member_id for m in state.members.values() if now_ms - m.heartbeat_ms > m.session_ms]
    for member_id in dead:
        _remove(state, member_id)
    return bool(dead)


def leave(state: GroupState, member_id: str, commit: Mapping[TopicPartition, int]) -> None:
    _commit(state, member_id, commit)
    _remove(state, member_id)


def heartbeat(
    state: GroupState,
    member_id: str,
    now_ms: int,
    partitions: Mapping[str, int],
    commit: Mapping[TopicPartition, int],
    release: Collection[TopicPartition],
) -> Heartbeat | None:
    """One coordination round for `member_id`; None if the member is no longer in the group."""
    me = state.members.get(member_id)
    if me is None:
        return None
    me.heartbeat_ms = now_ms
    rejected = _commit(state, member_id, commit)
    changed = expire(state, now_ms)
    for tp in release:
        if state.owners.get(tp) == member_id:
            del state.owners[tp]
            changed = True
    subscriptions = {m.member_id: m.topics for m in state.members.values()}
    state.targets = assign(subscriptions, partitions, state.targets)
    for tp, target in state.targets.items():
        if target == member_id and tp not in state.owners:
            state.owners[tp] = member_id
            changed = True
    owned = frozenset(tp for tp, owner in state.owners.items() if owner == member_id)
    revoke = frozenset(tp for tp in owned if state.targets.get(tp) != member_id)
    return Heartbeat(owned, revoke, rejected, changed)


def _commit(
    state: GroupState, member_id: str, offsets: Mapping[TopicPartition, int]
) -> frozenset[TopicPartition]:
    rejected = []
    for tp, offset in offsets.items():
        if state.owners.get(tp) == member_id:
            state.offsets[tp] = offset
        else:
            rejected.append(tp)
    return frozenset(rejected)


def _remove(state: GroupState, member_id: str) -> None:
    state.members.pop(member_id, None)
    for tp in [tp for tp, owner in state.owners.items() if owner == member_id]:
        del state.owners[tp]
    for tp in [tp for tp, target in state.targets.items() if target == member_id]:
        del state.targets[tp]
