"""A harness for testing your own services: real runtime, throwaway backends.

```python
async with ServiceHarness(billing) as harness:          # memory:// broker and store
    await harness.deliver("order-events", OrderPlaced(order_id="o1", total=42.0, currency="EUR"))
    [charged] = await harness.published("payment-events", PaymentCharged)
    assert charged.amount == 42.0
    assert await harness.query("SELECT amount FROM charges") == [(42.0,)]
    assert await harness.dead_letters() == []
```

The service runs as in production - consumer group, dispatcher with its inbox, retries and dead
letters, outbox and relay - on an in-memory broker and a throwaway SQLite store bound in place
of its configured ones. `deliver` publishes an event to a topic and returns once every handler
of the service due for it is done with it (its effects committed, or it is dead-lettered) and
what the service published is on the broker, so a test reads the outcome without sleeping.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, TypeVar

from tidings import dlq
from tidings.brokers.base import CanRead, require
from tidings.brokers.memory import MemoryBroker
from tidings.errors import DecodeError, UnknownTopicError
from tidings.event import Event, event_from_record
from tidings.records import Record, TopicPartition
from tidings.runtime.claimcheck import resolve
from tidings.runtime.outcomes import Outcome, Settled
from tidings.schema import EventModel
from tidings.service import Service
from tidings.stores.base import Row
from tidings.stores.memory import MemoryStore

M = TypeVar("M", bound=EventModel)


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float = 10.0, interval: float = 0.01
) -> None:
    """Wait until `await check()` is true; AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached within {timeout:g}s")
        await asyncio.sleep(interval)


@dataclass(frozen=True, slots=True)
class Letter:
    """A dead letter of the service under test."""

    reason: str
    message: str
    handler: str | None
    event: Event | None
    record: Record


class ServiceHarness:
    """Runs `service` on a `memory://` broker and store (or the ones given) and a temporary
    blob directory (for claim-checked payloads) for a test; an async context manager.
    `timeout` bounds each wait."""

    def __init__(
        self,
        service: Service,
        *,
        broker: str | None = None,
        store: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.service = service
        self.timeout = timeout
        self._broker_url = broker or f"memory://harness-{uuid.uuid4().hex[:12]}"
        self._store_url = store or "memory://"
        self._task: asyncio.Task[None] | None = None
        self._blobs = tempfile.TemporaryDirectory(prefix="tidings-harness-blobs-")
        self._final: dict[tuple[str, str], int] = {}
        """How often each (event id, handler consumer name or "" for none) was done with for
        good: deliveries of one event are told apart by the count."""

    async def __aenter__(self) -> Self:
        self.service.bind(broker=self._broker_url, store=self._store_url, blobs=self._blobs.name)
        self.service.observers.append(self)
        self._task = await self.service.run_in_background(grace_period=self.timeout)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.service.stop()
        if self._task is not None:
            await asyncio.wait_for(self._task, self.timeout + 5)
        if self in self.service.observers:
            self.service.observers.remove(self)
        store = self.service.store
        if isinstance(store, MemoryStore):
            await store.close()
        broker = self.service.broker
        if isinstance(broker, MemoryBroker):
            await broker.close()
        self._blobs.cleanup()

    # driving ------------------------------------------------------------------------------

    async def deliver(
        self,
        topic: str,
        event: EventModel | Event,
        *,
        key: str | None = None,
        correlation_id: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Event:
        """Publish `event` to `topic` (creating the topic if needed) as another service would,
        then wait until this service has processed it and relayed what it published. Returns
        the envelope that was delivered."""
        envelope = (
            event.to_event(key=key, correlation_id=correlation_id, headers=dict(headers or {}))
            if isinstance(event, EventModel)
            else event
        )
        service = self.service
        await service.broker.admin.create_topic(topic, 1, exist_ok=True)
        await service.broker.publish_events(topic, [envelope])
        due = [h.consumer for h in service.handlers_for(topic, envelope.type)] or [""]
        before = {name: self._final.get((envelope.id, name), 0) for name in [*due, ""]}

        def more(name: str) -> bool:
            return self._final.get((envelope.id, name), 0) > before[name]

        async def handled() -> bool:
            return more("") or all(more(name) for name in due)

        await eventually(handled, self.timeout)
        await self.settle()
        return envelope

    def settled(self, outcomes: Sequence[Settled]) -> None:
        """The harness observes the service (see `tidings.runtime.outcomes.Observer`)."""
        for settled in outcomes:
            if settled.outcome is Outcome.RETRIED or settled.event is None:
                continue
            handler = settled.handler.consumer if settled.handler is not None else ""
            key = (settled.event.id, handler)
            self._final[key] = self._final.get(key, 0) + 1

    async def settle(self) -> None:
        """Wait until the service's outbox is empty: what it published is on the broker."""
        store = self.service.store

        async def relayed() -> bool:
            return await store.outbox_size() == 0

        await eventually(relayed, self.timeout)

    # reading --------------------------------------------------------------------------------

    async def published(self, topic: str, model: type[M] | None = None) -> list[Any]:
        """Every event on `topic` so far, in the order the topic holds them (per partition), as
        `Event`s - or only those of `model`'s type, as `model` instances; [] if the topic does
        not exist. Claim-checked events come with their payload, as handlers receive them."""
        blobs = self.service.blob_store
        events = [await resolve(blobs, event_from_record(r)) for r in await self._read(topic)]
        if model is None:
            return events
        return [model.from_event(e) for e in events if e.type == model.event_type]

    async def dead_letters(self) -> list[Letter]:
        """The service's dead letters so far, oldest first."""
        letters = []
        for record in await self._read(self.service.dead_letter_topic):
            original = Record(
                record.topic,
                record.partition,
                record.offset,
                record.timestamp,
                record.value,
                record.key,
                dlq.strip(record.headers),
            )
            try:
                event: Event | None = event_from_record(original)
            except DecodeError:
                event = None
            text = {name: value.decode("utf-8", "replace") for name, value in record.headers}
            letters.append(
                Letter(
                    text.get(dlq.REASON, ""),
                    text.get(dlq.MESSAGE, ""),
                    text.get(dlq.HANDLER),
                    event,
                    record,
                )
            )
        return letters

    async def _read(self, topic: str) -> list[Record]:
        """Every retained record of `topic` (read afresh: topics in tests are small)."""
        reader = require(self.service.broker, CanRead, "read topics")
        try:
            info = await self.service.broker.admin.describe_topic(topic)
        except UnknownTopicError:
            return []
        records: list[Record] = []
        for p in info.partitions:
            tp = TopicPartition(topic, p.partition)
            offset = p.start_offset
            while offset < p.end_offset:
                page = await reader.read(tp, offset, 1000)
                if not page:
                    break
                records.extend(page)
                offset = page[-1].offset + 1
        return records

    async def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[Row]:
        """A read of the service's own database."""
        return await self.service.store.query(sql, params)
