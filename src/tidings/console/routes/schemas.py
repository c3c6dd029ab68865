"""Schemas: every registered event type, one type's versions with their JSON Schemas, the
differences between two versions (`tidings schema diff`), and changing a type's compatibility
mode (`tidings schema mode`: the console token, a CSRF token and a confirmation)."""

from __future__ import annotations

from urllib.parse import quote, urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from tidings import compat
from tidings.console.apidoc import json_html
from tidings.console.security import form_value
from tidings.console.views import changing_form, console_of, fail, int_param, render
from tidings.errors import ConfigError
from tidings.ops import schemas

MODES = tuple(mode.value for mode in compat.Mode)


async def schemas_page(request: Request) -> Response:
    registry = await console_of(request).registry()
    return render(
        request,
        "schemas.html",
        title="Schemas",
        types=schemas.list_types(registry),
        services=[registry.services[name] for name in sorted(registry.services)],
        skipped=registry.skipped,
    )


async def type_page(request: Request) -> Response:
    registry = await console_of(request).registry()
    summary = schemas.get_type(registry, request.path_params["event_type"])
    chosen = int_param(request.query_params.get("version"), "version", minimum=1)
    if chosen is not None:
        schemas.get_version(registry, summary.type, chosen)
    latest = summary.latest.version
    handlers = [
        (record.name, handler)
        for record in registry.services.values()
        for handler in record.handlers
        if handler.type == summary.type
    ]
    publishers = [
        (record.name, topic, sorted(v for t, v in keys if t == summary.type))
        for record in registry.services.values()
        for topic, keys in record.publishes.items()
        if any(t == summary.type for t, _ in keys)
    ]
    mode_set = request.query_params.get("mode_set")
    return render(
        request,
        "schema_type.html",
        title=f"Schema {summary.type}",
        summary=summary,
        shown=chosen or latest,
        pretty={r.version: json_html(r.schema) for r in summary.versions},
        handlers=sorted(handlers, key=lambda item: (item[0], item[1].name)),
        publishers=sorted(publishers),
        modes=MODES,
        notice=f"mode set to {mode_set}" if mode_set in MODES else None,
        diff_from=summary.versions[-2].version if len(summary.versions) > 1 else latest,
        diff_to=latest,
    )


async def diff_page(request: Request) -> Response:
    registry = await console_of(request).registry()
    event_type = request.path_params["event_type"]
    params = request.query_params
    old = int_param(params.get("from"), "from", minimum=1)
    new = int_param(params.get("to"), "to", minimum=1)
    if old is None or new is None:
        raise ConfigError("give the two versions to compare: ?from=V1&to=V2")
    found = schemas.diff(registry, event_type, old, new)
    summary = schemas.get_type(registry, event_type)
    return render(
        request,
        "schema_diff.html",
        title=f"{event_type} v{old} → v{new}",
        diff=found,
        summary=summary,
        before=json_html(schemas.get_version(registry, event_type, old).schema),
        after=json_html(schemas.get_version(registry, event_type, new).schema),
    )


async def set_mode(request: Request) -> Response:
    form = await changing_form(request)
    if isinstance(form, Response):
        return form
    console = console_of(request)
    registry = await console.registry()
    summary = schemas.get_type(registry, request.path_params["event_type"])
    wanted = form_value(form, "mode") or ""
    try:
        mode = compat.Mode.parse(wanted)
    except ValueError as exc:
        return fail(request, 400, f"{exc}; nothing was changed")
    if form_value(form, "confirm") != "yes":
        return render(
            request,
            "mode_confirm.html",
            title=f"Set the mode of {summary.type}?",
            summary=summary,
            mode=mode,
            effect=schemas.mode_effect(registry, summary.type, mode),
        )
    await console.set_mode(summary.type, mode)
    query = urlencode({"mode_set": mode.value})
    return RedirectResponse(f"/schemas/{quote(summary.type, safe='')}?{query}", 303)


routes = [
    Route("/schemas", schemas_page),
    Route("/schemas/{event_type}", type_page),
    Route("/schemas/{event_type}/diff", diff_page),
    Route("/schemas/{event_type}/mode", set_mode, methods=["POST"]),
]

__all__ = ["routes"]
