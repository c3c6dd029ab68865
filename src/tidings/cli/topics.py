"""`tidings topics list|create|describe`."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from tidings import ops
from tidings.cli.common import JsonOption, console, print_json, run, warn
from tidings.cli.views import retention, topic_json

app = typer.Typer(help="Create and inspect topics.", no_args_is_help=True)


@app.command("list")
def topics_list(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Every topic: partitions, records, offsets and retention."""
    infos = run(ctx, ops.list_topics)
    if as_json:
        print_json([topic_json(info) for info in infos])
        return
    table = Table("Topic", "Partitions", "Records", "Offsets", "Retention")
    for info in infos:
        offsets = " ".join(f"{p.start_offset}..{p.end_offset}" for p in info.partitions)
        table.add_row(
            info.name, str(len(info.partitions)), str(info.records), offsets, retention(info)
        )
    console().print(table if infos else "no topics")


@app.command("create")
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
    created = run(
        ctx,
        create=True,
        action=lambda broker: ops.create_topic(
            broker,
            name,
            partitions,
            retention_ms=retention_ms,
            retention_bytes=retention_bytes,
            exist_ok=exist_ok,
        ),
    )
    if created.mismatched:
        warn(f"topic {name!r} already exists with other settings; left unchanged", highlight=True)
    info = created.info
    if as_json:
        print_json(topic_json(info))
        return
    console().print(
        f"topic {info.name}: {len(info.partitions)} partition(s), retention {retention(info)}",
        markup=False,
    )


@app.command("describe")
def topics_describe(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help="Topic name.")],
    as_json: JsonOption = False,
) -> None:
    """One topic: start offset, end offset and record count per partition."""
    info = run(ctx, lambda broker: ops.describe_topic(broker, name))
    if as_json:
        print_json(topic_json(info))
        return
    table = Table(
        "Partition",
        "Start offset",
        "End offset",
        "Records",
        title=f"{info.name} (retention {retention(info)}, {info.records} records)",
    )
    for p in info.partitions:
        table.add_row(str(p.partition), str(p.start_offset), str(p.end_offset), str(p.records))
    console().print(table)
