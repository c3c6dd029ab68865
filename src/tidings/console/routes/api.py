"""API: the AsyncAPI 3 document of the services, rendered (servers, channels with their
messages, operations per service, each message's payload schema) and to download as JSON or
YAML. It is made from the schema registry (what services described of themselves when they
started, and the registered schemas: no code imported), or read from the file given with
`tidings console --asyncapi FILE` (what `tidings asyncapi` wrote: with docstrings and retry
policies), which is then the default."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tidings.asyncapi import dumps
from tidings.console.apidoc import view
from tidings.console.views import console_of, fail, render
from tidings.errors import ConfigError

SOURCES = ("registry", "file")
MEDIA_TYPES = {"json": "application/json", "yaml": "application/yaml"}


async def _document(request: Request) -> tuple[str, dict[str, Any]]:
    """(source, document) the request asks for (`?source=registry|file`)."""
    console = console_of(request)
    source = request.query_params.get("source") or (
        "file" if console.asyncapi_file is not None else "registry"
    )
    if source not in SOURCES:
        raise ConfigError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    if source == "file":
        if console.asyncapi_file is None:
            raise ConfigError("no AsyncAPI file was given (tidings console --asyncapi FILE)")
        return source, console.asyncapi_file.load()
    return source, await console.registry_document()


async def api_page(request: Request) -> Response:
    source, doc = await _document(request)
    console = console_of(request)
    return render(
        request,
        "api.html",
        title="API",
        api=view(doc),
        source=source,
        file=console.asyncapi_file.path if console.asyncapi_file is not None else None,
        version=doc.get("asyncapi"),
    )


async def download(request: Request) -> Response:
    fmt = request.path_params["format"]
    if fmt not in MEDIA_TYPES:
        return fail(request, 404, "the document comes as asyncapi.json or asyncapi.yaml")
    source, doc = await _document(request)
    name = f"asyncapi.{fmt}" if source == "registry" else f"asyncapi-file.{fmt}"
    return Response(
        dumps(doc, format="json" if fmt == "json" else "yaml"),
        media_type=MEDIA_TYPES[fmt],
        headers={"content-disposition": f'attachment; filename="{name}"'},
    )


routes = [
    Route("/api", api_page),
    Route("/api/asyncapi.{format}", download),
]

__all__ = ["routes"]
