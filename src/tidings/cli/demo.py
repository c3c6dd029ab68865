"""`tidings demo`: the article's order system, `examples/orders` of a tidings checkout.

The library does not import the example: the command becomes `python -m examples.orders`
(exec, same process: arguments, signals, Ctrl-C, terminal and exit status are the example's),
run from the current directory, which must be the checkout's root."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import typer

from tidings.cli.common import DEFAULT_BROKER, fail

EXAMPLE = Path("examples", "orders", "__main__.py")
EXTRA = ("starlette", "uvicorn", "httpx")
"""What the example needs beyond tidings: the `demo` extra."""
INSTALL_HINT = (
    "run `tidings demo` from the repository root, with the demo extra installed "
    "(pip install -e '.[demo]')"
)


def demo(ctx: typer.Context) -> None:
    """Run the article's order system (examples/orders in a tidings checkout); options as
    `python -m examples.orders` (see `tidings demo --help`), e.g. `--orders 500 --exit`.

    It runs on the embedded default under ./.tidings; `tidings --broker kafka://... demo` or
    TIDINGS_BROKER / TIDINGS_STORE put it on Kafka and PostgreSQL."""
    root = Path.cwd()
    if not (root / EXAMPLE).is_file():
        fail(
            f"the demo is the examples/orders package of a tidings source checkout, and "
            f"{root} has no {EXAMPLE}; {INSTALL_HINT}"
        )
    missing = [name for name in EXTRA if importlib.util.find_spec(name) is None]
    if missing:
        fail(f"the demo needs {', '.join(missing)}, which are not installed; {INSTALL_HINT}")
    env = dict(os.environ)
    if ctx.obj != DEFAULT_BROKER:
        env["TIDINGS_BROKER"] = str(ctx.obj)
    argv = [sys.executable, "-m", "examples.orders", *ctx.args]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)  # noqa: S606 (an argv list; no shell is wanted)
