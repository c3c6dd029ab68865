"""Serving an ASGI app (the telemetry endpoint, the console) with uvicorn inside an event loop
that already runs services: signals stay with the caller, which drains services first."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import uvicorn


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def serving(app: Any, host: str, port: int) -> AsyncIterator[int]:
    """Serve `app` on host:port while the block runs; yields the port it listens on (`port`
    0 picks a free one). OSError if it cannot listen (the port is taken, say)."""
    server = _Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off"))

    async def serve() -> None:
        try:
            await server.serve()
        except SystemExit:  # uvicorn exits when it cannot bind
            raise OSError(f"cannot serve HTTP on {host}:{port} (is the port in use?)") from None

    task = asyncio.create_task(serve(), name=f"http-{host}:{port}")
    while not server.started:
        if task.done():
            task.result()
            raise OSError(f"cannot serve HTTP on {host}:{port}")
        await asyncio.sleep(0.01)
    bound = next(s.getsockname()[1] for srv in server.servers for s in srv.sockets)
    try:
        yield int(bound)
    finally:
        server.should_exit = True
        await task
