"""The watch over running handler attempts: an attempt that overruns its policy's timeout is
cancelled and fails with HandlerTimeoutError, and a partition that has not advanced for
`STALL_WARNING_S` is logged, naming the handler it is in.

One watch task per service checks a few times per second; an attempt costs only two dict
writes (an asyncio timeout per attempt would cost several microseconds)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tidings.errors import HandlerTimeoutError
from tidings.records import TopicPartition
from tidings.runtime.handlers import Handler

log = logging.getLogger("tidings.dispatch")

STALL_WARNING_S = 60.0
"""A partition that has not advanced for this long is logged (again every such period)."""


@dataclass(slots=True)
class _Progress:
    offset: int
    since: float
    warned: float
    task: asyncio.Task[Any] | None


class Watch:
    """Attempts and partitions in progress in one service's dispatcher."""

    def __init__(self, service: str) -> None:
        self.service = service
        self._calls: dict[asyncio.Task[Any], tuple[Handler, float]] = {}
        self._timed_out: set[asyncio.Task[Any]] = set()
        self._progress: dict[TopicPartition, _Progress] = {}

    def begin(self, task: asyncio.Task[Any], handler: Handler) -> None:
        """`task` starts an attempt of `handler`; `end` must follow."""
        self._calls[task] = (handler, time.monotonic())

    def timed_out(self, task: asyncio.Task[Any], handler: Handler) -> HandlerTimeoutError | None:
        """For a CancelledError in `task`'s attempt: the error to raise instead, if the watch
        cancelled it (then the cancellation is taken back); None if it is a real one."""
        if task not in self._timed_out:
            return None
        self._timed_out.discard(task)
        task.uncancel()
        return HandlerTimeoutError(
            f"handler {handler.consumer} did not finish within {handler.retry.timeout:g}s"
        )

    def end(self, task: asyncio.Task[Any]) -> None:
        del self._calls[task]
        if task in self._timed_out:  # the handler swallowed the cancellation and returned
            self._timed_out.discard(task)
            task.uncancel()

    def at(self, tp: TopicPartition, offset: int) -> None:
        """The current task is applying `tp` from `offset`."""
        progress = self._progress.get(tp)
        if progress is None or progress.offset != offset:
            now = time.monotonic()
            self._progress[tp] = _Progress(offset, now, now, asyncio.current_task())

    def done(self, tp: TopicPartition) -> None:
        self._progress.pop(tp, None)

    async def run(self, handlers: Sequence[Handler], stopping: asyncio.Event) -> None:
        """Until `stopping`: time attempts out and log stalled partitions."""
        timeouts = [h.retry.timeout for h in handlers if h.retry.timeout]
        tick = max(0.02, min([1.0, STALL_WARNING_S / 4, *(t / 4 for t in timeouts)]))
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), tick)
            self._check(time.monotonic())

    def _check(self, now: float) -> None:
        for task, (handler, started) in list(self._calls.items()):
            timeout = handler.retry.timeout
            if timeout is not None and now - started > timeout and task not in self._timed_out:
                self._timed_out.add(task)
                task.cancel()
        for tp, progress in self._progress.items():
            if now - progress.warned >= STALL_WARNING_S:
                progress.warned = now
                call = self._calls.get(progress.task) if progress.task else None
                log.warning(
                    "%s: %s has not advanced past offset %d for %.0fs%s",
                    self.service,
                    tp,
                    progress.offset,
                    now - progress.since,
                    f" (in handler {call[0].consumer})" if call else "",
                )
