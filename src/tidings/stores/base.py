"""The Store interface: a service's own database, with its outbox and inbox.

A store combines three roles - `Transactions` (here), `Outbox` (the relay's side,
`tidings.stores.outbox`) and `InboxCleanup` (`tidings.stores.inbox`) - and its transactions
combine `Statements`, `OutboxWriter` and `InboxRows` (`tidings.stores.transaction`). Everything
a transaction does commits atomically or not at all. The framework creates and migrates its
own tables (`tidings_*`) on `start()`.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Self, final

from tidings.errors import StorageError, TidingsError
from tidings.stores.inbox import InboxCleanup, InboxKey, InboxRows, InboxStatus, Position
from tidings.stores.outbox import Outbox, OutboxRow, OutboxWriter, SetAside
from tidings.stores.transaction import (
    Params,
    Row,
    StatementFailedElsewhere,
    Statements,
    Transaction,
)

__all__ = [
    "InboxCleanup",
    "InboxKey",
    "InboxRows",
    "InboxStatus",
    "Outbox",
    "OutboxRow",
    "OutboxWriter",
    "Params",
    "Position",
    "Row",
    "SetAside",
    "StatementFailedElsewhere",
    "Statements",
    "Store",
    "Transaction",
    "Transactions",
]


class Transactions(abc.ABC):
    """The store's lifecycle, its transactions and the user's schema."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Connect and create or migrate the framework's tables. Idempotent."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @final
    def transaction(self) -> AbstractAsyncContextManager[Transaction]:
        """A read-write transaction: commits when the block exits normally, rolls back when it
        raises. Writers are serialized per store where the backend requires it (SQLite)."""
        return _Flushed(self._begin())

    @abc.abstractmethod
    def _begin(self) -> AbstractAsyncContextManager[Transaction]:
        """What a backend implements for `transaction()`: a new transaction, committed when
        the block exits normally (after the block flushed it) and rolled back when it raises."""

    @abc.abstractmethod
    async def migrate(self, migrations: Sequence[str]) -> int:
        """Apply the user's schema migrations not applied yet, in order, each in its own
        transaction; returns how many ran. Migration N is identified by its position; changing
        an applied one raises MigrationError."""

    @abc.abstractmethod
    async def query(self, sql: str, params: Params = ()) -> list[Row]:
        """A read outside any transaction (sees committed data)."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class _Flushed(AbstractAsyncContextManager[Transaction]):
    """`block` (the backend's transaction), finished before it commits: deferred statements,
    outbox rows and inbox rows for commit written (or, on PostgreSQL, sent with the COMMIT),
    TransactionAbortedError after a failed statement."""

    __slots__ = ("_block", "_tx")

    def __init__(self, block: AbstractAsyncContextManager[Transaction]) -> None:
        self._block = block

    async def __aenter__(self) -> Transaction:
        self._tx = await self._block.__aenter__()
        return self._tx

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        if error is None:
            try:
                await self._tx.finish()
            except BaseException as exc:
                try:
                    if not await self._block.__aexit__(type(exc), exc, exc.__traceback__):
                        raise
                finally:
                    await self._tx.discard_attachments()
                return False
            try:
                return await self._block.__aexit__(kind, error, tb)  # COMMIT
            except (TidingsError, StatementFailedElsewhere) as exc:
                # a statement's error (held back, on PostgreSQL, to go with the COMMIT): rolled
                # back; StorageError: the COMMIT's outcome is unknown, the attachments stay
                if not isinstance(exc, StorageError):
                    await self._tx.discard_attachments()
                raise
        try:
            return await self._block.__aexit__(kind, error, tb)
        finally:
            await self._tx.discard_attachments()


class Store(Transactions, Outbox, InboxCleanup):
    """A service's database. Safe to share between tasks of one event loop."""

    url: str
