"""`tidings rebuild MODULE:SERVICE HANDLER [--from earliest|TIME]`: clear what one handler built
(its reset hook) and re-deliver its topics to it alone, when the service next runs."""

from __future__ import annotations

import asyncio
import os
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from tidings import ops
from tidings.cli.common import JsonOption, console, fail, parse_position, print_json
from tidings.cli.run import load_service
from tidings.errors import TidingsError

if TYPE_CHECKING:
    from tidings.service import Service


def rebuild(
    ctx: typer.Context,
    target: Annotated[
        str, typer.Argument(metavar="MODULE:SERVICE", help="The tidings.Service, as for run")
    ],
    handler: Annotated[
        str, typer.Argument(metavar="HANDLER", help="The handler to rebuild (its name)")
    ],
    since: Annotated[
        str,
        typer.Option(
            "--from",
            help="earliest, or an ISO-8601 time (naive means UTC): re-deliver what was "
            "appended from then on",
        ),
    ] = "earliest",
    as_json: JsonOption = False,
) -> None:
    """Rebuild one handler of a stopped service: run its reset hook, forget its inbox entries,
    and re-deliver its topics from --from to that handler only, when the service next runs.

    Refused while the service has live members (stop it first, as for `tidings replay`). Its
    other handlers do not see those events again. Run it again if it was interrupted."""
    position = parse_position(since)
    if position.offset is not None or position.latest:
        fail(f"--from takes earliest or an ISO-8601 time, not {since!r}")
    when = position.timestamp
    os.environ["TIDINGS_BROKER"] = str(ctx.obj)
    service = load_service(target)
    try:
        result = asyncio.run(_rebuild(service, handler, when))
    except TidingsError as exc:
        fail(str(exc))
    if as_json:
        print_json(rebuild_json(result))
        return
    out = console()
    table = Table(
        "Topic",
        "Partition",
        "From",
        "To",
        "Records",
        "Resumes at",
        title=f"{result.handler} takes again",
    )
    for p in result.partitions:
        table.add_row(
            p.topic, str(p.partition), str(p.start), str(p.end), str(p.records), str(p.resume)
        )
    out.print(table)
    out.print(
        f"reset hook run; {result.forgotten} inbox entr{'y' if result.forgotten == 1 else 'ies'}"
        f" forgotten. Start {result.service} (tidings run {target}) to re-deliver "
        f"{result.records} record(s) to {result.handler}; its other handlers go on from "
        "where they were.",
        markup=False,
    )


async def _rebuild(service: Service, handler: str, since: datetime | None) -> ops.Rebuild:
    try:
        return await ops.rebuild(service, handler, since)
    finally:
        await service.close()


def rebuild_json(result: ops.Rebuild) -> dict[str, Any]:
    return {
        "service": result.service,
        "handler": result.handler,
        "since": None if result.since is None else result.since.isoformat(),
        "forgotten": result.forgotten,
        "records": result.records,
        "partitions": [
            {
                "topic": p.topic,
                "partition": p.partition,
                "from": p.start,
                "to": p.end,
                "records": p.records,
                "resume": p.resume,
            }
            for p in result.partitions
        ],
    }
