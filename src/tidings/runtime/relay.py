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

No row can block the relay: a dead letter over the broker's size limit has its traceback and
error message shortened to fit; a row the broker refuses for good (larger than its limit, a topic
that does not exist) is set aside - moved to the store's `tidings_outbox_unpublishable` table -
and a dead letter with reason `unpublishable` takes its place in the outbox (the row's message,
or without its value if even that does not fit), so `tidings dlq` shows it. When a publish fails
part of the way, the rows already published are removed before the error is raised, so a retry
never publishes them again. Claims are bounded in bytes as well as rows. Once stopping, the
relay gives up at the first failure (the rows wait for the next run).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import Sequence
from typing import Protocol

from tidings import dlq
from tidings._wakeup import Wakeup
from tidings.brokers.base import Broker
from tidings.errors import MessageTooLargeError, UnknownTopicError
from tidings.records import Message
from tidings.stores.outbox import Outbox, OutboxRow, SetAside

log = logging.getLogger("tidings.relay")

MAX_UNREMOVED_BATCHES = 4
CLAIM_MAX_BYTES = 16 * 1024 * 1024
"""Bytes (keys, values, headers) of outbox rows claimed at once, besides `batch` rows."""
REFUSED_FOR_GOOD = (MessageTooLargeError, UnknownTopicError)
NOTICE = "unpublishable:"
"""How the outbox ids of the dead letters of rows set aside start: one of them refused too is
set aside without another."""
"""What a broker raises for a message no retry can publish."""


class RelayHook(Protocol):
    """Told of every publish the relay made (tracing's send spans, metrics); must not block."""

    def relayed(self, topic: str, messages: Sequence[Message], started: float) -> None:
        """`messages` were published to `topic`; `started` is `time.time()` at the start."""


class Relay:
    def __init__(
        self,
        store: Outbox,
        broker: Broker,
        *,
        batch: int = 1000,
        lease_s: float = 15.0,
        poll_s: float = 1.0,
        dead_letter_topic: str | None = None,
        max_bytes: int = CLAIM_MAX_BYTES,
        hooks: Sequence[RelayHook] = (),
        relay_id: str | None = None,
    ) -> None:
        self.store = store
        self.hooks = list(hooks)
        self.broker = broker
        self.batch = batch
        self.lease_s = lease_s
        self.poll_s = poll_s
        self.dead_letter_topic = dead_letter_topic
        """Where the dead letters of rows set aside go (None: set aside without one)."""
        self.max_bytes = max_bytes
        self.relay_id = relay_id or f"relay-{uuid.uuid4().hex[:12]}"
        """The lease holder's name. A stable one (`tidings.instance`) lets this process,
        restarted after a crash, hold the lease it had at once; two live relays of one outbox
        must never share one."""
        self.published = 0
        self.set_aside = 0
        self._wakeup: Wakeup | None = None
        self._unremoved: set[int] = set()
        self._removing: asyncio.Task[None] | None = None

    async def run(self, stopping: asyncio.Event) -> None:
        """Relay until `stopping` is set and the outbox is drained of what was committed."""
        self._wakeup = wakeup = Wakeup()  # a commit on this loop's thread sets it directly
        self.store.on_outbox(wakeup.set)
        failures = 0
        try:
            while True:
                wakeup.clear()
                try:
                    moved = await self.relay_once()
                    failures = 0
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if stopping.is_set():
                        log.warning(
                            "relay: %r while stopping; the rest waits for the next run", exc
                        )
                        return
                    failures += 1
                    delay = min(30.0, 0.1 * 2**failures)
                    log.error("relay: %r; retrying in %.1fs (nothing is lost)", exc, delay)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stopping.wait(), delay)
                    continue
                if moved is None:
                    if stopping.is_set():
                        return
                    await self._sleep(wakeup, stopping, min(self.lease_s / 3, 1.0))
                elif moved == 0 or (moved < self.batch and not wakeup.is_set()):
                    # A claim of less than a batch took every committed row, unless a commit
                    # has woken the relay since it began: no need to claim again to find that
                    # the outbox is empty.
                    if stopping.is_set():
                        return
                    await self._sleep(wakeup, stopping, self.poll_s)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._finish())

    def wake(self) -> None:
        """Make the relay look at the outbox now (from any thread; nothing before `run`)."""
        if self._wakeup is not None:
            self._wakeup.set()

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
            self.relay_id,
            self.batch,
            self.lease_s,
            exclude=tuple(self._unremoved),
            max_bytes=self.max_bytes,
        )
        if rows is None:
            await self.settle()
            return None
        if not rows:
            return 0
        published: list[OutboxRow] = []
        try:
            refused = await self._publish(rows, published)
            if refused:
                await self._set_aside(refused)
        except BaseException:
            if published:  # never publish them again: remove them before raising
                self._unremoved.update(row.seq for row in published)
                self._remove_later()
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.settle())
            raise
        self._unremoved.update(row.seq for row in published)
        self.published += len(published)
        self._remove_later()
        await asyncio.sleep(0)
        removing = self._removing
        if removing is not None and removing.done():
            await self.settle()
        return len(rows)

    async def _publish(
        self, rows: list[OutboxRow], published: list[OutboxRow]
    ) -> list[tuple[OutboxRow, Exception]]:
        """Publish `rows`, adding each row the broker took to `published` as it goes; returns
        the rows it refused for good, with its error. Raises any other error."""
        refused: list[tuple[OutboxRow, Exception]] = []
        limit = self.broker.max_message_bytes
        for topic, group in _by_topic(rows):
            fitting = []
            for row in group:
                if row.message.size > limit:
                    fitted = dlq.fit(row.message, limit)  # a dead letter's traceback shortened
                    if fitted.size > limit:
                        error = MessageTooLargeError(
                            f"{row.message.size} bytes for topic {topic!r}; the broker accepts "
                            f"at most {limit}"
                        )
                        refused.append((row, error))
                        continue
                    row = dataclasses.replace(row, message=fitted)
                fitting.append(row)
            if not fitting:
                continue
            started = time.time()
            try:
                await self.broker.publish(topic, [row.message for row in fitting])
            except REFUSED_FOR_GOOD:
                # one at a time, to tell the rows refused from the others (those the failed
                # call wrote already are published again: at-least-once)
                for row in fitting:
                    try:
                        await self.broker.publish(topic, [row.message])
                    except REFUSED_FOR_GOOD as exc:
                        refused.append((row, exc))
                    else:
                        published.append(row)
                        self._tell(topic, [row.message], started)
            else:
                published.extend(fitting)
                self._tell(topic, [row.message for row in fitting], started)
        return refused

    def _tell(self, topic: str, messages: Sequence[Message], started: float) -> None:
        for hook in self.hooks:
            try:
                hook.relayed(topic, messages, started)
            except Exception:
                log.exception("relay: hook %r failed", hook)

    async def _set_aside(self, refused: list[tuple[OutboxRow, Exception]]) -> None:
        items = []
        for row, error in refused:
            log.error(
                "relay: outbox row %d (event %s for topic %r) can never be published (%s); set "
                "aside with a dead letter",
                row.seq,
                row.event_id,
                row.topic,
                error,
            )
            notice = None
            if self.dead_letter_topic is not None and not row.event_id.startswith(NOTICE):
                message = dlq.unpublishable(
                    row.topic, row.event_id, row.message, error, self.broker.max_message_bytes
                )
                notice = (self.dead_letter_topic, f"{NOTICE}{row.seq}", message)
            items.append(SetAside(row, f"{type(error).__name__}: {error}", notice))
        await self.store.outbox_set_aside(self.relay_id, items)
        self.set_aside += len(items)

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

    @staticmethod
    async def _sleep(wakeup: Wakeup, stopping: asyncio.Event, seconds: float) -> None:
        await wakeup.wait(min(seconds, 0.05) if stopping.is_set() else seconds)


def _failed(task: asyncio.Task[None]) -> bool:
    return task.cancelled() or task.exception() is not None


def _by_topic(rows: list[OutboxRow]) -> list[tuple[str, list[OutboxRow]]]:
    """Rows grouped per topic, each group in outbox order (so per-key order holds)."""
    groups: dict[str, list[OutboxRow]] = {}
    for row in rows:
        groups.setdefault(row.topic, []).append(row)
    return list(groups.items())
