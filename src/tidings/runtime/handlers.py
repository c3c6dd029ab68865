"""Registered handlers, one attempt of one handler at one event (`Invocation`), and handler
middleware."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from tidings.event import Event
from tidings.retry import Retry
from tidings.schema import EventModel

if TYPE_CHECKING:
    from tidings.runtime.context import Context


@dataclass(frozen=True, slots=True)
class Handler:
    """A registered handler. `consumer` (`<service>.<name>`) keys its inbox rows.

    `reset` clears what the handler built, before `tidings rebuild` re-delivers its topics to
    it (see `Reset`). With `ordered_dead_letters`, an event of a key it dead-letters holds back
    every later event of that key for this handler until the dead letter is replayed or purged
    (`tidings.runtime.parking`). `locks(argument)` names the shared things the handler writes
    for an event; a transaction takes the locks of all its events before running any of them
    (`Transaction.lock`)."""

    name: str
    consumer: str
    topics: tuple[str, ...]
    model: type[EventModel] | None
    function: Callable[..., Any]
    is_async: bool
    retry: Retry
    reset: Reset | None = None
    ordered_dead_letters: bool = False
    locks: Callable[[Any], Iterable[str]] | None = None

    def accepts(self, event_type: str) -> bool:
        return self.model is None or self.model.event_type == event_type

    def parse(self, event: Event) -> EventModel | Event:
        """The argument for the handler: the typed model (upcast, validated) or the envelope."""
        return event if self.model is None else self.model.from_event(event)

    async def run(self, argument: object, context: Context) -> None:
        """Call the handler in `context`'s transaction (a `def` handler on a worker thread),
        then check the topics it published to that were not known yet."""
        from tidings.runtime.context import SyncContext

        if self.is_async:
            await self.function(argument, context)
        else:
            loop = asyncio.get_running_loop()
            await asyncio.to_thread(self.function, argument, SyncContext(context, loop))
        if context.unverified_topics:
            await context.verify_topics()


@dataclass(frozen=True, slots=True)
class Reset:
    """A handler's reset hook: `async def reset(ctx: Context, since: datetime | None)` (or a
    `def` taking a SyncContext), run in one store transaction by `tidings rebuild` before the
    handler's topics are re-delivered to it from `since` (None: from the beginning, so it
    clears everything it built). A hook taking only `ctx` clears everything: its handler can
    only be rebuilt from the beginning."""

    function: Callable[..., Any]
    is_async: bool
    takes_since: bool

    async def run(self, context: Context, since: datetime | None) -> None:
        """Run the hook in `context`'s transaction (a `def` hook on a worker thread)."""
        from tidings.runtime.context import SyncContext

        args: tuple[Any, ...] = (since,) if self.takes_since else ()
        if self.is_async:
            await self.function(context, *args)
        else:
            loop = asyncio.get_running_loop()
            await asyncio.to_thread(self.function, SyncContext(context, loop), *args)


@dataclass(slots=True)
class Invocation:
    """One attempt of one handler at one event, as middleware sees it. `argument` is what the
    handler receives (its typed model, or the event); `context` its Context, in the delivery's
    transaction; `attempt` counts from 1."""

    handler: Handler
    event: Event
    argument: Any
    context: Context
    attempt: int

    @property
    def position(self) -> tuple[str, int, int] | None:
        """(topic, partition, offset) of the record delivering the event."""
        return self.context.position


Next = Callable[[Invocation], Awaitable[None]]
Middleware = Callable[[Invocation, Next], Awaitable[None]]
"""`async def middleware(call: Invocation, next: Next) -> None` wraps every handler attempt:
it may act before and after `await next(call)`, and see (or raise) the attempt's exception.
A service's middleware run in the order registered, the first outermost; the innermost step
runs the handler (bounded by its policy's timeout)."""


def chain(middleware: Sequence[Middleware], innermost: Next) -> Next:
    """`innermost` wrapped in `middleware`, the first outermost."""
    call = innermost
    for outer in reversed(middleware):
        call = _wrap(outer, call)
    return call


def _wrap(middleware: Middleware, inner: Next) -> Next:
    async def call(invocation: Invocation) -> None:
        await middleware(invocation, inner)

    return call
