from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from tidings.service import Service


@pytest.fixture
async def running() -> AsyncIterator[Callable[[Service], Awaitable[None]]]:
    """Start services in this event loop (`await running(service)`); stopped at teardown."""
    services: list[tuple[Service, asyncio.Task[None]]] = []

    async def start(service: Service) -> None:
        services.append((service, await service.run_in_background()))

    yield start
    for service, _ in services:
        service.stop()
    await asyncio.wait_for(asyncio.gather(*(t for _, t in services)), 30)
