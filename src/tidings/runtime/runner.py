"""Running a service: consumer loop, outbox relay, inbox cleanup, and graceful shutdown.

The first SIGTERM/SIGINT stops fetching, lets in-flight batches finish within the grace period
(each record's transaction either commits or rolls back; finished batches are acked and their
offsets committed), drains the outbox - within what is left of the grace period; rows not
relayed by then wait for the next run - and exits normally. A second signal exits at once: any
open transaction is rolled back by the database and its batch is redelivered to the next run,
where the inbox skips what had committed, so nothing is lost or applied twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Awaitable

from tidings.brokers.base import CanInspect, Consumer
from tidings.errors import StorageError
from tidings.instance import instance_id
from tidings.records import Batch, TopicPartition
from tidings.runtime.claimcheck import BLOB_GC_S, collect_garbage
from tidings.runtime.dispatch import Dispatcher
from tidings.runtime.relay import Relay
from tidings.runtime.spec import ServiceSpec

log = logging.getLogger("tidings.runtime")

INBOX_CLEANUP_S = 300.0
START_RETRY_MAX_S = 30.0


class ServiceRunner:
    """The running parts of one service in this process."""

    def __init__(self, service: ServiceSpec, *, grace_period: float = 30.0) -> None:
        self.service = service
        self.grace_period = grace_period
        self.stopping = asyncio.Event()
        self.dispatcher = Dispatcher(service)
        self.relay = Relay(
            service.store,
            service.broker,
            dead_letter_topic=service.dead_letter_topic,
            hooks=service.relay_hooks,
            relay_id=f"relay-{service.name}-{instance}" if (instance := instance_id()) else None,
        )
        self._deadline: float | None = None
        """When the grace period ends (monotonic), once stopping."""
        self._inflight: dict[TopicPartition, asyncio.Task[None]] = {}
        self._slots = asyncio.Semaphore(service.concurrency)
        self.ready = asyncio.Event()
        """Set once the service consumes (its consumer joined the group) and relays."""
        self._joined = asyncio.Event()
        self._tasks: dict[str, asyncio.Task[None]] = {}

    async def run(self) -> None:
        service = self.service
        if not await self._start():
            return
        if service.handlers:
            await self.dispatcher.prepare()
        relay_stopping = asyncio.Event() if service.handlers else self.stopping
        tasks = [
            asyncio.create_task(self._relay(relay_stopping), name="relay"),
            asyncio.create_task(self._collect_blobs(), name="blob-gc"),
        ]
        if service.handlers:
            consume = asyncio.create_task(self._consume(), name="consume")
            consume.add_done_callback(lambda _: relay_stopping.set())
            tasks.append(consume)
            tasks.append(asyncio.create_task(self._cleanup_inbox(), name="inbox-cleanup"))
            watch = self.dispatcher.watch.run(service.handlers, relay_stopping)
            tasks.append(asyncio.create_task(watch, name="watch"))
        self._tasks = {task.get_name(): task for task in tasks}
        if service.handlers:  # ready once the consumer has joined its group (or failed)
            joined = asyncio.create_task(self._joined.wait())
            consuming = self._tasks["consume"]
            await asyncio.wait({joined, consuming}, return_when=asyncio.FIRST_COMPLETED)
            joined.cancel()
        self.ready.set()
        log.info("%s: running (%d handler(s))", service.name, len(service.handlers))
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def readiness(self, timeout: float = 2.0) -> dict[str, str | None]:
        """Per check, None if it passes, else why not: the service started (migrations
        applied, topics created), its store and broker answer within `timeout`, its consumer
        joined its group, its relay runs."""

        async def answers(check: Awaitable[object], what: str) -> str | None:
            try:
                await asyncio.wait_for(check, timeout)
            except TimeoutError:
                return f"{what} did not answer within {timeout:g}s"
            except Exception as exc:
                return f"{what}: {exc}"
            return None

        service = self.service
        checks: dict[str, str | None] = {}
        checks["started"] = None if self.ready.is_set() else "starting (migrations, topics)"
        store = service.store
        checks["store"] = await answers(store.query("SELECT 1"), f"the store {store.url}")
        topics = service.consumed_topics or [service.dead_letter_topic]
        broker = service.broker
        checks["broker"] = await answers(
            broker.admin.describe_topic(topics[0]), f"the broker {broker.url}"
        )
        if service.handlers:
            consume = self._tasks.get("consume")
            joined = self._joined.is_set() and consume is not None and not consume.done()
            checks["consumer"] = None if joined else "the consumer has not joined its group"
        relay = self._tasks.get("relay")
        checks["relay"] = None if relay is not None and not relay.done() else "the relay stopped"
        return checks

    async def _relay(self, stopping: asyncio.Event) -> None:
        """Run the relay; once `stopping`, give it what is left of the grace period to drain
        the outbox, then cancel it (a publish hanging on an unreachable broker, say)."""
        relay = asyncio.create_task(self.relay.run(stopping), name="relay-loop")
        stopped = asyncio.create_task(stopping.wait())
        try:
            await asyncio.wait({relay, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not relay.done():
                self.relay.wake()
                if self._deadline is None:
                    self._deadline = time.monotonic() + self.grace_period
                remaining = max(0.0, self._deadline - time.monotonic())
                await asyncio.wait({relay}, timeout=remaining)
                if not relay.done():
                    log.warning(
                        "%s: the relay did not finish within the grace period; the outbox "
                        "rows left are relayed by the next run",
                        self.service.name,
                    )
                    relay.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await relay
        finally:
            stopped.cancel()
            relay.cancel()

    async def _start(self) -> bool:
        """Start the service, retrying with backoff while its broker or store is unreachable
        (no crash loop); False if stopped before it could start. Configuration errors raise."""
        delay = 1.0
        while True:
            try:
                await self.service.start()
                return True
            except StorageError as exc:
                log.error("%s: cannot start: %s; retrying in %.0fs", self.service.name, exc, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), delay)
            if self.stopping.is_set():
                return False
            delay = min(delay * 2, START_RETRY_MAX_S)

    def stop(self) -> None:
        if self._deadline is None:
            self._deadline = time.monotonic() + self.grace_period
        self.stopping.set()
        self.dispatcher.stopping.set()

    async def _consume(self) -> None:
        service = self.service
        consumer = service.broker.subscribe(
            service.name,
            service.consumed_topics,
            max_batch=service.max_batch,
            session_timeout=service.session_timeout,
        )
        async with consumer:
            self._joined.set()
            while not self.stopping.is_set():
                batch = await consumer.fetch(timeout=0.25)
                if batch is None:
                    continue
                await self._slots.acquire()
                task = asyncio.create_task(self._process(consumer, batch))
                self._inflight[batch.tp] = task
            await self._drain()

    async def _process(self, consumer: Consumer, batch: Batch) -> None:
        try:
            await self.dispatcher.process(consumer, batch)
        finally:
            self._slots.release()
            if self._inflight.get(batch.tp) is asyncio.current_task():
                del self._inflight[batch.tp]

    async def _drain(self) -> None:
        pending = list(self._inflight.values())
        if not pending:
            return
        log.info("%s: finishing %d in-flight batch(es)", self.service.name, len(pending))
        _, late = await asyncio.wait(pending, timeout=self.grace_period)
        for task in late:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _collect_blobs(self) -> None:
        """Delete the service's claim-checked payloads past `blob_retention_s`, now and every
        `BLOB_GC_S` seconds (several processes of a service may do it at once)."""
        service = self.service
        while not self.stopping.is_set():
            try:
                deleted = await collect_garbage(
                    service.blob_store,
                    prefix=f"{service.name}/",
                    retention_s=service.blob_retention_s,
                )
                if deleted:
                    log.info("%s: deleted %d blobs past retention", service.name, len(deleted))
            except Exception:
                log.exception("%s: deleting old blobs failed; will retry", service.name)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), BLOB_GC_S)

    async def _cleanup_inbox(self) -> None:
        """Delete old inbox rows below the group's committed offsets, which a broker that can
        tell them (CanInspect) gives; without it, inbox rows are kept."""
        service = self.service
        admin = service.broker.admin
        if not isinstance(admin, CanInspect):
            log.info(
                "%s: %s cannot tell committed offsets; inbox rows are kept",
                service.name,
                type(admin).__name__,
            )
            return
        while not self.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), INBOX_CLEANUP_S)
            if self.stopping.is_set():
                return
            try:
                info = await admin.describe_group(service.name)
                committed = {
                    (p.topic, p.partition): p.committed
                    for p in info.partitions
                    if p.committed is not None
                }
                removed = await service.store.inbox_cleanup(
                    f"{service.name}.", committed, service.inbox_retention_s
                )
                if removed:
                    log.info("%s: removed %d old inbox rows", service.name, removed)
            except Exception:
                log.exception("%s: inbox cleanup failed; will retry", service.name)


async def run_service(runner: ServiceRunner, *, install_signal_handlers: bool = True) -> None:
    """Run `runner` until a signal (see module docstring), `stop()` or cancellation, then close
    the service's broker and store."""
    service = runner.service
    loop = asyncio.get_running_loop()
    signals = 0

    def on_signal(signum: int) -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            log.warning(
                "%s: %s received; finishing in-flight work (signal again to exit at once)",
                service.name,
                signal.Signals(signum).name,
            )
            runner.stop()
        else:
            log.warning("%s: second signal; exiting now", service.name)
            os._exit(128 + signum)

    if install_signal_handlers:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)
    try:
        await runner.run()
    finally:
        if install_signal_handlers:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
        await service.close()
