"""`tidings tail`: a topic's events as they arrive."""

from __future__ import annotations

import contextlib
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

from tidings import ops
from tidings.brokers.base import Broker
from tidings.cli.common import POSITION_HELP, JsonOption, parse_position, print_json_line, run
from tidings.cli.views import data_text, entry_json, text
from tidings.ops import LogEntry

EPILOG = (
    "A record that does not decode into an event is reported with its position (on stderr, "
    'or as a JSON line with an "error" key under --json) and tail goes on. Tail joins a '
    "private consumer group and never commits offsets."
)


class _Printer:
    """Prints an entry as one line: the event on stdout, or its decode error on stderr."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.out = Console(highlight=False, soft_wrap=True)
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)

    def __call__(self, entry: LogEntry) -> None:
        if self.as_json:
            print_json_line(entry_json(entry))
            return
        event, record = entry.event, entry.record
        if event is None:
            self.err.print(f"error: {entry.error}", style="red", markup=False)
            return
        line = Text.assemble(
            (text(event.time), "dim"),
            "  ",
            (f"{record.topic}[{record.partition}]@{record.offset}", "cyan"),
            "  ",
            (f"{event.type} v{event.version}", "bold"),
        )
        if event.key is not None:
            line.append(f"  key={text(event.key)}")
        if event.correlation_id is not None:
            line.append(f"  correlation={text(event.correlation_id)}")
        line.append("  " + data_text(event.data))
        self.out.print(line)


def tail(
    ctx: typer.Context,
    topic: Annotated[str, typer.Argument(metavar="TOPIC", help="Topic to show.")],
    start: Annotated[str, typer.Option("--from", help=f"Where to start: {POSITION_HELP}.")] = (
        "latest"
    ),
    limit: Annotated[int | None, typer.Option(min=1, help="Stop after this many records.")] = None,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow/--no-follow", help="Keep waiting for new records, or stop at the end."
        ),
    ] = True,
    as_json: JsonOption = False,
) -> None:
    """Show a topic's events as they arrive, until Ctrl-C, --limit or (--no-follow) the end."""
    position = parse_position(start)
    show = _Printer(as_json)

    async def follow_topic(broker: Broker) -> None:
        async for entry in ops.tail(broker, topic, position, follow=follow, limit=limit):
            show(entry)

    with contextlib.suppress(KeyboardInterrupt):
        run(ctx, follow_topic)
