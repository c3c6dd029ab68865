"""The telemetry endpoint of a process: `/metrics` (Prometheus text format), `/healthz` (the
process answers) and `/readyz` (every service started, its store and broker answer, its consumer
joined, its relay runs; 503 naming what is not). Served on 127.0.0.1 by default, in the
services' own event loop (`pip install 'tidings[metrics]'`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tidings import _http as http
from tidings.telemetry.metrics import CONTENT_TYPE, Metrics

if TYPE_CHECKING:
    from tidings.service import Service

log = logging.getLogger("tidings.telemetry")

REFRESH_S = 1.0
"""Lag and outbox gauges are read at most this often (on a scrape)."""


def create_app(services: Sequence[Service], metrics: Metrics | None = None) -> Starlette:
    """The endpoint's routes for `services` (their metrics in `metrics`, if given)."""
    refreshed = 0.0
    lock = asyncio.Lock()

    async def metrics_page(request: Request) -> Response:
        nonlocal refreshed
        if metrics is None:
            return JSONResponse({"error": "metrics are off"}, status_code=404)
        async with lock:
            if time.monotonic() - refreshed > REFRESH_S:
                for service in services:
                    if service.runner is not None and service.runner.ready.is_set():
                        with contextlib.suppress(Exception):
                            await metrics.refresh(service)
                refreshed = time.monotonic()
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def readyz(request: Request) -> Response:
        report: dict[str, Any] = {}
        ready = True
        for service in services:
            runner = service.runner
            if runner is None:
                checks: dict[str, str | None] = {"running": "the service is not running"}
            else:
                checks = await runner.readiness()
            failed = {name: reason for name, reason in checks.items() if reason is not None}
            report[service.name] = failed or "ready"
            ready = ready and not failed
        status = 200 if ready else 503
        return JSONResponse(
            {"status": "ready" if ready else "not ready", "services": report}, status_code=status
        )

    return Starlette(
        routes=[
            Route("/metrics", metrics_page),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
        ]
    )


@contextlib.asynccontextmanager
async def serving(
    services: Sequence[Service],
    port: int,
    host: str = "127.0.0.1",
    metrics: Metrics | None = None,
) -> AsyncIterator[int]:
    """Serve the endpoint while the block runs; yields the port it listens on (0: any free)."""
    async with http.serving(create_app(services, metrics), host, port) as bound:
        log.info("telemetry on http://%s:%d (/metrics, /healthz, /readyz)", host, bound)
        yield bound
