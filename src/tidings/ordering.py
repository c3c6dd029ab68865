"""Consumer helpers for events that arrive out of order: ignore stale updates (last writer wins,
by sequence number or by event time) and detect gaps in a producer's sequence.

Events of one key on one topic arrive in order; across topics, across producers, after a dead
letter is replayed or when a producer's events take different paths, they may not. The outbox
stamps every event that has a key with its number among its producing service's events of that
key (`Event.sequence`: 1, 2, 3, ...; no number is lost to a rolled-back transaction). In a
handler, `last_writer_wins` checks the event against the newest one applied for its key, in the
handler's own transaction, and records it if it is newer:

```py
from tidings import ordering

@service.handler("price-events")
async def on_price(event: PriceChanged, ctx: Context) -> None:
    if not await ordering.last_writer_wins(ctx, scope="prices"):
        return                      # an update newer than this one was applied already
    await ctx.execute("INSERT INTO prices(sku, price) VALUES (?, ?) ON CONFLICT (sku) "
                      "DO UPDATE SET price = excluded.price", (event.sku, event.price))
```

The check and the record are one upsert on the store's `tidings_last_applied` table (parameters
only), committed or rolled back with the handler's effects; concurrent deliveries of one key
queue on its row (PostgreSQL) or the store's write lock (SQLite), so exactly one of two equal
updates wins. `scope` names what is being kept (a projection, a table): each scope keeps its own
positions. By sequence, positions are kept per producing service (`event.source`) and key,
since numbers of different producers cannot be compared; an event without a sequence number
(from a producer other than tidings' outbox) is always applied and not recorded. By time
(`by="time"`), the newest `event.time` wins whichever service produced it.

A gap - the sequence jumping from the last applied number past the next - means that events of
that key were not applied here (yet): they were dead-lettered upstream, are still on their way
by another topic, or this consumer does not read every topic the producer writes that key to.
The result says so (`missing`), and `on_gap` is called with a `Gap` (sync or async). The first
event seen of a key reports no gap (a consumer may start after the producer).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from tidings.event import Event
from tidings.runtime.context import Context, SyncContext

__all__ = ["Freshness", "Gap", "last_writer_wins", "last_writer_wins_sync"]

log = logging.getLogger("tidings.ordering")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

_UPSERT = (
    "INSERT INTO tidings_last_applied(scope, source, key, last_value, prev_value)"
    " VALUES (?, ?, ?, ?, NULL)"
    " ON CONFLICT (scope, source, key) DO UPDATE"
    " SET prev_value = tidings_last_applied.last_value, last_value = excluded.last_value"
    " WHERE tidings_last_applied.last_value < excluded.last_value"
    " RETURNING prev_value"
)
_LAST = "SELECT last_value FROM tidings_last_applied WHERE scope = ? AND source = ? AND key = ?"

By = Literal["sequence", "time"]


@dataclass(frozen=True, slots=True)
class Gap:
    """Sequence numbers of `source`'s events of `key` that were skipped: `missing` (a range)."""

    scope: str
    source: str
    key: str
    missing: range
    event: Event
    """The event that came after the gap (it was applied)."""


@dataclass(frozen=True, slots=True)
class Freshness:
    """What `last_writer_wins` decided; true if the event should be applied."""

    apply: bool
    position: int | None
    """The event's sequence number, or its time in microseconds since 1970 (by time); None
    for an event without a sequence number."""
    previous: int | None
    """The newest position applied before (None: none yet, or not recorded)."""
    missing: range = range(0)
    """Sequence numbers skipped between `previous` and this event (by sequence; empty if none)."""

    def __bool__(self) -> bool:
        return self.apply


GapHook = Callable[[Gap], Awaitable[None] | None]


def _position(event: Event, by: By) -> tuple[str, int | None]:
    """(source the position is kept under, position)."""
    if by == "sequence":
        return event.source, event.sequence
    if by == "time":
        return "", (event.time - _EPOCH) // _MICROSECOND
    raise ValueError(f"by must be 'sequence' or 'time', got {by!r}")


def _arguments(
    ctx: Context | SyncContext, scope: str, key: str | None, event: Event | None, by: By
) -> tuple[Event, str, str, int | None]:
    event = event or ctx.event
    if event is None:
        raise ValueError("last_writer_wins needs an event: call it in a handler or pass event=")
    if not isinstance(scope, str) or not scope:
        raise ValueError("last_writer_wins needs a scope: the name of what is being kept")
    key = event.key if key is None else key
    if key is None:
        raise ValueError(f"event {event.id} has no key; pass key=")
    source, position = _position(event, by)
    return event, source, key, position


def _decide(
    row: tuple[object, ...] | None, position: int, stale_last: int | None, by: By
) -> Freshness:
    if row is None:
        return Freshness(False, position, stale_last)
    previous = row[0]
    assert previous is None or isinstance(previous, int)
    missing = range(0)
    if by == "sequence" and previous is not None and position > previous + 1:
        missing = range(previous + 1, position)
    return Freshness(True, position, previous, missing)


async def last_writer_wins(
    ctx: Context,
    *,
    scope: str,
    by: By = "sequence",
    key: str | None = None,
    event: Event | None = None,
    on_gap: GapHook | None = None,
) -> Freshness:
    """Whether `event` (default: the one being handled) is newer than every event of its key
    applied so far in `scope`, by sequence number or by time; if so, it is recorded as the
    newest, in `ctx`'s transaction. `key` defaults to the event's key. See the module."""
    event, source, key, position = _arguments(ctx, scope, key, event, by)
    if position is None:
        return Freshness(True, None, None)
    row = await ctx.fetchone(_UPSERT, (scope, source, key, position))
    last = None
    if row is None:
        found = await ctx.fetchone(_LAST, (scope, source, key))
        last = None if found is None else found[0]
    result = _decide(row, position, last, by)
    if result.missing:
        gap = Gap(scope, source, key, result.missing, event)
        log.info("%s: gap in %s's sequence of key %r: %s missing", scope, source, key, gap.missing)
        if on_gap is not None:
            outcome = on_gap(gap)
            if inspect.isawaitable(outcome):
                await outcome
    return result


def last_writer_wins_sync(
    ctx: SyncContext,
    *,
    scope: str,
    by: By = "sequence",
    key: str | None = None,
    event: Event | None = None,
    on_gap: Callable[[Gap], None] | None = None,
) -> Freshness:
    """`last_writer_wins` for `def` handlers (their SyncContext)."""
    event, source, key, position = _arguments(ctx, scope, key, event, by)
    if position is None:
        return Freshness(True, None, None)
    row = ctx.fetchone(_UPSERT, (scope, source, key, position))
    last = None
    if row is None:
        found = ctx.fetchone(_LAST, (scope, source, key))
        last = None if found is None else found[0]
    result = _decide(row, position, last, by)
    if result.missing:
        gap = Gap(scope, source, key, result.missing, event)
        log.info("%s: gap in %s's sequence of key %r: %s missing", scope, source, key, gap.missing)
        if on_gap is not None:
            on_gap(gap)
    return result
