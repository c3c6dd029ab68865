"""What the console keeps while it runs: the broker connection, the event index (filled in the
background), samples of lag and end offsets (the live charts and the topics' rates), the schema
registry as last read, and the AsyncAPI documents of the API page.

None of it writes to the broker on its own: the indexer, the sampler and the registry only read;
setting a type's compatibility mode is the one write, done when a signed-in user asks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from tidings import compat, ops
from tidings.brokers import connect
from tidings.brokers.base import Broker
from tidings.console.apidoc import AsyncApiFile
from tidings.console.config import ConsoleConfig
from tidings.console.dashboard import DashboardSource
from tidings.ops import EventIndex, schemas
from tidings.records import TopicInfo, TopicPartition
from tidings.registry import SchemaRegistry

log = logging.getLogger("tidings.console")

HISTORY = 300
"""Samples kept (10 minutes at the default 2 s)."""
RATE_WINDOW_S = 60.0


@dataclass(frozen=True, slots=True)
class Sample:
    at: float
    ends: dict[TopicPartition, int]
    lags: dict[str, dict[TopicPartition, int]]


class Sampler:
    """End offsets and every group's lag per partition, every `interval` seconds. The first
    sample also gets a baseline a minute back (by append time), so rates are right at once."""

    def __init__(self, broker: Broker, interval: float) -> None:
        self.broker = broker
        self.interval = interval
        self.samples: deque[Sample] = deque(maxlen=HISTORY)
        self.baseline: Sample | None = None

    async def sample(self) -> Sample:
        infos = await ops.list_topics(self.broker)
        ends = {
            TopicPartition(i.name, p.partition): p.end_offset for i in infos for p in i.partitions
        }
        lags: dict[str, dict[TopicPartition, int]] = {}
        for summary in await ops.list_groups(self.broker):
            if summary.info is None or ops.is_tool_group(summary.name):
                continue
            lags[summary.name] = {
                TopicPartition(p.topic, p.partition): p.lag for p in summary.info.partitions
            }
        taken = Sample(time.time(), ends, lags)
        self.samples.append(taken)
        if self.baseline is None:
            self.baseline = await self._baseline(infos, taken.at - RATE_WINDOW_S)
        return taken

    async def _baseline(self, infos: list[TopicInfo], at: float) -> Sample:
        ends: dict[TopicPartition, int] = {}
        for info in infos:
            for p in info.partitions:
                tp = TopicPartition(info.name, p.partition)
                ends[tp] = await ops.offset_for_time(self.broker, info, p.partition, int(at * 1000))
        return Sample(at, ends, {})

    async def run(self) -> None:
        while True:
            try:
                await self.sample()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("console: sampling lag failed: %s", exc)
            await asyncio.sleep(self.interval)

    def rate(self, info: TopicInfo) -> tuple[float, int, float] | None:
        """(events/s, records appended, seconds) over the last minute (or as much of it as is
        known), or None before the first sample."""
        if not self.samples:
            return None
        last = self.samples[-1]
        window_start = last.at - RATE_WINDOW_S
        older = [s for s in self.samples if s.at >= window_start and s is not last]
        first = older[0] if older else None
        if self.baseline is not None and (first is None or self.baseline.at >= window_start - 5):
            first = self.baseline if first is None or self.baseline.at < first.at else first
        if first is None:
            return None
        appended = 0
        for p in info.partitions:
            tp = TopicPartition(info.name, p.partition)
            before = first.ends.get(tp)
            if before is None:
                before = p.start_offset
            appended += max(0, p.end_offset - before)
        seconds = max(time.time() - first.at, 1.0)
        return appended / seconds, appended, seconds

    def lag_history(self, group: str) -> list[tuple[float, dict[TopicPartition, int]]]:
        return [(s.at, s.lags[group]) for s in self.samples if group in s.lags]


class Console:
    """The console's running parts, started and stopped with the app."""

    def __init__(self, config: ConsoleConfig, broker: Broker | None = None) -> None:
        self.config = config
        self._own_broker = broker is None
        self.broker = broker if broker is not None else connect(config.broker_url)
        self.index = EventIndex(config.index_path, config.broker_url)
        self.sampler = Sampler(self.broker, config.sample_interval)
        self.dashboard = DashboardSource(config.dashboard) if config.dashboard else None
        self.asyncapi_file = AsyncApiFile(config.asyncapi_path) if config.asyncapi_path else None
        self._registry = SchemaRegistry(self.broker)
        self._registry_lock = asyncio.Lock()
        self._api_doc: tuple[int, dict[str, Any]] | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def registry(self) -> SchemaRegistry:
        """The schema registry, brought up to date (it reads only what is new)."""
        async with self._registry_lock:
            return await schemas.read_registry(self.broker, self._registry)

    async def set_mode(self, event_type: str, mode: compat.Mode) -> compat.Mode:
        """Set a registered type's compatibility mode (the console's one write to the
        registry; the caller checked who asks)."""
        async with self._registry_lock:
            return await schemas.set_mode(self._registry, event_type, mode)

    async def registry_document(self) -> dict[str, Any]:
        """The AsyncAPI document of the services as the registry describes them (made again
        only when the registry changed)."""
        registry = await self.registry()
        if self._api_doc is None or self._api_doc[0] != registry.read_to:
            doc = schemas.api_document(registry, broker_url=self.config.broker_url)
            self._api_doc = (registry.read_to, doc)
        return self._api_doc[1]

    async def start(self, *, background: bool = True) -> None:
        if self.asyncapi_file is not None:
            self.asyncapi_file.load()  # a file that cannot be read stops the start
        if self.dashboard is not None:
            self.dashboard.load()
        if background:
            self._tasks = [
                asyncio.create_task(
                    self.index.run(self.broker, interval=self.config.index_interval)
                ),
                asyncio.create_task(self.sampler.run()),
            ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        self.index.close()
        if self.dashboard is not None:
            await self.dashboard.close()
        if self._own_broker:
            await self.broker.close()
