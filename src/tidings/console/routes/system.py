"""The topology, search, traces by correlation id, and signing in and out."""

from __future__ import annotations

import asyncio
import re

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from tidings import ops
from tidings.console import svg
from tidings.console.security import AUTH_COOKIE, CSRF_FIELD, form_value, same_origin, session_of
from tidings.console.views import (
    changing_form,
    console_of,
    fail,
    guard_of,
    index_status,
    local_path,
    render,
    text_param,
)
from tidings.errors import ConfigError, UnknownTopicError

_POSITION = re.compile(r"^.+\.dlq:\d+:\d+$")


async def topology_page(request: Request) -> Response:
    console = console_of(request)
    topology = await ops.topology(console.broker, handles=await console.index.handles())
    return render(
        request,
        "topology.html",
        title="Topology",
        topology=topology,
        graph=svg.topology_graph(topology),
        index=await index_status(console),
        fragment=request.query_params.get("fragment") == "graph",
    )


async def search(request: Request) -> Response:
    """An order id (any event key), a correlation id, an event id, a topic, a group or a
    dead letter's position: to its page."""
    query = text_param(request.query_params.get("q"))
    if query is None:
        return fail(request, 400, "search for something: an order id, a correlation id, ...")
    if len(query) > 512:
        return fail(request, 400, "that is too long to be an id")
    console = console_of(request)
    index = console.index
    if await index.by_correlation(query, 1):
        return RedirectResponse(f"/trace/{query}", 303)
    correlations = await index.correlations_for_key(query)
    if len(correlations) == 1:
        return RedirectResponse(f"/trace/{correlations[0]}", 303)
    events = await index.by_event_id(query, 1)
    if events:
        e = events[0]
        return RedirectResponse(f"/topics/{e.topic}/{e.partition}/{e.offset}", 303)
    if _POSITION.match(query):
        return RedirectResponse(f"/dlq/{query}", 303)
    if correlations:
        return render(
            request,
            "search.html",
            title="Search",
            query=query,
            correlations=correlations,
            index=await index_status(console),
        )
    try:
        await ops.describe_topic(console.broker, query)
    except (UnknownTopicError, ConfigError):
        pass
    else:
        return RedirectResponse(f"/topics/{query}", 303)
    if query in {g.name for g in await ops.list_groups(console.broker)}:
        return RedirectResponse(f"/groups/{query}", 303)
    return render(
        request,
        "search.html",
        status=404,
        title="Search",
        query=query,
        correlations=[],
        index=await index_status(console),
    )


async def trace_page(request: Request) -> Response:
    console = console_of(request)
    correlation_id = request.path_params["correlation_id"]
    flow = await ops.trace(console.broker, console.index, correlation_id)
    index = await index_status(console)
    if not flow.events and not flow.dead_letters:
        return fail(
            request,
            404,
            f"no events with correlation id {correlation_id!r} in the index",
            index=index,
        )
    jaeger = console.config.jaeger_url
    return render(
        request,
        "trace.html",
        title=f"Trace {correlation_id}",
        trace=flow,
        timeline=svg.timeline(flow),
        index=index,
        jaeger=[f"{jaeger.rstrip('/')}/trace/{t}" for t in flow.trace_ids] if jaeger else [],
    )


async def login_page(request: Request) -> Response:
    return render(
        request,
        "login.html",
        title="Sign in",
        next=local_path(request.query_params.get("next")),
        message=None,
    )


async def login(request: Request) -> Response:
    guard = guard_of(request)
    if not same_origin(request):
        return fail(request, 403, "cross-site request refused")
    form = await request.form()
    session = session_of(request)
    target = local_path(form_value(form, "next"))
    if not guard.csrf_ok(session, form_value(form, CSRF_FIELD)):
        return fail(request, 403, "missing or wrong CSRF token: reload the page and try again")
    if not guard.token_matches(form_value(form, "token") or ""):
        await asyncio.sleep(0.25)
        return render(
            request, "login.html", status=401, title="Sign in", next=target, message="wrong token"
        )
    response = RedirectResponse(target, 303)
    response.headers.append("set-cookie", guard.cookie(AUTH_COOKIE, guard.auth_value(session)))
    return response


async def logout(request: Request) -> Response:
    form = await changing_form(request)
    if isinstance(form, Response):
        return form
    response = RedirectResponse("/", 303)
    response.headers.append("set-cookie", guard_of(request).cookie(AUTH_COOKIE, "", max_age=0))
    return response


routes = [
    Route("/", topology_page),
    Route("/search", search),
    Route("/trace/{correlation_id:path}", trace_page),
    Route("/login", login_page, methods=["GET"]),
    Route("/login", login, methods=["POST"]),
    Route("/logout", logout, methods=["POST"]),
]
