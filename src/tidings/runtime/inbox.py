"""The inbox rows of one batch transaction applied without savepoints: looked up together when
it starts, inserted together before it commits."""

from __future__ import annotations

from tidings.stores.inbox import InboxKey, InboxRows, Position
from tidings.stores.transaction import Transaction


class InboxBatch:
    """Which (consumer, event id) pairs were recorded when the transaction started (one
    lookup), and the new rows, inserted together by `write` before commit."""

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

    async def write(self, tx: InboxRows) -> None:
        """Insert the queued rows (InboxConflictError if one was recorded meanwhile)."""
        if self.entries:
            entries, self.entries = self.entries, []
            await tx.inbox_add_all(entries)

    def write_at_commit(self, tx: Transaction) -> None:
        """Have the queued rows inserted when `tx` commits (InboxConflictError from its end if
        one was recorded meanwhile)."""
        if self.entries:
            entries, self.entries = self.entries, []
            tx.inbox_add_at_commit(entries)

    async def add(self, tx: InboxRows, consumer: str, event_id: str, position: Position) -> bool:
        """`tx.inbox_add`, after writing what is queued (so a pair claimed earlier in this
        transaction is seen as recorded)."""
        await self.write(tx)
        return await tx.inbox_add(consumer, event_id, position)
