"""Consumer groups: the list, one group with its live lag chart, and offset resets (the rule
of `tidings replay`: refused while the group has live members)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tidings import ops
from tidings.console import svg
from tidings.console.security import form_value
from tidings.console.views import changing_form, console_of, fail, int_param, render, time_param
from tidings.errors import ConfigError
from tidings.records import GroupInfo, SeekTo

TARGETS = ("earliest", "latest", "time", "offset")


async def groups_page(request: Request) -> Response:
    console = console_of(request)
    groups = await ops.list_groups(console.broker)
    return render(
        request,
        "groups.html",
        title="Groups",
        groups=[g for g in groups if not ops.is_tool_group(g.name)],
        tools=[g for g in groups if ops.is_tool_group(g.name)],
    )


class UnknownGroup(Exception):
    """No consumer group has that name (404)."""


async def _group(request: Request) -> GroupInfo:
    broker = console_of(request).broker
    name = request.path_params["group"]
    try:
        return await ops.describe_group(broker, name)
    except ConfigError:
        if name in {g.name for g in await ops.list_groups(broker)}:
            raise
        raise UnknownGroup(f"no consumer group {name!r} (see the groups page)") from None


async def group_page(request: Request) -> Response:
    info = await _group(request)
    return render(
        request,
        "group.html",
        title=f"Group {info.name}",
        group=info,
        topics=sorted({p.topic for p in info.partitions}),
        **_lag(request, info),
    )


async def lag_fragment(request: Request) -> Response:
    """The live part of a group's page (htmx polls it): chart, partitions, members."""
    info = await _group(request)
    return render(request, "group_lag.html", group=info, **_lag(request, info))


def _lag(request: Request, info: GroupInfo) -> dict[str, Any]:
    history = console_of(request).sampler.lag_history(info.name)[-90:]
    labels = [datetime.fromtimestamp(at, UTC).strftime("%H:%M:%S") for at, _ in history]
    totals: dict[str, list[float | None]] = {
        "total": [float(sum(lags.values())) for _, lags in history]
    }
    for topic in sorted({p.topic for p in info.partitions}):
        totals[topic] = [
            float(sum(n for tp, n in lags.items() if tp.topic == topic)) for _, lags in history
        ]
    chart = svg.line_chart(labels, totals, unit="lag", testid="lag-chart") if history else None
    return {"chart": chart, "samples": len(history)}


def _target(form: object) -> tuple[SeekTo, str]:
    """The position asked for in the reset form, and how to say it."""
    to = form_value(form, "to") or ""
    if to not in TARGETS:
        raise ConfigError(f"reset to what? expected one of {', '.join(TARGETS)}, got {to!r}")
    if to == "earliest":
        return SeekTo(earliest=True), "the earliest retained offset"
    if to == "latest":
        return SeekTo(latest=True), "the latest offset (skipping what is there now)"
    if to == "time":
        when = time_param(form_value(form, "time"), "time")
        if when is None:
            raise ConfigError("give the time to reset to (ISO-8601, naive means UTC)")
        return SeekTo(timestamp=when), f"the first offset at or after {when.isoformat()}"
    offset = int_param(form_value(form, "offset"), "offset")
    if offset is None:
        raise ConfigError("give the offset to reset to")
    return SeekTo(offset=offset), f"offset {offset} on every partition"


async def reset(request: Request) -> Response:
    form = await changing_form(request)
    if isinstance(form, Response):
        return form
    console = console_of(request)
    info = await _group(request)
    target, said = _target(form)
    topics = [t for t in form.getlist("topic") if isinstance(t, str) and t]
    known = {p.topic for p in info.partitions}
    unknown = [t for t in topics if t not in known]
    for topic in unknown:
        await ops.describe_topic(console.broker, topic)  # UnknownTopicError: 404
    if info.members:
        return fail(
            request,
            409,
            f"consumer group {info.name!r} has {len(info.members)} live member(s): stop them "
            "first (offsets are reset only while a group is stopped, as `tidings replay`); "
            "nothing was changed",
        )
    if form_value(form, "confirm") != "yes":
        return render(
            request,
            "reset_confirm.html",
            title=f"Reset {info.name}?",
            group=info,
            topics=topics or sorted(known),
            to=form_value(form, "to"),
            time=form_value(form, "time") or "",
            offset=form_value(form, "offset") or "",
            said=said,
        )
    result = await ops.reset_offsets(console.broker, info.name, target, topics)
    return render(request, "reset_done.html", title=f"Reset {info.name}", reset=result)


routes = [
    Route("/groups", groups_page),
    Route("/groups/{group}", group_page),
    Route("/groups/{group}/lag", lag_fragment),
    Route("/groups/{group}/reset", reset, methods=["POST"]),
]
