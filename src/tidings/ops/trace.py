"""One business flow across services, from the log alone: every event with a correlation id,
as a causation tree and a timeline, and which services read them.

Events come from an `EventIndex` (their envelopes and positions); which services read an event
comes from the consumer groups' committed offsets: a group that subscribes to the event's
topic has read it once its committed offset on that partition is past it (`pending` before).
A *reaction* is a service that read events of the flow but published none of them (say, the
e-mail sent for a confirmed order): the log shows that it took the event, not what it did.

Which of the events a service's handlers take comes from its record in the schema registry
when it has one (`tidings.registry.ServiceRecord`: exact - a reaction lists only the events
its handlers take, with their names), else from what the log told the index."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from tidings import dlq
from tidings.brokers.base import Broker
from tidings.ops.groups import list_groups
from tidings.ops.index import EventIndex, Handles, IndexedEvent
from tidings.ops.schemas import known_handles, read_registry
from tidings.ops.topology import is_tool_group
from tidings.records import GroupInfo
from tidings.registry import ServiceRecord

MAX_EVENTS = 2000
"""The most events of one correlation id a trace shows (`Trace.truncated` says if more)."""


@dataclass(frozen=True, slots=True)
class Reader:
    """A service that reads the topic of an event: `read` once its group committed past it."""

    service: str
    read: bool
    handles: bool | None
    """True/False when the service's handlers on that topic are known: declared in the
    registry (exact), or told by the log (may be incomplete); None: nothing is known of that
    service on that topic."""
    handlers: tuple[str, ...] = ()
    """The handlers that take the event, when known."""


@dataclass(frozen=True, slots=True)
class TraceNode:
    """An event of the flow and the events it caused (`copies`: the same event id again, a
    replay; dead-lettered copies are `Trace.dead_letters`)."""

    event: IndexedEvent
    children: tuple[TraceNode, ...]
    copies: tuple[IndexedEvent, ...] = ()
    readers: tuple[Reader, ...] = ()

    def walk(self) -> list[TraceNode]:
        """This node and every node below it, depth first."""
        nodes = [self]
        for child in self.children:
            nodes.extend(child.walk())
        return nodes


@dataclass(frozen=True, slots=True)
class Reaction:
    """A service that read events of the flow (or will: `pending`) without publishing any;
    `dead_lettered` are those it set aside."""

    service: str
    read: tuple[IndexedEvent, ...]
    pending: tuple[IndexedEvent, ...]
    dead_lettered: tuple[IndexedEvent, ...] = ()
    handlers: tuple[str, ...] = ()
    """The handlers that took them (from the service's record in the registry)."""
    exact: bool = False
    """Only the events its handlers take (it described itself); else every event of the flow
    on the topics it reads."""


@dataclass(frozen=True, slots=True)
class Trace:
    correlation_id: str
    events: tuple[IndexedEvent, ...]
    """Every event of the flow outside dead-letter topics, oldest first."""
    roots: tuple[TraceNode, ...]
    dead_letters: tuple[IndexedEvent, ...]
    reactions: tuple[Reaction, ...]
    services: tuple[str, ...]
    """The services that published events of the flow, in the order they first did."""
    truncated: bool = False
    trace_ids: tuple[str, ...] = field(default=())
    """W3C trace ids the events carry (a tracing backend's view of the same flow)."""

    @property
    def start(self) -> datetime | None:
        return self.events[0].time if self.events else None

    @property
    def end(self) -> datetime | None:
        return self.events[-1].time if self.events else None


def build_trace(
    correlation_id: str,
    events: Sequence[IndexedEvent],
    groups: Sequence[GroupInfo] = (),
    handles: Sequence[Handles] = (),
    *,
    described: Collection[str] = (),
    truncated: bool = False,
) -> Trace:
    """The trace of `events` (all with `correlation_id`), with the readers of each event among
    `groups` (tool groups left out) and what `handles` tells of their handlers: all of them
    for the services in `described` (those with a record in the registry, see
    `tidings.ops.schemas.known_handles`)."""
    ordered = sorted(events, key=lambda e: (e.time, e.topic, e.partition, e.offset))
    flow = [e for e in ordered if not e.dead_letter]
    dead = tuple(e for e in ordered if e.dead_letter)
    services = tuple(dict.fromkeys(e.source for e in flow if e.source))
    services_groups = [g for g in groups if not is_tool_group(g.name)]
    known: dict[tuple[str, str], list[Handles]] = {}
    for h in handles:
        known.setdefault((h.service, h.topic), []).append(h)
    exact = frozenset(described)

    def takers(service: str, event: IndexedEvent) -> tuple[bool | None, tuple[str, ...]]:
        """Whether `service` handles `event` (None: unknown), and with which handlers."""
        on_topic = known.get((service, event.topic))
        if on_topic is None:
            return (False, ()) if service in exact else (None, ())
        taking = [h for h in on_topic if h.takes(event.type)]
        names = tuple(dict.fromkeys(h.handler for h in taking if h.handler))
        return bool(taking), names

    def readers(event: IndexedEvent) -> tuple[Reader, ...]:
        found = []
        for group in services_groups:
            for p in group.partitions:
                if p.topic == event.topic and p.partition == event.partition:
                    read = p.committed is not None and p.committed > event.offset
                    handles_it, names = takers(group.name, event)
                    found.append(Reader(group.name, read, handles_it, names))
                    break
        return tuple(found)

    first: dict[str, IndexedEvent] = {}
    copies: dict[str, list[IndexedEvent]] = {}
    for event in flow:
        if event.event_id in first:
            copies.setdefault(event.event_id, []).append(event)
        else:
            first[event.event_id] = event
    children: dict[str, list[IndexedEvent]] = {}
    for event in first.values():
        if event.causation_id is not None and event.causation_id in first:
            children.setdefault(event.causation_id, []).append(event)

    def node(event: IndexedEvent, seen: frozenset[str]) -> TraceNode:
        below = [c for c in children.get(event.event_id, []) if c.event_id not in seen]
        inside = seen | {event.event_id}
        return TraceNode(
            event,
            tuple(node(c, inside) for c in below),
            tuple(copies.get(event.event_id, ())),
            readers(event),
        )

    roots = [e for e in first.values() if e.causation_id is None or e.causation_id not in first]
    tree = tuple(node(e, frozenset()) for e in roots)
    return Trace(
        correlation_id=correlation_id,
        events=tuple(flow),
        roots=tree,
        dead_letters=dead,
        reactions=_reactions(flow, dead, services_groups, set(services), exact, takers),
        services=services,
        truncated=truncated,
        trace_ids=tuple(dict.fromkeys(e.trace_id for e in ordered if e.trace_id)),
    )


def _reactions(
    flow: Sequence[IndexedEvent],
    dead: Sequence[IndexedEvent],
    groups: Sequence[GroupInfo],
    publishers: set[str],
    exact: frozenset[str],
    takers: Callable[[str, IndexedEvent], tuple[bool | None, tuple[str, ...]]],
) -> tuple[Reaction, ...]:
    reactions = []
    for group in groups:
        if group.name in publishers:
            continue
        described = group.name in exact
        committed = {(p.topic, p.partition): p.committed for p in group.partitions}
        read: list[IndexedEvent] = []
        pending: list[IndexedEvent] = []
        handlers: dict[str, None] = {}
        for event in flow:
            position = (event.topic, event.partition)
            if position not in committed:
                continue
            if described:
                takes, names = takers(group.name, event)
                if not takes:
                    continue
                handlers.update(dict.fromkeys(names))
            done = committed[position]
            (read if done is not None and done > event.offset else pending).append(event)
        set_aside = tuple(e for e in dead if e.topic == group.name + dlq.DLQ_SUFFIX)
        if read or pending or set_aside:
            reactions.append(
                Reaction(
                    group.name,
                    tuple(read),
                    tuple(pending),
                    set_aside,
                    tuple(handlers),
                    described,
                )
            )
    return tuple(reactions)


async def trace(
    broker: Broker,
    index: EventIndex,
    correlation_id: str,
    *,
    services: Mapping[str, ServiceRecord] | None = None,
) -> Trace:
    """The flow with `correlation_id`, as far as `index` has read the log; the groups' offsets
    are read now. `services`: the records of the schema registry (read from the broker when
    None)."""
    if services is None:
        services = (await read_registry(broker)).services
    events = await index.by_correlation(correlation_id, MAX_EVENTS + 1)
    groups = [s.info for s in await list_groups(broker) if s.info is not None]
    return build_trace(
        correlation_id,
        events[:MAX_EVENTS],
        groups,
        known_handles(services, await index.handles()),
        described=services.keys(),
        truncated=len(events) > MAX_EVENTS,
    )
