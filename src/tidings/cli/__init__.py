"""The `tidings` command line, over `tidings.ops`.

    tidings topics list | create NAME [...] | describe NAME
    tidings groups list | describe GROUP
    tidings tail TOPIC [--from earliest|latest|OFFSET|ISO-TIME] [--limit N] [--no-follow]
    tidings replay GROUP --to earliest|latest|OFFSET|ISO-TIME [--topic T ...]
    tidings rebuild MODULE:SERVICE HANDLER [--from earliest|ISO-TIME]
    tidings run MODULE:SERVICE [--grace SECONDS]
    tidings dlq list [FILTERS] [--all] | show ID | replay (ID... | --all | FILTERS)
                | purge (ID... | --all | FILTERS) [--yes]
    tidings schema list | show TYPE [--version N] | diff TYPE V1 V2 | mode TYPE [MODE]
                   | export DIR | check MODULE:SERVICE... [--against registry|DIR]
    tidings asyncapi MODULE:SERVICE... [--format yaml|json] [-o FILE]
    tidings blobs list [--dir DIR] [--service S] | gc [--retention 7d] [--dir DIR] [--service S]
    tidings demo [OPTIONS OF python -m examples.orders]

`--broker URL` (or `TIDINGS_BROKER`; default `sqlite:///.tidings/bus.db`) picks the broker.
Commands that show data print tables, or one JSON document with `--json` (`tail --json`:
JSON Lines). An error a user can cause prints `error: <message>` on stderr and exits 2.
"""

from __future__ import annotations

from typing import Annotated

import typer

from tidings.cli import blobs as _blobs
from tidings.cli import console as _console
from tidings.cli import demo as _demo
from tidings.cli import dlq as _dlq
from tidings.cli import groups as _groups
from tidings.cli import rebuild as _rebuild
from tidings.cli import run as _run
from tidings.cli import schema as _schema
from tidings.cli import tail as _tail
from tidings.cli import topics as _topics
from tidings.cli.common import DEFAULT_BROKER

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False)


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


app.command()(_groups.replay)
app.command()(_rebuild.rebuild)
app.command(epilog=_tail.EPILOG)(_tail.tail)
app.command()(_run.run)
app.command()(_console.console)
app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)(_demo.demo)
app.add_typer(_topics.app, name="topics")
app.add_typer(_groups.app, name="groups")
app.add_typer(_dlq.app, name="dlq")
app.add_typer(_schema.app, name="schema")
app.add_typer(_blobs.app, name="blobs")
app.command()(_schema.asyncapi)


def main() -> None:
    """Entry point of the `tidings` console script."""
    app()


__all__ = ["DEFAULT_BROKER", "app", "main"]
