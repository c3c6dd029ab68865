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

`--broker URL` (or `TIDINGS_BROKER`; default `sqlite:///.tidings/bus.db`) picks the broker.
Commands that show data print tables, or one JSON document with `--json` (`tail --json` prints
JSON Lines). Errors a user can cause (bad arguments, unknown topics, a group with live members,
an unusable database) print `error: <message>` on stderr and exit with status 2.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any, NoReturn, TypeVar

import msgspec
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from tidings.brokers import connect
from tidings.brokers.base import (
    Batch,
    Broker,
    Consumer,
    GroupInfo,
    OffsetReset,
    Record,
    SeekTo,
    TopicInfo,
    TopicPartition,
)
from tidings.errors import ConfigError, DecodeError, TidingsError
from tidings.event import Event, event_from_record

DEFAULT_BROKER = "sqlite:///.tidings/bus.db"
TAIL_POLL_S = 0.5
POSITION_HELP = "earliest, latest, an offset, or an ISO-8601 time (naive means UTC)"

T = TypeVar("T")

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False)
topics_app = typer.Typer(help="Create and inspect topics.", no_args_is_help=True)
groups_app = typer.Typer(help="Inspect consumer groups.", no_args_is_help=True)
app.add_typer(topics_app, name="topics")
app.add_typer(groups_app, name="groups")

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
            help="Broker URL: sqlite:///relative/bus.db or sqlite:////absolute/bus.db",
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


def _run(ctx: typer.Context, action: Callable[[Broker], Awaitable[T]]) -> T:
    """Connect to the broker, run `action`, close the broker; TidingsError exits with 2."""
    url = str(ctx.obj)

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
    infos = _run(ctx, lambda broker: broker.admin.list_topics())
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
        lambda broker: broker.admin.create_topic(
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
    for name in await broker.admin.list_groups():
        try:
            described.append((name, await broker.admin.describe_group(name)))
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
    info = _run(ctx, lambda broker: broker.admin.describe_group(group))
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
        info = await broker.admin.describe_group(group)
        topics = sorted({p.topic for p in info.partitions if p.committed is not None})
        if not topics:
            raise ConfigError(
                f"consumer group {group!r} has no committed offsets; name topics with --topic"
            )
    return await broker.admin.reset_offsets(group, topics, to)


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
        fresh = consumer.assignment() - self.next.keys()
        for tp in fresh:
            self.next[tp] = await consumer.seek(tp, self.seek_to)
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


if __name__ == "__main__":
    main()
