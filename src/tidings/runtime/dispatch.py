"""Running handlers for delivered batches: inbox, handler, outbox, retries and dead letters.

Per batch (one partition, in offset order), records are applied in one store transaction, each
handler inside its own savepoint with its own inbox row, so a failing handler rolls back only
its own effects. When a handler fails, the transaction commits what succeeded before it, and
that record is retried on its own (immediately, then with backoff) before the partition moves
on: per-key order is never broken. When its policy is spent (or the failure is permanent:
undecodable record, invalid or unknown-version event), the original record goes, unchanged and
with headers saying why, to the service's dead-letter topic through the outbox, in the same
transaction that marks the event DEAD in the inbox. Only then is the batch acked.

No record can stop its partition: a handler attempt is bounded by its policy's `timeout`
(`watch()` cancels it), and a record that fails *outside* its handlers (the store refusing
something about it, a bug) is retried `MAX_UNEXPECTED_ATTEMPTS` times and then dead-lettered
with reason `unprocessable`. Only an outage - the store or broker unavailable (StorageError) -
is retried for as long as it lasts, with backoff, since it is no record's fault.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import traceback
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from tidings import dlq
from tidings.brokers.base import Consumer
from tidings.errors import (
    BrokerClosedError,
    DecodeError,
    DuplicateEventError,
    HandlerTimeoutError,
    InboxConflictError,
    IntegrityError,
    StorageError,
)
from tidings.event import Event, event_from_record
from tidings.records import Batch, Message, Record, TopicPartition
from tidings.schema import SchemaError
from tidings.service import Context, Handler, Service, Stats, SyncContext
from tidings.stores.base import (
    InboxKey,
    InboxStatus,
    Position,
    StatementFailedElsewhere,
    Transaction,
)

log = logging.getLogger("tidings.dispatch")

MAX_UNEXPECTED_ATTEMPTS = 5
"""Attempts at a record that fails outside its handlers before it is dead-lettered."""
PAUSE_S = (0.1, 5.0)
"""Pause before redelivering a batch that failed outside its handlers: doubling from the first
figure with each consecutive failure of the partition, up to the second."""
STALL_WARNING_S = 60.0
"""A partition that has not advanced for this long is logged (again every such period)."""


class _RolledBack(Exception):
    def __init__(self, index: int) -> None:
        self.index = index


@dataclass(slots=True)
class Tally:
    """Counts of one transaction, added to the service's stats only once it commits."""

    processed: int = 0
    duplicates: int = 0
    skipped: int = 0
    dead_lettered: int = 0
    by_type: dict[str, int] = field(default_factory=dict)

    def add_to(self, stats: Stats) -> None:
        stats.processed += self.processed
        stats.duplicates += self.duplicates
        stats.skipped += self.skipped
        stats.dead_lettered += self.dead_lettered
        for name, count in self.by_type.items():
            stats.by_type[name] = stats.by_type.get(name, 0) + count


class _Stopping(Exception):
    """The service is stopping during a retry backoff: leave the record for the next run."""


@dataclass(slots=True)
class _Progress:
    offset: int
    since: float
    warned: float
    task: asyncio.Task[Any] | None


@dataclass(slots=True)
class Failure:
    handler: Handler
    error: BaseException


class Dispatcher:
    """Applies batches for one service. One batch per partition at a time (the consumer
    guarantees it); batches of different partitions may run concurrently."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.store = service.store
        self.stopping = asyncio.Event()
        self._calls: dict[asyncio.Task[Any], tuple[Handler, float]] = {}
        """Handler attempts running now, by the task running them, with their start."""
        self._timed_out: set[asyncio.Task[Any]] = set()
        self._progress: dict[TopicPartition, _Progress] = {}
        """Per partition with a batch in process: where it is, since when."""
        self._suspects: dict[TopicPartition, int] = {}
        """Partitions whose records up to this offset are applied one at a time: a batch of
        them failed outside its handlers, and the record at fault must be found."""
        self._failures: dict[TopicPartition, tuple[int, int]] = {}
        """Per partition, (offset, attempts) of a record failing outside its handlers."""
        self._streaks: dict[TopicPartition, int] = {}
        """Consecutive failures outside handlers per partition (for the pause)."""

    async def process(self, consumer: Consumer, batch: Batch) -> None:
        """Apply every record of `batch`, then ack it. On shutdown, or when a record failed
        outside its handlers, nack from the first record not yet committed - after a pause, for
        failures - so it is redelivered; the inbox makes redelivery harmless."""
        records = batch.records
        tp = batch.tp
        index = 0
        try:
            while index < len(records):
                if self.stopping.is_set():
                    consumer.nack(batch, records[index].offset)
                    return
                self._advance(tp, records[index].offset)
                end = self._chunk_end(tp, records, index)
                try:
                    if await self._fast(records, index, end) < end:
                        index = await self._careful(records, index, end)
                    else:
                        index = end
                except (_Stopping, asyncio.CancelledError):
                    raise
                except Exception as exc:
                    if await self._failed_outside_handlers(tp, records, index, end, exc):
                        index += 1
                        continue
                    await self._pause(tp)
                    consumer.nack(batch, records[index].offset)
                    return
                self._streaks.pop(tp, None)
                self._failures.pop(tp, None)
        except _Stopping:
            consumer.nack(batch, records[index].offset)
            return
        except asyncio.CancelledError:
            consumer.nack(batch, records[min(index, len(records) - 1)].offset)
            raise
        finally:
            self._progress.pop(tp, None)
        consumer.ack(batch)

    def _advance(self, tp: TopicPartition, offset: int) -> None:
        progress = self._progress.get(tp)
        if progress is None or progress.offset != offset:
            now = time.monotonic()
            self._progress[tp] = _Progress(offset, now, now, asyncio.current_task())

    def _chunk_end(self, tp: TopicPartition, records: Sequence[Record], index: int) -> int:
        """Where the transaction starting at `index` ends: the batch's end, or the next record
        while looking for the one that failed outside its handlers."""
        suspect = self._suspects.get(tp)
        if suspect is None:
            return len(records)
        if records[index].offset > suspect:
            del self._suspects[tp]
            return len(records)
        return index + 1

    async def _failed_outside_handlers(
        self,
        tp: TopicPartition,
        records: Sequence[Record],
        index: int,
        end: int,
        exc: Exception,
    ) -> bool:
        """Account for `exc`, raised while applying `records[index:end]` but not by a handler
        (those are retried per their policy). True if `records[index]` was dead-lettered
        (`unprocessable`) and the partition moves on; False to redeliver from it."""
        record = records[index]
        where = f"{self.service.name}: {tp}@{record.offset}"
        self._streaks[tp] = self._streaks.get(tp, 0) + 1
        if isinstance(exc, StorageError | BrokerClosedError):
            log.warning("%s: %s; redelivering once it is back", where, exc)
            return False
        if end - index > 1:
            self._suspects[tp] = records[end - 1].offset
            log.warning(
                "%s: a batch failed outside its handlers (%r); applying its records one at a "
                "time to find the one at fault",
                where,
                exc,
            )
            return False
        offset, attempts = self._failures.get(tp, (record.offset, 0))
        attempts = attempts + 1 if offset == record.offset else 1
        self._failures[tp] = (record.offset, attempts)
        if attempts < MAX_UNEXPECTED_ATTEMPTS:
            log.error(
                "%s failed outside its handlers (attempt %d of %d)",
                where,
                attempts,
                MAX_UNEXPECTED_ATTEMPTS,
                exc_info=exc,
            )
            return False
        log.error("%s failed outside its handlers %d times; dead-lettered", where, attempts)
        try:
            await self._set_aside(record, exc, attempts)
        except Exception:
            log.exception("%s: dead-lettering it failed too; will retry", where)
            return False
        del self._failures[tp]
        return True

    async def _pause(self, tp: TopicPartition) -> None:
        first, most = PAUSE_S
        delay = min(most, first * 2 ** (self._streaks.get(tp, 1) - 1))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), delay)

    async def _set_aside(self, record: Record, error: Exception, attempts: int) -> None:
        """Dead-letter `record` as unprocessable: through the outbox, marked in the inbox by its
        position (its event id may be what the store refused); if even that transaction fails,
        straight to the broker (at-least-once: it may then be dead-lettered twice)."""
        position = (record.topic, record.partition, record.offset)
        marker = f"unprocessable:{record.topic}:{record.partition}:{record.offset}"
        tally = Tally()
        try:
            async with self._guarded_transaction() as tx:
                if await tx.inbox_add(self.service.name, marker, position, InboxStatus.DEAD):
                    self._dead_letter(
                        tx, tally, record, None, dlq.REASON_UNPROCESSABLE, error, attempts
                    )
        except StorageError:
            raise
        except Exception:
            log.exception(
                "%s: recording the dead letter in the store failed; publishing it directly",
                self.service.name,
            )
            message = self._dead_letter_message(
                record, None, dlq.REASON_UNPROCESSABLE, error, attempts
            )
            broker = self.service.broker
            await broker.publish(
                self.service.dead_letter_topic, [dlq.fit(message, broker.max_message_bytes)]
            )
            self.service.stats.dead_lettered += 1
            return
        tally.add_to(self.service.stats)

    async def watch(self, stopping: asyncio.Event) -> None:
        """Until `stopping`: cancel handler attempts that overran their policy's timeout (they
        fail with HandlerTimeoutError), and log partitions that have not advanced for
        STALL_WARNING_S."""
        timeouts = [h.retry.timeout for h in self.service.handlers if h.retry.timeout]
        tick = max(0.02, min([1.0, *(t / 4 for t in timeouts)]))
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), tick)
            now = time.monotonic()
            for task, (handler, started) in list(self._calls.items()):
                timeout = handler.retry.timeout
                if timeout is not None and now - started > timeout and task not in self._timed_out:
                    self._timed_out.add(task)
                    task.cancel()
            for tp, progress in self._progress.items():
                if now - progress.warned >= STALL_WARNING_S:
                    progress.warned = now
                    call = self._calls.get(progress.task) if progress.task else None
                    log.warning(
                        "%s: %s has not advanced past offset %d for %.0fs%s",
                        self.service.name,
                        tp,
                        progress.offset,
                        now - progress.since,
                        f" (in handler {call[0].consumer})" if call else "",
                    )

    async def _invoke(self, handler: Handler, argument: object, context: Context) -> None:
        """One attempt of `handler`, bounded by its policy's timeout; `context` is closed after
        it, whatever happens (a `def` handler's thread outliving a timeout cannot use it)."""
        task = asyncio.current_task()
        assert task is not None
        self._calls[task] = (handler, time.monotonic())
        try:
            if handler.is_async:
                await handler.function(argument, context)
            else:
                loop = asyncio.get_running_loop()
                await asyncio.to_thread(handler.function, argument, SyncContext(context, loop))
            if context.unverified_topics:
                await context.verify_topics()
        except asyncio.CancelledError:
            if task not in self._timed_out:
                raise
            self._timed_out.discard(task)
            task.uncancel()
            raise HandlerTimeoutError(
                f"handler {handler.consumer} did not finish within {handler.retry.timeout:g}s"
            ) from None
        finally:
            del self._calls[task]
            context.close()
            if task in self._timed_out:  # the handler swallowed the cancellation and returned
                self._timed_out.discard(task)
                task.uncancel()

    async def _fast(self, records: Sequence[Record], start: int, end: int) -> int:
        """Apply `records[start:end]` in one transaction without savepoints (the common case:
        nothing fails). The inbox is looked up for the whole batch in one statement and the
        new inbox rows are inserted together just before commit; if one of them turns out to
        be recorded already (a concurrent redelivery committed first), the transaction rolls
        back and the caller applies the batch carefully. Returns `end` once committed, or the
        index of the first record whose handler raised (or `start` after such a conflict,
        after a failed statement whose error surfaced elsewhere or was caught, or when a
        deferred constraint failed at COMMIT) - and then nothing of `records[start:end]` was
        committed."""
        tally = Tally()
        planned: list[tuple[Record, Event | DecodeError, list[Handler]]] = []
        keys: list[InboxKey] = []
        for index in range(start, end):
            record = records[index]
            event = _decode(record)
            if isinstance(event, Event):
                handlers = self._due_handlers(record, event, frozenset())
                keys.extend((handler.consumer, event.id) for handler in handlers)
            else:
                handlers = []
            planned.append((record, event, handlers))
        try:
            async with self.store.transaction() as tx:
                tx.deferred_errors_escape = True
                inbox = InboxBatch(await tx.inbox_find(keys))
                for offset, (record, event, handlers) in enumerate(planned):
                    if isinstance(event, Event) and handlers:
                        failure = await self._apply_planned(
                            tx, record, event, handlers, tally, inbox
                        )
                    else:
                        failure = await self._apply(
                            tx, record, tally, guarded=False, decoded=event, inbox=inbox
                        )
                    if failure is not None:
                        raise _RolledBack(start + offset)
                await inbox.write(tx)
        except _RolledBack as rolled_back:
            return rolled_back.index
        except (DuplicateEventError, InboxConflictError, StatementFailedElsewhere, IntegrityError):
            # StatementFailedElsewhere: a statement failed whose error surfaced elsewhere (one a
            # handler deferred, in another handler's await, say) or was caught by the code that
            # ran it; IntegrityError here: a deferred constraint, checked at COMMIT. Savepoints,
            # with constraints checked at each statement, will say whose it was.
            return start
        tally.add_to(self.service.stats)
        return end

    async def _apply_planned(
        self,
        tx: Transaction,
        record: Record,
        event: Event,
        handlers: list[Handler],
        tally: Tally,
        inbox: InboxBatch,
    ) -> Failure | None:
        """`_apply(guarded=False)` for a decoded event and its due handlers, with the common
        case inline: the handler's inbox row is new, its argument parses, it returns. Anything
        else (duplicate, invalid data) takes `_apply_handler` for that handler."""
        position = (record.topic, record.partition, record.offset)
        event_id = event.id
        for handler in handlers:
            model = handler.model
            try:
                argument = event if model is None else model.from_event(event)
            except SchemaError:
                argument = None
            if argument is None or not inbox.claim(handler.consumer, event_id, position):
                failure = await self._apply_handler(
                    tx, tally, record, event, handler, position, 1, False, False, inbox
                )
                if failure is not None:
                    return failure
                continue
            context = Context(self.service, tx, event=event, position=position)
            try:
                await self._invoke(handler, argument, context)
            except Exception as exc:
                return Failure(handler, exc)
            tally.processed += 1
            by_type = tally.by_type
            by_type[event.type] = by_type.get(event.type, 0) + 1
        return None

    @contextlib.asynccontextmanager
    async def _guarded_transaction(self) -> AsyncIterator[Transaction]:
        """A transaction for handlers in savepoints: deferred constraints are checked at each
        statement, so that a violation is the failing handler's, inside its savepoint."""
        async with self.store.transaction() as tx:
            await tx.check_constraints_immediately()
            yield tx

    async def _careful(self, records: Sequence[Record], start: int, end: int) -> int:
        """Apply `records[start:end]` with a savepoint per handler until one fails, commit
        those, then retry the failing record on its own. Returns the next index to apply."""
        tally = Tally()
        index = start
        failure: Failure | None = None
        async with self._guarded_transaction() as tx:
            while index < end:
                failure = await self._apply(tx, records[index], tally, guarded=True)
                if failure is not None:
                    break
                index += 1
        tally.add_to(self.service.stats)
        if failure is None:
            return index
        await self._retry(records[index], failure)
        return index + 1

    async def _apply(
        self,
        tx: Transaction,
        record: Record,
        tally: Tally,
        *,
        guarded: bool,
        attempt: int = 1,
        retrying: bool = False,
        skip: set[str] | frozenset[str] = frozenset(),
        decoded: Event | DecodeError | None = None,
        inbox: InboxBatch | None = None,
    ) -> Failure | None:
        """Run every due handler for `record` in `tx`. Guarded, each handler runs in a
        savepoint: the first retryable failure is returned with its effects rolled back, and
        permanent ones are dead-lettered here. Unguarded, any handler exception is returned
        and the caller must roll back the transaction. Handlers that already ran (inbox) are
        skipped, and so are those in `skip` (dead-lettered during this delivery); `retrying`
        keeps the skips out of the duplicate count. `decoded` is `_decode(record)` if the
        caller has it; with `inbox`, new inbox rows are queued there instead of inserted."""
        event = _decode(record) if decoded is None else decoded
        if isinstance(event, DecodeError):
            exc = event
            position = (record.topic, record.partition, record.offset)
            marker = f"undecodable:{record.topic}:{record.partition}:{record.offset}"
            if await tx.inbox_add(self.service.name, marker, position, InboxStatus.DEAD):
                log.error("%s: undecodable record dead-lettered: %s", self.service.name, exc)
                self._dead_letter(tx, tally, record, None, dlq.REASON_UNDECODABLE, exc, attempt)
            return None
        handlers = self._due_handlers(record, event, skip)
        if not handlers:
            if not retrying and _header(record, dlq.REPLAY_FOR) is None:
                tally.skipped += 1
            return None
        position = (record.topic, record.partition, record.offset)
        for handler in handlers:
            failure = await self._apply_handler(
                tx, tally, record, event, handler, position, attempt, retrying, guarded, inbox
            )
            if failure is not None:
                return failure
        return None

    def _due_handlers(
        self, record: Record, event: Event, skip: set[str] | frozenset[str]
    ) -> list[Handler]:
        """The handlers that should run `event`: all of its type on its topic, only the
        targeted one for a replay from the dead-letter topic, none of those in `skip`."""
        handlers = self.service.handlers_for(record.topic, event.type)
        if record.headers:
            target = _header(record, dlq.REPLAY_FOR)
            if target is not None:
                handlers = [h for h in handlers if h.consumer == target]
        if skip:
            handlers = [h for h in handlers if h.consumer not in skip]
        return handlers

    async def _apply_handler(
        self,
        tx: Transaction,
        tally: Tally,
        record: Record,
        event: Event,
        handler: Handler,
        position: tuple[str, int, int],
        attempt: int,
        retrying: bool,
        guarded: bool,
        inbox: InboxBatch | None,
    ) -> Failure | None:
        try:
            argument = handler.parse(event)
        except SchemaError as exc:
            if await self._mark_dead(tx, record, handler, event.id, position):
                log.error(
                    "%s: %s dead-lettered for %s: %s",
                    self.service.name,
                    event.id,
                    handler.consumer,
                    exc,
                )
                self._dead_letter(tx, tally, record, handler, dlq.REASON_INVALID, exc, attempt)
            return None
        try:
            async with tx.savepoint() if guarded else contextlib.nullcontext():
                if inbox is not None and inbox.claim(handler.consumer, event.id, position):
                    pass
                elif not await _inbox_add(tx, inbox, handler.consumer, event.id, position):
                    status = await tx.inbox_get(handler.consumer, event.id)
                    replay = _header(record, dlq.REPLAY_FOR) == handler.consumer
                    if not (status is InboxStatus.DEAD and replay):
                        if not retrying:
                            tally.duplicates += 1
                        return None
                    await tx.inbox_delete(handler.consumer, event.id)
                    await tx.inbox_add(handler.consumer, event.id, position)
                context = Context(self.service, tx, event=event, attempt=attempt, position=position)
                await self._invoke(handler, argument, context)
                if guarded:
                    await tx.flush()
        except StorageError:
            raise  # the store is unavailable: nobody's failure; the batch waits for it
        except Exception as exc:
            if not guarded:
                return Failure(handler, exc)
            if not handler.retry.retryable(exc):
                if await self._mark_dead(tx, record, handler, event.id, position):
                    log.error(
                        "%s: %s failed permanently in %s: %r",
                        self.service.name,
                        event.id,
                        handler.consumer,
                        exc,
                    )
                    self._dead_letter(
                        tx, tally, record, handler, dlq.REASON_PERMANENT, exc, attempt
                    )
                return None
            return Failure(handler, exc)
        tally.processed += 1
        tally.by_type[event.type] = tally.by_type.get(event.type, 0) + 1
        return None

    async def _retry(self, record: Record, failure: Failure | None) -> None:
        """Retry `record` until every handler succeeded or was dead-lettered. Each failing
        handler gets its own attempt budget from its own policy."""
        dead: set[str] = set()
        while failure is not None:
            failure = await self._retry_handler(record, failure, dead)

    async def _retry_handler(
        self, record: Record, failure: Failure, dead: set[str]
    ) -> Failure | None:
        """Retry `failure.handler` per its policy; dead-letter it when spent. Returns a failure
        of another handler of the same record if one surfaces (that one starts afresh)."""
        handler = failure.handler
        started = time.monotonic()
        attempt = 1
        while True:
            delay = handler.retry.next_delay(attempt, time.monotonic() - started, failure.error)
            if delay is None:
                break
            log.warning(
                "%s: %s failed (attempt %d): %r; retrying in %.2fs",
                self.service.name,
                handler.consumer,
                attempt,
                failure.error,
                delay,
            )
            if delay:
                try:
                    await asyncio.wait_for(self.stopping.wait(), delay)
                except TimeoutError:
                    pass
                else:
                    raise _Stopping
            attempt += 1
            self.service.stats.retried += 1
            tally = Tally()
            async with self._guarded_transaction() as tx:
                next_failure = await self._apply(
                    tx, record, tally, guarded=True, attempt=attempt, retrying=True, skip=dead
                )
            tally.add_to(self.service.stats)
            if next_failure is None:
                return None
            if next_failure.handler is not handler:
                return next_failure
            failure = next_failure
        log.error(
            "%s: %s gave up after %d attempt(s): %r; dead-lettered",
            self.service.name,
            handler.consumer,
            attempt,
            failure.error,
        )
        tally = Tally()
        async with self._guarded_transaction() as tx:
            event = event_from_record(record)
            position = (record.topic, record.partition, record.offset)
            if await self._mark_dead(tx, record, handler, event.id, position):
                self._dead_letter(
                    tx, tally, record, handler, dlq.REASON_EXHAUSTED, failure.error, attempt
                )
            dead.add(handler.consumer)
            next_failure = await self._apply(
                tx, record, tally, guarded=True, retrying=True, skip=dead
            )
        tally.add_to(self.service.stats)
        return next_failure

    @staticmethod
    async def _mark_dead(
        tx: Transaction,
        record: Record,
        handler: Handler,
        event_id: str,
        position: tuple[str, int, int],
    ) -> bool:
        """Mark the event DEAD for `handler`; True if a dead letter should be written (not
        when a plain redelivery finds it already dead)."""
        if await tx.inbox_add(handler.consumer, event_id, position, InboxStatus.DEAD):
            return True
        if _header(record, dlq.REPLAY_FOR) != handler.consumer:
            return False
        await tx.inbox_delete(handler.consumer, event_id)
        return await tx.inbox_add(handler.consumer, event_id, position, InboxStatus.DEAD)

    def _dead_letter(
        self,
        tx: Transaction,
        tally: Tally,
        record: Record,
        handler: Handler | None,
        reason: str,
        error: BaseException,
        attempts: int,
    ) -> None:
        message = self._dead_letter_message(record, handler, reason, error, attempts)
        consumer = handler.consumer if handler else self.service.name
        dedupe = f"dlq:{record.topic}:{record.partition}:{record.offset}:{consumer}"
        tx.add_outbox(self.service.dead_letter_topic, dedupe, message)
        tally.dead_lettered += 1

    def _dead_letter_message(
        self,
        record: Record,
        handler: Handler | None,
        reason: str,
        error: BaseException,
        attempts: int,
    ) -> Message:
        headers = dlq.describe(
            record,
            reason=reason,
            error=error,
            traceback_text="".join(traceback.format_exception(error)),
            handler=handler.consumer if handler else None,
            attempts=attempts,
        )
        return Message(
            value=record.value,
            key=record.key,
            headers=dlq.strip(record.headers) + headers,
        )


class InboxBatch:
    """The inbox rows of one unguarded transaction: which pairs were recorded when it started
    (one lookup), and the new rows, inserted together by `write` before commit."""

    def __init__(self, recorded: set[InboxKey]) -> None:
        self.recorded = recorded
        self.claimed: set[InboxKey] = set()
        self.entries: list[tuple[str, str, Position]] = []

    def claim(self, consumer: str, event_id: str, position: Position) -> bool:
        """True if the pair had no inbox row and was not claimed earlier in this transaction:
        its row is queued, and the handler may run. False: decide with the inbox itself."""
        key = (consumer, event_id)
        if key in self.recorded or key in self.claimed:
            return False
        self.claimed.add(key)
        self.entries.append((consumer, event_id, position))
        return True

    async def write(self, tx: Transaction) -> None:
        """Insert the queued rows (InboxConflictError if one was recorded meanwhile)."""
        if self.entries:
            entries, self.entries = self.entries, []
            await tx.inbox_add_all(entries)


async def _inbox_add(
    tx: Transaction, inbox: InboxBatch | None, consumer: str, event_id: str, position: Position
) -> bool:
    """`tx.inbox_add`, after writing what `inbox` queued (so a pair claimed earlier in this
    transaction is seen as recorded)."""
    if inbox is not None:
        await inbox.write(tx)
    return await tx.inbox_add(consumer, event_id, position)


def _decode(record: Record) -> Event | DecodeError:
    try:
        return event_from_record(record)
    except DecodeError as exc:
        return exc


def _header(record: Record, name: str) -> str | None:
    value = record.header(name)
    return None if value is None else value.decode("utf-8", "replace")
