"""What every command shares: the broker session, `error: ...` and exit 2, output helpers."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Annotated, NoReturn, TypeVar

import msgspec
import typer
from rich.console import Console
from rich.table import Table

from tidings.brokers import connect
from tidings.brokers.base import Broker
from tidings.errors import TidingsError
from tidings.records import SeekTo

DEFAULT_BROKER = "sqlite:///.tidings/bus.db"
POSITION_HELP = "earliest, latest, an offset, or an ISO-8601 time (naive means UTC)"

T = TypeVar("T")

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def fail(message: str) -> NoReturn:
    """Print `error: message` on stderr and exit with status 2."""
    console = Console(stderr=True, soft_wrap=True, highlight=False)
    console.print(f"error: {message}", style="red", markup=False)
    raise typer.Exit(2)


def warn(message: str, *, highlight: bool = False) -> None:
    """Print `warning: message` on stderr."""
    Console(stderr=True, soft_wrap=True, highlight=highlight).print(
        f"warning: {message}", style="yellow", markup=False
    )


def run(ctx: typer.Context, action: Callable[[Broker], Awaitable[T]], *, create: bool = False) -> T:
    """Connect to the command's broker, run `action`, close the broker; a TidingsError fails
    the command. A SQLite file that does not exist is an error (a mistyped --broker would
    create an empty database) unless the command creates something (`create`)."""
    url = str(ctx.obj)
    if not create and url.startswith("sqlite:"):
        from tidings._sqlite import parse_url

        try:
            path = parse_url(url, allowed={"synchronous", "max_message_bytes"}).path
        except TidingsError as exc:
            fail(str(exc))
        if not os.path.exists(path):
            fail(
                f"no broker database at {path}; check --broker / TIDINGS_BROKER "
                "(`tidings topics create` or a running service creates it)"
            )

    async def session() -> T:
        broker = connect(url)
        try:
            return await action(broker)
        finally:
            await broker.close()

    try:
        return asyncio.run(session())
    except TidingsError as exc:
        fail(str(exc))


def parse_position(text: str) -> SeekTo:
    try:
        return SeekTo.parse(text)
    except TidingsError as exc:
        fail(str(exc))


def print_json(document: object) -> None:
    typer.echo(msgspec.json.format(msgspec.json.encode(document), indent=2).decode())


def print_json_line(document: object) -> None:
    typer.echo(msgspec.json.encode(document).decode())


def console() -> Console:
    return Console(highlight=False)


def print_wide(table: Table, *, stderr: bool = False) -> None:
    """Print `table` at its natural width, even if wider than the terminal."""
    out = Console(stderr=stderr, highlight=False)
    width = out.measure(table, options=out.options.update_width(100_000)).maximum
    if width > out.width:
        out = Console(stderr=stderr, highlight=False, width=width)
    out.print(table)
