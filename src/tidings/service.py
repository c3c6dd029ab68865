"""Service: a named unit that declares handlers, publishes through its outbox and runs.

```python
orders = Service("order-service", store="sqlite:///.tidings/orders.db",
                 migrations=["CREATE TABLE orders (id TEXT PRIMARY KEY, status TEXT)"])

@orders.handler("payment-events")
async def confirm(event: PaymentCharged, ctx: Context) -> None:
    await ctx.execute("UPDATE orders SET status = 'CONFIRMED' WHERE id = ?", (event.order_id,))
```

The service's name is its consumer group. Each delivery runs as one store transaction: inbox
check, handler (its SQL through the context), the events it publishes into the outbox, commit,
then the broker offset. Events published while handling another inherit its correlation id and
get its id as causation id.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import re
from collections.abc import (
    AsyncIterator,
    Callable,
    Collection,
    Iterable,
    Mapping,
    Sequence,
)
from contextlib import asynccontextmanager
from typing import Any, TypeVar, get_type_hints

from tidings.blobs import BlobStore
from tidings.brokers import connect
from tidings.brokers.base import UNLIMITED, Broker, CanRead, validate_topic_name
from tidings.errors import (
    ConfigError,
    UnknownTopicError,
)
from tidings.event import Event, event_to_message
from tidings.records import Published
from tidings.registry import SchemaRegistry
from tidings.retry import Retry
from tidings.runtime.claimcheck import default_blob_store
from tidings.runtime.context import Context, PublishHook, SyncContext
from tidings.runtime.handlers import Handler, Middleware, Reset
from tidings.runtime.outcomes import Observer, Stats
from tidings.runtime.relay import RelayHook
from tidings.runtime.runner import ServiceRunner, run_service
from tidings.schema import EventModel
from tidings.stores import connect_store
from tidings.stores.base import Store
from tidings.telemetry import auto_instrument

__all__ = ["Context", "Service", "SyncContext"]

log = logging.getLogger("tidings.service")

DEFAULT_BROKER = "sqlite:///.tidings/bus.db"
DEFAULT_STORE = "sqlite:///.tidings/{service}.db"
DEFAULT_PARTITIONS = 4
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,120}$")

H = TypeVar("H", bound=Callable[..., Any])


class Service:
    """A named service: handlers, outbox publishing, and its runtime (`run()`)."""

    def __init__(
        self,
        name: str,
        *,
        broker: str | Broker | None = None,
        store: str | Store | None = None,
        migrations: Sequence[str] = (),
        topics: Mapping[str, int] | None = None,
        retry: Retry | None = None,
        dead_letter_topic: str | None = None,
        inbox_retention_s: float = 7 * 24 * 3600,
        session_timeout: float = 10.0,
        max_batch: int = 500,
        concurrency: int = 16,
        middleware: Sequence[Middleware] = (),
        observers: Sequence[Observer] = (),
        register_schemas: bool = True,
        max_event_bytes: int | None = None,
        claim_check_over: int | None = None,
        blobs: str | BlobStore | None = None,
        blob_retention_s: float = 7 * 24 * 3600,
        sequence_numbers: bool = True,
    ) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(
                f"service name {name!r} is invalid: use 1-121 letters, digits, '.', '_', '-'"
            )
        self.name = name
        self._broker_spec = broker
        self._store_spec = store
        self.migrations = tuple(migrations)
        self.topics: dict[str, int] = dict(topics or {})
        self.retry = retry or Retry()
        self.dead_letter_topic = dead_letter_topic or f"{name}.dlq"
        if not self.dead_letter_topic.endswith(".dlq"):
            raise ConfigError(
                f"dead_letter_topic {self.dead_letter_topic!r} must end in '.dlq' so that "
                "`tidings dlq` finds it"
            )
        self.inbox_retention_s = inbox_retention_s
        for option, limit in (
            ("max_event_bytes", max_event_bytes),
            ("claim_check_over", claim_check_over),
        ):
            if limit is not None and (type(limit) is not int or limit < 1):
                raise ConfigError(f"{option} must be a positive integer or None, got {limit!r}")
        self.max_event_bytes = max_event_bytes
        """The largest event `ctx.publish` accepts (None: the broker's limit, never above)."""
        self.claim_check_over = claim_check_over
        """Events larger than this many bytes are claim-checked (None: only when asked)."""
        self._blobs_spec = blobs
        self._blob_store: BlobStore | None = None
        self.blob_retention_s = blob_retention_s
        """Claim-checked payloads older than this are deleted (they must outlive the events
        that refer to them: consumer lag, dead letters waiting for a replay)."""
        self.sequence_numbers = sequence_numbers
        """The outbox stamps the service's events that have a key with their number per key
        (`Event.sequence`); False saves the store a row update per key and transaction."""
        self.session_timeout = session_timeout
        self.max_batch = max_batch
        self.concurrency = concurrency
        self.handlers: list[Handler] = []
        self.register_schemas = register_schemas
        """Register the schemas of the models handled and published at start (see
        `tidings.registry`): a different or incompatible schema stops the start."""
        self.publications: dict[str, list[type[EventModel]]] = {}
        """The event models declared published per topic (`publishes`)."""
        self.stats = Stats()
        self.middleware: list[Middleware] = list(middleware)
        """Wrappers around every handler attempt (see `tidings.runtime.handlers.Middleware`),
        the first outermost; `use()` adds one."""
        self.observers: list[Observer] = list(observers)
        """Told what became of each event (see `tidings.runtime.outcomes.Observer`)."""
        self.publish_hooks: list[PublishHook] = []
        """Called on every event published through a Context (see `PublishHook`)."""
        self.relay_hooks: list[RelayHook] = []
        """Told of every publish of the service's outbox relay (see `RelayHook`)."""
        self.extensions: dict[str, object] = {}
        """What plugins (tracing, metrics) keep for this service, by name."""
        self._broker: Broker | None = None
        self._store: Store | None = None
        self._start_lock: asyncio.Lock | None = None
        self._started = False
        self._routes: dict[tuple[str, str], list[Handler]] = {}
        self.runner: ServiceRunner | None = None
        self.known_topics: set[str] = set()
        """Topics this service has seen exist (created or checked); `check_topics` adds."""

    # declaration ------------------------------------------------------------------------

    def use(self, middleware: Middleware) -> Middleware:
        """Add handler middleware (innermost of those added so far); usable as a decorator."""
        self.middleware.append(middleware)
        return middleware

    def handler(
        self,
        *topics: str,
        retry: Retry | None = None,
        name: str | None = None,
        reset: Callable[..., Any] | None = None,
        ordered_dead_letters: bool = False,
        locks: str | Iterable[str] | Callable[[Any], Iterable[str]] | None = None,
    ) -> Callable[[H], H]:
        """Register a handler for events on `topics`.

        The handler's first parameter's annotation picks what it receives: an EventModel
        subclass (only events of that type, upcast and validated) or `Event` (every event, as
        the envelope). The second parameter is the Context (`async def`) or SyncContext
        (`def`, run on a worker thread).

        `reset(ctx, since)` (or `reset(ctx)`: rebuilt only from the beginning) clears what the
        handler built, for `tidings rebuild` (see `tidings.runtime.handlers.Reset`). With
        `ordered_dead_letters=True`, a dead-lettered event holds back the later events of its
        key for this handler until it is replayed or purged (`tidings.runtime.parking`).

        `locks` names the shared rows the handler writes - a name, names, or a function of
        the handler's argument returning them (`lambda order: [item.sku for item in
        order.items]`): each transaction takes the locks of all its events first, in one
        order, so concurrent transactions (partitions, instances) writing the same rows wait
        for each other instead of deadlocking (PostgreSQL advisory locks; nothing on SQLite,
        whose writers take turns). Every handler writing those rows must name them."""
        if not topics:
            raise ConfigError("handler() needs at least one topic")
        reset_hook = _reset_hook(reset) if reset is not None else None
        lock_names = _lock_names(locks)

        def register(function: H) -> H:
            model = _event_parameter(function)
            handler_name = name or function.__name__
            if any(h.name == handler_name for h in self.handlers):
                raise ConfigError(
                    f"service {self.name!r} already has a handler named {handler_name!r}; "
                    "pass name= to tell them apart"
                )
            self._routes.clear()
            self.handlers.append(
                Handler(
                    name=handler_name,
                    consumer=f"{self.name}.{handler_name}",
                    topics=tuple(topics),
                    model=model,
                    function=function,
                    is_async=inspect.iscoroutinefunction(function),
                    retry=retry or self.retry,
                    reset=reset_hook,
                    ordered_dead_letters=ordered_dead_letters,
                    locks=lock_names,
                )
            )
            return function

        return register

    def publishes(self, topic: str, *models: type[EventModel]) -> None:
        """Declare that the service publishes events of `models` to `topic`: the topic is
        created at start like those of `topics=`, and the declaration goes into the schema
        registry and the AsyncAPI document (`tidings asyncapi`). Publishing is not limited to
        what is declared."""
        validate_topic_name(topic)
        for model in models:
            if not (isinstance(model, type) and issubclass(model, EventModel)):
                raise ConfigError(f"publishes() takes EventModel subclasses, got {model!r}")
        declared = self.publications.setdefault(topic, [])
        declared.extend(m for m in models if m not in declared)
        self.topics.setdefault(topic, DEFAULT_PARTITIONS)

    def handlers_for(self, topic: str, event_type: str) -> list[Handler]:
        """The handlers for events of `event_type` on `topic`, in registration order."""
        route = (topic, event_type)
        handlers = self._routes.get(route)
        if handlers is None:
            handlers = [h for h in self.handlers if topic in h.topics and h.accepts(event_type)]
            self._routes[route] = handlers
        return handlers

    @property
    def consumed_topics(self) -> list[str]:
        return sorted({t for h in self.handlers for t in h.topics})

    # resources --------------------------------------------------------------------------

    def bind(
        self,
        *,
        broker: str | Broker | None = None,
        store: str | Store | None = None,
        blobs: str | BlobStore | None = None,
    ) -> None:
        """Use these backends instead of the ones configured (`broker=`/`store=`/`blobs=`,
        environment, defaults) - for tests: `tidings.testing.ServiceHarness` binds `memory://`
        ones and a temporary blob directory. Only before the service starts."""
        opened = self._broker is not None or self._store is not None
        if self._started or opened or self._blob_store is not None:
            raise ConfigError(f"service {self.name!r}: bind() its backends before it starts")
        if broker is not None:
            self._broker_spec = broker
        if store is not None:
            self._store_spec = store
        if blobs is not None:
            self._blobs_spec = blobs

    @property
    def broker(self) -> Broker:
        """From `broker=`, else the `TIDINGS_BROKER` environment variable, else
        `sqlite:///.tidings/bus.db`."""
        if self._broker is None:
            spec = self._broker_spec or os.environ.get("TIDINGS_BROKER") or DEFAULT_BROKER
            self._broker = connect(spec) if isinstance(spec, str) else spec
        return self._broker

    @property
    def store(self) -> Store:
        """From `store=`, else the `TIDINGS_STORE` environment variable, else
        `sqlite:///.tidings/{service}.db`; `{service}` in a URL is replaced by the name."""
        if self._store is None:
            spec = self._store_spec or os.environ.get("TIDINGS_STORE") or DEFAULT_STORE
            if isinstance(spec, str):
                self._store = connect_store(spec.replace("{service}", self.name))
            else:
                self._store = spec
        return self._store

    @property
    def blob_store(self) -> BlobStore:
        """Where claim-checked payloads go: `blobs=` (a directory or a BlobStore), else the
        `TIDINGS_BLOBS` directory, else `blobs/` next to the embedded broker's file, else
        `.tidings/blobs`. Every service exchanging claim-checked events must reach it."""
        if self._blob_store is None:
            self._blob_store = default_blob_store(self._blobs_spec, self.broker.url)
        return self._blob_store

    async def start(self) -> None:
        """Open the store (framework tables and the service's migrations) and create the
        topics it consumes, publishes to (`topics=`) and dead-letters to. Idempotent."""
        if self._started:
            return
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._started:
                return
            await self.store.start()
            await self.store.migrate(self.migrations)
            wanted = dict.fromkeys(self.consumed_topics, DEFAULT_PARTITIONS)
            wanted.update(self.topics)
            wanted.setdefault(self.dead_letter_topic, 1)
            admin = self.broker.admin
            for topic, partitions in wanted.items():
                # dead letters are kept until someone replays or purges them
                retention = UNLIMITED if topic == self.dead_letter_topic else None
                await admin.create_topic(
                    topic,
                    partitions,
                    retention_ms=retention,
                    retention_bytes=retention,
                    exist_ok=True,
                )
                self.known_topics.add(topic)
            for warning in await admin.durability_warnings(sorted(wanted)):
                log.warning(
                    "%s: %s (the outbox deletes a row once the broker acknowledged it, so such "
                    "a loss is an event lost)",
                    self.name,
                    warning,
                )
            if self.register_schemas:
                await self._register_schemas()
            self._started = True

    async def _register_schemas(self) -> None:
        """Register the schemas of the models this service handles and declares it publishes
        (see `tidings.registry`); SchemaConflictError stops the start."""
        handled = [h.model for h in self.handlers if h.model is not None]
        published = [m for models in self.publications.values() for m in models]
        if not self.handlers and not published:
            return
        if not isinstance(self.broker, CanRead):
            log.info("%s: the broker cannot hold a schema registry; not registered", self.name)
            return
        registry = SchemaRegistry(self.broker)
        added = await registry.register(published, self.name, handled=handled)
        if added:
            log.info("%s: registered schemas %s", self.name, ", ".join(added))
        await registry.describe_service(self)  # its handlers and publications, when changed

    async def check_topics(self, topics: Collection[str]) -> None:
        """UnknownTopicError naming the first of `topics` that does not exist on the broker;
        topics found are remembered."""
        for topic in sorted(set(topics) - self.known_topics):
            try:
                await self.broker.admin.describe_topic(topic)
            except UnknownTopicError:
                raise UnknownTopicError(
                    f"service {self.name!r} published to topic {topic!r}, which does not exist: "
                    "create it (`tidings topics create`) or declare it in Service(topics=...)"
                ) from None
            self.known_topics.add(topic)

    async def close(self) -> None:
        """Close the broker and store; ones created from URLs are reopened by the next use."""
        self._started = False
        if self._broker is not None:
            await self._broker.close()
            if not isinstance(self._broker_spec, Broker):
                self._broker = None
        if self._store is not None:
            await self._store.close()
            if not isinstance(self._store_spec, Store):
                self._store = None

    # publishing -------------------------------------------------------------------------

    @asynccontextmanager
    async def transaction(self, *, correlation_id: str | None = None) -> AsyncIterator[Context]:
        """A store transaction for request code: your SQL and the events you publish commit
        together or not at all. `correlation_id` (e.g. from an HTTP header) is given to every
        event published in it."""
        await self.start()
        async with self.store.transaction() as tx:
            context = Context(self, tx, correlation_id=correlation_id)
            try:
                yield context
                await context.verify_topics()
            finally:
                context.close()

    async def publish_now(
        self, topic: str, event: EventModel | Event, *, key: str | None = None
    ) -> Published:
        """Publish straight to the broker, bypassing the outbox. Only for events that are not
        tied to a database change: combined with a store write this is the dual-write bug the
        outbox exists to prevent."""
        await self.start()
        envelope = (
            event.to_event(key=key, source=self.name) if isinstance(event, EventModel) else event
        )
        published = await self.broker.publish(topic, [event_to_message(envelope)])
        return published[0]

    async def run(
        self, *, grace_period: float = 30.0, install_signal_handlers: bool = True
    ) -> None:
        """Run consumers and the outbox relay until SIGTERM/SIGINT or `stop()`, then close the
        broker and store. See `tidings.runtime.runner` for the shutdown guarantees. Telemetry
        the environment asks for is turned on first (`tidings.telemetry.auto_instrument`)."""
        auto_instrument(self)
        runner = ServiceRunner(self, grace_period=grace_period)
        self.runner = runner
        try:
            await run_service(runner, install_signal_handlers=install_signal_handlers)
        finally:
            self.runner = None
            self.stats.relayed = runner.relay.published

    async def run_in_background(self, *, grace_period: float = 30.0) -> asyncio.Task[None]:
        """Start `run()` as a task of this event loop (no signal handlers: the caller owns
        them) and return it once the service consumes and relays. If it stops while starting,
        its error is raised here. Stop it with `stop()`, then await the task."""
        task = asyncio.create_task(
            self.run(grace_period=grace_period, install_signal_handlers=False), name=self.name
        )
        while self.runner is None or not self.runner.ready.is_set():
            if task.done():
                task.result()
                raise ConfigError(f"service {self.name} stopped while starting")
            await asyncio.sleep(0.01)
        return task

    def stop(self) -> None:
        """Ask a running `run()` to finish in-flight work and return."""
        if self.runner is not None:
            self.runner.stop()


def _lock_names(
    locks: str | Iterable[str] | Callable[[Any], Iterable[str]] | None,
) -> Callable[[Any], Iterable[str]] | None:
    """`handler(locks=...)` as a function of the handler's argument (None: no locks)."""
    if locks is None or callable(locks):
        return locks
    names = (locks,) if isinstance(locks, str) else tuple(locks)
    if not names or not all(isinstance(name, str) and name for name in names):
        raise ConfigError(
            f"locks= takes a lock name, a list of names or a function of the event returning"
            f" them, got {locks!r}"
        )
    return lambda _argument: names


def _reset_hook(function: Callable[..., Any]) -> Reset:
    """A handler's reset hook, checked: `(ctx)` or `(ctx, since)`."""
    if not callable(function):
        raise ConfigError(f"reset= takes a function (ctx[, since]), got {function!r}")
    count = len(inspect.signature(function).parameters)
    if count not in (1, 2):
        raise ConfigError(
            f"reset hook {getattr(function, '__name__', function)!r} must take (ctx) or "
            f"(ctx, since); it takes {count} parameter(s)"
        )
    return Reset(function, inspect.iscoroutinefunction(function), takes_since=count == 2)


def _event_parameter(function: Callable[..., Any]) -> type[EventModel] | None:
    """The EventModel a handler takes, None for Event; ConfigError for anything else."""
    signature = inspect.signature(function)
    params = list(signature.parameters.values())
    if len(params) != 2:
        raise ConfigError(
            f"handler {function.__name__!r} must take (event, ctx); it takes {len(params)} "
            "parameter(s)"
        )
    try:
        hints = get_type_hints(function)
    except NameError as exc:
        raise ConfigError(
            f"handler {function.__name__!r}: cannot resolve its annotations ({exc})"
        ) from exc
    annotation = hints.get(params[0].name)
    if annotation is Event:
        return None
    if isinstance(annotation, type) and issubclass(annotation, EventModel):
        return annotation
    raise ConfigError(
        f"handler {function.__name__!r}: annotate its first parameter with an EventModel "
        f"subclass or tidings.Event (got {annotation!r})"
    )
