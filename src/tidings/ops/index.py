"""An index of a broker's events by event id, correlation id, causation id and key, kept in a
SQLite file of its own and filled incrementally from the log.

A log answers "what is at this offset" but not "which events carry this correlation id" or
"which events did this one cause" without reading everything. `EventIndex.update` reads each
partition from where it stopped (with `CanRead`, no consumer group, nothing committed), a chunk
at a time, and records each event's position and envelope (never its data); queries are then
index lookups. It follows retention (rows of removed records are dropped), a topic deleted or
recreated smaller (its rows are dropped and it is read again), and a file made for another
broker (emptied). Records that do not decode into an event are skipped; internal topics
(`tidings.*`, `_*`) are not read. Dead-letter topics are: a dead letter is the original event,
so a trace shows where it was set aside.

Besides positions it learns which event types each service handles, where the log tells: a
service that published an event caused by an event of type T handles T; a dead letter names
the handler that failed. `status` says how far behind the log the index is."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import TypeVar

from tidings import dlq
from tidings.brokers.base import Broker, CanInspect, CanRead, require
from tidings.ops.records import decode
from tidings.records import Record, TopicInfo, TopicPartition

log = logging.getLogger("tidings.ops.index")
_T = TypeVar("_T")
_Work = Callable[[sqlite3.Connection], object]
_Query = Callable[[sqlite3.Connection], _T]

CHUNK = 2000
"""Records read (and written to the index in one transaction) at a time."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS progress (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
);
CREATE TABLE IF NOT EXISTS events (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, "offset" INTEGER NOT NULL,
    time_us INTEGER NOT NULL, event_id TEXT NOT NULL, type TEXT NOT NULL, source TEXT NOT NULL,
    key TEXT, correlation_id TEXT, causation_id TEXT, trace_id TEXT,
    PRIMARY KEY (topic, partition, "offset")
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS events_event_id ON events(event_id);
CREATE INDEX IF NOT EXISTS events_correlation ON events(correlation_id)
    WHERE correlation_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_causation ON events(causation_id)
    WHERE causation_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_key ON events(key, topic, partition, "offset")
    WHERE key IS NOT NULL;
CREATE TABLE IF NOT EXISTS handles (
    service TEXT NOT NULL, topic TEXT NOT NULL, type TEXT NOT NULL, handler TEXT NOT NULL,
    PRIMARY KEY (service, topic, type, handler)
);
"""

_COLUMNS = (
    'topic, partition, "offset", time_us, event_id, type, source, key, correlation_id, '
    "causation_id, trace_id"
)


def is_internal(topic: str, namespace: str = "") -> bool:
    """Topics the index does not read: tidings' own (`tidings.*`, after the broker's
    `namespace` if it has one) and `_*` (Kafka's)."""
    return topic.startswith("_") or topic.removeprefix(namespace).startswith("tidings.")


@dataclass(frozen=True, slots=True)
class IndexedEvent:
    """An event's envelope and where it is in the log."""

    topic: str
    partition: int
    offset: int
    time: datetime
    event_id: str
    type: str
    source: str
    key: str | None
    correlation_id: str | None
    causation_id: str | None
    trace_id: str | None

    @property
    def position(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"

    @property
    def dead_letter(self) -> bool:
        """True if it is a copy set aside in a dead-letter topic."""
        return dlq.is_dead_letter_topic(self.topic)


ANY_TYPE = "*"
"""`Handles.type` of a handler that takes every event type (as the envelope)."""


@dataclass(frozen=True, slots=True)
class Handles:
    """A service handles events of `type` (`ANY_TYPE`: every type) on `topic` (with
    `handler`, when known). `declared`: from the service's own record in the schema registry
    (exact, and complete for that service), else learnt from the log (what it told so far)."""

    service: str
    topic: str
    type: str
    handler: str | None
    declared: bool = False
    versions: tuple[int, ...] = ()
    """The versions of `type` the handler reads (declared only)."""

    def takes(self, event_type: str) -> bool:
        return self.type in (ANY_TYPE, event_type)


@dataclass(frozen=True, slots=True)
class IndexStatus:
    """How far the index is: records indexed (or skipped) and records not read yet, over the
    retained records of the topics it reads; `caught_up_at` is when it last reached the end."""

    read: int
    behind: int
    caught_up_at: datetime | None

    @property
    def current(self) -> bool:
        return self.behind == 0


class EventIndex:
    """The index in the SQLite file `path`, for the broker at `broker_url` (a file made for
    another broker is emptied). Safe to use from one event loop: `update` writes on a thread of
    its own while queries read through a second connection."""

    def __init__(self, path: str, broker_url: str) -> None:
        self.path = path
        self.namespace = ""
        """The broker's namespace, learnt at `update` (its own topics are not read)."""
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        self._write = self._connect()
        self._read = self._connect()
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._update_lock = asyncio.Lock()
        with self._write_lock:
            self._write.executescript(_SCHEMA)
            row = self._write.execute("SELECT value FROM meta WHERE name = 'broker'").fetchone()
            if row is not None and row[0] != broker_url:
                self._write.executescript(
                    "DELETE FROM events; DELETE FROM progress; DELETE FROM handles;"
                    "DELETE FROM meta;"
                )
            self._write.execute(
                "INSERT OR REPLACE INTO meta(name, value) VALUES ('broker', ?)", (broker_url,)
            )
            self._write.commit()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=OFF")  # a cache: after a crash it is read again
        conn.execute("PRAGMA cache_size=-8000")
        return conn

    def close(self) -> None:
        with self._write_lock:
            self._write.close()
        with self._read_lock:
            self._read.close()

    # filling ------------------------------------------------------------------------------

    async def update(self, broker: Broker, *, budget: int = 100_000) -> int:
        """Read up to `budget` records not indexed yet, oldest positions first per partition;
        returns how many were read (0: the index was current already)."""
        admin = require(broker.admin, CanInspect, "list topics, so it cannot index events")
        reader = require(broker, CanRead, "read records without a consumer group")
        async with self._update_lock:
            self.namespace = broker.namespace
            infos = [
                i for i in await admin.list_topics() if not is_internal(i.name, self.namespace)
            ]
            progress = await self._query(lambda c: self._progress(c))
            await self._to_writer(lambda c: self._forget_topics(c, {i.name for i in infos}))
            read = 0
            for info in infos:
                for bounds in info.partitions:
                    tp = TopicPartition(info.name, bounds.partition)
                    position = progress.get(tp)
                    start, end = bounds.start_offset, bounds.end_offset
                    if position is not None and position > end:  # recreated: read it again
                        await self._to_writer(partial(self._drop, tp=tp, below=None))
                        position = None
                    if position is None or position < start:
                        await self._to_writer(partial(self._advance, tp=tp, next_offset=start))
                        position = start
                    while position < end and read < budget:
                        want = min(CHUNK, end - position, budget - read)
                        records = await reader.read(tp, position, want)
                        records = [r for r in records if position <= r.offset < end]
                        following = records[-1].offset + 1 if records else end
                        read += max(len(records), 1)
                        step = partial(
                            self._advance,
                            tp=tp,
                            next_offset=following,
                            rows=list(_rows(records)),
                            handlers=_handlers(records),
                        )
                        await self._to_writer(step)
                        position = following
            if read < budget:  # every partition was read to its end
                now = str(time.time())
                await self._to_writer(
                    lambda c: c.execute(
                        "INSERT OR REPLACE INTO meta(name, value) VALUES ('caught_up', ?)", (now,)
                    )
                )
            return read

    async def run(self, broker: Broker, *, interval: float = 1.0) -> None:
        """Keep the index current until cancelled: update, and when nothing was new, wait
        `interval` seconds. An error is retried after a pause (the broker may come back)."""
        while True:
            try:
                read = await self.update(broker, budget=CHUNK * 10)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("event index: reading the log failed (retrying): %s", exc)
                read = 0
                await asyncio.sleep(interval * 4)
            if read == 0:
                await asyncio.sleep(interval)
            else:
                await asyncio.sleep(0)  # let pages be served between chunks

    @staticmethod
    def _progress(conn: sqlite3.Connection) -> dict[TopicPartition, int]:
        rows = conn.execute("SELECT topic, partition, next_offset FROM progress")
        return {TopicPartition(t, p): n for t, p, n in rows}

    @staticmethod
    def _forget_topics(conn: sqlite3.Connection, existing: set[str]) -> None:
        known = {t for (t,) in conn.execute("SELECT DISTINCT topic FROM progress")}
        for topic in known - existing:
            conn.execute("DELETE FROM events WHERE topic = ?", (topic,))
            conn.execute("DELETE FROM progress WHERE topic = ?", (topic,))

    @staticmethod
    def _drop(conn: sqlite3.Connection, tp: TopicPartition, below: int | None) -> None:
        """Rows of `tp` (below offset `below` only, if given)."""
        if below is None:
            conn.execute("DELETE FROM events WHERE topic = ? AND partition = ?", tuple_of(tp))
            conn.execute("DELETE FROM progress WHERE topic = ? AND partition = ?", tuple_of(tp))
        else:
            conn.execute(
                'DELETE FROM events WHERE topic = ? AND partition = ? AND "offset" < ?',
                (*tuple_of(tp), below),
            )

    def _advance(
        self,
        conn: sqlite3.Connection,
        tp: TopicPartition,
        next_offset: int,
        rows: Sequence[tuple[object, ...]] = (),
        handlers: Sequence[tuple[str, str, str, str]] = (),
    ) -> None:
        if not rows:
            self._drop(conn, tp, next_offset)  # retention removed them (or a fresh start)
        conn.executemany(
            f"INSERT OR REPLACE INTO events({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",  # noqa: S608
            rows,
        )
        conn.execute(
            "INSERT OR REPLACE INTO progress(topic, partition, next_offset) VALUES (?, ?, ?)",
            (*tuple_of(tp), next_offset),
        )
        conn.executemany(
            "INSERT OR IGNORE INTO handles(service, topic, type, handler) VALUES (?, ?, ?, ?)",
            handlers,
        )
        if rows:
            self._learn_handlers(conn, tp, int(str(rows[0][2])), next_offset)

    @staticmethod
    def _learn_handlers(
        conn: sqlite3.Connection, tp: TopicPartition, first: int, stop: int
    ) -> None:
        """What the events of `tp` in [first, stop) tell about handlers: the source of an
        event handles its cause's type, whichever of the two was indexed first."""
        if dlq.is_dead_letter_topic(tp.topic):
            return  # dead letters name their handler (see _handlers)
        params = (*tuple_of(tp), first, stop)
        conn.execute(
            "INSERT OR IGNORE INTO handles(service, topic, type, handler)"
            " SELECT DISTINCT c.source, p.topic, p.type, '' FROM events c"
            " JOIN events p ON p.event_id = c.causation_id"
            ' WHERE c.topic = ? AND c.partition = ? AND c."offset" >= ? AND c."offset" < ?'
            " AND c.source != '' AND p.topic NOT LIKE '%.dlq'",
            params,
        )
        conn.execute(
            "INSERT OR IGNORE INTO handles(service, topic, type, handler)"
            " SELECT DISTINCT c.source, p.topic, p.type, '' FROM events p"
            " JOIN events c ON c.causation_id = p.event_id"
            ' WHERE p.topic = ? AND p.partition = ? AND p."offset" >= ? AND p."offset" < ?'
            " AND c.source != '' AND c.topic NOT LIKE '%.dlq'",
            params,
        )

    async def _to_writer(self, work: _Work) -> None:
        def run() -> None:
            with self._write_lock:
                try:
                    work(self._write)
                    self._write.commit()
                except BaseException:
                    self._write.rollback()
                    raise

        await asyncio.to_thread(run)

    # reading ------------------------------------------------------------------------------

    async def _query(self, work: _Query[_T]) -> _T:
        def run() -> _T:
            with self._read_lock:
                return work(self._read)

        return await asyncio.to_thread(run)

    async def status(self, infos: Sequence[TopicInfo]) -> IndexStatus:
        """How far the index is behind the log described by `infos` (from `list_topics`)."""

        def query(conn: sqlite3.Connection) -> tuple[dict[TopicPartition, int], str | None]:
            row = conn.execute("SELECT value FROM meta WHERE name = 'caught_up'").fetchone()
            return self._progress(conn), None if row is None else str(row[0])

        progress, caught_up = await self._query(query)
        read = behind = 0
        for info in infos:
            if is_internal(info.name, self.namespace):
                continue
            for p in info.partitions:
                position = progress.get(TopicPartition(info.name, p.partition), p.start_offset)
                position = min(max(position, p.start_offset), p.end_offset)
                read += position - p.start_offset
                behind += p.end_offset - position
        when = None if caught_up is None else datetime.fromtimestamp(float(caught_up), UTC)
        return IndexStatus(read, behind, when)

    async def indexed_to(self, topic: str, partition: int) -> int:
        """The offset of `topic[partition]` the index has read up to (0 if none)."""
        rows = await self._query(
            lambda c: c.execute(
                "SELECT next_offset FROM progress WHERE topic = ? AND partition = ?",
                (topic, partition),
            ).fetchall()
        )
        return int(rows[0][0]) if rows else 0

    async def _events(self, where: str, params: tuple[object, ...]) -> list[IndexedEvent]:
        sql = f"SELECT {_COLUMNS} FROM events WHERE {where}"  # noqa: S608 (constants)
        rows = await self._query(lambda c: c.execute(sql, params).fetchall())
        return [_event(row) for row in rows]

    async def by_correlation(self, correlation_id: str, limit: int = 2000) -> list[IndexedEvent]:
        """Events with this correlation id (dead letters included), oldest first."""
        return await self._events(
            'correlation_id = ? ORDER BY time_us, topic, partition, "offset" LIMIT ?',
            (correlation_id, limit),
        )

    async def by_event_id(self, event_id: str, limit: int = 50) -> list[IndexedEvent]:
        """Every copy of this event in the log (a replayed or dead-lettered one has several)."""
        return await self._events(
            'event_id = ? ORDER BY time_us, topic, partition, "offset" LIMIT ?', (event_id, limit)
        )

    async def children(self, event_id: str, limit: int = 200) -> list[IndexedEvent]:
        """Events caused by this event (their causation id is its id), oldest first."""
        return await self._events(
            'causation_id = ? ORDER BY time_us, topic, partition, "offset" LIMIT ?',
            (event_id, limit),
        )

    async def by_key(
        self,
        key: str,
        topic: str | None = None,
        partition: int | None = None,
        *,
        after: int = -1,
        limit: int = 50,
    ) -> list[IndexedEvent]:
        """Events with this key (on `topic`, `partition` and past offset `after` if given)."""
        where = "key = ?"
        params: list[object] = [key]
        if topic is not None:
            where += " AND +topic = ?"  # `+`: look up by key, not scan the topic's rows
            params.append(topic)
            if partition is not None:
                where += ' AND +partition = ? AND +"offset" > ?'
                params += [partition, after]
        return await self._events(
            where + ' ORDER BY topic, partition, "offset" LIMIT ?', (*params, limit)
        )

    async def correlations_for_key(self, key: str, limit: int = 20) -> list[str]:
        """Correlation ids of the events with this key (say, an order id), newest first."""
        sql = (
            "SELECT correlation_id, max(time_us) AS last FROM events WHERE key = ?"
            " AND correlation_id IS NOT NULL GROUP BY correlation_id ORDER BY last DESC LIMIT ?"
        )
        rows = await self._query(lambda c: c.execute(sql, (key, limit)).fetchall())
        return [str(row[0]) for row in rows]

    async def handles(self) -> list[Handles]:
        """What the log has told about which service handles which event types."""
        rows = await self._query(
            lambda c: c.execute(
                "SELECT service, topic, type, handler FROM handles ORDER BY 1, 2, 3, 4"
            ).fetchall()
        )
        return [Handles(s, t, e, h or None) for s, t, e, h in rows]


def tuple_of(tp: TopicPartition) -> tuple[str, int]:
    return tp.topic, tp.partition


def _rows(records: Sequence[Record]) -> Iterator[tuple[object, ...]]:
    """Index rows of the records that decode into events."""
    for record in records:
        event = decode(record).event
        if event is None:
            continue
        trace_id = None
        if event.traceparent is not None:
            parts = event.traceparent.split("-")
            trace_id = parts[1] if len(parts) == 4 else None
        yield (
            record.topic,
            record.partition,
            record.offset,
            int(event.time.timestamp() * 1_000_000),
            event.id,
            event.type,
            event.source,
            event.key,
            event.correlation_id,
            event.causation_id,
            trace_id,
        )


def _handlers(records: Sequence[Record]) -> list[tuple[str, str, str, str]]:
    """(service, topic, type, handler) named by the dead letters among `records`."""
    found: set[tuple[str, str, str, str]] = set()
    for record in records:
        handler, topic = record.header(dlq.HANDLER), record.header(dlq.TOPIC)
        if handler is None or topic is None or not dlq.is_dead_letter_topic(record.topic):
            continue
        event = decode(record).event
        if event is None:
            continue
        service = record.topic.removesuffix(dlq.DLQ_SUFFIX)
        name = handler.decode("utf-8", "replace").removeprefix(service + ".")
        found.add((service, topic.decode("utf-8", "replace"), event.type, name))
    return sorted(found)


def _event(row: Sequence[object]) -> IndexedEvent:
    topic, partition, offset, time_us, event_id, type_, source, key, corr, cause, trace = row
    return IndexedEvent(
        topic=str(topic),
        partition=int(str(partition)),
        offset=int(str(offset)),
        time=datetime.fromtimestamp(int(str(time_us)) / 1_000_000, UTC),
        event_id=str(event_id),
        type=str(type_),
        source=str(source),
        key=None if key is None else str(key),
        correlation_id=None if corr is None else str(corr),
        causation_id=None if cause is None else str(cause),
        trace_id=None if trace is None else str(trace),
    )
