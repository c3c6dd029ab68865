"""Consumer groups' state as rows of the embedded broker's file (see `_groups` for the rules)."""

from __future__ import annotations

import dataclasses
import sqlite3

import msgspec

from tidings._sqlite import now_ms
from tidings.brokers import _groups
from tidings.records import TopicPartition

_topics_decoder = msgspec.json.Decoder(tuple[str, ...])


def load_group(conn: sqlite3.Connection, group: str) -> _groups.GroupState:
    state = _groups.GroupState()
    for member_id, client, topics, session_ms, heartbeat_ms in conn.execute(
        "SELECT member_id, client, topics, session_ms, heartbeat_ms FROM group_members"
        " WHERE grp = ?",
        (group,),
    ):
        state.members[member_id] = _groups.Member(
            member_id, client, _topics_decoder.decode(topics), session_ms, heartbeat_ms
        )
    for topic, partition, owner, target, committed in conn.execute(
        "SELECT topic, partition, owner, target, committed FROM group_partitions WHERE grp = ?",
        (group,),
    ):
        tp = TopicPartition(topic, partition)
        if owner is not None:
            state.owners[tp] = owner
        if target is not None:
            state.targets[tp] = target
        if committed is not None:
            state.offsets[tp] = committed
    return state


def save_group(
    conn: sqlite3.Connection,
    group: str,
    before: _groups.GroupState,
    after: _groups.GroupState,
) -> None:
    gone = [(group, m) for m in before.members if m not in after.members]
    conn.executemany("DELETE FROM group_members WHERE grp = ? AND member_id = ?", gone)
    conn.executemany(
        "INSERT OR REPLACE INTO group_members"
        "(grp, member_id, client, topics, session_ms, heartbeat_ms)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        [
            (
                group,
                m.member_id,
                m.client,
                msgspec.json.encode(m.topics).decode(),
                m.session_ms,
                m.heartbeat_ms,
            )
            for m in after.members.values()
            if before.members.get(m.member_id) != m
        ],
    )
    now = now_ms()
    changed = []
    emptied = []
    tps = set(before.owners) | set(after.owners) | set(before.targets) | set(after.targets)
    tps |= set(before.offsets) | set(after.offsets)
    for tp in tps:
        old = (before.owners.get(tp), before.targets.get(tp), before.offsets.get(tp))
        new = (after.owners.get(tp), after.targets.get(tp), after.offsets.get(tp))
        if new == (None, None, None):
            emptied.append((group, tp.topic, tp.partition))
        elif old != new:
            changed.append((group, tp.topic, tp.partition, *new, now))
    conn.executemany(
        "DELETE FROM group_partitions WHERE grp = ? AND topic = ? AND partition = ?", emptied
    )
    conn.executemany(
        "INSERT INTO group_partitions"
        "(grp, topic, partition, owner, target, committed, committed_ms)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (grp, topic, partition) DO UPDATE SET owner = excluded.owner,"
        " target = excluded.target, committed = excluded.committed,"
        " committed_ms = CASE WHEN group_partitions.committed IS excluded.committed"
        " THEN group_partitions.committed_ms ELSE excluded.committed_ms END",
        changed,
    )


def copy_state(state: _groups.GroupState) -> _groups.GroupState:
    return _groups.GroupState(
        {k: dataclasses.replace(m) for k, m in state.members.items()},
        dict(state.owners),
        dict(state.targets),
        dict(state.offsets),
    )
