"""Rebuild by replay: clear what one handler built and re-deliver its topics to it alone.

`rebuild(service, handler, since)` works on a stopped service (refused, as a group's offset
reset is, while its consumer group has live members):

1. per partition of the handler's topics: `start`, the first offset appended at or after
   `since` (the oldest retained one without it), and `end`, where the service had got to (its
   committed offset, or a running rebuild's end);
2. in one transaction of the service's store: the rebuild markers, *pending*; the handler's
   inbox rows of handled events from `start` on, forgotten (those of dead letters are kept: a
   dead-lettered event stays dead-lettered, its letter replayable); its reset hook;
3. the group rewound on the partitions that need it (to `since`, or to the oldest record if
   the broker's answer for that time is later than `start` or `end` somewhere);
4. the markers made *active*.

Once the service runs again, records below `end` go to the rebuilding handler only (from its
`start`); every handler takes the records from `end` on (`tidings.runtime.rebuild`). If the
rebuild is interrupted between 2 and 4, the service refuses to start until it is run again;
running it again at any time starts it over from `since`, keeping `end`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from tidings.brokers.base import CanInspect, CanResetOffsets, require
from tidings.errors import ConfigError
from tidings.ops.positions import offset_for_time
from tidings.records import SeekTo
from tidings.runtime.context import Context
from tidings.runtime.handlers import Handler
from tidings.runtime.rebuild import (
    ACTIVE,
    PENDING,
    Marker,
    Offsets,
    committed_offsets,
    forget_inbox,
    read_markers,
    write_markers,
)
from tidings.runtime.spec import ServiceSpec


@dataclass(frozen=True, slots=True)
class RebuiltPartition:
    """One partition of a rebuild: the handler takes `[start, end)` again (`records`), every
    handler takes what comes from `end` on; the group resumes at `resume`."""

    topic: str
    partition: int
    start: int
    end: int
    resume: int

    @property
    def records(self) -> int:
        return max(0, self.end - self.start)


@dataclass(frozen=True, slots=True)
class Rebuild:
    """What `rebuild` did: the handler (`service.handler`), from when (None: the beginning),
    per partition what it will take again, and how many inbox rows it forgot."""

    service: str
    handler: str
    since: datetime | None
    partitions: tuple[RebuiltPartition, ...]
    forgotten: int

    @property
    def records(self) -> int:
        return sum(p.records for p in self.partitions)


def find_handler(service: ServiceSpec, name: str) -> Handler:
    """The handler of `service` named `name` (or `service.name`); ConfigError naming the
    handlers there are otherwise."""
    for handler in service.handlers:
        if name in (handler.name, handler.consumer):
            return handler
    names = ", ".join(h.name for h in service.handlers) or "none"
    raise ConfigError(f"service {service.name} has no handler {name!r} (its handlers: {names})")


async def rebuild(service: ServiceSpec, handler: str, since: datetime | None = None) -> Rebuild:
    """Rebuild `handler` of the stopped `service` from `since` (None: from the beginning); see
    the module docstring. ConfigError while the service runs, for a handler without a reset
    hook (or one that clears everything, with `since`), or a broker that cannot reset a
    group's offsets."""
    chosen = find_handler(service, handler)
    if chosen.reset is None:
        raise ConfigError(
            f"handler {chosen.consumer} has no reset hook, so tidings cannot clear what it "
            f"built: declare one, @service.handler(..., reset=clear) with "
            "`async def clear(ctx, since)`"
        )
    if since is not None and not chosen.reset.takes_since:
        raise ConfigError(
            f"the reset hook of {chosen.consumer} takes no `since`: it clears everything, so "
            "the handler can only be rebuilt from the beginning (--from earliest)"
        )
    broker = service.broker
    inspect = require(broker.admin, CanInspect, "tell whether the service is running")
    resetter = require(broker.admin, CanResetOffsets, "reset a group's offsets")
    try:
        members = (await inspect.describe_group(service.name)).members
    except ConfigError:  # the group does not exist (yet)
        members = ()
    if members:
        raise ConfigError(
            f"service {service.name} has {len(members)} live member(s); stop it before "
            "rebuilding one of its handlers (as before `tidings replay`)"
        )
    await service.start()
    store = service.store
    committed = await committed_offsets(broker, service.name)
    existing = await read_markers(store)
    starts: Offsets = {}
    positions: Offsets = {}
    """Where the group resumes now: it must never resume later than that."""
    markers: dict[tuple[str, int], Marker] = {}
    rewind: set[str] = set()
    for topic in chosen.topics:
        info = await broker.admin.describe_topic(topic)
        for p in info.partitions:
            tp = (topic, p.partition)
            start = p.start_offset
            if since is not None:
                start = await offset_for_time(broker, info, p.partition, since)
            position = positions[tp] = max(committed.get(tp, p.start_offset), p.start_offset)
            old = existing.get(tp)
            end = max(position, old.end if old is not None else 0)
            starts[tp] = start
            rebuilding = {**(old.starts if old is not None else {}), chosen.consumer: start}
            markers[tp] = Marker(PENDING, end, rebuilding)
            if start < position:
                rewind.add(topic)
    async with store.transaction() as tx:
        await write_markers(tx, markers)
        forgotten = await forget_inbox(tx, chosen.consumer, starts)
        context = Context(service, tx)
        try:
            await chosen.reset.run(context, since)
            await context.verify_topics()
        finally:
            context.close()
    resumes: Offsets = {}
    for topic in sorted(rewind):
        target = SeekTo(earliest=True) if since is None else SeekTo(timestamp=since)
        offsets = await resetter.reset_offsets(service.name, [topic], target)
        if any(
            n > min(starts[(tp.topic, tp.partition)], positions[(tp.topic, tp.partition)])
            for tp, n in offsets.items()
        ):  # the broker placed `since` later than this process did (or a partition is new)
            offsets = await resetter.reset_offsets(service.name, [topic], SeekTo(earliest=True))
        resumes.update({(tp.topic, tp.partition): n for tp, n in offsets.items()})
    async with store.transaction() as tx:
        await write_markers(tx, {tp: Marker(ACTIVE, m.end, m.starts) for tp, m in markers.items()})
    return Rebuild(
        service.name,
        chosen.consumer,
        since,
        tuple(
            RebuiltPartition(
                topic,
                partition,
                starts[(topic, partition)],
                marker.end,
                resumes.get((topic, partition), positions[(topic, partition)]),
            )
            for (topic, partition), marker in sorted(markers.items())
        ),
        forgotten,
    )
