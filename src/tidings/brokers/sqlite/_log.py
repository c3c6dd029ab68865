"""The embedded broker's storage: a partitioned log and consumer groups in one SQLite file.

Storage follows Kafka's record batches: each publish writes one row per partition it touches
(more if its records there are many or large: see MAX_ROW_BYTES), holding that partition's
records (msgpack) and their offset range, so appends and reads cost one row per batch, not per
record. Offsets are assigned under SQLite's single write lock, so commits happen in offset
order and a reader never sees a gap that fills in later.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import sqlite3
import threading
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import Any

import msgspec

from tidings import _sqlite
from tidings._notify import SCHEMA as LISTENERS_SCHEMA
from tidings._notify import Notifier, Peer
from tidings._notify import upgrade_schema as upgrade_listeners
from tidings.brokers import _groups
from tidings.brokers._local import GROUP_CHANGED, Listener
from tidings.brokers.base import (
    UNLIMITED,
    validate_partitions,
    validate_retention,
    validate_topic_name,
)
from tidings.brokers.sqlite._group_rows import copy_state, load_group, save_group
from tidings.errors import (
    MessageTooLargeError,
    StorageError,
    TopicExistsError,
    UnknownTopicError,
)
from tidings.partitioner import partition_for_key
from tidings.records import (
    Headers,
    Message,
    PartitionInfo,
    Published,
    Record,
    TopicInfo,
    TopicPartition,
)

log = logging.getLogger("tidings.sqlite")

SCHEMA_VERSION = 1
RETENTION_CHECK_S = 5.0
MAX_RECORDS_PER_ROW = 500
MAX_ROW_BYTES = 4 * 1024 * 1024
"""A stored row holds records until the next would take it over MAX_RECORDS_PER_ROW records or
MAX_ROW_BYTES bytes (a record larger than that gets a row of its own). Both bound what is
decoded to serve a read that starts inside a row, and keep rows far below SQLite's limit on
the length of one value."""
ROW_HEADROOM = 64 * 1024
"""Room left, in a value at SQLite's length limit, for msgpack's framing of one record."""

SCHEMA = [
    "CREATE TABLE IF NOT EXISTS broker_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS topics (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        partitions INTEGER NOT NULL,
        retention_ms INTEGER,
        retention_bytes INTEGER,
        created_ms INTEGER NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS partitions (
        topic_id INTEGER NOT NULL,
        partition INTEGER NOT NULL,
        start_offset INTEGER NOT NULL DEFAULT 0,
        end_offset INTEGER NOT NULL DEFAULT 0,
        bytes INTEGER NOT NULL DEFAULT 0,
        last_ts INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (topic_id, partition)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS batches (
        id INTEGER PRIMARY KEY,
        topic_id INTEGER NOT NULL,
        partition INTEGER NOT NULL,
        base_offset INTEGER NOT NULL,
        last_offset INTEGER NOT NULL,
        ts INTEGER NOT NULL,
        bytes INTEGER NOT NULL,
        payload BLOB NOT NULL
    )""",
    """CREATE UNIQUE INDEX IF NOT EXISTS batches_by_offset
        ON batches (topic_id, partition, last_offset)""",
    """CREATE TABLE IF NOT EXISTS group_members (
        grp TEXT NOT NULL,
        member_id TEXT NOT NULL,
        client TEXT NOT NULL,
        topics TEXT NOT NULL,
        session_ms INTEGER NOT NULL,
        heartbeat_ms INTEGER NOT NULL,
        PRIMARY KEY (grp, member_id)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS group_partitions (
        grp TEXT NOT NULL,
        topic TEXT NOT NULL,
        partition INTEGER NOT NULL,
        owner TEXT,
        target TEXT,
        committed INTEGER,
        committed_ms INTEGER,
        PRIMARY KEY (grp, topic, partition)
    ) WITHOUT ROWID""",
    LISTENERS_SCHEMA,
]

_StoredRecord = tuple[bytes | None, bytes, Headers]
_payload_encoder = msgspec.msgpack.Encoder()
_payload_decoder = msgspec.msgpack.Decoder(list[tuple[bytes | None, bytes, Headers]])
_topics_decoder = msgspec.json.Decoder(tuple[str, ...])


class SQLiteLog:
    """Records and group state in one SQLite file; implements LocalLog. Thread-safe.

    `inline_reads`: reads run on the caller's thread, on its own connection; in WAL mode they
    never wait for a writer (only, briefly, while another connection recovers the WAL)."""

    inline_reads = True

    def __init__(self, path: str, *, synchronous: str) -> None:
        self.path = path
        self.db = _sqlite.Database(path, synchronous="normal")
        self.synchronous = synchronous
        self.notifier = Notifier(path)
        self._topic_cache: dict[str, tuple[int, int]] = {}
        self._cache_lock = threading.Lock()
        self._part_read: dict[TopicPartition, tuple[bytes, list[_StoredRecord]]] = {}
        """Per partition, the stored batch (payload, records) the last `read` took only part
        of: a consumer taking fewer records than a producer's batch holds reads it again at its
        next position, and then compares bytes instead of decoding them again."""
        self._next_retention = 0.0
        self.length_limit = 0
        """SQLite's limit on the length of one value (SQLITE_LIMIT_LENGTH) on this file's
        connections."""
        try:
            self.db.write(self._create_schema)
        except BaseException:
            self.notifier.close()
            self.db.close()
            raise

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        self.length_limit = conn.getlimit(sqlite3.SQLITE_LIMIT_LENGTH)
        for statement in SCHEMA:
            conn.execute(statement)
        upgrade_listeners(conn)
        row = conn.execute("SELECT value FROM broker_meta WHERE key = 'schema'").fetchone()
        if row is None:
            conn.execute(
                "INSERT INTO broker_meta(key, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION),)
            )
        elif int(row[0]) > SCHEMA_VERSION:
            raise StorageError(
                f"{self.path}: written by a newer tidings (schema {row[0]}); this version "
                f"understands schema {SCHEMA_VERSION}"
            )

    def close(self) -> None:
        self.notifier.close(lambda name: self.db.write(lambda c: _unregister(c, name)))
        self.db.close()

    # topics ---------------------------------------------------------------------------

    def topic(self, conn: sqlite3.Connection, name: str) -> tuple[int, int]:
        """(topic id, partition count); raises UnknownTopicError. Cached: topics are immutable."""
        cached = self._topic_cache.get(name)
        if cached is not None:
            return cached
        row = conn.execute("SELECT id, partitions FROM topics WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise UnknownTopicError(f"topic {name!r} does not exist")
        with self._cache_lock:
            self._topic_cache[name] = (row[0], row[1])
        return row[0], row[1]

    def create_topic(
        self,
        name: str,
        partitions: int,
        retention_ms: int | None,
        retention_bytes: int | None,
        exist_ok: bool,
    ) -> None:
        validate_topic_name(name)
        validate_partitions(partitions)
        retention_ms = validate_retention("retention_ms", retention_ms)
        retention_bytes = validate_retention("retention_bytes", retention_bytes)
        # NULL is no retention: the embedded broker's default, and what UNLIMITED asks for
        if retention_ms == UNLIMITED:
            retention_ms = None
        if retention_bytes == UNLIMITED:
            retention_bytes = None

        def create(conn: sqlite3.Connection) -> None:
            row = conn.execute("SELECT id FROM topics WHERE name = ?", (name,)).fetchone()
            if row is not None:
                if exist_ok:
                    return
                raise TopicExistsError(f"topic {name!r} already exists")
            cursor = conn.execute(
                "INSERT INTO topics(name, partitions, retention_ms, retention_bytes, created_ms)"
                " VALUES (?, ?, ?, ?, ?)",
                (name, partitions, retention_ms, retention_bytes, _sqlite.now_ms()),
            )
            conn.executemany(
                "INSERT INTO partitions(topic_id, partition) VALUES (?, ?)",
                [(cursor.lastrowid, p) for p in range(partitions)],
            )

        self.db.write(create)

    def topic_infos(self, name: str | None = None) -> list[TopicInfo]:
        def query(conn: sqlite3.Connection) -> list[TopicInfo]:
            sql = "SELECT id, name, retention_ms, retention_bytes FROM topics"
            args: tuple[Any, ...] = ()
            if name is not None:
                sql += " WHERE name = ?"
                args = (name,)
            infos = []
            for topic_id, topic_name, retention_ms, retention_bytes in conn.execute(
                sql + " ORDER BY name", args
            ).fetchall():
                parts = conn.execute(
                    "SELECT partition, start_offset, end_offset FROM partitions"
                    " WHERE topic_id = ? ORDER BY partition",
                    (topic_id,),
                ).fetchall()
                infos.append(
                    TopicInfo(
                        topic_name,
                        tuple(PartitionInfo(*p) for p in parts),
                        retention_ms,
                        retention_bytes,
                    )
                )
            return infos

        infos = self.db.read(query)
        if name is not None and not infos:
            raise UnknownTopicError(f"topic {name!r} does not exist")
        return infos

    # appends --------------------------------------------------------------------------

    def append(
        self,
        conn: sqlite3.Connection,
        topic: str,
        messages: Sequence[Message],
        round_robin: itertools.count[int],
        now: int,
    ) -> list[Published]:
        """Append in the caller's write transaction; per touched partition, as few rows as
        MAX_RECORDS_PER_ROW and MAX_ROW_BYTES allow (one, usually)."""
        topic_id, count = self.topic(conn, topic)
        routed: dict[int, list[Message]] = {}
        indexes: list[int] = []
        for message in messages:
            if message.partition is not None:
                index = message.partition
                if not 0 <= index < count:
                    raise UnknownTopicError(f"topic {topic!r} has no partition {index}")
            elif message.key is not None:
                index = partition_for_key(message.key, count)
            else:
                index = next(round_robin) % count
            routed.setdefault(index, []).append(message)
            indexes.append(index)
        ends: dict[int, int] = {}
        last_ts: dict[int, int] = {}
        for partition, end, ts in conn.execute(
            "SELECT partition, end_offset, last_ts FROM partitions WHERE topic_id = ?", (topic_id,)
        ):
            ends[partition] = end
            last_ts[partition] = ts
        rows = []
        updates = []
        for index, group in routed.items():
            base = ends[index]
            ts = max(now, last_ts[index])
            total = 0
            first = base
            for count, payload in self._rows(topic, group):
                size = len(payload)
                rows.append((topic_id, index, first, first + count - 1, ts, size, payload))
                first += count
                total += size
            updates.append((base + len(group), total, ts, topic_id, index))
        conn.executemany(
            "INSERT INTO batches(topic_id, partition, base_offset, last_offset, ts, bytes, payload)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        conn.executemany(
            "UPDATE partitions SET end_offset = ?, bytes = bytes + ?, last_ts = ?"
            " WHERE topic_id = ? AND partition = ?",
            updates,
        )
        next_offset = {index: ends[index] for index in routed}
        placed = []
        for index in indexes:
            placed.append(Published(index, next_offset[index]))
            next_offset[index] += 1
        return placed

    def _rows(self, topic: str, messages: Sequence[Message]) -> Iterator[tuple[int, bytes]]:
        """(record count, msgpack payload) of each row storing `messages`, in order."""
        row_bytes = min(MAX_ROW_BYTES, self.length_limit)
        for start in range(0, len(messages), MAX_RECORDS_PER_ROW):
            stored = [
                (m.key, m.value, m.headers) for m in messages[start : start + MAX_RECORDS_PER_ROW]
            ]
            payload = _payload_encoder.encode(stored)
            if len(payload) <= row_bytes:
                yield len(stored), payload
                continue
            # a msgpack array is its header (at most 3 bytes here) followed by its items
            sizes = [len(_payload_encoder.encode(record)) for record in stored]
            first = 0
            used = 3
            for i, size in enumerate(sizes):
                if i > first and used + size > row_bytes:
                    yield i - first, _payload_encoder.encode(stored[first:i])
                    first, used = i, 3
                used += size
                if used > self.length_limit:
                    raise MessageTooLargeError(
                        f"a message for topic {topic!r} takes {size} bytes stored, over SQLite's"
                        f" limit of {self.length_limit} (nothing of this publish was written)"
                    )
            yield len(stored) - first, _payload_encoder.encode(stored[first:])

    # retention ------------------------------------------------------------------------

    def maybe_enforce_retention(self) -> None:
        """Enforce retention if the last check is older than RETENTION_CHECK_S."""
        if time.monotonic() < self._next_retention:
            return
        self._next_retention = time.monotonic() + RETENTION_CHECK_S
        try:
            self.enforce_retention()
        except Exception:
            log.exception("%s: retention failed; will retry", self.path)

    def enforce_retention(self) -> int:
        return self.db.write(self._enforce_retention)

    def _enforce_retention(self, conn: sqlite3.Connection) -> int:
        removed = 0
        now = _sqlite.now_ms()
        topics = conn.execute(
            "SELECT id, retention_ms, retention_bytes FROM topics"
            " WHERE retention_ms IS NOT NULL OR retention_bytes IS NOT NULL"
        ).fetchall()
        for topic_id, retention_ms, retention_bytes in topics:
            parts = conn.execute(
                "SELECT partition, bytes, end_offset FROM partitions WHERE topic_id = ?",
                (topic_id,),
            ).fetchall()
            for partition, size, end in parts:
                doomed: list[tuple[int, int, int]] = []
                rows = conn.execute(
                    "SELECT id, ts, bytes, last_offset - base_offset + 1 FROM batches"
                    " WHERE topic_id = ? AND partition = ? ORDER BY last_offset",
                    (topic_id, partition),
                ).fetchall()
                for position, (batch_id, ts, batch_bytes, records) in enumerate(rows):
                    too_old = retention_ms is not None and ts < now - retention_ms
                    too_big = (
                        retention_bytes is not None
                        and size > retention_bytes
                        and position < len(rows) - 1
                    )
                    if not (too_old or too_big):
                        break
                    doomed.append((batch_id, batch_bytes, records))
                    size -= batch_bytes
                if not doomed:
                    continue
                conn.executemany("DELETE FROM batches WHERE id = ?", [(d[0],) for d in doomed])
                first = conn.execute(
                    "SELECT min(base_offset) FROM batches WHERE topic_id = ? AND partition = ?",
                    (topic_id, partition),
                ).fetchone()[0]
                conn.execute(
                    "UPDATE partitions SET start_offset = ?, bytes = ?"
                    " WHERE topic_id = ? AND partition = ?",
                    (end if first is None else first, size, topic_id, partition),
                )
                removed += sum(d[2] for d in doomed)
        return removed

    # LocalLog -------------------------------------------------------------------------

    def partition_counts(self, topics: Collection[str]) -> dict[str, int]:
        return self.db.read(lambda conn: {t: self.topic(conn, t)[1] for t in topics})

    def read(self, tp: TopicPartition, offset: int, max_records: int) -> list[Record]:
        def query(conn: sqlite3.Connection) -> list[Record]:
            topic_id, count = self.topic(conn, tp.topic)
            if not 0 <= tp.partition < count:
                raise UnknownTopicError(f"{tp} does not exist")
            cursor = conn.execute(
                "SELECT base_offset, ts, payload FROM batches"
                " WHERE topic_id = ? AND partition = ? AND last_offset >= ?"
                " ORDER BY last_offset",
                (topic_id, tp.partition, offset),
            )
            records: list[Record] = []
            topic, partition = tp.topic, tp.partition
            try:
                for base, ts, payload in cursor:
                    stored = self._decoded(tp, base, payload)
                    skip = max(0, offset - base)
                    stop = min(len(stored), skip + max_records - len(records))
                    if stop < len(stored):
                        self._part_read[tp] = (payload, stored)
                    else:
                        self._part_read.pop(tp, None)
                    for i in range(skip, stop):
                        key, value, headers = stored[i]
                        records.append(Record(topic, partition, base + i, ts, value, key, headers))
                    if len(records) >= max_records:
                        break
            finally:
                cursor.close()
            return records

        return self.db.read(query)

    def _decoded(self, tp: TopicPartition, base: int, payload: bytes) -> list[_StoredRecord]:
        """The records of a stored batch, not decoded again if it is the one `_part_read`
        holds for `tp` (payloads are compared whole: a batch replaced under the same offsets,
        a topic deleted and created again, is never mistaken for it)."""
        last = self._part_read.get(tp)
        if last is not None and last[0] == payload:
            return last[1]
        try:
            return _payload_decoder.decode(payload)
        except msgspec.DecodeError as exc:
            raise StorageError(
                f"{self.path}: batch at {tp} offset {base} is corrupt ({exc})"
            ) from exc

    def watermarks(self, tps: Collection[TopicPartition]) -> dict[TopicPartition, tuple[int, int]]:
        def query(conn: sqlite3.Connection) -> dict[TopicPartition, tuple[int, int]]:
            """One statement for every topic (a consumer asks at each fetch)."""
            ids = {self.topic(conn, topic)[0]: topic for topic in {tp.topic for tp in tps}}
            if not ids:
                return {}
            rows = conn.execute(_watermarks_sql(len(ids)), tuple(ids)).fetchall()
            found = {(ids[t], p): (start, end) for t, p, start, end in rows}
            marks = {}
            for tp in tps:
                mark = found.get((tp.topic, tp.partition))
                if mark is None:
                    raise UnknownTopicError(f"{tp} does not exist")
                marks[tp] = mark
            return marks

        return self.db.read(query)

    def offset_for_timestamp(self, tp: TopicPartition, timestamp_ms: int) -> int:
        def query(conn: sqlite3.Connection) -> int:
            topic_id, _ = self.topic(conn, tp.topic)
            row = conn.execute(
                "SELECT base_offset FROM batches WHERE topic_id = ? AND partition = ?"
                " AND ts >= ? ORDER BY last_offset LIMIT 1",
                (topic_id, tp.partition, timestamp_ms),
            ).fetchone()
            if row is not None:
                start = conn.execute(
                    "SELECT start_offset FROM partitions WHERE topic_id = ? AND partition = ?",
                    (topic_id, tp.partition),
                ).fetchone()[0]
                return max(int(row[0]), int(start))
            end = conn.execute(
                "SELECT end_offset FROM partitions WHERE topic_id = ? AND partition = ?",
                (topic_id, tp.partition),
            ).fetchone()
            return int(end[0])

        return self.db.read(query)

    # groups ---------------------------------------------------------------------------

    def update_group(self, group: str, step: Any, *, notify_always: bool = False) -> Any:
        """Run `step(state, conn) -> (result, changed)` on the group's state in one write tx."""

        def tx(conn: sqlite3.Connection) -> tuple[Any, bool, list[Peer]]:
            state = load_group(conn, group)
            before = copy_state(state)
            result, changed = step(state, conn)
            save_group(conn, group, before, state)
            self.notifier.forget_dead(conn)
            return result, changed, self.notifier.peers(conn) if changed else []

        result, changed, peers = self.db.write(tx)
        if changed or notify_always:
            self.notifier.send(GROUP_CHANGED, peers)
        return result

    def group_join(self, group: str, member: _groups.Member) -> None:
        def step(state: _groups.GroupState, conn: sqlite3.Connection) -> tuple[None, bool]:
            _groups.join(state, member)
            return None, True

        self.update_group(group, step)

    def group_heartbeat(
        self,
        group: str,
        member_id: str,
        commit: Mapping[TopicPartition, int],
        release: Collection[TopicPartition],
    ) -> _groups.Heartbeat | None:
        def step(
            state: _groups.GroupState, conn: sqlite3.Connection
        ) -> tuple[_groups.Heartbeat | None, bool]:
            topics = {t for m in state.members.values() for t in m.topics}
            counts = {}
            for topic in topics:
                with contextlib.suppress(UnknownTopicError):
                    counts[topic] = self.topic(conn, topic)[1]
            result = _groups.heartbeat(state, member_id, _sqlite.now_ms(), counts, commit, release)
            return result, result is not None and result.changed

        result: _groups.Heartbeat | None = self.update_group(group, step)
        self.maybe_enforce_retention()
        return result

    def group_leave(self, group: str, member_id: str, commit: Mapping[TopicPartition, int]) -> None:
        def step(state: _groups.GroupState, conn: sqlite3.Connection) -> tuple[None, bool]:
            _groups.leave(state, member_id, commit)
            return None, True

        self.update_group(group, step)

    def committed(self, group: str, tps: Collection[TopicPartition]) -> dict[TopicPartition, int]:
        state = self.db.read(lambda conn: load_group(conn, group))
        return {tp: state.offsets[tp] for tp in tps if tp in state.offsets}

    def add_listener(self, listener: Listener, topics: Collection[str] | None = None) -> None:
        self.notifier.add(listener)

        def register(name: str, subjects: str | None) -> None:
            self.db.write(lambda c: Notifier.register_sql(c, name, subjects))

        self.notifier.listen(register, topics)

    def remove_listener(self, listener: Listener) -> None:
        self.notifier.remove(listener)


@functools.lru_cache(maxsize=8)
def _watermarks_sql(topics: int) -> str:
    marks = ", ".join("?" * topics)
    return (
        "SELECT topic_id, partition, start_offset, end_offset FROM partitions"  # noqa: S608
        f" WHERE topic_id IN ({marks})"
    )


def _unregister(conn: sqlite3.Connection, name: str) -> None:
    conn.execute("DELETE FROM listeners WHERE name = ?", (name,))
