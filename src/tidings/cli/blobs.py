"""`tidings blobs list|gc`: the claim-checked payloads in a directory blob store."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.table import Table

from tidings.blobs import BlobInfo, DirectoryBlobStore, check_blob_name
from tidings.cli.common import JsonOption, console, fail, print_json
from tidings.errors import TidingsError
from tidings.runtime.claimcheck import collect_garbage, default_blob_store

app = typer.Typer(
    help="Claim-checked payloads: list them, delete those past retention.", no_args_is_help=True
)

DirOption = Annotated[
    str | None,
    typer.Option(
        "--dir",
        envvar="TIDINGS_BLOBS",
        help="The blob directory (default: blobs/ next to the embedded broker's file, else "
        ".tidings/blobs).",
    ),
]
ServiceOption = Annotated[
    str | None, typer.Option("--service", help="Only the blobs this service published.")
]
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _store(ctx: typer.Context, directory: str | None) -> DirectoryBlobStore:
    store = default_blob_store(directory, str(ctx.obj), environ={})
    assert isinstance(store, DirectoryBlobStore)
    return store


def _prefix(service: str | None) -> str:
    if service is None:
        return ""
    try:
        return check_blob_name(service) + "/"
    except TidingsError as exc:
        fail(str(exc))


def _seconds(text: str) -> float:
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        fail(f"invalid duration {text!r}: use seconds or a number with s, m, h or d (e.g. 7d)")
    return float(match[1]) * _UNITS[match[2]]


def _json(info: BlobInfo) -> dict[str, object]:
    return {"name": info.name, "size": info.size, "created": info.created.isoformat()}


@app.command("list")
def blobs_list(
    ctx: typer.Context,
    directory: DirOption = None,
    service: ServiceOption = None,
    as_json: JsonOption = False,
) -> None:
    """Every blob (a claim-checked payload): name, size and when it was written."""
    store = _store(ctx, directory)
    prefix = _prefix(service)

    async def collect() -> list[BlobInfo]:
        return [info async for info in store.list(prefix)]

    try:
        infos = sorted(asyncio.run(collect()), key=lambda info: info.name)
    except TidingsError as exc:
        fail(str(exc))
    if as_json:
        print_json([_json(info) for info in infos])
        return
    now = datetime.now(UTC)
    table = Table("Blob", "Bytes", "Age")
    for info in infos:
        table.add_row(info.name, str(info.size), f"{(now - info.created).total_seconds():.0f}s")
    console().print(table if infos else f"no blobs in {store.root}")


@app.command("gc")
def blobs_gc(
    ctx: typer.Context,
    retention: Annotated[
        str,
        typer.Option(
            help="Delete blobs written longer ago than this: seconds, or e.g. 12h, 7d. Keep "
            "it longer than any consumer may lag or a dead letter wait for its replay."
        ),
    ] = "7d",
    directory: DirOption = None,
    service: ServiceOption = None,
    as_json: JsonOption = False,
) -> None:
    """Delete blobs past retention (a running service does it for its own blobs every
    10 minutes, with its blob_retention_s)."""
    store = _store(ctx, directory)
    seconds = _seconds(retention)
    try:
        deleted = asyncio.run(collect_garbage(store, prefix=_prefix(service), retention_s=seconds))
    except TidingsError as exc:
        fail(str(exc))
    if as_json:
        print_json({"deleted": sorted(deleted)})
        return
    console().print(f"deleted {len(deleted)} blob(s) older than {retention} from {store.root}")
