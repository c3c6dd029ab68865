"""Order-preserving dead letters: a handler declared with `ordered_dead_letters=True` that
dead-letters an event *holds* the event's key, and every later event of that key is *parked*
for that handler instead of overtaking the dead letter. Other keys flow on; other handlers of
the same events are not concerned. Replaying the dead letter (`tidings dlq replay`), once it
succeeds, or purging it (`tidings dlq purge`) *releases* the key: its parked events are applied
to the handler in their order, then the key flows again.

Everything is in the service's store, written in the transactions that decide it, so it
survives a crash or a restart and moves with a partition to another process:

* `tidings_held_keys` - one row per (topic, key, handler) held: the partition and offset of
  the event it waits for, that event's id, and its state - `dead` (waiting for its dead letter
  to be replayed or purged) or `releasing` (its parked events are being applied).
* `tidings_parked` - one row per parked event and handler: the whole record (value, key and
  headers), so that releasing it reads neither the broker nor depends on the topic's
  retention. A parked record costs its size in the store plus about 100 bytes; nothing of it
  is held in memory, and a release reads `RELEASE_PAGE` records at a time.

How the dispatcher uses it (`tidings.runtime.dispatch`): each batch transaction of a topic an
ordered handler consumes first loads the holds on the batch's keys (one query, keys bounded by
the batch); a held key's records after the held offset are parked for that handler (a
redelivered one is not parked twice); a dead letter of the handler holds its key in the same
transaction (its dead letter carries the header `tidings-dlq-ordered`); a replay of that
dead letter that succeeds, or the purge marker `tidings dlq purge` publishes for such a letter
(a copy of the record for no handler, with `tidings-dlq-purged-for`), turns the hold to
`releasing`; before the batch is acked, the partition's releasing keys are drained in offset
order through the dispatcher's ordinary path (retries, dead letters): a parked event that
fails for good holds the key again, its own dead letter now, with the rest still parked.

Liveness: nothing here retries on its own - a held key waits for an operator's decision on a
dead letter, which `tidings dlq list` shows. Events without a key are never parked (per-key
order means nothing for them); a record that does not decode holds nothing (it has no handler).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from tidings import dlq
from tidings.errors import BrokerClosedError, IntegrityError, StorageError
from tidings.event import Event
from tidings.records import Message, Record, TopicPartition
from tidings.runtime.handlers import Handler
from tidings.stores._codec import decode_headers, encode_headers
from tidings.stores.base import Store, Transaction

log = logging.getLogger("tidings.dispatch")

ORDERED = "tidings-dlq-ordered"
"""On a dead letter that holds its key: the handler whose later events of that key are parked
until it is replayed or purged."""
PURGED_FOR = "tidings-dlq-purged-for"
"""On a purge marker: the handler whose dead letter of this event was purged (the marker is a
copy of the record published to its topic with an empty `tidings-replay-for`, so that no
handler of any service runs it)."""
DEAD = "dead"
RELEASING = "releasing"
RELEASE_PAGE = 100
"""Parked records read (and applied) at a time while releasing a key."""
KEYS_PER_QUERY = 500
LOAD_HOLDS = (
    "SELECT consumer, key, partition, record_offset, event_id, state FROM tidings_held_keys"
    " WHERE topic = ?"
)
"""The partition is named too: a key keeps its partition while the partition count stays."""
MAX_UNEXPECTED_ATTEMPTS = 5
"""Attempts at a parked record that fails outside its handler before it is set aside."""

TABLES = (
    """CREATE TABLE IF NOT EXISTS tidings_held_keys (
        topic TEXT NOT NULL,
        key BYTEA NOT NULL,
        consumer TEXT NOT NULL,
        partition INTEGER NOT NULL,
        record_offset BIGINT NOT NULL,
        event_id TEXT NOT NULL,
        state TEXT NOT NULL,
        held_ms BIGINT NOT NULL,
        PRIMARY KEY (topic, key, consumer)
    )""",
    "CREATE INDEX IF NOT EXISTS tidings_held_keys_state"
    " ON tidings_held_keys (topic, partition, state)",
    """CREATE TABLE IF NOT EXISTS tidings_parked (
        consumer TEXT NOT NULL,
        topic TEXT NOT NULL,
        partition INTEGER NOT NULL,
        record_offset BIGINT NOT NULL,
        key BYTEA NOT NULL,
        record_time BIGINT NOT NULL,
        value BYTEA NOT NULL,
        headers BYTEA,
        parked_ms BIGINT NOT NULL,
        PRIMARY KEY (consumer, topic, partition, record_offset)
    )""",
    "CREATE INDEX IF NOT EXISTS tidings_parked_key"
    " ON tidings_parked (consumer, topic, key, partition, record_offset)",
)
"""Portable DDL (SQLite keeps BYTEA values as BLOBs), created when a service with an ordered
handler starts."""


@dataclass(slots=True)
class Hold:
    """A held key of one handler: parked behind the event at `partition`/`offset`."""

    partition: int
    offset: int
    event_id: str
    state: str


@dataclass(slots=True)
class _Partition:
    """What the dispatcher knows of one partition (one batch at a time per partition)."""

    holds: dict[tuple[str, bytes], Hold] = field(default_factory=dict)
    """(consumer, key) -> hold, for the keys of the batch being applied (and releasing ones)."""
    releasing: bool = False
    """A key of this partition is releasing: drain it before the batch is acked."""
    current: set[tuple[str, int]] = field(default_factory=set)
    """(consumer, offset) of the parked records being released right now."""


class Parking:
    """The held keys and parked events of one service's ordered handlers."""

    def __init__(self, handlers: Sequence[Handler]) -> None:
        ordered = [h for h in handlers if h.ordered_dead_letters]
        self.active = bool(ordered)
        self.consumers = {h.consumer for h in ordered}
        self.topics = {t for h in ordered for t in h.topics}
        self._partitions: dict[tuple[str, int], _Partition] = {}

    async def prepare(self, store: Store) -> None:
        """Create the tables (once per store; several processes may race, so a lost race
        is tried again)."""
        if not self.active:
            return
        for attempt in range(3):
            try:
                async with store.transaction() as tx:
                    for statement in TABLES:
                        await tx.execute(statement)
                return
            except IntegrityError:  # PostgreSQL: a concurrent CREATE ... IF NOT EXISTS won
                if attempt == 2:
                    raise

    def _state(self, topic: str, partition: int) -> _Partition:
        state = self._partitions.get((topic, partition))
        if state is None:
            state = self._partitions[(topic, partition)] = _Partition()
        return state

    # applying a batch ----------------------------------------------------------------------

    async def load(self, tx: Transaction, records: Sequence[Record]) -> None:
        """At the start of a transaction applying `records` (one partition): the holds of the
        partition - all of them in one indexed query while there are at most KEYS_PER_QUERY
        (usually none), else those on the records' keys and the releasing ones - replacing
        what was known (a rolled back transaction's changes included)."""
        if not records or records[0].topic not in self.topics:
            return
        first = records[0]
        state = self._state(first.topic, first.partition)
        where = (first.topic, first.partition)
        rows = await tx.fetchall(
            f"{LOAD_HOLDS} AND partition = ? LIMIT ?", (*where, KEYS_PER_QUERY + 1)
        )
        if len(rows) > KEYS_PER_QUERY:  # many keys held: only those this batch needs
            keys = list({r.key for r in records if r.key is not None})
            rows = []
            for index in range(0, max(len(keys), 1), KEYS_PER_QUERY):
                chunk = keys[index : index + KEYS_PER_QUERY]
                within = f"key IN ({', '.join('?' * len(chunk))}) OR " if chunk else ""
                sql = f"{LOAD_HOLDS} AND partition = ? AND ({within}state = ?)"
                rows += await tx.fetchall(sql, (*where, *chunk, RELEASING))
        holds: dict[tuple[str, bytes], Hold] = {}
        for consumer, key, partition, offset, event_id, hold_state in rows:
            if consumer in self.consumers:
                hold = Hold(int(partition), int(offset), str(event_id), str(hold_state))
                holds[(str(consumer), bytes(key))] = hold
        state.holds = holds
        state.releasing = any(h.state == RELEASING for h in holds.values())

    def holds(self, handler: Handler, record: Record) -> bool:
        """Whether `record` must be parked for `handler`: its key is held for it and the record
        comes after the held one. A replay (`tidings-replay-for`) is never parked, except a
        parked record being released whose key was held again meanwhile: it stays parked."""
        if record.key is None:
            return False
        state = self._partitions.get((record.topic, record.partition))
        if state is None or not state.holds:
            return False
        hold = state.holds.get((handler.consumer, record.key))
        if hold is None:
            return False
        if (handler.consumer, record.offset) in state.current:
            return hold.state == DEAD
        if hold.partition == record.partition and record.offset <= hold.offset:
            return False
        return record.header(dlq.REPLAY_FOR) is None

    async def park(self, tx: Transaction, record: Record, handler: Handler) -> bool:
        """Park `record` for `handler`; False if it was parked before (a redelivery)."""
        assert record.key is not None
        added = await tx.execute(
            "INSERT INTO tidings_parked (consumer, topic, partition, record_offset, key,"
            " record_time, value, headers, parked_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT DO NOTHING",
            (
                handler.consumer,
                record.topic,
                record.partition,
                record.offset,
                record.key,
                record.timestamp,
                record.value,
                encode_headers(record.headers),
                _now_ms(),
            ),
        )
        return added > 0

    async def ran(self, tx: Transaction, record: Record, event: Event, handler: Handler) -> None:
        """`handler` (ordered) applied `record`. If it is a parked record being released, it
        is no longer parked; if it is the replay of the dead letter its key is held for, the
        key starts releasing."""
        state = self._partitions.get((record.topic, record.partition))
        if state is None or not (state.holds or state.current) or record.key is None:
            return  # nothing of this partition is held: no replay of a held event
        if record.header(dlq.REPLAY_FOR) is None:
            return
        if (handler.consumer, record.offset) in state.current:
            await self._unpark(tx, handler.consumer, record)
            hold = state.holds.get((handler.consumer, record.key))
            if hold is not None:
                hold.offset = record.offset
            return
        hold = await self._hold(tx, handler.consumer, record)
        if hold is not None and hold.state == DEAD and hold.event_id == event.id:
            await self._set_releasing(tx, handler.consumer, record, state, hold)

    async def purged(self, tx: Transaction, record: Record, event: Event) -> None:
        """A purge marker (`record` has `tidings-dlq-purged-for`): if the purged dead letter
        holds its key, the key starts releasing."""
        value = record.header(PURGED_FOR)
        if value is None or record.key is None:
            return
        consumer = value.decode("utf-8", "replace")
        if consumer not in self.consumers:
            return
        hold = await self._hold(tx, consumer, record)
        if hold is not None and hold.state == DEAD and hold.event_id == event.id:
            state = self._state(record.topic, record.partition)
            await self._set_releasing(tx, consumer, record, state, hold)
            log.warning(
                "%s: the dead letter of %s was purged; releasing the events of its key",
                consumer,
                event.id,
            )

    async def dead_lettered(
        self, tx: Transaction, record: Record, event: Event, handler: Handler, letter: Message
    ) -> Message:
        """`handler` (ordered) dead-letters `record`: hold its key behind it (a parked record
        being released stays no longer parked: the dead letter takes its place). Returns the
        letter, marked as holding its key when it does."""
        if record.key is None:
            return letter
        consumer = handler.consumer
        state = self._state(record.topic, record.partition)
        partition, offset = record.partition, record.offset
        if (consumer, record.offset) in state.current:  # a parked record being released
            await self._unpark(tx, consumer, record)
        elif record.header(dlq.REPLAY_FOR) is not None:  # a replay failing again
            hold = await self._hold(tx, consumer, record)
            if hold is not None:
                if hold.event_id != event.id:
                    return letter  # the key waits for another letter
                partition, offset = hold.partition, hold.offset  # still behind the original
        await tx.execute(
            "INSERT INTO tidings_held_keys (topic, key, consumer, partition, record_offset,"
            " event_id, state, held_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (topic, key, consumer) DO UPDATE SET partition = excluded.partition,"
            " record_offset = excluded.record_offset, event_id = excluded.event_id,"
            " state = excluded.state, held_ms = excluded.held_ms",
            (record.topic, record.key, consumer, partition, offset, event.id, DEAD, _now_ms()),
        )
        state.holds[(consumer, record.key)] = Hold(partition, offset, event.id, DEAD)
        log.warning(
            "%s: holding key %r behind dead letter %s: its later events are parked until the "
            "letter is replayed or purged",
            consumer,
            record.key,
            event.id,
        )
        return Message(
            letter.value,
            letter.key,
            (*letter.headers, (ORDERED, consumer.encode())),
            letter.partition,
        )

    # releasing -----------------------------------------------------------------------------

    def pending(self, tp: TopicPartition) -> bool:
        """A key of `tp` is releasing: drain it (`next_parked`) before acking the batch."""
        state = self._partitions.get((tp.topic, tp.partition))
        return state is not None and state.releasing

    async def next_parked(self, store: Store, tp: TopicPartition) -> list[Record]:
        """The next parked records (up to RELEASE_PAGE, in offset order, of one releasing
        key of `tp`) as records for their handler only (`tidings-replay-for`); a releasing
        key with nothing parked any more is let go. [] once no key of `tp` is releasing."""
        state = self._state(tp.topic, tp.partition)
        state.current.clear()
        async with store.transaction() as tx:
            holds = await tx.fetchall(
                "SELECT consumer, key FROM tidings_held_keys"
                " WHERE topic = ? AND partition = ? AND state = ?",
                (tp.topic, tp.partition, RELEASING),
            )
            for consumer, key in holds:
                if consumer not in self.consumers:
                    continue
                rows = await tx.fetchall(
                    "SELECT partition, record_offset, record_time, value, headers"
                    " FROM tidings_parked WHERE consumer = ? AND topic = ? AND key = ?"
                    " ORDER BY partition, record_offset LIMIT ?",
                    (consumer, tp.topic, key, RELEASE_PAGE),
                )
                if rows:
                    replay_for = ((dlq.REPLAY_FOR, str(consumer).encode()),)
                    records = [
                        Record(
                            tp.topic,
                            int(partition),
                            int(offset),
                            int(stamp),
                            bytes(value),
                            bytes(key),
                            (decode_headers(bytes(headers)) if headers else ()) + replay_for,
                        )
                        for partition, offset, stamp, value, headers in rows
                    ]
                    state.current = {(str(consumer), r.offset) for r in records}
                    return records
                await tx.execute(
                    "DELETE FROM tidings_held_keys WHERE topic = ? AND key = ? AND consumer = ?",
                    (tp.topic, key, consumer),
                )
                log.info("%s: released key %r: its events flow again", consumer, bytes(key))
        state.releasing = False
        return []

    async def release(
        self,
        tp: TopicPartition,
        store: Store,
        apply: Callable[[Sequence[Record], int, int], Awaitable[int]],
        set_aside: Callable[[Record, Exception, int], Awaitable[None]],
        stopping: asyncio.Event,
    ) -> bool:
        """Drain `tp`'s releasing keys. `apply(records, start, end)` is the dispatcher's
        careful path: it applies parked records in order until one fails, retries that one
        per its handler's policy (dead-lettering it when spent, which holds the key again)
        and returns the next index. A failure outside the handler is tried again with backoff;
        after MAX_UNEXPECTED_ATTEMPTS (unless the store or broker is down) the record is set
        aside (`set_aside`: dead letter `unprocessable`) and the key moves on. False if the
        service is stopping before the keys are drained."""
        failures = 0
        while not stopping.is_set():
            records: Sequence[Record] = ()
            index = 0
            try:
                records = await self.next_parked(store, tp)
                if not records:
                    return True
                while index < len(records) and self._releasing(tp, records[index]):
                    index = await apply(records, index, len(records))
                failures = 0
            except Exception as exc:
                failures += 1
                outage = isinstance(exc, StorageError | BrokerClosedError)
                stuck = records and index < len(records) and not outage
                if stuck and failures >= MAX_UNEXPECTED_ATTEMPTS:
                    log.error(
                        "%s@%d failed outside its handler %d times; set aside",
                        tp,
                        records[index].offset,
                        failures,
                    )
                    await set_aside(records[index], exc, failures)
                    await self._drop(store, records[index])
                    failures = 0
                    continue
                log.warning("releasing parked events of %s failed (%r); retrying", tp, exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), min(5.0, 0.1 * 2 ** (failures - 1)))
        return False

    def _releasing(self, tp: TopicPartition, record: Record) -> bool:
        """Whether `record` (parked) is still to be applied: its key is still releasing (not
        held again by a dead letter) and it was not applied yet."""
        state = self._state(tp.topic, tp.partition)
        consumer = (record.header(dlq.REPLAY_FOR) or b"").decode()
        assert record.key is not None
        hold = state.holds.get((consumer, record.key))
        return (hold is None or hold.state == RELEASING) and (
            consumer,
            record.offset,
        ) in state.current

    async def _drop(self, store: Store, record: Record) -> None:
        """Parked no longer: `record` was set aside."""
        consumer = (record.header(dlq.REPLAY_FOR) or b"").decode()
        async with store.transaction() as tx:
            await self._unpark(tx, consumer, record)

    # rows ----------------------------------------------------------------------------------

    async def _hold(self, tx: Transaction, consumer: str, record: Record) -> Hold | None:
        row = await tx.fetchone(
            "SELECT partition, record_offset, event_id, state FROM tidings_held_keys"
            " WHERE topic = ? AND key = ? AND consumer = ?",
            (record.topic, record.key, consumer),
        )
        if row is None:
            return None
        return Hold(int(row[0]), int(row[1]), str(row[2]), str(row[3]))

    async def _set_releasing(
        self, tx: Transaction, consumer: str, record: Record, state: _Partition, hold: Hold
    ) -> None:
        await tx.execute(
            "UPDATE tidings_held_keys SET state = ? WHERE topic = ? AND key = ? AND consumer = ?",
            (RELEASING, record.topic, record.key, consumer),
        )
        hold.state = RELEASING
        assert record.key is not None
        state.holds[(consumer, record.key)] = hold
        state.releasing = True

    async def _unpark(self, tx: Transaction, consumer: str, record: Record) -> None:
        await tx.execute(
            "DELETE FROM tidings_parked WHERE consumer = ? AND topic = ? AND partition = ?"
            " AND record_offset = ?",
            (consumer, record.topic, record.partition, record.offset),
        )
        await tx.execute(
            "UPDATE tidings_held_keys SET record_offset = ? WHERE topic = ? AND key = ?"
            " AND consumer = ? AND partition = ?",
            (record.offset, record.topic, record.key, consumer, record.partition),
        )
        self._state(record.topic, record.partition).current.discard((consumer, record.offset))


def _now_ms() -> int:
    return int(time.time() * 1000)
