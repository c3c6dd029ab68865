"""The Store interface: a service's own database, with its outbox and inbox.

A store owns transactions. Everything done in one transaction - the user's SQL, the events
it publishes (outbox rows) and the events it marks processed (inbox rows) - commits atomically
or not at all. The framework creates and migrates its own tables (`tidings_*`) on `start()`.

Guarantees every backend gives:

* **Outbox**: rows become visible to the relay only when their transaction commits, in commit
  order per key; `outbox_claim` never skips a committed row, whatever order transactions commit
  in. Only the holder of the relay lease receives rows, so several relay processes never publish
  concurrently; a dead holder's lease expires and another relay takes over (at-least-once).
* **Inbox**: `inbox_add` inserts (consumer, event id) once; a second insert of the same pair, in
  any transaction, returns False after the first commits, so a redelivered event does nothing.
  For batches, `inbox_find` looks many pairs up in one statement and `inbox_add_all` inserts
  many in one statement; `inbox_add_all` never skips a pair that is already there (committed by
  another transaction, or earlier in this one): it raises InboxConflictError, and the
  transaction must then be rolled back, so that effects applied on the strength of an earlier
  `inbox_find` are never committed twice.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Callable, Collection, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

from tidings.errors import StorageError, TransactionAbortedError
from tidings.records import Message

Row = tuple[Any, ...]
Params = Sequence[Any] | dict[str, Any]


class InboxStatus(enum.StrEnum):
    DONE = "done"
    """The handler's effects committed; the event is never applied again."""
    DEAD = "dead"
    """The event was dead-lettered; only a replay from the dead-letter topic runs it again."""


InboxKey = tuple[str, str]
"""(consumer, event id): what an inbox row records."""

Position = tuple[str, int, int]
"""(topic, partition, offset) of the record an inbox row was written for."""


@dataclass(frozen=True, slots=True)
class OutboxRow:
    seq: int
    topic: str
    event_id: str
    message: Message


@dataclass(frozen=True, slots=True)
class SetAside:
    """An outbox row the broker refused for good, to move out of the outbox with `error`; the
    relay publishes `notice` (topic, outbox event id, message: a dead letter) in its place,
    if given."""

    row: OutboxRow
    error: str
    notice: tuple[str, str, Message] | None = None


@dataclass(frozen=True, slots=True)
class InboxEntry:
    consumer: str
    event_id: str
    status: InboxStatus


class StatementFailedElsewhere(BaseException):
    """What a transaction with `deferred_errors_escape` set raises instead of `error`: the error
    of a deferred statement where it runs, or TransactionAbortedError at any statement after a
    failed one whose error some code caught. Not an Exception, so code that catches the errors
    of its own statements cannot swallow a failure that is not its own. The dispatcher sets it
    while it applies a batch without savepoints, then re-applies the batch with a savepoint per
    handler, where the failure is the failing handler's own."""

    def __init__(self, error: Exception) -> None:
        super().__init__(error)
        self.error = error


class Transaction(abc.ABC):
    """One store transaction. Use from one task; not thread-safe.

    Statements queued with `defer` run before any other statement of the transaction (every
    method here that touches the database runs them first), when a savepoint block ends, and
    before COMMIT; so they always run in the order they were queued relative to everything
    else, and their errors surface at that point.

    Once a statement failed - queued or not, whether or not some code caught its error - the
    transaction can only roll back: every later statement, the end of an enclosing savepoint
    block and the commit raise TransactionAbortedError, on every store (PostgreSQL aborts the
    transaction itself; SQLite would carry on, and is held to the same rule so that code
    behaves the same on both). A savepoint block that raises rolls back what it did, its
    failure included, and the transaction carries on: the way to go on after a statement's
    error."""

    def __init__(self) -> None:
        self.deferred: list[tuple[str, Params]] = []
        self.failure: Exception | None = None
        """The error of the statement that failed, if one did."""
        self.deferred_errors_escape = False
        """Raise StatementFailedElsewhere instead of a deferred statement's error, and of
        TransactionAbortedError (StorageError excepted: the store itself failing is nobody's
        statement)."""

    def _raise_if_failed(self) -> None:
        failure = self.failure
        if failure is None:
            return
        error = TransactionAbortedError(
            f"an earlier statement of this transaction failed ({type(failure).__name__}: "
            f"{failure}), so it can only be rolled back; to carry on after a statement's error, "
            "run that statement in `async with ctx.savepoint():` and catch the error outside it"
        )
        error.__cause__ = failure
        if self.deferred_errors_escape and not isinstance(failure, StorageError):
            raise StatementFailedElsewhere(error)
        raise error

    def _statement_failed(self, error: Exception) -> None:
        """Record that a statement failed with `error` (translated)."""
        if self.failure is None:
            self.failure = error

    def _deferred_failed(
        self, pending: list[tuple[str, Params]], error: Exception
    ) -> BaseException:
        """Record that running `pending` failed with `error` (translated): the queue is kept,
        so every later statement and the commit raise. Returns what to raise."""
        self.failure = error
        self.deferred = pending
        if self.deferred_errors_escape and not isinstance(error, StorageError):
            return StatementFailedElsewhere(error)
        return error

    def _forget_deferred(self) -> None:
        """A savepoint rolled back: what it deferred, and its failure, are undone with it."""
        self.deferred.clear()
        self.failure = None

    @abc.abstractmethod
    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run a statement with parameters; returns the affected row count."""

    def defer(self, sql: str, params: Params = ()) -> None:
        """Queue a statement whose result (row count, rows) nobody reads; see the class
        docstring for when it runs. `params` are copied now. Backends with network round
        trips send the statements queued until then together (PostgreSQL: one pipeline)
        instead of waiting for each."""
        self.deferred.append((sql, dict(params) if isinstance(params, dict) else tuple(params)))

    @abc.abstractmethod
    async def check_constraints_immediately(self) -> None:
        """From now on, check constraints declared DEFERRABLE INITIALLY DEFERRED at each
        statement rather than at COMMIT, so that a violation fails the statement (and the
        savepoint) that caused it. Nothing to do on stores without such constraints."""

    @abc.abstractmethod
    async def run_deferred(self) -> None:
        """Run the queued statements now, in order (nothing if none are queued). If one
        fails, its error is raised (see `deferred_errors_escape`) and the transaction (or the
        enclosing savepoint) must be rolled back; TransactionAbortedError if one failed
        earlier."""

    @abc.abstractmethod
    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]: ...

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    @abc.abstractmethod
    def add_outbox(self, topic: str, event_id: str, message: Message) -> None:
        """Queue an outbox row; written by the next `flush()` or at commit. A duplicate
        (topic, event id) pair makes that flush or the commit raise DuplicateEventError."""

    @abc.abstractmethod
    async def flush(self) -> None:
        """Run deferred statements and write queued outbox rows now, so their errors (such as
        DuplicateEventError) surface here."""

    @abc.abstractmethod
    async def inbox_add(
        self,
        consumer: str,
        event_id: str,
        position: tuple[str, int, int],
        status: InboxStatus = InboxStatus.DONE,
    ) -> bool:
        """Record the event as handled by `consumer`; False if it already was (status DONE, or
        DEAD when `status` is DEAD). `position` is (topic, partition, offset)."""

    @abc.abstractmethod
    async def inbox_find(self, keys: Sequence[InboxKey]) -> set[InboxKey]:
        """The pairs among `keys` that have an inbox row (of any status) visible to this
        transaction: one statement (or a few, for very many keys) instead of one per pair.
        Another transaction may still record a pair after this returns; `inbox_add_all`
        detects that."""

    @abc.abstractmethod
    async def inbox_add_all(self, entries: Sequence[tuple[str, str, Position]]) -> None:
        """Record every (consumer, event id, position) of `entries` as DONE, in one statement.
        Raises InboxConflictError if any pair already has a row (committed by another
        transaction - on backends with concurrent writers this waits for a transaction that
        holds the pair uncommitted - or written earlier in this one, or twice in `entries`);
        the transaction must then be rolled back."""

    @abc.abstractmethod
    async def inbox_get(self, consumer: str, event_id: str) -> InboxStatus | None: ...

    @abc.abstractmethod
    async def inbox_delete(self, consumer: str, event_id: str) -> None: ...

    @abc.abstractmethod
    def savepoint(self) -> AbstractAsyncContextManager[None]:
        """A nested unit: an exception inside rolls back only what the block did (SQL, outbox
        rows, inbox rows, and deferred statements not run yet) and propagates. Statements
        deferred before the block run when it starts - their errors are raised there, before
        the block, and are not the block's; those deferred inside run before it ends, so their
        errors are the block's (and rolled back with it)."""


class Store(abc.ABC):
    """A service's database. Safe to share between tasks of one event loop."""

    url: str

    @abc.abstractmethod
    async def start(self) -> None:
        """Connect and create or migrate the framework's tables. Idempotent."""

    @abc.abstractmethod
    def transaction(self) -> AbstractAsyncContextManager[Transaction]:
        """A read-write transaction: commits when the block exits normally, rolls back when it
        raises. Writers are serialized per store where the backend requires it (SQLite)."""

    @abc.abstractmethod
    async def migrate(self, migrations: Sequence[str]) -> int:
        """Apply the user's schema migrations not applied yet, in order, each in its own
        transaction; returns how many ran. Migration N is identified by its position; changing
        an applied one raises MigrationError."""

    @abc.abstractmethod
    async def query(self, sql: str, params: Params = ()) -> list[Row]:
        """A read outside any transaction (sees committed data)."""

    @abc.abstractmethod
    async def outbox_claim(
        self,
        relay: str,
        limit: int,
        lease_s: float,
        *,
        exclude: Collection[int] = (),
        max_bytes: int | None = None,
    ) -> list[OutboxRow] | None:
        """Up to `limit` oldest outbox rows if `relay` holds (or now takes) the relay lease for
        `lease_s` seconds; None while another live relay holds it. With `max_bytes`, rows stop
        once their keys, values and headers add up to that many bytes (at least one row).

        `exclude` lets a relay claim the next rows while the removal of rows it has already
        dispatched is still under way: the seqs of rows this relay received from earlier
        claims and published, whose `outbox_remove` has not completed. Those rows are not
        returned again (a backend whose seqs follow commit order may skip every row up to the
        highest excluded seq, since all of them came from those earlier claims)."""

    @abc.abstractmethod
    async def outbox_remove(self, relay: str, seqs: Sequence[int]) -> None:
        """Delete exactly these dispatched rows (others, claimed or not, stay)."""

    @abc.abstractmethod
    async def outbox_set_aside(self, relay: str, items: Sequence[SetAside]) -> None:
        """In one transaction, move each item's row out of the outbox into the store's table of
        unpublishable rows (`tidings_outbox_unpublishable`: the row, `error` and when), and add
        its notice as an outbox row in its place. A row no longer in the outbox (another relay
        set it aside) is skipped with its notice."""

    @abc.abstractmethod
    async def outbox_release(self, relay: str) -> None:
        """Give up the relay lease (clean shutdown)."""

    @abc.abstractmethod
    async def outbox_size(self) -> int: ...

    @abc.abstractmethod
    async def inbox_cleanup(
        self, consumer_prefix: str, committed: dict[tuple[str, int], int], older_than_s: float
    ) -> int:
        """Delete DONE inbox rows of consumers starting with `consumer_prefix` that are older
        than `older_than_s` and below the group's committed offset of their partition (so the
        broker will not redeliver them). Returns how many."""

    @abc.abstractmethod
    def on_outbox(self, callback: Callable[[], None]) -> None:
        """Call `callback` (from any thread) when a transaction with outbox rows commits, in
        this process or another one sharing the store."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    async def __aenter__(self) -> Store:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
