"""The outbox relay: moves committed outbox rows to the broker, in order, at least once.

Woken when a transaction with outbox rows commits (in this process or another sharing the
store), with a poll as a fallback. Only the holder of the store's relay lease publishes, so
several relays (processes) never reorder a key. A relay killed at any point loses nothing: rows
are removed only after the broker acknowledged them; rows published but not yet removed are
published again by the next relay (consumers' inboxes drop the duplicates).

Removing published rows does not hold up relaying the next ones: the removal starts as a task
and, if it cannot finish at once (the store is busy with transactions), goes on in the
background - one at a time, covering every row published since the previous one started -
while the relay claims the next rows, excluding those still being removed. When the store is
idle it finishes at once, and the next claim then sees the rows that accumulated meanwhile. At
most `MAX_UNREMOVED_BATCHES` claims' worth of rows await removal before the relay waits for it.
A failed removal's error surfaces in the relay loop (with its backoff) and its rows are claimed
and published again. The relay waits for removals to finish before it stops or gives up the
lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from tidings.brokers.base import Broker, Message
from tidings.stores.base import OutboxRow, Store
from tidings.stores.sqlite import new_relay_id

log = logging.getLogger("tidings.relay")

MAX_UNREMOVED_BATCHES = 4


class Relay:
    def __init__(
        self,
        store: Store,
        broker: Broker,
        *,
        batch: int = 1000,
        lease_s: float = 15.0,
        poll_s: float = 1.0,
    ) -> None:
        self.store = store
        self.broker = broker
        self.batch = batch
        self.lease_s = lease_s
        self.poll_s = poll_s
        self.relay_id = new_relay_id()
        self.published = 0
        self._wakeup = asyncio.Event()
        self._unremoved: set[int] = set()
        self._removing: asyncio.Task[None] | None = None

    async def run(self, stopping: asyncio.Event) -> None:
        """Relay until `stopping` is set and the outbox is drained of what was committed."""
        loop = asyncio.get_running_loop()

        def wake() -> None:
            loop.call_soon_threadsafe(self._wakeup.set)

        self.store.on_outbox(wake)
        failures = 0
        try:
            while True:
                self._wakeup.clear()
                try:
                    moved = await self.relay_once()
                    failures = 0
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    failures += 1
                    delay = min(30.0, 0.1 * 2**failures)
                    log.error("relay: %r; retrying in %.1fs (nothing is lost)", exc, delay)
                    await self._sleep(stopping, delay)
                    continue
                if moved is None:
                    if stopping.is_set():
                        return
                    await self._sleep(stopping, min(self.lease_s / 3, 1.0))
                elif moved == 0 or (moved < self.batch and not self._wakeup.is_set()):
                    # A claim of less than a batch took every committed row, unless a commit
                    # has woken the relay since it began: no need to claim again to find that
                    # the outbox is empty.
                    if stopping.is_set():
                        return
                    await self._sleep(stopping, self.poll_s)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._finish())

    async def _finish(self) -> None:
        with contextlib.suppress(Exception):
            await self.settle()
        await self.store.outbox_release(self.relay_id)

    async def relay_once(self) -> int | None:
        """Move one batch; returns how many rows, or None if another relay holds the lease.
        The rows' removal is started and awaited only if it finishes at once (see the module
        docstring); `settle()` waits for it. Raises the error of a failed removal."""
        removing = self._removing
        if removing is not None and (
            removing.done() or len(self._unremoved) >= MAX_UNREMOVED_BATCHES * self.batch
        ):
            await self.settle()
        rows = await self.store.outbox_claim(
            self.relay_id, self.batch, self.lease_s, exclude=tuple(self._unremoved)
        )
        if rows is None:
            await self.settle()
            return None
        if not rows:
            return 0
        for topic, messages in _by_topic(rows):
            await self.broker.publish(topic, messages)
        self._unremoved.update(row.seq for row in rows)
        self.published += len(rows)
        self._remove_later()
        await asyncio.sleep(0)
        removing = self._removing
        if removing is not None and removing.done():
            await self.settle()
        return len(rows)

    async def settle(self) -> None:
        """Wait until every published row is removed. Raises if a removal failed; its rows
        are then returned by the next claim again."""
        while (removing := self._removing) is not None:
            self._removing = None
            await asyncio.shield(removing)
            if self._unremoved:
                self._removing = asyncio.create_task(self._remove(), name="relay-remove")

    def _remove_later(self) -> None:
        """Make sure a removal task removes what `_unremoved` holds now. A running one does
        (it loops until nothing is left); a failed one is left for `settle()` to report."""
        removing = self._removing
        if removing is not None and (not removing.done() or _failed(removing)):
            return
        self._removing = asyncio.create_task(self._remove(), name="relay-remove")

    async def _remove(self) -> None:
        """Remove published rows until none is left; on failure, stop excluding them from
        claims (they are published again, which consumers' inboxes absorb) and raise."""
        while self._unremoved:
            seqs = list(self._unremoved)
            try:
                await self.store.outbox_remove(self.relay_id, seqs)
            except BaseException:
                self._unremoved.difference_update(seqs)
                raise
            self._unremoved.difference_update(seqs)

    async def _sleep(self, stopping: asyncio.Event, seconds: float) -> None:
        if stopping.is_set():
            seconds = min(seconds, 0.05)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), seconds)


def _failed(task: asyncio.Task[None]) -> bool:
    return task.cancelled() or task.exception() is not None


def _by_topic(rows: list[OutboxRow]) -> list[tuple[str, list[Message]]]:
    """Rows grouped per topic, each group in outbox order (so per-key order holds)."""
    groups: dict[str, list[Message]] = {}
    for row in rows:
        groups.setdefault(row.topic, []).append(row.message)
    return list(groups.items())
