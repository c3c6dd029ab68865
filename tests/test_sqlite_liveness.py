"""Liveness of the SQLite broker's publishing thread: cancelled publishes, and a thread that
stops all the same, never make later publishes hang, and never leave half a publish behind."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sqlite3
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest

from tidings import Message, StorageError
from tidings.brokers.sqlite import SQLiteBroker
from tidings.records import Published

LIVENESS_S = 60.0
"""How long a publish may take before the test calls it hung (generous: a bound, not a goal)."""


def _messages(call: int, count: int) -> list[Message]:
    return [Message(f"{call}:{i}".encode(), key=f"k{call}-{i % 7}".encode()) for i in range(count)]


async def _everything(broker: SQLiteBroker, topic: str) -> dict[tuple[int, int], bytes]:
    """Every record of `topic` by (partition, offset), read through a consumer group."""
    info = await broker.admin.describe_topic(topic)
    total = sum(p.end_offset - p.start_offset for p in info.partitions)
    records: dict[tuple[int, int], bytes] = {}
    async with broker.subscribe("checker", [topic]) as consumer:
        while len(records) < total:
            batch = await consumer.fetch(timeout=LIVENESS_S)
            assert batch is not None, f"read stalled at {len(records)} of {total} records"
            for record in batch.records:
                records[(record.partition, record.offset)] = record.value
            consumer.ack(batch)
    return records


def _by_call(records: dict[tuple[int, int], bytes]) -> dict[int, set[int]]:
    calls: dict[int, set[int]] = defaultdict(set)
    for value in records.values():
        call, index = value.decode().split(":")
        calls[int(call)].add(int(index))
    return calls


async def test_publishes_cancelled_at_random_points_leave_the_broker_working(
    tmp_path: Path,
) -> None:
    """Cancelled publishes (by wait_for timeouts and task.cancel(), at random points) are
    written whole or not at all, every publish that returned is readable where it said, and a
    later publish completes. Cancelling one used to kill the publishing thread: every later
    publish hung."""
    rng = random.Random(20261204)
    size = 40  # records per call, spread over the topic's partitions
    returned: dict[int, list[Published]] = {}
    calls = 0
    async with SQLiteBroker(f"sqlite:///{tmp_path}/bus.db") as broker:
        await broker.admin.create_topic("t", 3)

        async def publish(call: int) -> None:
            returned[call] = await broker.publish("t", _messages(call, size))

        for _ in range(30):
            tasks = []
            for _ in range(rng.randint(1, 12)):
                calls += 1
                if rng.random() < 0.5:
                    timeout = rng.choice([0.0, 1e-5, 1e-4, 1e-3, 5e-3])
                    coroutine = asyncio.wait_for(publish(calls), timeout)
                    tasks.append(asyncio.ensure_future(coroutine))
                else:
                    tasks.append(asyncio.ensure_future(publish(calls)))
            for _ in range(rng.randint(0, 3)):
                await asyncio.sleep(rng.choice([0, 0, 1e-4, 1e-3]))
                rng.choice(tasks).cancel()
            for outcome in await asyncio.gather(*tasks, return_exceptions=True):
                if outcome is not None:
                    assert isinstance(outcome, asyncio.CancelledError | TimeoutError), outcome

        after = await asyncio.wait_for(broker.publish("t", [Message(b"0:0")]), LIVENESS_S)
        assert len(after) == 1
        records = await _everything(broker, "t")

    cancelled = calls - len(returned)
    assert 0 < cancelled < calls, "the random cancellations should hit some publishes, not all"
    for call, indexes in _by_call(records).items():
        if call == 0:
            continue
        assert indexes == set(range(size)), f"publish {call} is half-written: {sorted(indexes)}"
    for call, placed in returned.items():
        for i, place in enumerate(placed):
            assert records[(place.partition, place.offset)] == f"{call}:{i}".encode()


async def test_a_cancelled_publish_is_written_whole_once_taken_and_not_at_all_before(
    tmp_path: Path,
) -> None:
    """While another connection holds the write lock, the publishing thread holds the first
    publish and the others wait in its queue; all are cancelled. The one it held is written
    whole (its result dropped); the queued ones are not written at all."""
    path = tmp_path / "bus.db"
    async with SQLiteBroker(f"sqlite:///{path}") as broker:
        await broker.admin.create_topic("t", 2)
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            held = asyncio.ensure_future(broker.publish("t", _messages(1, 10)))
            await asyncio.sleep(0)  # the task runs up to its wait for the thread
            # white-box, only to know when the thread has taken the publish from its queue
            await _until(lambda: broker._writer._queue.empty(), "the thread takes publish 1")
            queued = [asyncio.ensure_future(broker.publish("t", _messages(c, 10))) for c in (2, 3)]
            await _until(lambda: broker._writer._queue.qsize() == 2, "publishes 2, 3 queue up")
            for task in (held, *queued):
                task.cancel()
            for task in (held, *queued):
                with pytest.raises(asyncio.CancelledError):
                    await task
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        await asyncio.wait_for(broker.publish("t", _messages(4, 10)), LIVENESS_S)
        calls = _by_call(await _everything(broker, "t"))
    assert calls == {1: set(range(10)), 4: set(range(10))}


async def test_a_stopped_publishing_thread_is_replaced_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A thread that stops (here: SystemExit, which ends a thread without a word) is logged,
    and the next publish starts a new one instead of waiting for ever."""
    async with SQLiteBroker(f"sqlite:///{tmp_path}/bus.db") as broker:
        await broker.admin.create_topic("t")
        stops = iter([SystemExit(3)])

        def stop_once() -> None:
            with contextlib.suppress(StopIteration):
                raise next(stops)

        monkeypatch.setattr(broker.log, "maybe_enforce_retention", stop_once)
        with caplog.at_level(logging.ERROR, logger="tidings.sqlite"):
            assert await broker.publish("t", [Message(b"1:0")]) == [Published(0, 0)]
            await _until(
                lambda: any("thread stopped" in r.getMessage() for r in caplog.records),
                "the stop is logged",
            )
            second = broker.publish("t", [Message(b"2:0")])
            assert await asyncio.wait_for(second, LIVENESS_S) == [Published(0, 1)]
        assert any("starting a new one" in r.getMessage() for r in caplog.records)
        assert _by_call(await _everything(broker, "t")) == {1: {0}, 2: {0}}


async def test_publishes_queued_when_the_thread_stops_fail_instead_of_hanging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The publishes a stopping thread held fail with a StorageError saying so."""
    async with SQLiteBroker(f"sqlite:///{tmp_path}/bus.db") as broker:
        await broker.admin.create_topic("t")

        def stop(*args: object) -> None:
            raise SystemExit(3)

        monkeypatch.setattr(broker.log, "append", stop)
        with pytest.raises(StorageError, match="publishing thread stopped"):
            await asyncio.wait_for(broker.publish("t", [Message(b"x")]), LIVENESS_S)
        monkeypatch.undo()
        assert await asyncio.wait_for(broker.publish("t", [Message(b"y")]), LIVENESS_S) == [
            Published(0, 0)
        ]


async def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + LIVENESS_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.005)
