"""Rebuild by replay, the runtime's side: which handlers a re-delivered record is for.

`tidings rebuild` (`tidings.ops.rebuild`) rewinds a stopped service's consumer group on the
topics of one handler and leaves, per partition, a *rebuild marker* in the service's store
(a row of `tidings_meta`, key `rebuild:<topic>:<partition>`): `end`, the offset the service had
got to, and per rebuilding handler `start`, the first offset it takes again. The dispatcher
honours it (`Rebuilds.route`) for every record below `end`: a rebuilding handler takes it if
it is at or after its `start`, and no other handler takes it - they had it before. From `end`
on, every handler takes every record as usual. Several handlers may rebuild at once, from
different points.

The marker is written `pending` (with the reset hook and the forgotten inbox rows, in one
transaction) before the group is rewound, and made `active` after: a service refuses to start
over a pending marker (the rebuild was interrupted: run it again, it picks up where it was).
A marker the group's committed offsets have passed is deleted when the service next starts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import msgspec

from tidings import dlq
from tidings.brokers.base import Broker, CanInspect
from tidings.errors import ConfigError
from tidings.event import Event
from tidings.records import Record
from tidings.runtime.handlers import Handler
from tidings.runtime.spec import ServiceSpec
from tidings.stores.base import Statements, Store

log = logging.getLogger("tidings.dispatch")

PREFIX = "rebuild:"
PENDING = "pending"
ACTIVE = "active"

Offsets = dict[tuple[str, int], int]
"""Offsets by (topic, partition)."""
Route = Callable[..., list[Handler]]
"""(record, event, skip=()) -> the handlers due for the record."""


class Marker(msgspec.Struct, frozen=True):
    """The rebuild marker of one partition (its row in `tidings_meta`, as JSON)."""

    state: str
    end: int
    """Where the service had got to: records from here on go to every handler."""
    starts: dict[str, int] = {}
    """Rebuilding handler (`service.handler`) -> the first offset it takes again."""

    def due(self, consumer: str, offset: int) -> bool:
        """Whether `consumer` takes the record at `offset` of this partition."""
        if offset >= self.end:
            return True
        start = self.starts.get(consumer)
        return start is not None and offset >= min(start, self.end)


_decoder = msgspec.json.Decoder(Marker)


def marker_key(topic: str, partition: int) -> str:
    return f"{PREFIX}{topic}:{partition}"


async def read_markers(store: Store) -> dict[tuple[str, int], Marker]:
    """Every rebuild marker of `store`, by (topic, partition)."""
    rows = await store.query(
        "SELECT key, value FROM tidings_meta WHERE key LIKE ?", (PREFIX + "%",)
    )
    markers: dict[tuple[str, int], Marker] = {}
    for key, value in rows:
        topic, _, partition = str(key).removeprefix(PREFIX).rpartition(":")
        markers[(topic, int(partition))] = _decoder.decode(value)
    return markers


async def write_markers(tx: Statements, markers: dict[tuple[str, int], Marker]) -> None:
    for (topic, partition), marker in markers.items():
        await tx.execute(
            "INSERT INTO tidings_meta (key, value) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (marker_key(topic, partition), msgspec.json.encode(marker).decode()),
        )


async def committed_offsets(broker: Broker, group: str) -> Offsets:
    """`group`'s committed offsets ({} if the broker cannot tell or the group has none)."""
    admin = broker.admin
    if not isinstance(admin, CanInspect):
        return {}
    try:
        info = await admin.describe_group(group)
    except ConfigError:  # no such group (yet)
        return {}
    return {(p.topic, p.partition): p.committed for p in info.partitions if p.committed is not None}


async def forget_inbox(tx: Statements, consumer: str, starts: Offsets) -> int:
    """Delete `consumer`'s inbox rows of handled events (not those of dead letters) recorded at
    or after `starts` per partition; returns how many."""
    removed = 0
    for (topic, partition), start in starts.items():
        removed += await tx.execute(
            "DELETE FROM tidings_inbox WHERE consumer = ? AND status = 'done' AND topic = ?"
            ' AND partition = ? AND "offset" >= ?',
            (consumer, topic, partition, start),
        )
    return removed


@dataclass(slots=True)
class Rebuilds:
    """The rebuild markers a dispatcher honours (none: it routes as usual)."""

    markers: dict[tuple[str, int], Marker] = field(default_factory=dict)

    async def load(self, service: ServiceSpec) -> bool:
        """Read `service`'s markers; delete those its group's committed offsets have passed.
        ConfigError over a pending one. True if any are left to honour."""
        store = service.store
        markers = await read_markers(store)
        if not markers:
            return False
        interrupted = sorted({c for m in markers.values() if m.state == PENDING for c in m.starts})
        if interrupted:
            raise ConfigError(
                f"service {service.name}: a rebuild of {', '.join(interrupted)} was interrupted "
                "before its consumer group was rewound; run `tidings rebuild` for it again"
            )
        offsets = await committed_offsets(service.broker, service.name)
        done = [tp for tp, m in markers.items() if offsets.get(tp, -1) >= m.end]
        if done:
            async with store.transaction() as tx:
                for topic, partition in done:
                    await tx.execute(
                        "DELETE FROM tidings_meta WHERE key = ?", (marker_key(topic, partition),)
                    )
            for tp in done:
                del markers[tp]
        self.markers = markers
        if markers:
            log.info(
                "rebuilding %s on %d partition(s)",
                ", ".join(sorted({c for m in markers.values() for c in m.starts})),
                len(markers),
            )
        return bool(markers)

    def router(self, due: Route) -> Route:
        """`due` (the dispatcher's choice of handlers for a record) under the markers."""

        def route(record: Record, event: Event, skip: Sequence[str] = ()) -> list[Handler]:
            return self.route(record, due(record, event, skip))

        return route

    def route(self, record: Record, handlers: list[Handler]) -> list[Handler]:
        """`handlers` (those of `record`'s type) that take `record` under the markers."""
        marker = self.markers.get((record.topic, record.partition))
        if marker is None or record.offset >= marker.end or not handlers:
            return handlers
        if record.header(dlq.REPLAY_FOR) is not None:
            return handlers  # a replay or a parked record released: meant for its handler
        return [h for h in handlers if marker.due(h.consumer, record.offset)]

    def hides(self, record: Record) -> bool:
        """Whether `record` is below a marker's end: an event no handler takes there was
        taken (or skipped) before, and is not counted again."""
        marker = self.markers.get((record.topic, record.partition))
        return marker is not None and record.offset < marker.end
