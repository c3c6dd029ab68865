"""The system as a graph: services (consumer groups, and the sources of events) and topics;
who consumes what (the topics a group has offsets on, with its lag), who produces what (the
`source` of recent events), and each service's health (live members, unresolved dead
letters), and which event types each service handles: exactly, for the services that
described themselves in the schema registry (`tidings.registry.ServiceRecord`), else what the
log told an `EventIndex`.

Nothing here reads a topic whole: producers are sampled from the newest records of each
partition, dead letters are counted from offsets and the resolutions topic; the registry is
small and read once."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tidings import dlq
from tidings.brokers.base import Broker
from tidings.ops.groups import list_groups
from tidings.ops.index import Handles, is_internal
from tidings.ops.records import read_records
from tidings.ops.schemas import known_handles, read_registry
from tidings.ops.tail import GROUP_PREFIX as TAIL_GROUP_PREFIX
from tidings.ops.topics import list_topics
from tidings.records import GroupInfo, TopicInfo
from tidings.registry import ServiceRecord

SAMPLE = 200
"""Newest records read per partition to learn who produces to a topic."""

TOOL_GROUP_PREFIXES = (TAIL_GROUP_PREFIX,)


def is_tool_group(name: str) -> bool:
    """Groups that tools make to read (a `tidings tail`), not services."""
    return name.startswith(TOOL_GROUP_PREFIXES)


def is_internal_topic(name: str, namespace: str = "") -> bool:
    """Topics that are plumbing, not a flow between services: dead-letter topics, tidings'
    own (`tidings.*`, after the broker's `namespace`) and `_*`."""
    return dlq.is_dead_letter_topic(name) or is_internal(name, namespace)


@dataclass(frozen=True, slots=True)
class ServiceNode:
    name: str
    group: GroupInfo | None
    """None for a service seen only as the source of events (no consumer group)."""
    dead_letters: int
    consumes: tuple[str, ...]
    produces: tuple[str, ...]
    handles: tuple[Handles, ...] = ()
    described: bool = False
    """Its handlers are those it declared in the schema registry (exact), not learnt from the
    log."""

    @property
    def members(self) -> int | None:
        return None if self.group is None else len(self.group.members)

    @property
    def lag(self) -> int:
        return 0 if self.group is None else self.group.lag

    @property
    def health(self) -> str:
        """`down` (a group without live members), `failing` (unresolved dead letters), `ok`,
        or `unknown` (no group: only seen producing)."""
        if self.group is None:
            return "unknown"
        if not self.group.members:
            return "down"
        return "failing" if self.dead_letters else "ok"


@dataclass(frozen=True, slots=True)
class Edge:
    """`service` consumes from or produces to `topic`: `lag` (consumes) is the group's lag on
    the topic, `events` (produces) how many of the sampled records came from the service."""

    service: str
    topic: str
    kind: str
    lag: int | None = None
    events: int | None = None


@dataclass(frozen=True, slots=True)
class Topology:
    services: tuple[ServiceNode, ...]
    topics: tuple[TopicInfo, ...]
    edges: tuple[Edge, ...]
    sampled: int
    """Records read per partition to find producers."""


async def dead_letter_counts(
    broker: Broker, infos: Sequence[TopicInfo] | None = None
) -> dict[str, int]:
    """Unresolved dead letters per service (retained records of `<service>.dlq` that are not
    replayed or purged); `infos` are the topics if already listed."""
    infos = await list_topics(broker) if infos is None else infos
    topics = [i for i in infos if dlq.is_dead_letter_topic(i.name)]
    if not topics:
        return {}
    resolved: Counter[str] = Counter()
    starts = {(i.name, p.partition): p.start_offset for i in topics for p in i.partitions}
    for position in await dlq.read_resolutions(broker):
        topic, partition, offset = position.rsplit(":", 2)
        start = starts.get((topic, int(partition)))
        if start is not None and int(offset) >= start:
            resolved[topic] += 1
    return {
        i.name.removesuffix(dlq.DLQ_SUFFIX): max(0, i.records - resolved[i.name]) for i in topics
    }


async def recent_sources(
    broker: Broker, infos: Sequence[TopicInfo], per_partition: int = SAMPLE
) -> Counter[tuple[str, str]]:
    """(topic, source) -> events among the newest `per_partition` records of each partition."""
    found: Counter[tuple[str, str]] = Counter()
    for info in infos:
        for p in info.partitions:
            if not p.records:
                continue
            start = max(p.start_offset, p.end_offset - per_partition)
            page = await read_records(
                broker, info.name, p.partition, start, limit=per_partition, max_scan=per_partition
            )
            for entry in page.entries:
                if entry.event is not None and entry.event.source:
                    found[(info.name, entry.event.source)] += 1
    return found


async def topology(
    broker: Broker,
    *,
    handles: Sequence[Handles] = (),
    services: Mapping[str, ServiceRecord] | None = None,
    sample: int = SAMPLE,
) -> Topology:
    """The graph as of now. Each service's handlers are those of its record in the schema
    registry (`services`, read from the broker when None), else those `handles` (from an
    `EventIndex`: learnt from the log) tell of."""
    if services is None:
        services = (await read_registry(broker)).services
    infos = await list_topics(broker)
    flows = tuple(i for i in infos if not is_internal_topic(i.name, broker.namespace))
    flow_names = {i.name for i in flows}
    groups = {
        s.name: s.info
        for s in await list_groups(broker)
        if not is_tool_group(s.name) and s.info is not None
    }
    dead = await dead_letter_counts(broker, infos)
    sources = await recent_sources(broker, flows, sample)
    edges: list[Edge] = []
    consumes: dict[str, list[str]] = {}
    for name, info in groups.items():
        lag: Counter[str] = Counter()
        for p in info.partitions:
            if p.topic in flow_names:
                lag[p.topic] += p.lag
        for topic in sorted(lag):
            edges.append(Edge(name, topic, "consumes", lag=lag[topic]))
            consumes.setdefault(name, []).append(topic)
    produces: dict[str, list[str]] = {}
    for (topic, source), count in sorted(sources.items()):
        edges.append(Edge(source, topic, "produces", events=count))
        produces.setdefault(source, []).append(topic)
    known: dict[str, list[Handles]] = {}
    for h in known_handles(services, handles):
        known.setdefault(h.service, []).append(h)
    names = sorted(set(groups) | set(produces))
    nodes = tuple(
        ServiceNode(
            name,
            groups.get(name),
            dead.get(name, 0),
            tuple(consumes.get(name, ())),
            tuple(produces.get(name, ())),
            tuple(known.get(name, ())),
            name in services,
        )
        for name in names
    )
    return Topology(nodes, flows, tuple(edges), sample)
