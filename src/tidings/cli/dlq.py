"""`tidings dlq list|show|replay|purge`: dead letters (the records of topics `<service>.dlq`)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Annotated

import msgspec
import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from tidings import dlq, ops
from tidings.brokers.base import Broker
from tidings.cli.common import JsonOption, console, fail, print_json, print_wide, run, warn
from tidings.cli.views import (
    letter_json,
    or_dash,
    printable,
    purged_json,
    replayed_json,
    short,
    status,
    text,
)
from tidings.ops import DeadLetter, DeadLetterFilter

app = typer.Typer(
    help="List, inspect, replay and purge dead letters (topics named <service>.dlq).",
    no_args_is_help=True,
)

ServiceFilter = Annotated[
    str | None,
    typer.Option("--service", help="Only this service's dead letters (topic <service>.dlq)."),
]
ReasonFilter = Annotated[
    str | None,
    typer.Option(
        "--reason",
        help="Only this reason: undecodable, invalid-event, permanent-error, retries-exhausted.",
    ),
]
HandlerFilter = Annotated[
    str | None,
    typer.Option("--handler", help="Only this handler: service.handler, or the handler's name."),
]
TypeFilter = Annotated[str | None, typer.Option("--type", help="Only events of this type.")]
TopicFilter = Annotated[
    str | None, typer.Option("--topic", help="Only dead letters from this original topic.")
]
IdsArgument = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="ID",
        help="Event ids, or <dlq-topic>:<partition>:<offset> (see `tidings dlq list`).",
        show_default=False,
    ),
]


def _interactive() -> bool:
    """True if stdin is a terminal a confirmation can be asked on."""
    return sys.stdin is not None and sys.stdin.isatty()


def _require_selection(
    action: str, ids: Sequence[str], select_all: bool, where: DeadLetterFilter
) -> None:
    if ids and select_all:
        fail(f"give dead letter ids or --all, not both (nothing was {action})")
    if not ids and not select_all and not where.given():
        fail(
            f"say which dead letters: give their ids (see `tidings dlq list`), --all, or a filter "
            f"(--service, --reason, --handler, --type, --topic); nothing was {action}"
        )


def _letters_table(letters: Sequence[DeadLetter], *, with_status: bool = False) -> Table:
    """One line per letter, never wrapped (ids must stay whole to be copied): print it with
    `print_wide`."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for name in ("ID", "Type", "Reason", "Handler", "Origin", "Attempts", "Time", "Message"):
        table.add_column(name, no_wrap=True)
    if with_status:
        table.add_column("Status", no_wrap=True)
    for letter in letters:
        row = [
            letter.id,
            or_dash(letter.event_type),
            or_dash(letter.reason),
            or_dash(letter.handler),
            letter.origin,
            or_dash(letter.attempts),
            letter.time.strftime("%Y-%m-%d %H:%M:%S"),
            short(letter.message),
        ]
        if with_status:
            row.append(status(letter))
        table.add_row(*(Text(cell) for cell in row))
    return table


@app.command("list")
def dlq_list(
    ctx: typer.Context,
    service: ServiceFilter = None,
    reason: ReasonFilter = None,
    handler: HandlerFilter = None,
    event_type: TypeFilter = None,
    topic: TopicFilter = None,
    include_resolved: Annotated[
        bool, typer.Option("--all", help="Also show replayed and purged dead letters.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Dead letters, oldest first: id, event type, reason, handler, origin, attempts, message."""
    letters = run(
        ctx,
        lambda broker: ops.list_dead_letters(
            broker,
            service=service,
            reason=reason,
            handler=handler,
            event_type=event_type,
            topic=topic,
            include_resolved=include_resolved,
        ),
    )
    if as_json:
        print_json([letter_json(letter) for letter in letters])
        return
    if not letters:
        console().print("no dead letters")
        return
    print_wide(_letters_table(letters, with_status=include_resolved))
    console().print(f"{len(letters)} dead letter(s)", markup=False)


@app.command("show")
def dlq_show(
    ctx: typer.Context,
    ident: Annotated[
        str,
        typer.Argument(metavar="ID", help="An event id, or <dlq-topic>:<partition>:<offset>."),
    ],
    as_json: JsonOption = False,
) -> None:
    """Every header of a dead letter, its traceback, and its event (or raw value).

    An event id dead-lettered by several handlers shows each of its dead letters.
    Replayed or purged ones are shown only if no unresolved one has that id."""
    letters = run(ctx, lambda broker: ops.find_dead_letters(broker, ident))
    if as_json:
        print_json([letter_json(letter) for letter in letters])
        return
    out = Console(highlight=False, soft_wrap=True)
    for index, letter in enumerate(letters):
        if index:
            out.print()
        _show_letter(out, letter)


def _show_letter(out: Console, letter: DeadLetter) -> None:
    def line(label: str, value: object) -> None:
        out.print(f"{label + ':':<14}{or_dash(value)}", markup=False)

    out.print(f"dead letter {letter.id}", style="bold", markup=False)
    line("position", letter.position)
    state = status(letter)
    if letter.resolution is not None:
        state += f" at {letter.resolution.at.isoformat(timespec='seconds')}"
    line("status", state)
    line("reason", letter.reason)
    line("handler", letter.handler)
    line("origin", letter.origin)
    line("attempts", letter.attempts)
    line("time", letter.time.isoformat())
    line("exception", letter.exception)
    line("message", letter.message)
    out.print("\nheaders:", style="bold")
    for name, value in letter.record.headers:
        shown = "(see traceback below)" if name == dlq.TRACEBACK else printable(text(value))
        out.print(f"  {name}: {shown}", markup=False)
    out.print("\ntraceback:", style="bold")
    out.print(printable(letter.traceback or "-").rstrip(), markup=False)
    if letter.event is not None:
        out.print("\nevent:", style="bold")
        out.print(
            msgspec.json.format(msgspec.json.encode(letter.event), indent=2).decode(),
            markup=False,
        )
    else:
        out.print(f"\nraw value (does not decode: {letter.decode_error}):", style="bold")
        if letter.record.key is not None:
            out.print(f"key: {printable(text(letter.record.key))}", markup=False)
        out.print(printable(text(letter.record.value)), markup=False)


@app.command("replay")
def dlq_replay(
    ctx: typer.Context,
    ids: IdsArgument = None,
    select_all: Annotated[
        bool,
        typer.Option(
            "--all", help="Replay every unresolved dead letter (or every one matching the filters)."
        ),
    ] = False,
    service: ServiceFilter = None,
    reason: ReasonFilter = None,
    handler: HandlerFilter = None,
    event_type: TypeFilter = None,
    topic: TopicFilter = None,
    as_json: JsonOption = False,
) -> None:
    """Re-deliver dead letters to their original topic, for the handler that failed.

    The same event id is delivered again with `tidings-replay-for: <handler>`.
    Only that handler runs it; other handlers and services ignore it.
    Needs ids, --all or a filter.
    Records that do not decode are skipped under --all or filters (an error when named)."""
    ids = list(ids or ())
    where = DeadLetterFilter(service, reason, handler, event_type, topic)
    _require_selection("replayed", ids, select_all, where)

    async def go(broker: Broker) -> ops.ReplayResult:
        letters = await ops.select_dead_letters(broker, ids, where)
        return await ops.replay_dead_letters(broker, letters, skip_undecodable=not ids)

    result = run(ctx, go)
    replayed, skipped = result.replayed, result.skipped
    if as_json:
        print_json(replayed_json(replayed, skipped))
        return
    if replayed:
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
        for name in ("ID", "Handler", "Replayed to"):
            table.add_column(name, no_wrap=True)
        for r in replayed:
            table.add_row(
                Text(r.letter.id),
                Text(or_dash(r.letter.handler)),
                Text(f"{r.topic}[{r.partition}]@{r.offset}"),
            )
        print_wide(table)
    console().print(f"replayed {len(replayed)} dead letter(s)", markup=False)
    if skipped:
        warn(
            f"skipped {len(skipped)} dead letter(s) that do not decode into an event "
            f"(replaying would only dead-letter them again): {', '.join(x.id for x in skipped)}; "
            "inspect them with `tidings dlq show`, remove them with `tidings dlq purge`"
        )


@app.command("purge")
def dlq_purge(
    ctx: typer.Context,
    ids: IdsArgument = None,
    select_all: Annotated[
        bool,
        typer.Option(
            "--all", help="Purge every unresolved dead letter (or every one matching the filters)."
        ),
    ] = False,
    service: ServiceFilter = None,
    reason: ReasonFilter = None,
    handler: HandlerFilter = None,
    event_type: TypeFilter = None,
    topic: TopicFilter = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Drop dead letters: they are no longer listed or replayable.

    The records stay in the log, marked purged.
    Needs ids, --all or a filter.
    Asks for confirmation unless --yes (required when stdin is not a terminal)."""
    ids = list(ids or ())
    where = DeadLetterFilter(service, reason, handler, event_type, topic)
    _require_selection("purged", ids, select_all, where)
    if not yes and not _interactive():
        fail("purge needs --yes when stdin is not a terminal (nothing was purged)")
    letters = run(ctx, lambda broker: ops.select_dead_letters(broker, ids, where))
    if letters and not yes:
        print_wide(_letters_table(letters), stderr=True)
        if not typer.confirm(f"Purge these {len(letters)} dead letter(s)?", err=True):
            Console(stderr=True, highlight=False).print("nothing was purged", markup=False)
            raise typer.Exit(1)
    purged = run(ctx, lambda broker: ops.purge_dead_letters(broker, letters)) if letters else []
    if as_json:
        print_json(purged_json(purged))
        return
    out = console()
    for letter in purged:
        out.print(f"purged {letter.id} ({letter.position})", markup=False)
    out.print(f"purged {len(purged)} dead letter(s)", markup=False)
