"""Named locks of handlers (`handler(locks=...)`): a transaction takes the locks of all its
events before running any of them, in one global order (`Transaction.lock`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from tidings.errors import DecodeError
from tidings.event import Event
from tidings.records import Record
from tidings.runtime.claimcheck import resolve
from tidings.runtime.handlers import Handler
from tidings.runtime.spec import ServiceSpec
from tidings.schema import SchemaError
from tidings.stores.base import Transaction

log = logging.getLogger("tidings.dispatch")


async def take_locks(
    service: ServiceSpec,
    tx: Transaction,
    planned: Sequence[tuple[Record, Event | DecodeError, Sequence[Handler]]],
) -> None:
    """Take, in `tx` and before anything else, the locks the handlers name for their events,
    all together: no deadlock between transactions that name the same things."""
    names: list[str] = []
    for _, event, handlers in planned:
        if isinstance(event, Event):
            for handler in handlers:
                if handler.locks is not None:
                    names += await _names(service, handler, event)
    if names:
        await tx.lock(names)


async def _names(service: ServiceSpec, handler: Handler, event: Event) -> list[str]:
    """What `handler.locks` names for `event` - nothing if it cannot say (an event failing
    validation is the handler's to dead-letter; a `locks` function that raises is logged and
    the handler runs without its locks)."""
    assert handler.locks is not None
    try:
        if event.dataref is not None:
            event = await resolve(service.blob_store, event)
        names = handler.locks(handler.parse(event))
        return [names] if isinstance(names, str) else [str(name) for name in names]
    except SchemaError:
        return []
    except Exception as exc:
        log.warning(
            "%s: the locks function of %s raised for %s: %r; it runs without its locks",
            service.name,
            handler.consumer,
            event.id,
            exc,
        )
        return []
