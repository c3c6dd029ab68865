"""Small helpers shared by the service tests (the `running` fixture is in conftest.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from tidings.brokers.base import Broker, Record, TopicPartition


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 20) -> None:
    """Poll `check` until it is true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def read_topic(broker: Broker, topic: str) -> list[Record]:
    """Every retained record of `topic`, partition by partition."""
    info = await broker.admin.describe_topic(topic)
    records: list[Record] = []
    for p in info.partitions:
        tp = TopicPartition(topic, p.partition)
        records.extend(await broker.read(tp, p.start_offset, 10_000))
    return records
