"""The outbox role: events a transaction publishes, as rows that commit with it (`OutboxWriter`,
on the transaction), moved to the broker by the relay (`Outbox`, on the store)."""

from __future__ import annotations

import abc
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

from tidings.records import Message


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
class Numbering:
    """Asks the outbox to number a row: when its transaction writes it, the row takes the next
    sequence number of (`scope`, its message's key) - 1, 2, ... per key, counted in the store,
    in the same transaction (two transactions never take the same number; a rolled-back one
    takes none) - and its message becomes `stamp(message, number)`. A row without a key is
    not numbered."""

    scope: str
    stamp: Callable[[Message, int], Message]


class Attachment(Protocol):
    """What an outbox row needs stored elsewhere (a claim-checked payload): `write()` makes it
    durable before the row is written; `discard()` removes it again once the row's transaction
    (or savepoint) is known to have rolled back (a no-op if never written)."""

    async def write(self) -> None: ...

    async def discard(self) -> None: ...


@dataclass(frozen=True, slots=True)
class OutboxStats:
    pending: int
    oldest_age_s: float | None
    """Seconds since the oldest pending row was written; None if there is none."""


class OutboxWriter(abc.ABC):
    """The outbox in a transaction."""

    @abc.abstractmethod
    def add_outbox(
        self,
        topic: str,
        event_id: str,
        message: Message,
        *,
        numbering: Numbering | None = None,
        attachment: Attachment | None = None,
    ) -> None:
        """Queue an outbox row; written by the next `flush()` or at commit. A duplicate
        (topic, event id) pair makes that flush or the commit raise DuplicateEventError.
        `numbering` stamps the row with its key's next sequence number (see `Numbering`);
        `attachment` is written before the row (see `Attachment`)."""

    @abc.abstractmethod
    async def flush(self) -> None:
        """Run deferred statements and write queued outbox rows now, so that their errors (such
        as DuplicateEventError) surface here."""


class Outbox(abc.ABC):
    """The outbox on the store: the relay's side.

    Rows become visible to `outbox_claim` only when their transaction commits, in commit order
    per key, and a claim never skips a committed row, whatever order transactions commit in.
    Only the holder of the relay lease receives rows, so several relays never publish
    concurrently; a dead holder's lease expires and another relay takes over (at-least-once)."""

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
    async def outbox_stats(self) -> OutboxStats:
        """How many rows wait in the outbox, and how long the oldest has waited."""

    async def outbox_size(self) -> int:
        return (await self.outbox_stats()).pending

    @abc.abstractmethod
    def on_outbox(self, callback: Callable[[], None]) -> None:
        """Call `callback` (from any thread) when a transaction with outbox rows commits, in
        this process or another one sharing the store."""
