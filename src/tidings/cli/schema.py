"""`tidings schema` (the registry kept in the broker) and `tidings asyncapi`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from tidings import compat
from tidings.cli.common import fail, print_json, print_wide, run
from tidings.cli.run import load_service
from tidings.errors import TidingsError
from tidings.registry import SchemaRegistry

app = typer.Typer(no_args_is_help=True, help="Event schemas registered in the broker.")

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON")]
Targets = Annotated[list[str], typer.Argument(help="MODULE:SERVICE of each tidings.Service")]


async def _registry(broker: object) -> SchemaRegistry:
    from tidings.brokers.base import Broker

    assert isinstance(broker, Broker)
    return await SchemaRegistry(broker).load()


@app.command("list")
def list_schemas(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Every registered event type: its versions, compatibility mode, who registered it."""
    registry = run(ctx, _registry)
    rows: list[dict[str, object]] = []
    for event_type in registry.types():
        versions = registry.versions(event_type)
        rows.append(
            {
                "type": event_type,
                "versions": [r.version for r in versions],
                "mode": registry.mode(event_type).value,
                "registeredBy": versions[-1].service,
                "at": versions[-1].at.isoformat(timespec="seconds"),
            }
        )
    if as_json:
        print_json(rows)
        return
    from rich.table import Table

    table = Table("TYPE", "VERSIONS", "MODE", "LATEST BY", "AT")
    for event_type in registry.types():
        versions = registry.versions(event_type)
        table.add_row(
            event_type,
            ", ".join(str(r.version) for r in versions),
            registry.mode(event_type).value,
            versions[-1].service,
            versions[-1].at.isoformat(timespec="seconds"),
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
    versions = registry.versions(event_type)
    if not versions:
        fail(f"no schema registered for {event_type} (see `tidings schema list`)")
    registration = registry.get(event_type, version or versions[-1].version)
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
    before, after = registry.get(event_type, old).schema, registry.get(event_type, new).schema
    mode = registry.mode(event_type)
    differences = compat.differences(before, after)
    breaking = compat.check(mode, after, [before])
    if as_json:
        print_json(
            {
                "type": event_type,
                "from": old,
                "to": new,
                "mode": mode.value,
                "differences": [
                    {
                        "kind": d.kind.value,
                        "path": d.path,
                        "message": d.message,
                        "compatible": d.compatible,
                    }
                    for d in differences
                ],
                "breaking": [str(b) for b in breaking],
            }
        )
        return
    for difference in differences:
        typer.echo(("  " if difference.compatible else "! ") + str(difference))
    if not differences:
        typer.echo("no differences")
    typer.echo(
        f"{mode.value}: "
        + (
            f"breaking as schemas alone (registered only with an upcaster chain from v{old})"
            if breaking
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
