"""Registered handlers, one attempt of one handler at one event (`Invocation`), and handler
middleware."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tidings.event import Event
from tidings.retry import Retry
from tidings.schema import EventModel

if TYPE_CHECKING:
    from tidings.runtime.context import Context


@dataclass(frozen=True, slots=True)
class Handler:
    """A registered handler. `consumer` (`<service>.<name>`) keys its inbox rows."""

    name: str
    consumer: str
    topics: tuple[str, ...]
    model: type[EventModel] | None
    function: Callable[..., Any]
    is_async: bool
    retry: Retry

    def accepts(self, event_type: str) -> bool:
        return self.model is None or self.model.event_type == event_type

    def parse(self, event: Event) -> EventModel | Event:
        """The argument for the handler: the typed model (upcast, validated) or the envelope."""
        return event if self.model is None else self.model.from_event(event)


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
