"""`ServiceSpec`: what the runtime (dispatcher, relay, runner) needs of a service;
`tidings.Service` is one."""

from __future__ import annotations

from typing import Protocol

from tidings.runtime.context import ContextOwner
from tidings.runtime.handlers import Handler, Middleware
from tidings.runtime.outcomes import Observer, Stats
from tidings.runtime.relay import RelayHook
from tidings.stores.base import Store


class ServiceSpec(ContextOwner, Protocol):
    """What the runtime (dispatcher, relay, runner) needs of a service."""

    handlers: list[Handler]
    dead_letter_topic: str
    stats: Stats
    middleware: list[Middleware]
    observers: list[Observer]
    relay_hooks: list[RelayHook]
    extensions: dict[str, object]
    max_batch: int
    concurrency: int
    session_timeout: float
    inbox_retention_s: float
    blob_retention_s: float

    @property
    def store(self) -> Store: ...

    @property
    def consumed_topics(self) -> list[str]: ...

    def handlers_for(self, topic: str, event_type: str) -> list[Handler]: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...
