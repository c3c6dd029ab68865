"""`tidings run MODULE:SERVICE`: load a user's service and run it until a signal."""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import sys
from typing import TYPE_CHECKING, Annotated

import typer

from tidings.cli.common import fail
from tidings.errors import TidingsError

if TYPE_CHECKING:
    from tidings.service import Service


def run(
    ctx: typer.Context,
    target: Annotated[str, typer.Argument(help="module:attribute of a tidings.Service")],
    grace: Annotated[
        float, typer.Option("--grace", min=0, help="Seconds to finish in-flight work on SIGTERM")
    ] = 30.0,
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning")] = "info",
    log_format: Annotated[
        str | None,
        typer.Option(
            "--log-format", help="human or json (default: TIDINGS_LOG_FORMAT, else human)"
        ),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            min=0,
            max=65535,
            help="Serve /metrics, /healthz and /readyz on this port (0: any free port)",
        ),
    ] = None,
    metrics_host: Annotated[
        str, typer.Option("--metrics-host", help="Address of the metrics endpoint")
    ] = "127.0.0.1",
) -> None:
    """Run a service (its consumers and outbox relay) until SIGTERM or Ctrl-C.

    The first signal finishes in-flight work within --grace seconds and exits 0; a second one
    exits at once (nothing committed is lost, nothing is applied twice). Tracing is on when
    the standard OTEL_* variables ask for it (pip install 'tidings\\[otel]')."""
    from tidings.telemetry import logs

    level = getattr(logging, log_level.upper(), None)
    if not isinstance(level, int):
        fail(f"unknown log level {log_level!r}; use debug, info or warning")
    try:
        chosen = logs.configure(log_format, level)
    except TidingsError as exc:
        fail(str(exc))
    os.environ["TIDINGS_BROKER"] = str(ctx.obj)
    service = load_service(target)
    if chosen == "json":
        logs.instrument(service)
    try:
        asyncio.run(_run(service, grace, metrics_port, metrics_host))
    except TidingsError as exc:
        fail(str(exc))


async def _run(service: Service, grace: float, port: int | None, host: str) -> None:
    if port is None:
        await service.run(grace_period=grace)
        return
    try:
        from tidings.telemetry import metrics
        from tidings.telemetry.server import serving
    except ImportError as exc:
        fail(f"--metrics-port needs pip install 'tidings[metrics]' ({exc})")
    collected = metrics.Metrics()
    metrics.instrument(service, collected)
    try:
        async with serving([service], port, host, collected):
            await service.run(grace_period=grace)
    except OSError as exc:
        fail(f"cannot serve metrics on {host}:{port}: {exc}")


def load_service(target: str) -> Service:
    """The `tidings.Service` named `MODULE:ATTRIBUTE`, imported from the current directory."""
    from tidings.service import Service

    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        fail(f"expected MODULE:SERVICE (e.g. myapp.billing:service), got {target!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        fail(f"cannot import {module_name!r}: {exc}")
    service = getattr(module, attribute, None)
    if not isinstance(service, Service):
        fail(f"{target!r} is not a tidings.Service (found {type(service).__name__})")
    return service
