"""The `tidings` command line: inspect topics and consumer groups, tail events, replay groups.

Commands:

    tidings topics list
    tidings topics create NAME [--partitions N] [--retention-ms MS] [--retention-bytes B]
                               [--exist-ok]
    tidings topics describe NAME
    tidings groups list
    tidings groups describe GROUP
    tidings tail TOPIC [--from earliest|latest|OFFSET|ISO-TIME] [--limit N] [--follow/--no-follow]
    tidings replay GROUP --to earliest|latest|OFFSET|ISO-TIME [--topic T ...]
    tidings run MODULE:SERVICE [--grace SECONDS]
    tidings dlq list [FILTERS] [--all]
    tidings dlq show ID
    tidings dlq replay (ID... | --all | FILTERS)
    tidings dlq purge (ID... | --all | FILTERS) [--yes]

Dead letters (`tidings dlq`) are the records of every topic named `<service>.dlq`. FILTERS are
`--service S` (its topic `S.dlq`), `--reason R` (undecodable, invalid-event, permanent-error,
retries-exhausted), `--handler H` (`service.handler` or the handler's name), `--type T` (event
type) and `--topic T` (the original topic); they combine with AND. An ID is an event id (every
dead letter of that event) or `<dlq-topic>:<partition>:<offset>` (one record; the only id of a
record that does not decode). `list` shows unresolved dead letters (`--all`: also replayed and
purged ones); `show` prints every header, the traceback and the event (or the raw value).
`replay` re-delivers each one, with the same event id, to its original topic for the one
handler that failed (other handlers and services ignore it) and marks it replayed; records that
do not decode are not replayed (skipped under --all or filters, an error when named by id).
`purge` marks them purged; it asks for confirmation, or needs `--yes` when stdin is not a
terminal. `replay` and `purge` refuse to run without ids, `--all` or a filter. Replayed and
purged letters are recorded in the topic `tidings.dlq.resolutions` and no longer listed.

`--broker URL` (or `TIDINGS_BROKER`; default `sqlite:///.tidings/bus.db`) picks the broker.
Commands that show data print tables, or one JSON document with `--json` (`tail --json` prints
JSON Lines). Errors a user can cause (bad arguments, unknown topics, a group with live members,
an unusable database) print `error: <message>` on stderr and exit with status 2.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib.util
import os
import sys
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import msgspec
import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from tidings import dlq
from tidings.brokers import connect
from tidings.brokers.base import Broker, CanInspect, CanResetOffsets, CanSeek, Consumer, require
from tidings.errors import ConfigError, DecodeError, TidingsError
from tidings.event import Event, event_from_record
from tidings.records import Batch, GroupInfo, OffsetReset, Record, SeekTo, TopicInfo, TopicPartition

DEFAULT_BROKER = "sqlite:///.tidings/bus.db"
TAIL_POLL_S = 0.5
POSITION_HELP = "earliest, latest, an offset, or an ISO-8601 time (naive means UTC)"

T = TypeVar("T")

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False)
topics_app = typer.Typer(help="Create and inspect topics.", no_args_is_help=True)
groups_app = typer.Typer(help="Inspect consumer groups.", no_args_is_help=True)
app.add_typer(topics_app, name="topics")
dlq_app = typer.Typer(
    help="List, inspect, replay and purge dead letters (topics named <service>.dlq).",
    no_args_is_help=True,
)
app.add_typer(groups_app, name="groups")
app.add_typer(dlq_app, name="dlq")

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def main() -> None:
    """Entry point of the `tidings` console script."""
    app()


@app.callback()
def _options(
    ctx: typer.Context,
    broker: Annotated[
        str,
        typer.Option(
            "--broker",
            envvar="TIDINGS_BROKER",
            help="Broker URL: sqlite:///relative/bus.db, sqlite:////absolute/bus.db, kafka://host:port",
        ),
    ] = DEFAULT_BROKER,
) -> None:
    """Inspect and operate a tidings broker."""
    ctx.obj = broker


# plumbing ------------------------------------------------------------------------------


def _fail(message: str) -> NoReturn:
    console = Console(stderr=True, soft_wrap=True, highlight=False)
    console.print(f"error: {message}", style="red", markup=False)
    raise typer.Exit(2)


def _run(
    ctx: typer.Context, action: Callable[[Broker], Awaitable[T]], *, create: bool = False
) -> T:
    """Connect to the broker, run `action`, close the broker; TidingsError exits with 2.

    A SQLite broker file that does not exist is an error (a mistyped --broker would otherwise
    create an empty database), unless the command creates something (`create=True`)."""
    url = str(ctx.obj)
    if not create and url.startswith("sqlite:"):
        from tidings._sqlite import parse_url

        try:
            path = parse_url(url, allowed={"synchronous", "max_message_bytes"}).path
        except TidingsError as exc:
            _fail(str(exc))
        if not os.path.exists(path):
            _fail(
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
        _fail(str(exc))


def _parse_position(text: str) -> SeekTo:
    try:
        return SeekTo.parse(text)
    except TidingsError as exc:
        _fail(str(exc))


def _print_json(document: object) -> None:
    typer.echo(msgspec.json.format(msgspec.json.encode(document), indent=2).decode())


def _print_json_line(document: object) -> None:
    typer.echo(msgspec.json.encode(document).decode())


def _console() -> Console:
    return Console(highlight=False)


def _or_dash(value: object) -> str:
    return "-" if value is None else str(value)


def _duration(ms: int) -> str:
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def _size(count: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count % size == 0:
            return f"{count // size} {unit}"
    return f"{count} B"


def _retention(info: TopicInfo) -> str:
    limits = []
    if info.retention_ms is not None:
        limits.append(_duration(info.retention_ms))
    if info.retention_bytes is not None:
        limits.append(_size(info.retention_bytes))
    return ", ".join(limits) or "forever"


# topics --------------------------------------------------------------------------------


def _topic_json(info: TopicInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "records": info.records,
        "retention_ms": info.retention_ms,
        "retention_bytes": info.retention_bytes,
        "partitions": [
            {
                "partition": p.partition,
                "start_offset": p.start_offset,
                "end_offset": p.end_offset,
                "records": p.records,
            }
            for p in info.partitions
        ],
    }


@topics_app.command("list")
def topics_list(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Every topic: partitions, records, offsets and retention."""
    infos = _run(ctx, lambda broker: _inspect(broker).list_topics())
    if as_json:
        _print_json([_topic_json(info) for info in infos])
        return
    table = Table("Topic", "Partitions", "Records", "Offsets", "Retention")
    for info in infos:
        offsets = " ".join(f"{p.start_offset}..{p.end_offset}" for p in info.partitions)
        table.add_row(
            info.name, str(len(info.partitions)), str(info.records), offsets, _retention(info)
        )
    _console().print(table if infos else "no topics")


@topics_app.command("create")
def topics_create(
    ctx: typer.Context,
    name: Annotated[
        str, typer.Argument(metavar="NAME", help="Topic name: letters, digits, '.', '_', '-'.")
    ],
    partitions: Annotated[
        int | None, typer.Option(min=1, help="Number of partitions (default 1).")
    ] = None,
    retention_ms: Annotated[
        int | None, typer.Option(min=1, help="Delete records older than this. Default: keep.")
    ] = None,
    retention_bytes: Annotated[
        int | None,
        typer.Option(min=1, help="Delete the oldest records past this size per partition."),
    ] = None,
    exist_ok: Annotated[
        bool, typer.Option("--exist-ok", help="Succeed if the topic exists (left unchanged).")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Create a topic."""
    info = _run(
        ctx,
        create=True,
        action=lambda broker: broker.admin.create_topic(
            name,
            partitions or 1,
            retention_ms=retention_ms,
            retention_bytes=retention_bytes,
            exist_ok=exist_ok,
        ),
    )
    asked = (
        (partitions, len(info.partitions)),
        (retention_ms, info.retention_ms),
        (retention_bytes, info.retention_bytes),
    )
    if any(wanted is not None and wanted != actual for wanted, actual in asked):
        Console(stderr=True, soft_wrap=True).print(
            f"warning: topic {name!r} already exists with other settings; left unchanged",
            style="yellow",
            markup=False,
        )
    if as_json:
        _print_json(_topic_json(info))
        return
    _console().print(
        f"topic {info.name}: {len(info.partitions)} partition(s), retention {_retention(info)}",
        markup=False,
    )


@topics_app.command("describe")
def topics_describe(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help="Topic name.")],
    as_json: JsonOption = False,
) -> None:
    """One topic: start offset, end offset and record count per partition."""
    info = _run(ctx, lambda broker: broker.admin.describe_topic(name))
    if as_json:
        _print_json(_topic_json(info))
        return
    table = Table(
        "Partition",
        "Start offset",
        "End offset",
        "Records",
        title=f"{info.name} (retention {_retention(info)}, {info.records} records)",
    )
    for p in info.partitions:
        table.add_row(str(p.partition), str(p.start_offset), str(p.end_offset), str(p.records))
    _console().print(table)


# groups --------------------------------------------------------------------------------


async def _describe_groups(broker: Broker) -> list[tuple[str, GroupInfo | None]]:
    """Every listed group with its description; None for a group listed but not describable
    (the broker lists groups that only have leftover assignment rows)."""
    described: list[tuple[str, GroupInfo | None]] = []
    for name in await _inspect(broker).list_groups():
        try:
            described.append((name, await _inspect(broker).describe_group(name)))
        except ConfigError:
            described.append((name, None))
    return described


def _group_json(info: GroupInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "lag": info.lag,
        "members": [
            {
                "member_id": m.member_id,
                "client": m.client,
                "topics": list(m.topics),
                "partitions": [
                    {"topic": tp.topic, "partition": tp.partition} for tp in m.partitions
                ],
            }
            for m in info.members
        ],
        "partitions": [
            {
                "topic": p.topic,
                "partition": p.partition,
                "committed": p.committed,
                "start_offset": p.start_offset,
                "end_offset": p.end_offset,
                "lag": p.lag,
                "owner": p.owner,
            }
            for p in info.partitions
        ],
    }


@groups_app.command("list")
def groups_list(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Every consumer group with its live members and total lag."""
    groups = _run(ctx, _describe_groups)
    if as_json:
        _print_json(
            [
                {
                    "name": name,
                    "members": None if info is None else len(info.members),
                    "lag": None if info is None else info.lag,
                }
                for name, info in groups
            ]
        )
        return
    table = Table("Group", "Members", "Lag")
    for name, info in groups:
        if info is None:
            table.add_row(name, "-", "-")
        else:
            table.add_row(name, str(len(info.members)), str(info.lag))
    _console().print(table if groups else "no consumer groups")


@groups_app.command("describe")
def groups_describe(
    ctx: typer.Context,
    group: Annotated[str, typer.Argument(metavar="GROUP", help="Consumer group name.")],
    as_json: JsonOption = False,
) -> None:
    """One group: its live members and, per partition, committed offset, end offset and lag."""
    info = _run(ctx, lambda broker: _inspect(broker).describe_group(group))
    if as_json:
        _print_json(_group_json(info))
        return
    console = _console()
    console.print(
        f"group {info.name}: {len(info.members)} live member(s), lag {info.lag}", markup=False
    )
    if info.members:
        members = Table("Member", "Client", "Topics", "Partitions", title="Members")
        for m in info.members:
            owned = " ".join(str(tp) for tp in m.partitions) or "-"
            members.add_row(m.member_id, m.client, " ".join(m.topics), owned)
        console.print(members)
    offsets = Table("Topic", "Partition", "Committed", "End offset", "Lag", "Owner")
    for p in info.partitions:
        offsets.add_row(
            p.topic,
            str(p.partition),
            _or_dash(p.committed),
            str(p.end_offset),
            str(p.lag),
            _or_dash(p.owner),
        )
    console.print(offsets)


# replay --------------------------------------------------------------------------------


async def _replay(
    broker: Broker, group: str, topics: list[str], to: SeekTo
) -> dict[TopicPartition, int]:
    if not topics:
        info = await _inspect(broker).describe_group(group)
        topics = sorted({p.topic for p in info.partitions if p.committed is not None})
        if not topics:
            raise ConfigError(
                f"consumer group {group!r} has no committed offsets; name topics with --topic"
            )
    admin = require(broker.admin, CanResetOffsets, "reset a group's offsets")
    return await admin.reset_offsets(group, topics, to)


@app.command()
def replay(
    ctx: typer.Context,
    group: Annotated[
        str, typer.Argument(metavar="GROUP", help="Consumer group whose offsets to reset.")
    ],
    to: Annotated[str, typer.Option("--to", help=f"Where to resume: {POSITION_HELP}.")],
    topics: Annotated[
        list[str] | None,
        typer.Option(
            "--topic", help="Topic to reset (repeatable). Default: every topic with offsets."
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Reset a stopped group's committed offsets so it resumes (replays) from --to."""
    position = _parse_position(to)
    offsets = _run(ctx, lambda broker: _replay(broker, group, list(topics or ()), position))
    rows = sorted(offsets.items(), key=lambda item: (item[0].topic, item[0].partition))
    if as_json:
        _print_json(
            {
                "group": group,
                "offsets": [
                    {"topic": tp.topic, "partition": tp.partition, "offset": offset}
                    for tp, offset in rows
                ],
            }
        )
        return
    table = Table("Topic", "Partition", "Offset", title=f"group {group} resumes at")
    for tp, offset in rows:
        table.add_row(tp.topic, str(tp.partition), str(offset))
    _console().print(table)


# dead letters --------------------------------------------------------------------------

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
MESSAGE_WIDTH = 60


@dataclass(frozen=True, slots=True)
class _Filters:
    service: str | None = None
    reason: str | None = None
    handler: str | None = None
    event_type: str | None = None
    topic: str | None = None

    def given(self) -> bool:
        return any(
            value is not None
            for value in (self.service, self.reason, self.handler, self.event_type, self.topic)
        )

    async def letters(self, broker: Broker, *, include_resolved: bool) -> list[dlq.DeadLetter]:
        return await dlq.list_dead_letters(
            broker,
            service=self.service,
            reason=self.reason,
            handler=self.handler,
            event_type=self.event_type,
            topic=self.topic,
            include_resolved=include_resolved,
        )


def _interactive() -> bool:
    """True if stdin is a terminal a confirmation can be asked on."""
    return sys.stdin is not None and sys.stdin.isatty()


async def _select_letters(
    broker: Broker, ids: Sequence[str], filters: _Filters
) -> list[dlq.DeadLetter]:
    """The unresolved dead letters named by `ids` (within `filters`), or every unresolved one
    matching `filters` when no id is given. DeadLetterError for an id that names nothing or
    only resolved letters."""
    if not ids:
        return await filters.letters(broker, include_resolved=False)
    letters = await filters.letters(broker, include_resolved=True)
    chosen: dict[str, dlq.DeadLetter] = {}
    for ident in ids:
        matching = [x for x in letters if x.matches(ident)]
        if not matching:
            within = " matching the filters" if filters.given() else ""
            raise dlq.DeadLetterError(
                f"no dead letter with id {ident!r}{within} (see `tidings dlq list`)"
            )
        unresolved = [x for x in matching if x.resolution is None]
        if not unresolved:
            resolution = matching[-1].resolution
            assert resolution is not None
            raise dlq.DeadLetterError(
                f"dead letter {ident} was already {resolution.action} at "
                f"{resolution.at.isoformat(timespec='seconds')}"
            )
        for letter in unresolved:
            chosen.setdefault(letter.position, letter)
    return list(chosen.values())


def _require_selection(
    action: str, ids: Sequence[str], select_all: bool, filters: _Filters
) -> None:
    if ids and select_all:
        _fail(f"give dead letter ids or --all, not both (nothing was {action})")
    if not ids and not select_all and not filters.given():
        _fail(
            f"say which dead letters: give their ids (see `tidings dlq list`), --all, or a filter "
            f"(--service, --reason, --handler, --type, --topic); nothing was {action}"
        )


def _print_wide(table: Table, *, stderr: bool = False) -> None:
    """Print `table` at its natural width, even if wider than the terminal."""
    console = Console(stderr=stderr, highlight=False)
    width = console.measure(table, options=console.options.update_width(100_000)).maximum
    if width > console.width:
        console = Console(stderr=stderr, highlight=False, width=width)
    console.print(table)


def _status(letter: dlq.DeadLetter) -> str:
    return "dead" if letter.resolution is None else letter.resolution.action


def _short(text: str | None, width: int = MESSAGE_WIDTH) -> str:
    lines = (text or "").strip().splitlines()
    if not lines:
        return "-"
    line = lines[0] + (" …" if len(lines) > 1 else "")
    return line if len(line) <= width else line[: width - 1] + "…"


def _printable(text: str) -> str:
    """`text` with control characters (other than newline and tab) escaped."""
    return "".join(
        c if c.isprintable() or c in "\n\t" else c.encode("unicode_escape").decode("ascii")
        for c in text
    )


def _letter_json(letter: dlq.DeadLetter) -> dict[str, Any]:
    resolution = letter.resolution
    return {
        "id": letter.id,
        "dlq": {
            "topic": letter.dlq_topic,
            "partition": letter.dlq_partition,
            "offset": letter.dlq_offset,
        },
        "service": letter.service,
        "event_id": letter.event_id,
        "type": letter.event_type,
        "version": letter.event_version,
        "reason": letter.reason,
        "exception": letter.exception,
        "message": letter.message,
        "traceback": letter.traceback,
        "original": {
            "topic": letter.original_topic,
            "partition": letter.original_partition,
            "offset": letter.original_offset,
        },
        "handler": letter.handler,
        "attempts": letter.attempts,
        "time": letter.time,
        "status": _status(letter),
        "resolved_at": None if resolution is None else resolution.at,
        "key": None if letter.record.key is None else _text(letter.record.key),
        "headers": letter.headers,
        "event": letter.event,
        "decode_error": letter.decode_error,
    }


def _letters_table(letters: Sequence[dlq.DeadLetter], *, status: bool = False) -> Table:
    """One line per letter, never wrapped (ids must stay whole to be copied): print it with
    `_print_wide`. Messages are cut at MESSAGE_WIDTH characters."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for name in ("ID", "Type", "Reason", "Handler", "Origin", "Attempts", "Time", "Message"):
        table.add_column(name, no_wrap=True)
    if status:
        table.add_column("Status", no_wrap=True)
    for letter in letters:
        row = [
            letter.id,
            _or_dash(letter.event_type),
            _or_dash(letter.reason),
            _or_dash(letter.handler),
            letter.origin,
            _or_dash(letter.attempts),
            letter.time.strftime("%Y-%m-%d %H:%M:%S"),
            _short(letter.message),
        ]
        if status:
            row.append(_status(letter))
        table.add_row(*(Text(cell) for cell in row))
    return table


@dlq_app.command("list")
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
    filters = _Filters(service, reason, handler, event_type, topic)
    letters = _run(ctx, lambda broker: filters.letters(broker, include_resolved=include_resolved))
    if as_json:
        _print_json([_letter_json(letter) for letter in letters])
        return
    if not letters:
        _console().print("no dead letters")
        return
    _print_wide(_letters_table(letters, status=include_resolved))
    _console().print(f"{len(letters)} dead letter(s)", markup=False)


@dlq_app.command("show")
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

    async def find(broker: Broker) -> list[dlq.DeadLetter]:
        letters = dlq.select(await dlq.list_dead_letters(broker, include_resolved=True), [ident])
        unresolved = [x for x in letters if x.resolution is None]
        return unresolved or letters

    letters = _run(ctx, find)
    if as_json:
        _print_json([_letter_json(letter) for letter in letters])
        return
    out = Console(highlight=False, soft_wrap=True)
    for index, letter in enumerate(letters):
        if index:
            out.print()
        _show_letter(out, letter)


def _show_letter(out: Console, letter: dlq.DeadLetter) -> None:
    def line(label: str, value: object) -> None:
        out.print(f"{label + ':':<14}{_or_dash(value)}", markup=False)

    out.print(f"dead letter {letter.id}", style="bold", markup=False)
    line("position", letter.position)
    status = _status(letter)
    if letter.resolution is not None:
        status += f" at {letter.resolution.at.isoformat(timespec='seconds')}"
    line("status", status)
    line("reason", letter.reason)
    line("handler", letter.handler)
    line("origin", letter.origin)
    line("attempts", letter.attempts)
    line("time", letter.time.isoformat())
    line("exception", letter.exception)
    line("message", letter.message)
    out.print("\nheaders:", style="bold")
    for name, value in letter.record.headers:
        text = "(see traceback below)" if name == dlq.TRACEBACK else _printable(_text(value))
        out.print(f"  {name}: {text}", markup=False)
    out.print("\ntraceback:", style="bold")
    out.print(_printable(letter.traceback or "-").rstrip(), markup=False)
    if letter.event is not None:
        out.print("\nevent:", style="bold")
        out.print(
            msgspec.json.format(msgspec.json.encode(letter.event), indent=2).decode(),
            markup=False,
        )
    else:
        out.print(f"\nraw value (does not decode: {letter.decode_error}):", style="bold")
        if letter.record.key is not None:
            out.print(f"key: {_printable(_text(letter.record.key))}", markup=False)
        out.print(_printable(_text(letter.record.value)), markup=False)


@dlq_app.command("replay")
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
    filters = _Filters(service, reason, handler, event_type, topic)
    _require_selection("replayed", ids, select_all, filters)

    async def go(broker: Broker) -> tuple[list[dlq.Replayed], list[dlq.DeadLetter]]:
        letters = await _select_letters(broker, ids, filters)
        skipped: list[dlq.DeadLetter] = []
        if not ids:
            skipped = [x for x in letters if x.event is None]
            letters = [x for x in letters if x.event is not None]
        return await dlq.replay(broker, letters), skipped

    replayed, skipped = _run(ctx, go)
    if as_json:
        _print_json(
            {
                "replayed": [
                    {
                        "id": r.letter.id,
                        "dlq": r.letter.position,
                        "handler": r.letter.handler,
                        "topic": r.topic,
                        "partition": r.partition,
                        "offset": r.offset,
                    }
                    for r in replayed
                ],
                "count": len(replayed),
                "skipped": [
                    {"id": x.id, "reason": "does not decode into an event"} for x in skipped
                ],
            }
        )
        return
    if replayed:
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
        for name in ("ID", "Handler", "Replayed to"):
            table.add_column(name, no_wrap=True)
        for r in replayed:
            table.add_row(
                Text(r.letter.id),
                Text(_or_dash(r.letter.handler)),
                Text(f"{r.topic}[{r.partition}]@{r.offset}"),
            )
        _print_wide(table)
    _console().print(f"replayed {len(replayed)} dead letter(s)", markup=False)
    if skipped:
        Console(stderr=True, soft_wrap=True, highlight=False).print(
            f"warning: skipped {len(skipped)} dead letter(s) that do not decode into an event "
            f"(replaying would only dead-letter them again): {', '.join(x.id for x in skipped)}; "
            "inspect them with `tidings dlq show`, remove them with `tidings dlq purge`",
            style="yellow",
            markup=False,
        )


@dlq_app.command("purge")
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
    filters = _Filters(service, reason, handler, event_type, topic)
    _require_selection("purged", ids, select_all, filters)
    if not yes and not _interactive():
        _fail("purge needs --yes when stdin is not a terminal (nothing was purged)")
    letters = _run(ctx, lambda broker: _select_letters(broker, ids, filters))
    if letters and not yes:
        _print_wide(_letters_table(letters), stderr=True)
        if not typer.confirm(f"Purge these {len(letters)} dead letter(s)?", err=True):
            Console(stderr=True, highlight=False).print("nothing was purged", markup=False)
            raise typer.Exit(1)
    purged = _run(ctx, lambda broker: dlq.purge(broker, letters)) if letters else []
    if as_json:
        _print_json(
            {
                "purged": [{"id": x.id, "dlq": x.position, "handler": x.handler} for x in purged],
                "count": len(purged),
            }
        )
        return
    console = _console()
    for letter in purged:
        console.print(f"purged {letter.id} ({letter.position})", markup=False)
    console.print(f"purged {len(purged)} dead letter(s)", markup=False)


# tail ----------------------------------------------------------------------------------


class _Progress:
    """Per partition, the next offset tail shows; knows when tail has reached the offsets the
    topic ended at when tail started (the stopping point of --no-follow)."""

    def __init__(self, info: TopicInfo, start: SeekTo) -> None:
        self.ends = {TopicPartition(info.name, p.partition): p.end_offset for p in info.partitions}
        self.seek_to = None if start.earliest or start.latest else start
        self.next: dict[TopicPartition, int] = {}
        if start.earliest:
            self.next = {
                TopicPartition(info.name, p.partition): p.start_offset for p in info.partitions
            }
        elif start.latest:
            self.next = dict(self.ends)

    async def place(self, consumer: Consumer, batch: Batch | None) -> Batch | None:
        """Seek partitions newly assigned to `consumer` (offset or time starts only); returns
        `batch` unless it came from such a partition (seeking discarded it)."""
        if self.seek_to is None:
            return batch
        seeker = require(consumer, CanSeek, "move its partitions")
        fresh = consumer.assignment() - self.next.keys()
        for tp in fresh:
            self.next[tp] = await seeker.seek(tp, self.seek_to)
        return None if batch is not None and batch.tp in fresh else batch

    def advance(self, tp: TopicPartition, offset: int) -> None:
        self.next[tp] = offset

    def skip_removed(self, info: TopicInfo) -> None:
        """Records deleted by retention will never arrive: count them as shown."""
        for p in info.partitions:
            tp = TopicPartition(info.name, p.partition)
            if tp in self.next:
                self.next[tp] = max(self.next[tp], p.start_offset)

    def caught_up(self) -> bool:
        return all(self.next.get(tp, -1) >= end for tp, end in self.ends.items())


async def _tail(
    broker: Broker,
    topic: str,
    start: SeekTo,
    limit: int | None,
    follow: bool,
    show: Callable[[Record], None],
) -> None:
    """Show records of `topic` from `start`, through a private group that never commits."""
    progress = _Progress(await broker.admin.describe_topic(topic), start)
    shown = 0

    def done() -> bool:
        return (not follow and progress.caught_up()) or (limit is not None and shown >= limit)

    if done():
        return
    reset = OffsetReset.EARLIEST if start.earliest else OffsetReset.LATEST
    group = f"tidings-tail-{uuid.uuid4().hex[:12]}"
    timeout = 0.0
    async with broker.subscribe(group, [topic], auto_offset_reset=reset) as consumer:
        while not done():
            batch = await progress.place(consumer, await consumer.fetch(timeout))
            timeout = TAIL_POLL_S
            if batch is None:
                if not follow:
                    progress.skip_removed(await broker.admin.describe_topic(topic))
                continue
            records = batch.records if limit is None else batch.records[: limit - shown]
            for record in records:
                show(record)
            shown += len(records)
            progress.advance(batch.tp, records[-1].offset + 1)
            # nack at the next offset moves on without acking: an ack would be committed.
            consumer.nack(batch, records[-1].offset + 1)


def _data_text(data: object) -> str:
    if isinstance(data, bytes):
        return "base64:" + base64.b64encode(data).decode()
    return msgspec.json.encode(data).decode()


def _text(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat(timespec="milliseconds")
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return str(value)


class _EventPrinter:
    """Shows one record as a decoded event, or as an error line if it does not decode."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.out = Console(highlight=False, soft_wrap=True)
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)

    def __call__(self, record: Record) -> None:
        try:
            event = event_from_record(record)
        except DecodeError as exc:
            self.error(record, str(exc))
        else:
            self.event(record, event)

    def event(self, record: Record, event: Event) -> None:
        if self.as_json:
            _print_json_line({**_position(record), "event": event})
            return
        line = Text.assemble(
            (_text(event.time), "dim"),
            "  ",
            (f"{record.topic}[{record.partition}]@{record.offset}", "cyan"),
            "  ",
            (f"{event.type} v{event.version}", "bold"),
        )
        if event.key is not None:
            line.append(f"  key={_text(event.key)}")
        if event.correlation_id is not None:
            line.append(f"  correlation={_text(event.correlation_id)}")
        line.append("  " + _data_text(event.data))
        self.out.print(line)

    def error(self, record: Record, reason: str) -> None:
        """`reason` names the record's position (event_from_record's DecodeError does)."""
        if self.as_json:
            _print_json_line({**_position(record), "error": reason})
            return
        self.err.print(f"error: {reason}", style="red", markup=False)


def _position(record: Record) -> dict[str, Any]:
    return {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": record.timestamp,
    }


@app.command(
    epilog=(
        "A record that does not decode into an event is reported with its position (on stderr, "
        'or as a JSON line with an "error" key under --json) and tail goes on. Tail joins a '
        "private consumer group and never commits offsets."
    )
)
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
    position = _parse_position(start)
    printer = _EventPrinter(as_json)
    with contextlib.suppress(KeyboardInterrupt):
        _run(ctx, lambda broker: _tail(broker, topic, position, limit, follow, printer))


@app.command()
def run(
    ctx: typer.Context,
    target: Annotated[str, typer.Argument(help="module:attribute of a tidings.Service")],
    grace: Annotated[
        float, typer.Option("--grace", min=0, help="Seconds to finish in-flight work on SIGTERM")
    ] = 30.0,
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning")] = "info",
) -> None:
    """Run a service (its consumers and outbox relay) until SIGTERM or Ctrl-C.

    The first signal finishes in-flight work within --grace seconds and exits 0; a second one
    exits at once (nothing committed is lost, nothing is applied twice)."""
    import logging
    import os
    import sys

    from tidings.service import Service

    level = getattr(logging, log_level.upper(), None)
    if not isinstance(level, int):
        _fail(f"unknown log level {log_level!r}; use debug, info or warning")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        _fail(f"expected MODULE:SERVICE (e.g. myapp.billing:service), got {target!r}")
    sys.path.insert(0, os.getcwd())
    os.environ["TIDINGS_BROKER"] = str(ctx.obj)
    try:
        import importlib

        module = importlib.import_module(module_name)
    except ImportError as exc:
        _fail(f"cannot import {module_name!r}: {exc}")
    service = getattr(module, attribute, None)
    if not isinstance(service, Service):
        _fail(f"{target!r} is not a tidings.Service (found {type(service).__name__})")
    try:
        asyncio.run(service.run(grace_period=grace))
    except TidingsError as exc:
        _fail(str(exc))


EXAMPLE = Path("examples", "orders", "__main__.py")
DEMO_EXTRA = ("starlette", "uvicorn", "httpx")
DEMO_HINT = (
    "run `tidings demo` from the repository root, with the demo extra installed "
    "(pip install -e '.[demo]')"
)


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def demo(ctx: typer.Context) -> None:
    """Run the article's order system (examples/orders in a tidings checkout); options as
    `python -m examples.orders` (see `tidings demo --help`), e.g. `--orders 500 --exit`.

    It runs on the embedded default under ./.tidings; `tidings --broker kafka://... demo` or
    TIDINGS_BROKER / TIDINGS_STORE put it on Kafka and PostgreSQL."""
    # The library does not import the example: the command becomes `python -m examples.orders`
    # (exec: arguments, signals, terminal and exit status are the example's).
    root = Path.cwd()
    if not (root / EXAMPLE).is_file():
        _fail(
            f"the demo is the examples/orders package of a tidings source checkout, and "
            f"{root} has no {EXAMPLE}; {DEMO_HINT}"
        )
    missing = [name for name in DEMO_EXTRA if importlib.util.find_spec(name) is None]
    if missing:
        _fail(f"the demo needs {', '.join(missing)}, which are not installed; {DEMO_HINT}")
    env = dict(os.environ)
    if ctx.obj != DEFAULT_BROKER:
        env["TIDINGS_BROKER"] = str(ctx.obj)
    argv = [sys.executable, "-m", "examples.orders", *ctx.args]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)  # noqa: S606 (an argv list; no shell is wanted)


if __name__ == "__main__":
    main()


def _inspect(broker: Broker) -> CanInspect:
    return require(broker.admin, CanInspect, "list topics and groups")
