"""What became of each delivered event, per handler: counted in `Stats` and told to observers
(metrics, tracing, your own) once it is final - when the transaction that recorded it commits;
a retry as it is scheduled."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from tidings.event import Event
from tidings.records import Record

if TYPE_CHECKING:
    from tidings.runtime.handlers import Handler


class Outcome(enum.StrEnum):
    OK = "ok"
    """The handler's effects committed."""
    RETRIED = "retried"
    """The handler failed; another attempt is scheduled."""
    DEAD_LETTERED = "dead_lettered"
    """Set aside in the dead-letter topic (`reason` says why; no handler if the record did not
    decode or failed outside its handlers)."""
    DUPLICATE = "duplicate_skipped"
    """The handler had processed this event before (its inbox row): skipped."""
    UNKNOWN_TYPE = "unknown_type"
    """No handler takes this event's type on this topic: acknowledged."""
    PARKED = "parked"
    """Held back behind a dead letter of its key, for a handler with ordered dead letters
    (`tidings.runtime.parking`): applied in order once that letter is replayed or purged."""


@dataclass(frozen=True, slots=True)
class Settled:
    outcome: Outcome
    record: Record
    event: Event | None
    handler: Handler | None
    reason: str | None = None
    error: BaseException | None = None
    attempt: int = 1
    duration: float | None = None
    """Seconds the handler attempt took (OK and RETRIED outcomes)."""


class Observer(Protocol):
    """Told what became of events, in order, from the service's event loop. Must not block or
    raise (an exception is logged and the observer skipped for that call)."""

    def settled(self, outcomes: Sequence[Settled]) -> None: ...


@dataclass(slots=True)
class Stats:
    """Counters of one running service (this process)."""

    processed: int = 0
    duplicates: int = 0
    skipped: int = 0
    retried: int = 0
    dead_lettered: int = 0
    parked: int = 0
    relayed: int = 0
    by_type: dict[str, int] = field(default_factory=dict)

    def count(self, outcomes: Sequence[Settled]) -> None:
        for settled in outcomes:
            outcome = settled.outcome
            if outcome is Outcome.OK:
                self.processed += 1
                if settled.event is not None:
                    kind = settled.event.type
                    self.by_type[kind] = self.by_type.get(kind, 0) + 1
            elif outcome is Outcome.DUPLICATE:
                self.duplicates += 1
            elif outcome is Outcome.UNKNOWN_TYPE:
                self.skipped += 1
            elif outcome is Outcome.RETRIED:
                self.retried += 1
            elif outcome is Outcome.PARKED:
                self.parked += 1
            else:
                self.dead_lettered += 1
