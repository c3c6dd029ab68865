"""`tidings groups list|describe` and `tidings replay` (reset a group's offsets)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from tidings import ops
from tidings.cli.common import POSITION_HELP, JsonOption, console, parse_position, print_json, run
from tidings.cli.views import group_json, group_summary_json, or_dash, reset_json

app = typer.Typer(help="Inspect consumer groups.", no_args_is_help=True)


@app.command("list")
def groups_list(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Every consumer group with its live members and total lag."""
    groups = run(ctx, ops.list_groups)
    if as_json:
        print_json([group_summary_json(group) for group in groups])
        return
    table = Table("Group", "Members", "Lag")
    for group in groups:
        table.add_row(group.name, or_dash(group.members), or_dash(group.lag))
    console().print(table if groups else "no consumer groups")


@app.command("describe")
def groups_describe(
    ctx: typer.Context,
    group: Annotated[str, typer.Argument(metavar="GROUP", help="Consumer group name.")],
    as_json: JsonOption = False,
) -> None:
    """One group: its live members and, per partition, committed offset, end offset and lag."""
    info = run(ctx, lambda broker: ops.describe_group(broker, group))
    if as_json:
        print_json(group_json(info))
        return
    out = console()
    out.print(
        f"group {info.name}: {len(info.members)} live member(s), lag {info.lag}", markup=False
    )
    if info.members:
        members = Table("Member", "Client", "Topics", "Partitions", title="Members")
        for m in info.members:
            owned = " ".join(str(tp) for tp in m.partitions) or "-"
            members.add_row(m.member_id, m.client, " ".join(m.topics), owned)
        out.print(members)
    offsets = Table("Topic", "Partition", "Committed", "End offset", "Lag", "Owner")
    for p in info.partitions:
        offsets.add_row(
            p.topic,
            str(p.partition),
            or_dash(p.committed),
            str(p.end_offset),
            str(p.lag),
            or_dash(p.owner),
        )
    out.print(offsets)


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
    position = parse_position(to)
    reset = run(ctx, lambda broker: ops.reset_offsets(broker, group, position, topics or ()))
    if as_json:
        print_json(reset_json(reset))
        return
    table = Table("Topic", "Partition", "Offset", title=f"group {group} resumes at")
    for o in reset.offsets:
        table.add_row(o.topic, str(o.partition), str(o.offset))
    console().print(table)
