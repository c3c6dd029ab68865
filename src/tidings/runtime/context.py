"""The Context a handler or request code works with: its transaction, and publishing into
that transaction's outbox. `SyncContext` is the same for `def` handlers on a worker thread."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, contextmanager
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from tidings.blobs import BlobStore
from tidings.brokers.base import validate_topic_name
from tidings.errors import ContextClosedError, MessageTooLargeError
from tidings.event import Event, event_to_message
from tidings.records import Message
from tidings.runtime.claimcheck import BlobAttachment, check_in
from tidings.schema import EventModel
from tidings.stores.base import Params, Row, Transaction
from tidings.stores.outbox import Numbering

if TYPE_CHECKING:
    from tidings.brokers.base import Broker


PublishHook = Callable[[str, Event], Event]
"""Called by `Context.publish` with the topic and the envelope about to go into the outbox;
returns the envelope to use (tracing puts its trace context in it)."""

SEQUENCE_ROOM = len(b'"sequence":"9223372036854775807",')
"""Bytes an event grows by when the outbox stamps its sequence number (at most)."""
_BINARY_MARK = "ce_specversion"


def stamp_sequence(message: Message, number: int) -> Message:
    """`message` (an event from `event_to_message`) with the CloudEvents `sequence` attribute:
    a `ce_sequence` header in binary mode, the first member of the JSON object otherwise."""
    headers = message.headers
    if headers and headers[0][0] == _BINARY_MARK:  # where `to_kafka_binary` puts it
        stamped = (*headers, ("ce_sequence", str(number).encode()))
        return Message(message.value, message.key, stamped, message.partition)
    value = message.value
    if not value.startswith(b'{"'):
        return message
    value = b'{"sequence":"%d",' % number + value[1:]
    return Message(value, message.key, headers, message.partition)


class ContextOwner(Protocol):
    """What a Context needs of its service."""

    name: str
    known_topics: set[str]
    publish_hooks: list[PublishHook]
    max_event_bytes: int | None
    """The largest event `publish` accepts (None: the broker's limit; never above it)."""
    claim_check_over: int | None
    """Events larger than this are claim-checked (None: only when asked)."""
    sequence_numbers: bool
    """Whether the outbox stamps the service's keyed events with their sequence numbers."""

    @property
    def broker(self) -> Broker: ...

    @property
    def blob_store(self) -> BlobStore: ...

    async def check_topics(self, topics: Collection[str]) -> None: ...


class Context:
    """What a handler or request code works with: the current transaction and publishing.

    `execute`/`fetchone`/`fetchall` run SQL in the transaction, `defer` queues a statement whose
    result is not needed; `publish` queues an event into the outbox of the same transaction (it
    reaches the broker only if the transaction commits). Once the handler or request block
    ends, every call raises ContextClosedError.
    """

    def __init__(
        self,
        service: ContextOwner,
        tx: Transaction,
        *,
        event: Event | None = None,
        correlation_id: str | None = None,
        attempt: int = 1,
        position: tuple[str, int, int] | None = None,
    ) -> None:
        self.service = service
        self.tx = tx
        self.event = event
        self.correlation_id = correlation_id or (event.correlation_id if event else None)
        self.attempt = attempt
        self.position = position
        self.published: list[Event] = []
        self.unverified_topics: set[str] = set()
        """Topics published to that the service has not seen exist yet (`verify_topics`)."""
        self._closed = False
        self._numbering = (
            Numbering(service.name, stamp_sequence) if service.sequence_numbers else None
        )

    def close(self) -> None:
        """End this context: every later call raises ContextClosedError."""
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise ContextClosedError(
                "this context's transaction has ended (the handler returned, failed or timed "
                "out); it can no longer be used"
            )

    async def verify_topics(self) -> None:
        """UnknownTopicError if an event was published to a topic that does not exist (checked
        once per topic and service), so that its transaction fails here rather than its outbox
        row at the relay."""
        if self.unverified_topics:
            topics, self.unverified_topics = self.unverified_topics, set()
            await self.service.check_topics(topics)

    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run a statement; returns the affected row count."""
        self._check_open()
        return await self.tx.execute(sql, params)

    def defer(self, sql: str, params: Params = ()) -> None:
        """Queue a statement whose result you do not need (an INSERT of an effect, say);
        `params` are copied now. It runs in this transaction before its next statement, at
        the end of a savepoint, before the outbox is written and before the commit, in order
        with everything else. On PostgreSQL the statements queued until then share one round
        trip, so a batch of events whose handlers only defer pays one round trip for all
        their writes. If it fails, its error is raised where it ran, and the transaction can
        then only roll back (later statements and the commit raise TransactionAbortedError).
        In a handler the failure is always the deferring handler's own: the dispatcher
        re-applies the batch with a savepoint per handler, whose end runs what it deferred."""
        self._check_open()
        self.tx.defer(sql, params)

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        self._check_open()
        return await self.tx.fetchall(sql, params)

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        self._check_open()
        return await self.tx.fetchone(sql, params)

    def savepoint(self) -> AbstractAsyncContextManager[None]:
        """`async with ctx.savepoint():` - a nested unit of this transaction. If the block
        raises, what it did (statements, deferred statements, publishes) is rolled back, the
        error propagates, and the transaction carries on; the way to go on after a statement's
        error, on every store. Without it, a failed statement leaves the transaction able only
        to roll back even if the code catches the error (TransactionAbortedError from then
        on); a block that catches its own statement's error raises TransactionAbortedError at
        its end, rolled back like any block that raises."""
        self._check_open()
        return self.tx.savepoint()

    def publish(
        self,
        topic: str,
        event: EventModel | Event,
        *,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
        binary: bool = False,
        claim_check: bool | None = None,
    ) -> Event:
        """Queue `event` for `topic` in this transaction's outbox; returns the envelope.

        An `EventModel` gets this service as source, the current correlation id, and the
        handled event's id as causation id. `key` defaults to the handled event's key. When
        the transaction commits, the outbox stamps an event of this service that has a key
        with its sequence number (per service and key: `Event.sequence`, None in the envelope
        returned here); an `Event` forwarded with another service's source keeps its own.

        `claim_check=True` keeps the payload in the service's blob store and the event only a
        reference to it (`dataref`), which handlers never see: they receive the payload.
        `None` (the default) does so for events larger than `Service(claim_check_over=...)`;
        `False` never. Raises TopicError for an invalid topic name and MessageTooLargeError,
        queueing nothing, for an event over `Service(max_event_bytes=...)` or the broker's
        limit; a topic that does not exist fails the transaction before it commits
        (UnknownTopicError): an event that could never be relayed is never committed."""
        self._check_open()
        service = self.service
        if topic not in service.known_topics:
            validate_topic_name(topic)
            self.unverified_topics.add(topic)
        if key is None and self.event is not None:
            key = self.event.key
        causation = self.event.id if self.event is not None else None
        if isinstance(event, EventModel):
            envelope = event.to_event(
                key=key,
                source=self.service.name,
                headers=dict(headers) if headers else None,
                correlation_id=self.correlation_id,
                causation_id=causation,
            )
        elif isinstance(event, Event):
            changes: dict[str, Any] = {}
            if self.correlation_id and event.correlation_id == event.id:
                changes["correlation_id"] = self.correlation_id
            if causation and event.causation_id is None:
                changes["causation_id"] = causation
            if not event.source:
                changes["source"] = self.service.name
            if key is not None and event.key is None:
                changes["key"] = key
            if headers:
                changes["headers"] = {**event.headers, **headers}
            if event.dataref is not None:
                changes["dataref"] = None  # the claim check is this publish's to decide
            if event.sequence is not None and event.source in ("", service.name):
                changes["sequence"] = None  # the outbox's to stamp
            envelope = msgspec.structs.replace(event, **changes) if changes else event
        else:
            raise TypeError(
                f"publish() takes an EventModel or an Event, not {type(event).__name__}"
            )
        for hook in service.publish_hooks:
            envelope = hook(topic, envelope)
        attachment: BlobAttachment | None = None
        over = service.claim_check_over
        if claim_check:
            envelope, message, attachment = check_in(
                envelope, service.blob_store, service.name, binary=binary
            )
        else:
            message = event_to_message(envelope, binary=binary)
            if claim_check is None and over is not None and message.size > over:
                envelope, message, attachment = check_in(
                    envelope, service.blob_store, service.name, binary=binary
                )
        self._check_size(topic, envelope, message, service.name)
        self.tx.add_outbox(
            topic,
            envelope.id,
            message,
            numbering=self._numbering if _numbered(envelope, service.name) else None,
            attachment=attachment,
        )
        self.published.append(envelope)
        return envelope

    def _check_size(self, topic: str, envelope: Event, message: Message, service: str) -> None:
        broker_limit = self.service.broker.max_message_bytes
        limit = self.service.max_event_bytes
        numbered = self._numbering is not None and _numbered(envelope, service)
        size = message.size + (SEQUENCE_ROOM if numbered else 0)
        if limit is None or limit >= broker_limit:
            limit, what = broker_limit, "the broker accepts"
        else:
            what = f"Service(max_event_bytes={limit}) allows"
        if size > limit:
            raise MessageTooLargeError(
                f"event {envelope.id} ({envelope.type}) for topic {topic!r} is {size} bytes; "
                f"{what} at most {limit} (nothing was published; a large payload can travel "
                "by claim check: publish(..., claim_check=True))"
            )


def _numbered(envelope: Event, service: str) -> bool:
    """Whether the outbox numbers `envelope`: it has a key and this service is its source (an
    event forwarded with another service's source keeps that service's number, if any)."""
    return envelope.key is not None and envelope.source == service


class SyncContext:
    """The Context for `def` handlers, which run on a worker thread: the same operations,
    blocking. Not usable from the event loop thread."""

    def __init__(self, context: Context, loop: asyncio.AbstractEventLoop) -> None:
        self._context = context
        self._loop = loop
        self.service = context.service
        self.event = context.event
        self.correlation_id = context.correlation_id
        self.attempt = context.attempt
        self.position = context.position

    def _wait(self, coro: Awaitable[Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()  # type: ignore[arg-type]

    def execute(self, sql: str, params: Params = ()) -> int:
        result: int = self._wait(self._context.execute(sql, params))
        return result

    def defer(self, sql: str, params: Params = ()) -> None:
        self._context.defer(sql, params)

    def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        result: list[Row] = self._wait(self._context.fetchall(sql, params))
        return result

    def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        result: Row | None = self._wait(self._context.fetchone(sql, params))
        return result

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """`with ctx.savepoint():` - Context.savepoint for `def` handlers."""
        block = self._context.savepoint()
        self._wait(block.__aenter__())
        try:
            yield
        except BaseException as exc:
            self._wait(block.__aexit__(type(exc), exc, exc.__traceback__))
            raise
        self._wait(block.__aexit__(None, None, None))

    def publish(
        self,
        topic: str,
        event: EventModel | Event,
        *,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
        binary: bool = False,
        claim_check: bool | None = None,
    ) -> Event:
        return self._context.publish(
            topic, event, key=key, headers=headers, binary=binary, claim_check=claim_check
        )
