"""`tidings console`: the web console (needs the `console` extra)."""

from __future__ import annotations

import ipaddress
import os
from typing import Annotated

import typer

from tidings.cli.common import fail, warn
from tidings.errors import TidingsError


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def console(
    ctx: typer.Context,
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on (default: this machine only).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on; 0 picks one.")] = 8090,
    dashboard: Annotated[
        str | None,
        typer.Option(
            "--dashboard",
            help="An app's dashboard: an http(s) URL answering the dashboard JSON document, "
            "or module:function returning it.",
        ),
    ] = None,
    jaeger: Annotated[
        str | None,
        typer.Option(
            "--jaeger",
            envvar="TIDINGS_JAEGER_URL",
            help="Jaeger UI to link traces to, e.g. http://127.0.0.1:16686.",
        ),
    ] = None,
    index: Annotated[
        str | None,
        typer.Option("--index", help="The console's event index file (default: next to the data)."),
    ] = None,
    asyncapi: Annotated[
        str | None,
        typer.Option(
            "--asyncapi",
            metavar="FILE",
            help="An AsyncAPI 3 document (JSON or YAML, as `tidings asyncapi` writes it) for "
            "the API page, instead of the one made from the schema registry.",
        ),
    ] = None,
) -> None:
    """Serve the web console: topology, topics and events, groups and lag, dead letters,
    traces by correlation id, schemas and the services' AsyncAPI document, dashboards.

    Actions that change something need the console token: TIDINGS_CONSOLE_TOKEN, or the file
    console-token made on first run (mode 0600) next to the broker's database (else in
    .tidings/)."""
    try:
        import uvicorn

        from tidings.console import ConsoleConfig, console_token, create_app, data_directory
        from tidings.console import index_path as default_index
        from tidings.console.apidoc import read_document
    except ImportError as exc:
        fail(f"the console needs its extra ({exc}): pip install 'tidings[console]'")
    url = str(ctx.obj)
    if not 0 <= port <= 65535:
        fail(f"--port must be 0..65535, got {port}")
    if url.startswith("sqlite:"):
        from tidings._sqlite import parse_url

        try:
            path = parse_url(url, allowed={"synchronous", "max_message_bytes"}).path
        except TidingsError as exc:
            fail(str(exc))
        if not os.path.exists(path):
            fail(f"no broker database at {path}; check --broker / TIDINGS_BROKER")
    try:
        if asyncapi is not None:
            read_document(asyncapi)  # a file that is no AsyncAPI 3 document stops here
        directory = data_directory(url)
        token, token_file = console_token(directory)
        config = ConsoleConfig(
            broker_url=url,
            token=token,
            index_path=index or default_index(url),
            dashboard=dashboard,
            jaeger_url=jaeger,
            asyncapi_path=asyncapi,
        )
        app = create_app(config)
    except TidingsError as exc:
        fail(str(exc))
    if not _loopback(host):
        warn(
            f"listening on {host}: anyone who can reach it can read the log (actions still "
            "need the token); put it behind TLS"
        )
    server = uvicorn.Server(
        uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
    )
    where = "$TIDINGS_CONSOLE_TOKEN" if token_file is None else str(token_file)

    async def announce_and_serve() -> None:
        import asyncio

        task = asyncio.create_task(server.serve())
        while not server.started and not task.done():  # noqa: ASYNC110 (uvicorn has a flag)
            await asyncio.sleep(0.05)
        if server.started:
            bound = port
            for listener in server.servers:
                for sock in listener.sockets:
                    bound = int(sock.getsockname()[1])
            typer.echo(f"tidings console on http://{host}:{bound}/ (broker {url})", err=False)
            typer.echo(f"  actions need the console token: {where}; Ctrl-C stops", err=False)
        await task

    import asyncio

    try:
        asyncio.run(announce_and_serve())
    except KeyboardInterrupt:
        pass
    except SystemExit as exc:
        if exc.code not in (0, None):
            fail(f"cannot serve on {host}:{port} (is the port in use?)")
