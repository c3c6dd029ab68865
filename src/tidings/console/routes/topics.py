"""Topics: the list with rates, one topic with its event browser, and one record."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tidings import ops
from tidings.console.state import Console
from tidings.console.views import (
    console_of,
    fail,
    index_status,
    int_param,
    render,
    text_param,
    time_param,
)
from tidings.errors import ConfigError
from tidings.event import Event
from tidings.ops import EventFilter, IndexedEvent, LogEntry
from tidings.records import TopicInfo

PAGE = 50
MAX_PAGE = 200
MAX_SCAN = 5000
"""Records a filtered page reads at most before it offers to go on."""


async def topics_page(request: Request) -> Response:
    console = console_of(request)
    infos = await ops.list_topics(console.broker)
    rows = [(info, console.sampler.rate(info)) for info in infos]
    return render(request, "topics.html", title="Topics", rows=rows)


async def topic_page(request: Request) -> Response:
    console = console_of(request)
    topic = request.path_params["topic"]
    info = await ops.describe_topic(console.broker, topic)
    params = request.query_params
    partition = int_param(params.get("partition"), "partition") or 0
    offset = int_param(params.get("offset"), "offset")
    limit = int_param(params.get("limit"), "limit", minimum=1) or PAGE
    if limit > MAX_PAGE:
        raise ConfigError(f"limit must be <= {MAX_PAGE}, got {limit}")
    where = EventFilter(
        key=text_param(params.get("key")),
        type=text_param(params.get("type")),
        correlation_id=text_param(params.get("correlation")),
        since=time_param(params.get("since"), "since"),
        until=time_param(params.get("until"), "until"),
    )
    ops.records.partition_of(info, partition)  # UnknownTopicError for a partition it lacks
    bounds = info.partitions[partition]
    if offset is not None and offset > bounds.end_offset:
        raise ConfigError(f"offset {offset} is past the end of {topic}[{partition}]")
    searched = where.key is not None or where.correlation_id is not None
    use_index = searched and params.get("scan") != "1"
    context: dict[str, Any] = {
        "title": f"Topic {topic}",
        "info": info,
        "partition": partition,
        "where": where,
        "limit": limit,
        "params": dict(params),
        "rate": console.sampler.rate(info),
    }
    if use_index:
        entries, behind, more = await _from_index(console, info, where, offset, limit)
        return render(
            request,
            "topic.html",
            **context,
            entries=entries,
            mode="index",
            behind=behind,
            next_offset=more,
            older=None,
            index=await index_status(console),
        )
    start = offset
    if start is None and where.since is not None:
        start = await ops.offset_for_time(console.broker, info, partition, where.since)
    newest = start is None and not where.given()
    if newest:
        start = max(bounds.start_offset, bounds.end_offset - limit)
    page = await ops.read_records(
        console.broker, topic, partition, start, limit=limit, where=where, max_scan=MAX_SCAN
    )
    first = page.entries[0].record.offset if page.entries else page.next_offset
    older = None
    if not where.given() and first > bounds.start_offset:
        older = max(bounds.start_offset, first - limit)
    return render(
        request,
        "topic.html",
        **context,
        entries=[(e, None) for e in page.entries],
        mode="scan",
        behind=0,
        next_offset=None if page.at_end else page.next_offset,
        older=older,
        scanned_to=page.next_offset,
        index=None,
    )


async def _from_index(
    console: Console, info: TopicInfo, where: EventFilter, offset: int | None, limit: int
) -> tuple[list[tuple[LogEntry, IndexedEvent]], int, int | None]:
    """Entries of `info` whose key or correlation id matches, found in the index (every
    partition), read from the log; how many records of the topic the index has not read; the
    offset to go on from (None: no more)."""
    index = console.index
    after = -1 if offset is None else offset - 1
    if where.key is not None:
        found = await index.by_key(where.key, info.name, limit=MAX_PAGE * 10)
    else:
        assert where.correlation_id is not None
        found = [
            e for e in await index.by_correlation(where.correlation_id) if e.topic == info.name
        ]
    found = sorted(
        (e for e in found if e.offset > after), key=lambda e: (e.time, e.partition, e.offset)
    )
    entries: list[tuple[LogEntry, IndexedEvent]] = []
    more = None
    for event in found:
        if len(entries) == limit:
            more = event.offset
            break
        page = await ops.read_records(
            console.broker, info.name, event.partition, event.offset, limit=1, max_scan=1
        )
        entry = page.entries[0] if page.entries else None
        if entry is not None and entry.record.offset == event.offset and where.matches(entry):
            entries.append((entry, event))
    behind = 0
    for p in info.partitions:
        behind += max(
            0, p.end_offset - max(await index.indexed_to(info.name, p.partition), p.start_offset)
        )
    return entries, behind, more


async def record_page(request: Request) -> Response:
    console = console_of(request)
    topic = request.path_params["topic"]
    partition = int_param(request.path_params["partition"], "partition")
    offset = int_param(request.path_params["offset"], "offset")
    assert partition is not None and offset is not None
    page = await ops.read_records(console.broker, topic, partition, offset, limit=1, max_scan=1)
    if not page.entries or page.entries[0].record.offset != offset:
        return fail(
            request,
            404,
            f"no record at {topic}[{partition}]@{offset} (not written yet, or removed)",
        )
    entry = page.entries[0]
    event = entry.event
    parents: list[IndexedEvent] = []
    children: list[IndexedEvent] = []
    copies: list[IndexedEvent] = []
    registered = False
    if event is not None:
        registered = (event.type, event.version) in (await console.registry()).schemas
        if event.causation_id is not None:
            parents = await console.index.by_event_id(event.causation_id)
        children = await console.index.children(event.id)
        copies = [
            e
            for e in await console.index.by_event_id(event.id)
            if (e.topic, e.partition, e.offset) != (topic, partition, offset)
        ]
    return render(
        request,
        "record.html",
        title=f"{topic}[{partition}]@{offset}",
        entry=entry,
        event=event,
        cloudevent=None if event is None else _attributes(event),
        data=None if event is None else _pretty(event.data),
        parents=parents,
        children=children,
        copies=copies,
        registered=registered,
        index=await index_status(console),
    )


def _attributes(event: Event) -> list[tuple[str, object]]:
    return [
        ("id", event.id),
        ("type", event.type),
        ("typeversion", event.version),
        ("source", event.source or "-"),
        ("time", event.time.isoformat()),
        ("partitionkey", event.key),
        ("correlationid", event.correlation_id),
        ("causationid", event.causation_id),
        ("traceparent", event.traceparent),
    ]


def _pretty(data: object) -> str:
    import msgspec

    if isinstance(data, bytes):
        return f"({len(data)} bytes) " + data[:4096].hex(" ")
    return msgspec.json.format(msgspec.json.encode(data), indent=2).decode()


routes = [
    Route("/topics", topics_page),
    Route("/topics/{topic}", topic_page),
    Route("/topics/{topic}/{partition}/{offset}", record_page),
]
