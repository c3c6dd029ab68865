"""The inbox role: which events each consumer has handled, so a redelivered event does nothing.

Its rows are written in the transaction of the handler's effects (`InboxRows`, on the
transaction) and deleted once the broker can no longer redeliver them (`InboxCleanup`, on the
store).
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Sequence


class InboxStatus(enum.StrEnum):
    DONE = "done"
    """The handler's effects committed; the event is never applied again."""
    DEAD = "dead"
    """The event was dead-lettered; only a replay from the dead-letter topic runs it again."""


InboxKey = tuple[str, str]
"""(consumer, event id): what an inbox row records."""

Position = tuple[str, int, int]
"""(topic, partition, offset) of the record an inbox row was written for."""


class InboxRows(abc.ABC):
    """The inbox in a transaction. `inbox_add` inserts a (consumer, event id) pair once: a
    second insert of the pair, in any transaction, returns False once the first committed."""

    @abc.abstractmethod
    async def inbox_add(
        self,
        consumer: str,
        event_id: str,
        position: Position,
        status: InboxStatus = InboxStatus.DONE,
    ) -> bool:
        """Record the event as handled by `consumer`; False if it already was (status DONE, or
        DEAD when `status` is DEAD)."""

    @abc.abstractmethod
    async def inbox_find(self, keys: Sequence[InboxKey]) -> set[InboxKey]:
        """The pairs among `keys` that have an inbox row (of any status) visible to this
        transaction, in one statement (or a few, for very many keys). Another transaction may
        still record a pair after this returns; `inbox_add_all` detects that."""

    @abc.abstractmethod
    async def inbox_add_all(self, entries: Sequence[tuple[str, str, Position]]) -> None:
        """Record every (consumer, event id, position) of `entries` as DONE, in one statement.
        It never skips a pair that has a row already (committed by another transaction - on
        backends with concurrent writers this waits for one holding the pair uncommitted -
        written earlier in this one, or twice in `entries`): it raises InboxConflictError, a
        failed statement like any other, so that effects applied on the strength of an earlier
        `inbox_find` are never committed twice."""

    @abc.abstractmethod
    async def inbox_get(self, consumer: str, event_id: str) -> InboxStatus | None: ...

    @abc.abstractmethod
    async def inbox_delete(self, consumer: str, event_id: str) -> None: ...


class InboxCleanup(abc.ABC):
    """The inbox on the store: deleting rows nobody needs any more."""

    @abc.abstractmethod
    async def inbox_cleanup(
        self, consumer_prefix: str, committed: dict[tuple[str, int], int], older_than_s: float
    ) -> int:
        """Delete DONE inbox rows of consumers starting with `consumer_prefix` that are older
        than `older_than_s` and below the group's committed offset of their partition (so the
        broker will not redeliver them). Returns how many."""
