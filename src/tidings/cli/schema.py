"""`tidings schema` (the registry kept in the broker) and `tidings asyncapi`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from tidings import compat
from tidings.cli.common import fail, print_json, print_wide, run
from tidings.cli.run import load_service
from tidings.errors import TidingsError
from tidings.ops import schemas
from tidings.registry import SchemaRegistry

app = typer.Typer(no_args_is_help=True, help="Event schemas registered in the broker.")

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON")]
Targets = Annotated[list[str], typer.Argument(help="MODULE:SERVICE of each tidings.Service")]


async def _registry(broker: object) -> SchemaRegistry:
    """The registry, read without writing (a broker without one has an empty registry)."""
    from tidings.brokers.base import Broker

    assert isinstance(broker, Broker)
    return await schemas.read_registry(broker)


@app.command("list")
def list_schemas(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Every registered event type: its versions, compatibility mode, who registered it."""
    types = schemas.list_types(run(ctx, _registry))
    if as_json:
        print_json(
            [
                {
                    "type": t.type,
                    "versions": [r.version for r in t.versions],
                    "mode": t.mode.value,
                    "registeredBy": t.latest.service,
                    "at": t.latest.at.isoformat(timespec="seconds"),
                    "publishedBy": list(t.published_by),
                    "handledBy": list(t.handled_by),
                }
                for t in types
            ]
        )
        return
    from rich.table import Table

    table = Table("TYPE", "VERSIONS", "MODE", "LATEST BY", "AT")
    for t in types:
        table.add_row(
            t.type,
            ", ".join(str(r.version) for r in t.versions),
            t.mode.value,
            t.latest.service,
            t.latest.at.isoformat(timespec="seconds"),
        )
    print_wide(table)


@app.command()
def show(
    ctx: typer.Context,
    event_type: Annotated[str, typer.Argument(metavar="TYPE")],
    version: Annotated[int | None, typer.Option("--version", help="Default: the latest")] = None,
) -> None:
    """The JSON Schema registered for an event type's version."""
    registry = run(ctx, _registry)
    try:
        latest = schemas.get_type(registry, event_type).latest.version
        registration = schemas.get_version(registry, event_type, version or latest)
    except TidingsError as exc:
        fail(str(exc))
    print_json(registration.schema)


@app.command()
def diff(
    ctx: typer.Context,
    event_type: Annotated[str, typer.Argument(metavar="TYPE")],
    old: Annotated[int, typer.Argument(metavar="V1")],
    new: Annotated[int, typer.Argument(metavar="V2")],
    as_json: JsonOption = False,
) -> None:
    """What changed from version V1 to V2, and whether it breaks the type's mode."""
    registry = run(ctx, _registry)
    try:
        found = schemas.diff(registry, event_type, old, new)
    except TidingsError as exc:
        fail(str(exc))
    if as_json:
        print_json(
            {
                "type": event_type,
                "from": old,
                "to": new,
                "mode": found.mode.value,
                "differences": [
                    {
                        "kind": c.rule,
                        "path": c.path,
                        "message": c.message,
                        "compatible": c.difference.compatible,
                        "breaksMode": c.breaks,
                    }
                    for c in found.changes
                ],
                "breaking": [str(b) for b in found.breaking],
            }
        )
        return
    for change in found.changes:
        typer.echo(("! " if change.breaks else "  ") + str(change.difference))
    if not found.changes:
        typer.echo("no differences")
    typer.echo(
        f"{found.mode.value}: "
        + (
            f"breaking as schemas alone (registered only with an upcaster chain from v{old})"
            if found.breaking
            else "compatible"
        )
    )


@app.command()
def mode(
    ctx: typer.Context,
    event_type: Annotated[str, typer.Argument(metavar="TYPE")],
    value: Annotated[
        str | None, typer.Argument(metavar="MODE", help="BACKWARD, FULL_TRANSITIVE, NONE...")
    ] = None,
) -> None:
    """Show or set the compatibility mode of an event type (default BACKWARD)."""

    async def act(broker: object) -> compat.Mode:
        registry = await _registry(broker)
        if value is None:
            return registry.mode(event_type)
        try:
            return await registry.set_mode(event_type, value)
        except ValueError as exc:
            raise TidingsError(str(exc)) from None

    typer.echo(f"{event_type}: {run(ctx, act).value}")


@app.command()
def export(
    ctx: typer.Context,
    directory: Annotated[Path, typer.Argument(help="Where to write TYPE.vN.json files")],
) -> None:
    """Write every registered schema to a directory (to commit, and check against in CI)."""
    registry = run(ctx, _registry)
    written = registry.export(directory)
    typer.echo(f"wrote {len(written)} schema(s) to {directory}")


@app.command()
def check(
    ctx: typer.Context,
    targets: Targets,
    against: Annotated[
        str, typer.Option("--against", help="'registry' (the broker's) or a directory")
    ] = "registry",
) -> None:
    """Check that the services' event models can be registered: exit 1 naming every breaking
    change (JSON path, rule) or schema conflict, for CI."""
    services = [load_service(target) for target in targets]
    if against == "registry":
        registry = run(ctx, _registry)
    else:
        try:
            registry = SchemaRegistry.from_directory(against)
        except TidingsError as exc:
            fail(str(exc))
    problems: list[str] = []
    checked = 0
    for service in services:
        handled = [h.model for h in service.handlers if h.model is not None]
        published = [m for models in service.publications.values() for m in models]
        checked += len({(m.event_type, m.event_version) for m in handled + published})
        problems += [f"{service.name}: {p}" for p in registry.problems(published, handled)]
    for problem in problems:
        typer.echo(problem, err=True)
    if problems:
        typer.echo(f"{len(problems)} breaking change(s)", err=True)
        raise typer.Exit(1)
    typer.echo(f"{checked} event schema(s) of {len(services)} service(s) are compatible")


def asyncapi(
    ctx: typer.Context,
    targets: Targets,
    output_format: Annotated[
        Literal["yaml", "json"], typer.Option("--format", help="yaml or json")
    ] = "yaml",
    output: Annotated[Path | None, typer.Option("-o", "--output", help="File to write")] = None,
    title: Annotated[str, typer.Option("--title")] = "tidings services",
    version: Annotated[str, typer.Option("--version")] = "1.0.0",
) -> None:
    """Write the AsyncAPI 3.0 document of the services: servers, channels, operations and
    messages with their JSON Schemas."""
    from tidings.asyncapi import document, dumps

    services = [load_service(target) for target in targets]
    try:
        text = dumps(
            document(services, title=title, version=version, broker_url=str(ctx.obj)),
            format=output_format,
        )
    except TidingsError as exc:
        fail(str(exc))
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text)
        typer.echo(f"wrote {output}")


__all__ = ["app", "asyncapi"]
