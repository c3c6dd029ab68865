"""The embedded broker: a durable, partitioned event log in one SQLite file.

`sqlite:///path/to/bus.db` (relative) or `sqlite:////abs/bus.db`. Options in the query string or
as keyword arguments: `synchronous` (`full` by default: a publish survives power loss once it
returns; `normal` survives process crashes only), `max_message_bytes` (default 1 MiB).

Storage follows Kafka's record batches: each publish writes one row per partition it touches
(more if its records there are many or large: see MAX_ROW_BYTES), holding that partition's
records (msgpack) and their offset range, so appends and reads cost one row per batch, not
per record. Offsets are assigned under SQLite's single write lock, so commits happen in
offset order and a reader never sees a gap that fills in later. `max_message_bytes` may not
exceed what SQLite can store in one value (SQLITE_LIMIT_LENGTH, less ROW_HEADROOM).

Several processes may open the same file: publishes from all of them interleave safely,
consumer groups span them (see `_groups`), and an idle consumer is woken by a datagram from
the writer (see `tidings._notify`) instead of polling.

Offset commits and heartbeats use `synchronous=normal`: losing the last commit to a power cut
only means redelivery, which consumers must tolerate anyway (at-least-once).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import itertools
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import Any

import msgspec

from tidings import _sqlite
from tidings._notify import SCHEMA as LISTENERS_SCHEMA
from tidings._notify import Notifier
from tidings.brokers import _groups
from tidings.brokers._admin import describe_group, resolve_reset
from tidings.brokers._local import (
    DATA_APPENDED,
    GROUP_CHANGED,
    Listener,
    LocalBroker,
    LocalConsumer,
)
from tidings.brokers.base import (
    DEFAULT_MAX_MESSAGE_BYTES,
    UNLIMITED,
    Admin,
    CanEnforceRetention,
    CanInspect,
    CanRead,
    CanResetOffsets,
    check_sizes,
    validate_partitions,
    validate_retention,
    validate_topic_name,
)
from tidings.errors import (
    BrokerClosedError,
    ConfigError,
    MessageTooLargeError,
    StorageError,
    TopicExistsError,
    UnknownTopicError,
)
from tidings.partitioner import partition_for_key
from tidings.records import (
    GroupInfo,
    Headers,
    Message,
    PartitionInfo,
    Published,
    Record,
    SeekTo,
    TopicInfo,
    TopicPartition,
)

log = logging.getLogger("tidings.sqlite")

SCHEMA_VERSION = 1
RETENTION_CHECK_S = 5.0
MAX_WRITE_GROUP = 100_000
CLOSE_JOIN_S = 2.0
"""How long `close` waits for the publishing thread to finish what it is writing."""
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


def _now_ms() -> int:
    return int(time.time() * 1000)


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
                (name, partitions, retention_ms, retention_bytes, _now_ms()),
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
        now = _now_ms()
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
                    try:
                        stored = _payload_decoder.decode(payload)
                    except msgspec.DecodeError as exc:
                        raise StorageError(
                            f"{self.path}: batch at {tp} offset {base} is corrupt ({exc})"
                        ) from exc
                    skip = max(0, offset - base)
                    stop = min(len(stored), skip + max_records - len(records))
                    for i in range(skip, stop):
                        key, value, headers = stored[i]
                        records.append(Record(topic, partition, base + i, ts, value, key, headers))
                    if len(records) >= max_records:
                        break
            finally:
                cursor.close()
            return records

        return self.db.read(query)

    def watermarks(self, tps: Collection[TopicPartition]) -> dict[TopicPartition, tuple[int, int]]:
        def query(conn: sqlite3.Connection) -> dict[TopicPartition, tuple[int, int]]:
            marks = {}
            by_topic: dict[str, list[TopicPartition]] = {}
            for tp in tps:
                by_topic.setdefault(tp.topic, []).append(tp)
            for topic, wanted in by_topic.items():
                topic_id, _ = self.topic(conn, topic)
                rows = conn.execute(
                    "SELECT partition, start_offset, end_offset FROM partitions WHERE topic_id = ?",
                    (topic_id,),
                ).fetchall()
                found = {p: (start, end) for p, start, end in rows}
                for tp in wanted:
                    if tp.partition not in found:
                        raise UnknownTopicError(f"{tp} does not exist")
                    marks[tp] = found[tp.partition]
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

    def load_group(self, conn: sqlite3.Connection, group: str) -> _groups.GroupState:
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
        self,
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
        now = _now_ms()
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

    def _group_write(self, group: str, step: Any, *, notify_always: bool = False) -> Any:
        """Run `step(state, conn) -> (result, changed)` on the group's state in one write tx."""

        def tx(conn: sqlite3.Connection) -> tuple[Any, bool, list[str]]:
            state = self.load_group(conn, group)
            before = _copy_state(state)
            result, changed = step(state, conn)
            self.save_group(conn, group, before, state)
            self.notifier.forget_dead(conn)
            return result, changed, Notifier.peers(conn) if changed else []

        result, changed, peers = self.db.write(tx)
        if changed or notify_always:
            self.notifier.send(GROUP_CHANGED, peers)
        return result

    def group_join(self, group: str, member: _groups.Member) -> None:
        def step(state: _groups.GroupState, conn: sqlite3.Connection) -> tuple[None, bool]:
            _groups.join(state, member)
            return None, True

        self._group_write(group, step)

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
            result = _groups.heartbeat(state, member_id, _now_ms(), counts, commit, release)
            return result, result is not None and result.changed

        result: _groups.Heartbeat | None = self._group_write(group, step)
        self.maybe_enforce_retention()
        return result

    def group_leave(self, group: str, member_id: str, commit: Mapping[TopicPartition, int]) -> None:
        def step(state: _groups.GroupState, conn: sqlite3.Connection) -> tuple[None, bool]:
            _groups.leave(state, member_id, commit)
            return None, True

        self._group_write(group, step)

    def committed(self, group: str, tps: Collection[TopicPartition]) -> dict[TopicPartition, int]:
        state = self.db.read(lambda conn: self.load_group(conn, group))
        return {tp: state.offsets[tp] for tp in tps if tp in state.offsets}

    def add_listener(self, listener: Listener) -> None:
        self.notifier.add(listener)
        self.notifier.listen(lambda name: self.db.write(lambda c: Notifier.register_sql(c, name)))

    def remove_listener(self, listener: Listener) -> None:
        self.notifier.remove(listener)


def _unregister(conn: sqlite3.Connection, name: str) -> None:
    conn.execute("DELETE FROM listeners WHERE name = ?", (name,))


def _copy_state(state: _groups.GroupState) -> _groups.GroupState:
    return _groups.GroupState(
        {k: dataclasses.replace(m) for k, m in state.members.items()},
        dict(state.owners),
        dict(state.targets),
        dict(state.offsets),
    )


_Publish = tuple[str, Sequence[Message], concurrent.futures.Future[list[Published]]]


def _fail(publishes: Sequence[_Publish], error: BaseException) -> None:
    for _, _, future in publishes:
        if not future.done():
            future.set_exception(error)


class _Writer:
    """The broker's publishing thread: drains queued publishes and writes them in one
    transaction (group commit), so concurrent publishers share one fsync.

    Cancelling a publish is safe: one cancelled before the thread takes it from the queue is
    not written; once taken it can no longer be cancelled, and is written whole (or fails
    whole) with its result dropped. A publish that fails (unknown topic, a record that cannot
    be stored...) fails alone; a transaction that fails fails its own publishes; the thread
    goes on. Should it stop all the same, the publishes it held or had queued fail, and the
    next `submit` starts a new one; both are logged."""

    def __init__(self, log_: SQLiteLog, synchronous: str) -> None:
        self._log = log_
        self._db = _sqlite.Database(log_.path, synchronous=synchronous)
        self._queue: queue.SimpleQueue[_Publish | None] = queue.SimpleQueue()
        self._round_robin: dict[str, itertools.count[int]] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._stopped = False
        self._thread = self._start()

    def _start(self) -> threading.Thread:
        thread = threading.Thread(target=self._run, name="tidings-writer", daemon=True)
        thread.start()
        return thread

    def submit(
        self, topic: str, messages: Sequence[Message]
    ) -> concurrent.futures.Future[list[Published]]:
        future: concurrent.futures.Future[list[Published]] = concurrent.futures.Future()
        with self._lock:
            if self._closed:
                raise BrokerClosedError("broker is closed")
            self._queue.put((topic, messages, future))
            if self._stopped or not self._thread.is_alive():
                log.error(
                    "%s: the publishing thread had stopped; starting a new one", self._log.path
                )
                self._stopped = False
                self._thread = self._start()
        return future

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._queue.put(None)
            thread = self._thread
        thread.join(CLOSE_JOIN_S)
        _fail(self._drain(), BrokerClosedError("broker is closed"))  # left by a stopped thread
        if thread.is_alive():
            # still writing: waiting for a lock another process holds, say. Its publish may yet
            # commit or roll back (at-least-once either way); a daemon, it ends with the process.
            log.warning(
                "%s: the publishing thread is still writing; the broker closes without it",
                self._log.path,
            )
            return
        self._db.close()

    def _drain(self) -> list[_Publish]:
        """Take every queued publish that was not cancelled."""
        taken: list[_Publish] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return taken
            if item is not None and item[2].set_running_or_notify_cancel():
                taken.append(item)

    def _take(self) -> tuple[list[_Publish], bool]:
        """The next publishes to write together, waiting for the first, without those
        cancelled meanwhile; and whether `close` asked the thread to stop."""
        group: list[_Publish] = []
        size = 0
        item = self._queue.get()
        while True:
            if item is None:
                return group, True
            if item[2].set_running_or_notify_cancel():
                group.append(item)
                size += len(item[1])
            if size >= MAX_WRITE_GROUP:
                return group, False
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return group, False

    def _run(self) -> None:
        group: list[_Publish] = []
        try:
            while True:
                group, stop = self._take()
                if group:
                    try:
                        self._write(group)
                    except Exception as exc:
                        if not isinstance(exc, StorageError):
                            log.exception(
                                "%s: writing %d publishes failed", self._log.path, len(group)
                            )
                        _fail(group, exc)
                    group = []
                    self._log.maybe_enforce_retention()
                if stop:
                    return
        except BaseException as exc:
            # Fail what this thread took (it may be half done: only SQLite knows); what is still
            # queued goes to a new thread, started now unless the broker is closing.
            with self._lock:
                if self._closed:
                    group += self._drain()
                elif self._queue.empty():
                    self._stopped = True  # the next submit starts a new one
                else:
                    self._thread = self._start()
            log.critical(
                "%s: the publishing thread stopped; a new one takes over",
                self._log.path,
                exc_info=True,
            )
            _fail(
                group,
                StorageError(
                    f"{self._log.path}: the publishing thread stopped ({exc!r}) while writing "
                    "this publish; it may or may not have been written"
                ),
            )

    def _write(self, group: list[_Publish]) -> None:
        outcomes: list[list[Published] | BaseException] = []

        def tx(conn: sqlite3.Connection) -> list[str]:
            outcomes.clear()
            now = _now_ms()
            for topic, messages, _ in group:
                counter = self._round_robin.setdefault(topic, itertools.count())
                conn.execute("SAVEPOINT publish")
                try:
                    outcomes.append(self._log.append(conn, topic, messages, counter, now))
                except sqlite3.Error:
                    raise  # the file, not this publish: the whole transaction rolls back
                except Exception as exc:
                    conn.execute("ROLLBACK TO publish")
                    outcomes.append(exc)
                conn.execute("RELEASE publish")
            self._log.notifier.forget_dead(conn)
            return Notifier.peers(conn)

        peers = self._db.write(tx)
        self._log.notifier.send(DATA_APPENDED, peers)
        for (_, _, future), outcome in zip(group, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)


class SQLiteBroker(LocalBroker, CanRead):
    """The embedded broker. Safe to share between tasks and threads of one process; several
    processes may open the same file."""

    OPTIONS = {"synchronous", "max_message_bytes"}
    client = "sqlite"
    log: SQLiteLog

    def __init__(
        self,
        url: str,
        *,
        synchronous: str | None = None,
        max_message_bytes: int | None = None,
    ) -> None:
        parsed = _sqlite.parse_url(url, allowed=self.OPTIONS)
        self.url = url
        self.path = parsed.path
        self.synchronous = _sqlite.synchronous_option(
            synchronous or parsed.options.get("synchronous")
        )
        limit = max_message_bytes or parsed.options.get("max_message_bytes")
        try:
            self.max_message_bytes = int(limit) if limit is not None else DEFAULT_MAX_MESSAGE_BYTES
        except ValueError:
            raise ConfigError(f"max_message_bytes must be an integer, got {limit!r}") from None
        if self.max_message_bytes < 1:
            raise ConfigError(f"max_message_bytes must be >= 1, got {self.max_message_bytes}")
        self.log = SQLiteLog(self.path, synchronous=self.synchronous)
        if self.max_message_bytes > self.log.length_limit - ROW_HEADROOM:
            self.log.close()
            raise ConfigError(
                f"max_message_bytes={self.max_message_bytes} cannot be stored: SQLite's limit on"
                f" one value is {self.log.length_limit} bytes here, so the largest possible"
                f" max_message_bytes is {self.log.length_limit - ROW_HEADROOM}"
            )
        self._writer = _Writer(self.log, self.synchronous)
        self._admin = SQLiteAdmin(self.log, self.synchronous)
        self._consumers: list[LocalConsumer] = []
        self._closed = False

    @property
    def admin(self) -> Admin:
        return self._admin

    async def publish(self, topic: str, messages: Sequence[Message]) -> list[Published]:
        """Safe to cancel (see `_Writer`): what is cancelled is written whole or not at all."""
        if self._closed:
            raise BrokerClosedError("broker is closed")
        if not messages:
            return []
        check_sizes(topic, messages, self.max_message_bytes)
        return await asyncio.wrap_future(self._writer.submit(topic, messages))

    def publish_sync(self, topic: str, messages: Sequence[Message]) -> list[Published]:
        """Blocking publish for threads without an event loop."""
        if self._closed:
            raise BrokerClosedError("broker is closed")
        check_sizes(topic, messages, self.max_message_bytes)
        return self._writer.submit(topic, messages).result()

    async def read(self, tp: TopicPartition, offset: int, max_records: int) -> list[Record]:
        return await asyncio.to_thread(self.log.read, tp, offset, max_records)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._close_consumers()
        await asyncio.to_thread(self._writer.close)
        await asyncio.to_thread(self.log.close)


class SQLiteAdmin(Admin, CanInspect, CanResetOffsets, CanEnforceRetention):
    def __init__(self, log_: SQLiteLog, synchronous: str) -> None:
        self._log = log_
        self._synchronous = synchronous

    async def create_topic(
        self,
        name: str,
        partitions: int = 1,
        *,
        retention_ms: int | None = None,
        retention_bytes: int | None = None,
        exist_ok: bool = False,
    ) -> TopicInfo:
        await asyncio.to_thread(
            self._log.create_topic, name, partitions, retention_ms, retention_bytes, exist_ok
        )
        return (await asyncio.to_thread(self._log.topic_infos, name))[0]

    async def durability_warnings(self, topics: Sequence[str]) -> list[str]:
        """One warning, for every topic alike, unless publishes are fsync'd before they are
        acknowledged (synchronous=full or extra)."""
        if self._synchronous in ("full", "extra"):
            return []
        return [
            f"the broker {self._log.path} runs with synchronous={self._synchronous}: a power cut"
            " can lose publishes it had acknowledged (synchronous=full keeps them)"
        ]

    async def list_topics(self) -> list[TopicInfo]:
        return await asyncio.to_thread(self._log.topic_infos)

    async def describe_topic(self, name: str) -> TopicInfo:
        return (await asyncio.to_thread(self._log.topic_infos, name))[0]

    async def list_groups(self) -> list[str]:
        def query(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                "SELECT grp FROM group_members UNION SELECT grp FROM group_partitions ORDER BY 1"
            )
            return [r[0] for r in rows]

        return await asyncio.to_thread(self._log.db.read, query)

    async def describe_group(self, name: str) -> GroupInfo:
        def describe() -> GroupInfo:
            state = self._log.db.read(lambda conn: self._log.load_group(conn, name))
            if not state.members and not state.owners and not state.offsets:
                raise ConfigError(f"consumer group {name!r} does not exist")
            _groups.expire(state, _now_ms())
            return describe_group(name, state, self._log.partition_counts, self._log.watermarks)

        return await asyncio.to_thread(describe)

    async def reset_offsets(
        self, group: str, topics: Sequence[str], to: SeekTo
    ) -> dict[TopicPartition, int]:
        def step(
            state: _groups.GroupState, conn: sqlite3.Connection
        ) -> tuple[dict[TopicPartition, int], bool]:
            offsets = resolve_reset(
                group,
                state,
                topics,
                to,
                self._log.partition_counts,
                self._log.watermarks,
                self._log.offset_for_timestamp,
            )
            state.offsets.update(offsets)
            return offsets, False

        return await asyncio.to_thread(self._log._group_write, group, step)

    async def enforce_retention(self) -> int:
        return await asyncio.to_thread(self._log.enforce_retention)
