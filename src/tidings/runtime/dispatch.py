"""Applying delivered batches: inbox, handler, outbox, retries and dead letters.

Per batch (one partition, in offset order), records are applied in one store transaction
without savepoints (the common case: nothing fails). If a handler raises, that transaction
rolls back and the batch is applied again with a savepoint per handler, each with its own inbox
row, up to the failing record; what succeeded commits, and that record is retried on its own
(immediately, then with backoff) before the partition moves on: per-key order is never broken.
When its policy is spent (or the failure is permanent: undecodable record, invalid or
unknown-version event), the original record goes, unchanged and with headers saying why, to
the service's dead-letter topic through the outbox, in the same transaction that marks the
event DEAD in the inbox. Only then is the batch acked.

Every handler attempt goes through one path, `_attempt`: the service's middleware (the first
outermost), then the handler, bounded by its policy's timeout (`Watch`). What became of each
event is told to `Stats` and the service's observers once its transaction committed.

No record can stop its partition: a record that fails *outside* its handlers (the store
refusing something about it, a bug) is retried `MAX_UNEXPECTED_ATTEMPTS` times and then
dead-lettered with reason `unprocessable`. Only an outage - the store or broker unavailable
(StorageError) - is retried for as long as it lasts, with backoff, since it is no record's fault.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from tidings import dlq
from tidings.brokers.base import Consumer
from tidings.errors import (
    BrokerClosedError,
    DecodeError,
    DuplicateEventError,
    InboxConflictError,
    IntegrityError,
    StorageError,
)
from tidings.event import Event, event_from_record
from tidings.records import Batch, Record, TopicPartition
from tidings.runtime.claimcheck import resolve
from tidings.runtime.context import Context
from tidings.runtime.handlers import Handler, Invocation, chain
from tidings.runtime.inbox import InboxBatch
from tidings.runtime.locks import take_locks
from tidings.runtime.outcomes import Outcome, Settled
from tidings.runtime.parking import Parking
from tidings.runtime.rebuild import Rebuilds
from tidings.runtime.spec import ServiceSpec
from tidings.runtime.watch import Watch
from tidings.schema import SchemaError
from tidings.stores.base import InboxStatus, Position, StatementFailedElsewhere, Transaction

log = logging.getLogger("tidings.dispatch")

MAX_UNEXPECTED_ATTEMPTS = 5
"""Attempts at a record that fails outside its handlers before it is dead-lettered."""
PAUSE_S = (0.1, 5.0)
"""Pause before redelivering a batch that failed outside its handlers: doubling from the first
figure with each consecutive failure of the partition, up to the second."""

Pending = list[Settled]
"""What a transaction decided about its events; final (counted, observed) once it commits."""
Planned = list[tuple[Record, Event | DecodeError, list[Handler]]]  # records with their handlers


class _RolledBack(Exception):
    def __init__(self, index: int) -> None:
        self.index = index


class _Stopping(BaseException):  # as a cancellation: no `except Exception` takes it
    """The service is stopping during a retry backoff: leave the record for the next run."""


@dataclass(slots=True)
class Failure:
    handler: Handler
    error: BaseException


class Dispatcher:
    """Applies batches for one service. One batch per partition at a time (the consumer
    guarantees it); batches of different partitions may run concurrently."""

    def __init__(self, service: ServiceSpec) -> None:
        self.service = service
        self.store = service.store
        self.stopping = asyncio.Event()
        self.watch = Watch(service.name)
        self._chain = chain(service.middleware, self._run_handler) if service.middleware else None
        self._suspects: dict[TopicPartition, int] = {}
        """Partitions whose records up to this offset are applied one at a time: a batch of
        them failed outside its handlers, and the record at fault must be found."""
        self._failures: dict[TopicPartition, tuple[int, int]] = {}
        """Per partition, (offset, attempts) of a record failing outside its handlers."""
        self._streaks: dict[TopicPartition, int] = {}
        """Consecutive failures outside handlers per partition (for the pause)."""
        self._parking = Parking(service.handlers)
        self._rebuilds = Rebuilds()
        self._route: Callable[..., list[Handler]] = self._due_handlers
        """`_due_handlers`, under the rebuild markers while a rebuild is under way."""
        self._locking = any(handler.locks is not None for handler in service.handlers)

    async def prepare(self) -> None:
        """Before consuming: ordered dead letters' tables, rebuild markers (or ConfigError)."""
        await self._parking.prepare(self.store)
        if await self._rebuilds.load(self.service):
            self._route = self._rebuilds.router(self._due_handlers)

    # batches ---------------------------------------------------------------------------

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
                self.watch.at(tp, records[index].offset)
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
            if self._parking.pending(tp) and not await self._parking.release(
                tp, self.store, self._careful, self._set_aside, self.stopping
            ):
                consumer.nack(batch, records[-1].offset)  # redelivered: the release resumes
                return
        except _Stopping:
            consumer.nack(batch, records[min(index, len(records) - 1)].offset)
            return
        except asyncio.CancelledError:
            consumer.nack(batch, records[min(index, len(records) - 1)].offset)
            raise
        finally:
            self.watch.done(tp)
        consumer.ack(batch)

    async def _fast(self, records: Sequence[Record], start: int, end: int) -> int:
        """Apply `records[start:end]` in one transaction without savepoints. The inbox is looked
        up for the whole batch in one statement and the new inbox rows are inserted together
        just before commit; if one of them turns out to be recorded already (a concurrent
        redelivery committed first), the transaction rolls back and the caller applies the
        batch carefully. Returns `end` once committed, or the index of the first record whose
        handler raised (or `start` after such a conflict, after a failed statement whose error
        surfaced elsewhere or was caught, or when a deferred constraint failed at COMMIT) - and
        then nothing of `records[start:end]` was committed."""
        pending: Pending = []
        planned = self._plan(records, start, end)
        if all(isinstance(e, Event) and not hs and not _replay(r) for r, e, hs in planned):
            for record, event, _ in planned:  # nothing to write: no transaction
                assert isinstance(event, Event)
                self._unhandled(pending, record, event)
            self._settled(pending)
            return end
        keys = [(h.consumer, e.id) for _, e, hs in planned if isinstance(e, Event) for h in hs]
        try:
            async with self.store.transaction() as tx:
                tx.deferred_errors_escape = True
                if self._locking:
                    await take_locks(self.service, tx, planned)
                if self._parking.active:
                    await self._parking.load(tx, records[start:end])
                inbox = InboxBatch(await tx.inbox_find(keys))
                for offset, (record, event, handlers) in enumerate(planned):
                    failure = await self._apply_record(
                        tx, pending, record, event, handlers, guarded=False, inbox=inbox
                    )
                    if failure is not None:
                        raise _RolledBack(start + offset)
                inbox.write_at_commit(tx)
        except _RolledBack as rolled_back:
            return rolled_back.index
        except (DuplicateEventError, InboxConflictError, StatementFailedElsewhere, IntegrityError):
            # StatementFailedElsewhere: a statement failed whose error surfaced elsewhere (one a
            # handler deferred, in another handler's await, say) or was caught by the code that
            # ran it; IntegrityError here: a deferred constraint, checked at COMMIT. Savepoints,
            # with constraints checked at each statement, will say whose it was.
            return start
        self._settled(pending)
        return end

    def _plan(self, records: Sequence[Record], start: int, end: int) -> Planned:
        """`records[start:end]` decoded, each with the handlers due to run it."""
        planned: Planned = []
        for index in range(start, end):
            record = records[index]
            event = _decode(record)
            handlers = self._route(record, event) if isinstance(event, Event) else []
            planned.append((record, event, handlers))
        return planned

    @contextlib.asynccontextmanager
    async def _guarded_transaction(self, pending: Pending) -> AsyncIterator[Transaction]:
        """A transaction for handlers in savepoints: deferred constraints are checked at each
        statement, so that a violation is the failing handler's, inside its savepoint.
        `pending` is settled once it commits."""
        async with self.store.transaction() as tx:
            await tx.check_constraints_immediately()
            yield tx
        self._settled(pending)

    async def _careful(self, records: Sequence[Record], start: int, end: int) -> int:
        """Apply `records[start:end]` with a savepoint per handler until one fails, commit
        those, then retry the failing record on its own. Returns the next index to apply."""
        pending: Pending = []
        index = start
        failure: Failure | None = None
        planned = self._plan(records, start, end)
        async with self._guarded_transaction(pending) as tx:
            if self._locking:
                await take_locks(self.service, tx, planned)
            if self._parking.active:
                await self._parking.load(tx, records[start:end])
            for record, event, handlers in planned:
                failure = await self._apply_record(
                    tx, pending, record, event, handlers, guarded=True
                )
                if failure is not None:
                    break
                index += 1
        if failure is None:
            return index
        await self._retry(records[index], failure)
        return index + 1

    # one record, one handler ---------------------------------------------------------------

    async def _apply_record(
        self,
        tx: Transaction,
        pending: Pending,
        record: Record,
        event: Event | DecodeError,
        handlers: list[Handler],
        *,
        guarded: bool,
        attempt: int = 1,
        retrying: bool = False,
        inbox: InboxBatch | None = None,
    ) -> Failure | None:
        """Run `handlers` (those due) for `record` in `tx`. Guarded, each handler runs in a
        savepoint: the first retryable failure is returned with its effects rolled back, and
        permanent ones are dead-lettered here. Unguarded, any handler exception is returned
        and the caller must roll back the transaction. `retrying` keeps the handlers that
        already ran out of the duplicate count; with `inbox`, new inbox rows are queued there
        instead of inserted."""
        position = (record.topic, record.partition, record.offset)
        if isinstance(event, DecodeError):
            marker = f"undecodable:{record.topic}:{record.partition}:{record.offset}"
            if await tx.inbox_add(self.service.name, marker, position, InboxStatus.DEAD):
                log.error("%s: undecodable record dead-lettered: %s", self.service.name, event)
                reason = dlq.REASON_UNDECODABLE
                await self._dead_letter(tx, pending, record, None, None, reason, event)
            return None
        if not handlers:
            if _replay(record):
                if self._parking.active:  # perhaps a purge marker (tidings.runtime.parking)
                    await self._parking.purged(tx, record, event)
            elif not retrying:
                self._unhandled(pending, record, event)
            return None
        for handler in handlers:
            failure = await self._apply_handler(
                tx, pending, record, position, event, handler, attempt, retrying, guarded, inbox
            )
            if failure is not None:
                return failure
        return None

    def _unhandled(self, pending: Pending, record: Record, event: Event) -> None:
        """An event no handler of this service takes is told as such (unless a rebuild hides
        it)."""
        if not self._rebuilds.hides(record):
            pending.append(Settled(Outcome.UNKNOWN_TYPE, record, event, None))

    async def _apply_handler(
        self,
        tx: Transaction,
        pending: Pending,
        record: Record,
        position: Position,
        event: Event,
        handler: Handler,
        attempt: int,
        retrying: bool,
        guarded: bool,
        inbox: InboxBatch | None,
    ) -> Failure | None:
        if handler.ordered_dead_letters and self._parking.holds(handler, record):
            if await self._parking.park(tx, record, handler):
                pending.append(Settled(Outcome.PARKED, record, event, handler))
            return None
        try:
            argument = handler.parse(  # a claim-checked payload, fetched for this handler only
                event if event.dataref is None else await resolve(self.service.blob_store, event)
            )
        except SchemaError as exc:
            if await self._mark_dead(tx, record, handler, event.id, position):
                log.error(
                    "%s: %s dead-lettered for %s: %s",
                    self.service.name,
                    event.id,
                    handler.consumer,
                    exc,
                )
                undecodable = isinstance(exc, DecodeError)  # a claim check's missing payload
                reason = dlq.REASON_UNDECODABLE if undecodable else dlq.REASON_INVALID
                await self._dead_letter(tx, pending, record, event, handler, reason, exc)
            return None
        claimed = inbox is not None and inbox.claim(handler.consumer, event.id, position)
        context = Context(self.service, tx, event=event, attempt=attempt, position=position)
        started = time.monotonic()
        try:
            if claimed and not guarded:  # the common case, inline: a new event, no savepoint
                await self._attempt(handler, event, argument, context)
            else:
                async with tx.savepoint() if guarded else contextlib.nullcontext():
                    if not claimed and not await self._claim(
                        tx, inbox, record, position, event, handler
                    ):
                        if not retrying:
                            pending.append(Settled(Outcome.DUPLICATE, record, event, handler))
                        context.close()
                        return None
                    await self._attempt(handler, event, argument, context)
                    if guarded:
                        await tx.flush()
        except StorageError:
            raise  # the store is unavailable: nobody's failure; the batch waits for it
        except Exception as exc:
            if not guarded or handler.retry.retryable(exc):
                return Failure(handler, exc)
            if await self._mark_dead(tx, record, handler, event.id, position):
                log.error(
                    "%s: %s failed permanently in %s: %r",
                    self.service.name,
                    event.id,
                    handler.consumer,
                    exc,
                )
                await self._dead_letter(
                    tx, pending, record, event, handler, dlq.REASON_PERMANENT, exc, attempt
                )
            return None
        duration = time.monotonic() - started
        pending.append(
            Settled(Outcome.OK, record, event, handler, attempt=attempt, duration=duration)
        )
        if handler.ordered_dead_letters:
            await self._parking.ran(tx, record, event, handler)
        return None

    async def _claim(
        self,
        tx: Transaction,
        inbox: InboxBatch | None,
        record: Record,
        position: Position,
        event: Event,
        handler: Handler,
    ) -> bool:
        """Record the handler's inbox row; False if it ran before (a duplicate), except for a
        replay of its own dead letter, which runs it again."""
        if inbox is not None:
            added = await inbox.add(tx, handler.consumer, event.id, position)
        else:
            added = await tx.inbox_add(handler.consumer, event.id, position)
        if added:
            return True
        status = await tx.inbox_get(handler.consumer, event.id)
        if status is not InboxStatus.DEAD or dlq.replayed_for(record) != handler.consumer:
            return False
        await tx.inbox_delete(handler.consumer, event.id)
        await tx.inbox_add(handler.consumer, event.id, position)
        return True

    async def _attempt(
        self, handler: Handler, event: Event, argument: object, context: Context
    ) -> None:
        """One attempt of `handler`: through the middleware, bounded by the watch; `context` is
        closed after it, whatever happens (a `def` handler's thread outliving a timeout cannot
        use it)."""
        task = asyncio.current_task()
        assert task is not None
        self.watch.begin(task, handler)
        try:
            if self._chain is None:
                await handler.run(argument, context)
            else:
                await self._chain(Invocation(handler, event, argument, context, context.attempt))
        except asyncio.CancelledError:
            timeout = self.watch.timed_out(task, handler)
            if timeout is None:
                raise
            raise timeout from None
        finally:
            self.watch.end(task)
            context.close()

    @staticmethod
    async def _run_handler(invocation: Invocation) -> None:
        """The innermost step of the middleware chain."""
        await invocation.handler.run(invocation.argument, invocation.context)

    def _due_handlers(
        self, record: Record, event: Event, skip: Sequence[str] = ()
    ) -> list[Handler]:
        """The handlers that should run `event`: all of its type on its topic, only the
        targeted one for a replay from the dead-letter topic, none of those in `skip`."""
        handlers = self.service.handlers_for(record.topic, event.type)
        if record.headers:
            target = dlq.replayed_for(record)
            if target is not None:
                handlers = [h for h in handlers if h.consumer == target]
        if skip:
            handlers = [h for h in handlers if h.consumer not in skip]
        return handlers

    # retries and dead letters ---------------------------------------------------------------

    async def _retry(self, record: Record, failure: Failure | None) -> None:
        """Retry `record` until every handler succeeded or was dead-lettered. Each failing
        handler gets its own attempt budget from its own policy."""
        dead: list[str] = []
        while failure is not None:
            failure = await self._retry_handler(record, failure, dead)

    async def _retry_handler(
        self, record: Record, failure: Failure, dead: list[str]
    ) -> Failure | None:
        """Retry `failure.handler` per its policy; dead-letter it when spent. Returns a failure
        of another handler of the same record if one surfaces (that one starts afresh)."""
        handler = failure.handler
        event = event_from_record(record)  # it decoded before
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
            self._settled(
                [Settled(Outcome.RETRIED, record, event, handler, None, failure.error, attempt)]
            )
            if delay:
                try:
                    await asyncio.wait_for(self.stopping.wait(), delay)
                except TimeoutError:
                    pass
                else:
                    raise _Stopping
            attempt += 1
            pending: Pending = []
            handlers = self._route(record, event, dead)
            async with self._guarded_transaction(pending) as tx:
                if self._locking:
                    await take_locks(self.service, tx, [(record, event, handlers)])
                next_failure = await self._apply_record(
                    tx,
                    pending,
                    record,
                    event,
                    handlers,
                    guarded=True,
                    attempt=attempt,
                    retrying=True,
                )
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
        pending = []
        handlers = self._route(record, event, [*dead, handler.consumer])
        async with self._guarded_transaction(pending) as tx:
            if self._locking:
                await take_locks(self.service, tx, [(record, event, handlers)])
            position = (record.topic, record.partition, record.offset)
            if await self._mark_dead(tx, record, handler, event.id, position):
                await self._dead_letter(
                    tx,
                    pending,
                    record,
                    event,
                    handler,
                    dlq.REASON_EXHAUSTED,
                    failure.error,
                    attempt,
                )
            dead.append(handler.consumer)
            next_failure = await self._apply_record(
                tx,
                pending,
                record,
                event,
                handlers,
                guarded=True,
                retrying=True,
            )
        return next_failure

    @staticmethod
    async def _mark_dead(
        tx: Transaction, record: Record, handler: Handler, event_id: str, position: Position
    ) -> bool:
        """Mark the event DEAD for `handler`; True if a dead letter should be written (not
        when a plain redelivery finds it already dead)."""
        if await tx.inbox_add(handler.consumer, event_id, position, InboxStatus.DEAD):
            return True
        if dlq.replayed_for(record) != handler.consumer:
            return False
        await tx.inbox_delete(handler.consumer, event_id)
        return await tx.inbox_add(handler.consumer, event_id, position, InboxStatus.DEAD)

    async def _dead_letter(
        self,
        tx: Transaction,
        pending: Pending,
        record: Record,
        event: Event | None,
        handler: Handler | None,
        reason: str,
        error: BaseException,
        attempts: int = 1,
    ) -> None:
        consumer = handler.consumer if handler else self.service.name
        message = dlq.letter(
            record,
            reason=reason,
            error=error,
            handler=handler.consumer if handler else None,
            attempts=attempts,
        )
        if handler is not None and event is not None and handler.ordered_dead_letters:
            message = await self._parking.dead_lettered(tx, record, event, handler, message)
        dedupe = f"dlq:{record.topic}:{record.partition}:{record.offset}:{consumer}"
        tx.add_outbox(self.service.dead_letter_topic, dedupe, message)
        pending.append(
            Settled(Outcome.DEAD_LETTERED, record, event, handler, reason, error, attempts)
        )

    def _settled(self, outcomes: Pending) -> None:
        """`outcomes` are final: count them and tell the observers."""
        if not outcomes:
            return
        self.service.stats.count(outcomes)
        for observer in self.service.observers:
            try:
                observer.settled(outcomes)
            except Exception:
                log.exception("%s: observer %r failed", self.service.name, observer)

    # failures outside handlers ---------------------------------------------------------------

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
        pending: Pending = []
        reason = dlq.REASON_UNPROCESSABLE
        try:
            async with self._guarded_transaction(pending) as tx:
                if await tx.inbox_add(self.service.name, marker, position, InboxStatus.DEAD):
                    await self._dead_letter(
                        tx, pending, record, None, None, reason, error, attempts
                    )
        except StorageError:
            raise
        except Exception:
            log.exception(
                "%s: recording the dead letter in the store failed; publishing it directly",
                self.service.name,
            )
            message = dlq.letter(
                record, reason=reason, error=error, handler=None, attempts=attempts
            )
            broker = self.service.broker
            await broker.publish(
                self.service.dead_letter_topic, [dlq.fit(message, broker.max_message_bytes)]
            )
            self._settled([Settled(Outcome.DEAD_LETTERED, record, None, None, reason, error)])


def _replay(record: Record) -> bool:
    """Whether `record` is a replay (or a purge marker): its header's presence, not decoded."""
    return record.header(dlq.REPLAY_FOR) is not None


def _decode(record: Record) -> Event | DecodeError:
    try:
        return event_from_record(record)
    except DecodeError as exc:
        return exc
