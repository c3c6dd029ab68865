"""A store transaction: statements, outbox rows and inbox rows that commit together or not at all.

`Transaction` is the one place that runs them, and so the one place that enforces what happens
after a failed statement; a backend writes only its primitives (see `Transaction`).
"""

from __future__ import annotations

import abc
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, ClassVar, TypeVar, final

from tidings.errors import StorageError, TidingsError, TransactionAbortedError
from tidings.records import Message
from tidings.stores.inbox import InboxKey, InboxRows, InboxStatus, Position
from tidings.stores.outbox import Attachment, Numbering, OutboxWriter

T = TypeVar("T")
log = logging.getLogger("tidings.stores")

Row = tuple[Any, ...]
Params = Sequence[Any] | dict[str, Any]
OutboxEntry = tuple[str, str, Message]
"""(topic, event id, message) of an outbox row not written yet."""
SequenceKey = tuple[str, bytes]
"""(scope, message key): what an outbox row's sequence number counts (see `Numbering`)."""


class StatementFailedElsewhere(BaseException):
    """What a transaction with `deferred_errors_escape` set raises instead of `error`: the error
    of a deferred statement where it runs, or TransactionAbortedError at any statement after a
    failed one whose error some code caught. Not an Exception, so code that catches the errors
    of its own statements cannot swallow a failure that is not its own. (The dispatcher sets it
    while it applies a batch without savepoints, then re-applies the batch with a savepoint per
    handler, where the failure is the failing handler's own.)"""

    def __init__(self, error: Exception) -> None:
        super().__init__(error)
        self.error = error


class Statements(abc.ABC):
    """SQL in a transaction."""

    @abc.abstractmethod
    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run a statement with parameters; returns the affected row count."""

    @abc.abstractmethod
    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]: ...

    @abc.abstractmethod
    async def fetchone(self, sql: str, params: Params = ()) -> Row | None: ...

    @abc.abstractmethod
    def defer(self, sql: str, params: Params = ()) -> None:
        """Queue a statement whose result (row count, rows) nobody reads; `params` are copied
        now. Queued statements run, in order, before any other statement of the transaction,
        when a savepoint block ends and before COMMIT, so they keep their order relative to
        everything else; their errors surface there. Backends with network round trips send
        the statements queued until then together (PostgreSQL: one pipeline)."""

    @abc.abstractmethod
    async def run_deferred(self) -> None:
        """Run the queued statements now, in order (nothing if none are queued)."""

    @abc.abstractmethod
    def savepoint(self) -> AbstractAsyncContextManager[None]:
        """A nested unit: an exception inside rolls back only what the block did (SQL, outbox
        rows, inbox rows, and deferred statements not run yet) and propagates; the transaction
        carries on. Statements deferred before the block run when it starts (their errors are
        raised there, and are not the block's); those deferred inside run before it ends."""

    @abc.abstractmethod
    async def check_constraints_immediately(self) -> None:
        """From now on, check constraints declared DEFERRABLE INITIALLY DEFERRED at each
        statement rather than at COMMIT, so that a violation fails the statement (and the
        savepoint) that caused it."""


class Transaction(Statements, OutboxWriter, InboxRows):
    """One store transaction. Use from one task; not thread-safe.

    **Once a statement failed, the transaction can only roll back** - queued with `defer` or
    not, whether or not some code caught its error: every later statement, the end of an
    enclosing savepoint block and the commit raise TransactionAbortedError, on every store.
    (PostgreSQL aborts the transaction itself; SQLite would carry on, and is held to the same
    rule so that code behaves the same on both.) A savepoint block that raises rolls back what
    it did, its failure included, and the transaction carries on: the way to go on after a
    statement's error.

    The public methods here (final) enforce that rule and the order of deferred statements
    and outbox rows for every backend. A backend implements only primitives that run its
    driver and raise what the caller should see: `_execute`, `_fetchall`, `_run_deferred`,
    `_write_outbox`, `_take_sequences` and the `_inbox_*` ones; it names its driver's errors
    in `driver_errors` and may set `IMMEDIATE_CONSTRAINTS`, `_lock`, `_copy_params` and
    `_usable_after_interruption`.
    Savepoints are plain SAVEPOINT / ROLLBACK TO SAVEPOINT / RELEASE SAVEPOINT statements."""

    driver_errors: ClassVar[tuple[type[Exception], ...]] = ()
    """What the backend's primitives raise, besides TidingsErrors, when a statement failed."""
    IMMEDIATE_CONSTRAINTS: ClassVar[str | None] = None
    """The statement behind `check_constraints_immediately`; None on stores without
    deferrable constraints."""

    def __init__(self) -> None:
        self.deferred: list[tuple[str, Params]] = []
        self.outbox: list[OutboxEntry] = []
        """Outbox rows added, in order (those up to `_flushed` are written)."""
        self._extras: dict[int, tuple[Numbering | None, Attachment | None, Message]] = {}
        """Per index in `outbox`, the row's numbering and attachment, if it has either, and its
        message as added (before a stamp: a savepoint may roll back a flush)."""
        self.failure: Exception | None = None
        """The error of the statement that failed, if one did."""
        self.deferred_errors_escape = False
        """Raise StatementFailedElsewhere instead of a deferred statement's error, and of
        TransactionAbortedError (StorageError excepted: the store itself failing is nobody's
        statement)."""
        self._flushed = 0
        self._savepoints = 0
        self._inbox_at_commit: list[tuple[str, str, Position]] = []
        self.finishing = False
        """Set by `finish`: what the transaction writes from then on is its last writes before
        COMMIT (a backend may hold them back to send them with its COMMIT)."""

    # statements ------------------------------------------------------------------------------

    @final
    async def execute(self, sql: str, params: Params = ()) -> int:
        return await self._statement(self._execute, sql, params)

    @final
    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        return await self._statement(self._fetchall, sql, params)

    @final
    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    @final
    def defer(self, sql: str, params: Params = ()) -> None:
        self.deferred.append((sql, self._copy_params(params)))

    @final
    async def run_deferred(self) -> None:
        self._raise_if_failed()
        pending, self.deferred = self.deferred, []
        if not pending:
            return
        try:
            await self._run_deferred(pending)
        except BaseException as exc:
            self._failed(exc)
            escapes = self.deferred_errors_escape and not isinstance(exc, StorageError)
            if exc is self.failure and escapes:
                raise StatementFailedElsewhere(exc) from exc
            raise

    @final
    def savepoint(self) -> AbstractAsyncContextManager[None]:
        return self._savepoint()

    @contextlib.asynccontextmanager
    async def _savepoint(self) -> AsyncIterator[None]:
        self._savepoints += 1
        name = f"sp{self._savepoints}"
        mark = len(self.outbox)
        flushed = self._flushed
        inbox_mark = len(self._inbox_at_commit)
        await self.execute(f"SAVEPOINT {name}")
        try:
            yield
            if self.deferred:
                await self.run_deferred()
            self._raise_if_failed()  # the block caught a statement's error
        except BaseException:
            self.deferred.clear()
            self.failure = None
            del self.outbox[mark:]
            del self._inbox_at_commit[inbox_mark:]
            self._flushed = flushed  # rows flushed inside the block are rolled back
            dropped = self._drop_extras(mark)
            try:
                await self.execute(f"ROLLBACK TO SAVEPOINT {name}")
                await self.execute(f"RELEASE SAVEPOINT {name}")
            finally:
                await _discard(dropped)
            raise
        await self.execute(f"RELEASE SAVEPOINT {name}")

    @final
    async def check_constraints_immediately(self) -> None:
        if self.IMMEDIATE_CONSTRAINTS is not None:
            await self.execute(self.IMMEDIATE_CONSTRAINTS)

    @final
    async def lock(self, names: Iterable[str]) -> None:
        """Hold the named locks until the transaction ends, taken in one global order, so that
        transactions naming the same things (hot rows: a product's stock, an account) wait for
        each other instead of deadlocking - however many events, partitions and processes
        they cover - provided every transaction that writes those rows names them, before its
        first write. Take them once, at the start of the transaction. Names are per store
        (per PostgreSQL schema). Stores that run one writer at a time (SQLite) need none."""
        unique = sorted(set(names))
        if unique:
            await self._statement(self._lock, unique)

    # outbox ----------------------------------------------------------------------------------

    @final
    def add_outbox(
        self,
        topic: str,
        event_id: str,
        message: Message,
        *,
        numbering: Numbering | None = None,
        attachment: Attachment | None = None,
    ) -> None:
        if numbering is not None or attachment is not None:
            self._extras[len(self.outbox)] = (numbering, attachment, message)
        self.outbox.append((topic, event_id, message))

    @final
    async def flush(self) -> None:
        """Deferred statements, then the outbox rows added since the last flush: their
        attachments written first, their sequence numbers taken and stamped, then the rows.
        The store flushes every transaction before its COMMIT."""
        self._raise_if_failed()
        if self.deferred:
            await self.run_deferred()
        if self._flushed < len(self.outbox):
            if self._extras:
                await self._prepare_outbox(self._flushed)
            await self._statement(self._write_outbox, self.outbox[self._flushed :])
            self._flushed = len(self.outbox)

    @final
    async def finish(self) -> None:
        """The store's last step before COMMIT: `flush`, then the inbox rows added with
        `inbox_add_at_commit`. After it the transaction runs no statement; a backend with
        network round trips may hold these last writes back and send them with its COMMIT
        (their errors, InboxConflictError included, then come from the COMMIT)."""
        self.finishing = True
        await self.flush()
        if self._inbox_at_commit:
            entries, self._inbox_at_commit = self._inbox_at_commit, []
            await self._statement(self._inbox_add_all, entries)

    async def _prepare_outbox(self, start: int) -> None:
        """Write the attachments of the rows from `start` on, then number those asking for it:
        one `_take_sequences` for all their keys."""
        outbox = self.outbox
        extras = [(i, self._extras[i]) for i in range(start, len(outbox)) if i in self._extras]
        for _, (_, attachment, _) in extras:
            if attachment is not None:
                await attachment.write()
        numbered: list[tuple[int, SequenceKey, Numbering, Message]] = []
        counts: dict[SequenceKey, int] = {}
        for index, (numbering, _, message) in extras:
            if numbering is not None and message.key is not None:
                scoped = (numbering.scope, message.key)
                numbered.append((index, scoped, numbering, message))
                counts[scoped] = counts.get(scoped, 0) + 1
        if not numbered:
            return
        ordered = sorted(counts.items())  # one lock order for every transaction
        lasts = await self._statement(self._take_sequences, ordered)
        following = {scoped: lasts[scoped] - count + 1 for scoped, count in ordered}
        for index, scoped, numbering, message in numbered:
            topic, event_id, _ = outbox[index]
            outbox[index] = (topic, event_id, numbering.stamp(message, following[scoped]))
            following[scoped] += 1

    def _drop_extras(self, start: int) -> list[Attachment]:
        """Forget the numbering and attachments of rows from `start` on (rolled back); their
        attachments, to discard."""
        dropped = [i for i in self._extras if i >= start]
        attachments = [a for i in dropped if (a := self._extras.pop(i)[1]) is not None]
        return attachments

    @final
    async def discard_attachments(self) -> None:
        """The transaction rolled back: remove what its rows' attachments stored (best effort:
        a failure is logged; retention removes what is left)."""
        if self._extras:
            await _discard(self._drop_extras(0))

    # inbox -----------------------------------------------------------------------------------

    @final
    async def inbox_add(
        self,
        consumer: str,
        event_id: str,
        position: Position,
        status: InboxStatus = InboxStatus.DONE,
    ) -> bool:
        return await self._statement(self._inbox_add, consumer, event_id, position, status)

    @final
    async def inbox_find(self, keys: Sequence[InboxKey]) -> set[InboxKey]:
        if not keys:
            return set()
        return await self._statement(self._inbox_find, keys)

    @final
    async def inbox_add_all(self, entries: Sequence[tuple[str, str, Position]]) -> None:
        if entries:
            await self._statement(self._inbox_add_all, entries)

    @final
    def inbox_add_at_commit(self, entries: Sequence[tuple[str, str, Position]]) -> None:
        """`inbox_add_all(entries)` as the transaction's last write, when it commits (see
        `finish`); a savepoint block that raises drops the entries it added."""
        self._inbox_at_commit.extend(entries)

    @final
    async def inbox_get(self, consumer: str, event_id: str) -> InboxStatus | None:
        return await self._statement(self._inbox_get, consumer, event_id)

    @final
    async def inbox_delete(self, consumer: str, event_id: str) -> None:
        await self._statement(self._inbox_delete, consumer, event_id)

    # the rule --------------------------------------------------------------------------------

    async def _statement(self, primitive: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run one primitive as a statement: refused after a failed statement, after the
        deferred ones, its own failure recorded."""
        self._raise_if_failed()
        if self.deferred:
            await self.run_deferred()
        try:
            return await primitive(*args)
        except BaseException as exc:
            self._failed(exc)
            raise

    def _failed(self, exc: BaseException) -> None:
        """Record `exc` as the transaction's failure if it is a statement's error, or an
        interruption (a cancellation) that left the transaction unusable."""
        if self.failure is not None:
            return
        statement_errors: tuple[type[Exception], ...] = (TidingsError, *self.driver_errors)
        if isinstance(exc, statement_errors):
            self.failure = exc
        elif not self._usable_after_interruption():
            self.failure = TransactionAbortedError("a statement was cancelled before it finished")

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

    # what a backend implements ---------------------------------------------------------------

    @abc.abstractmethod
    async def _execute(self, sql: str, params: Params) -> int:
        """Run a statement (`?` placeholders); the affected row count."""

    @abc.abstractmethod
    async def _fetchall(self, sql: str, params: Params) -> list[Row]: ...

    async def _lock(self, names: Sequence[str]) -> None:
        """Take `names` (sorted, unique) in order; nothing where one writer runs at a time."""

    @abc.abstractmethod
    async def _run_deferred(self, pending: Sequence[tuple[str, Params]]) -> None:
        """Run `pending` (at least one statement) in order."""

    @abc.abstractmethod
    async def _write_outbox(self, rows: Sequence[OutboxEntry]) -> None:
        """Insert outbox rows, in order; DuplicateEventError if a (topic, event id) pair is in
        the outbox already (or twice in `rows`)."""

    @abc.abstractmethod
    async def _take_sequences(
        self, counts: Sequence[tuple[SequenceKey, int]]
    ) -> dict[SequenceKey, int]:
        """Add each count to its (scope, key)'s last sequence number (0 when it has none yet),
        in the given order, holding each key's row until the transaction ends; returns the new
        last numbers. Two transactions never get the same number for one key."""

    @abc.abstractmethod
    async def _inbox_add(
        self, consumer: str, event_id: str, position: Position, status: InboxStatus
    ) -> bool: ...

    @abc.abstractmethod
    async def _inbox_find(self, keys: Sequence[InboxKey]) -> set[InboxKey]:
        """`inbox_find` of at least one key."""

    @abc.abstractmethod
    async def _inbox_add_all(self, entries: Sequence[tuple[str, str, Position]]) -> None:
        """`inbox_add_all` of at least one entry."""

    @abc.abstractmethod
    async def _inbox_get(self, consumer: str, event_id: str) -> InboxStatus | None: ...

    @abc.abstractmethod
    async def _inbox_delete(self, consumer: str, event_id: str) -> None: ...

    def _copy_params(self, params: Params) -> Params:
        """`params` as `defer` keeps them (copied; a backend may refuse kinds here)."""
        return dict(params) if isinstance(params, dict) else tuple(params)

    def _usable_after_interruption(self) -> bool:
        """Whether the transaction can go on after a primitive was interrupted (cancelled)
        or raised an error that is no statement's (a Python error of the driver)."""
        return True


async def _discard(attachments: Sequence[Attachment]) -> None:
    for attachment in attachments:
        try:
            await attachment.discard()
        except Exception:
            log.exception("discarding %r of a rolled-back transaction failed", attachment)
