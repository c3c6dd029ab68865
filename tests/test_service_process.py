"""A service run with `tidings run` as a real process: kill -9 mid-stream loses nothing and
applies nothing twice; SIGTERM drains in-flight work and exits 0."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from tidings import connect, event_from_record
from tidings.brokers.base import Broker
from tidings.records import TopicPartition
from tidings.schema import EventModel

SERVICE = textwrap.dedent(
    """
    import asyncio, os
    from tidings import Context, EventModel, Service

    class Credit(EventModel, type="TEST_PROC_CREDIT", version=1):
        account: str
        amount: int

    class Applied(EventModel, type="TEST_PROC_APPLIED", version=1):
        account: str
        amount: int

    service = Service(
        "ledger",
        store="sqlite:///ledger.db",
        migrations=[
            "CREATE TABLE balance (account TEXT PRIMARY KEY, amount INTEGER NOT NULL)",
            "CREATE TABLE applied (event_id TEXT NOT NULL)",
        ],
        topics={"credits": 4, "ledger-events": 4},
        session_timeout=2.0,
        max_batch=50,
    )
    SLOW = float(os.environ.get("HANDLER_SLEEP", "0"))

    @service.handler("credits")
    async def apply(event: Credit, ctx: Context) -> None:
        await ctx.execute(
            "INSERT INTO balance(account, amount) VALUES (?, ?) ON CONFLICT (account)"
            " DO UPDATE SET amount = amount + excluded.amount",
            (event.account, event.amount),
        )
        await ctx.execute("INSERT INTO applied(event_id) VALUES (?)", (ctx.event.id,))
        ctx.publish("ledger-events", Applied(account=event.account, amount=event.amount))
        if SLOW:
            await asyncio.sleep(SLOW)
    """
)


class Credit(EventModel, type="TEST_PROC_CREDIT", version=1):
    account: str
    amount: int


def start(tmp_path: Path, url: str, **env: str) -> subprocess.Popen[bytes]:
    log = tmp_path / "service.log"
    log.write_text("")
    with log.open("ab") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "tidings.cli", "--broker", url, "run", "svc:service"],
            cwd=tmp_path,
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )


def applied(tmp_path: Path) -> tuple[int, int, int]:
    """(applications, distinct events applied, balance total)."""
    db = tmp_path / "ledger.db"
    if not db.exists():
        return 0, 0, 0
    with sqlite3.connect(db, timeout=30) as conn:
        try:
            rows, distinct = conn.execute(
                "SELECT count(*), count(DISTINCT event_id) FROM applied"
            ).fetchone()
            total = conn.execute("SELECT coalesce(sum(amount), 0) FROM balance").fetchone()[0]
        except sqlite3.OperationalError:
            return 0, 0, 0
    return rows, distinct, total


def wait_running(process: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    """Block until the service logs that it runs (its signal handlers are installed)."""
    deadline = time.monotonic() + timeout
    while "running (" not in log.read_text():
        assert process.poll() is None, f"service exited early: {log.read_text()}"
        assert time.monotonic() < deadline, "service did not start"
        time.sleep(0.02)


async def wait_for(condition: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def all_records(broker: Broker, topic: str) -> list[object]:
    info = await broker.admin.describe_topic(topic)
    out: list[object] = []
    for p in info.partitions:
        out.extend(await broker.read(TopicPartition(topic, p.partition), 0, 100_000))
    return out


async def test_kill_9_mid_stream_loses_nothing_and_applies_nothing_twice(tmp_path: Path) -> None:
    (tmp_path / "svc.py").write_text(SERVICE)
    url = f"sqlite:///{tmp_path}/bus.db"
    total_events = 3000
    async with connect(url) as broker:
        await broker.admin.create_topic("credits", 4)
        for start_at in range(0, total_events, 500):
            await broker.publish_events(
                "credits",
                [
                    Credit(account=f"acct-{n % 37}", amount=n).to_event(key=f"acct-{n % 37}")
                    for n in range(start_at, start_at + 500)
                ],
            )
    expected_total = sum(range(total_events))
    kills = 0
    process = start(tmp_path, url, HANDLER_SLEEP="0.002")
    try:
        for threshold in (300, 1200, 2000):
            await wait_for(lambda t=threshold: applied(tmp_path)[1] >= t)  # type: ignore[misc]
            process.send_signal(signal.SIGKILL)
            process.wait()
            kills += 1
            process = start(tmp_path, url, HANDLER_SLEEP="0.002")
        await wait_for(lambda: applied(tmp_path)[1] == total_events, timeout=120)
        async with connect(url) as broker:

            async def relayed() -> set[str]:
                records = await all_records(broker, "ledger-events")
                return {event_from_record(r).causation_id or "" for r in records}  # type: ignore[arg-type]

            deadline = time.monotonic() + 60
            while len(await relayed()) < total_events:
                assert time.monotonic() < deadline, "outbox not fully relayed"
                await asyncio.sleep(0.1)
            credits = {event_from_record(r).id for r in await all_records(broker, "credits")}  # type: ignore[arg-type]
            assert await relayed() == credits
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    rows, distinct, total = applied(tmp_path)
    assert kills == 3
    assert (rows, distinct) == (total_events, total_events), "an event was applied twice or lost"
    assert total == expected_total


async def test_sigterm_finishes_in_flight_work_and_exits_zero(tmp_path: Path) -> None:
    (tmp_path / "svc.py").write_text(SERVICE)
    url = f"sqlite:///{tmp_path}/bus.db"
    async with connect(url) as broker:
        await broker.admin.create_topic("credits", 4)
        await broker.publish_events(
            "credits",
            [Credit(account="a", amount=1).to_event(key="a") for _ in range(3)],
        )
    process = start(tmp_path, url, HANDLER_SLEEP="0.8")
    try:
        await asyncio.to_thread(wait_running, process, tmp_path / "service.log")
        await wait_for(lambda: applied(tmp_path)[1] >= 1)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
    rows, distinct, _ = applied(tmp_path)
    assert rows == distinct >= 1
    process = start(tmp_path, url)
    try:
        await asyncio.to_thread(wait_running, process, tmp_path / "service.log")
        await wait_for(lambda: applied(tmp_path)[1] == 3)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert applied(tmp_path)[:2] == (3, 3)


async def test_an_unreachable_store_is_retried_with_backoff_not_a_crash_loop(
    tmp_path: Path,
) -> None:
    (tmp_path / "svc.py").write_text(SERVICE.replace('store="sqlite:///ledger.db"', "store=None"))
    url = f"sqlite:///{tmp_path}/bus.db"
    env = {"TIDINGS_STORE": "postgresql://nobody:secret@127.0.0.1:9/none?retry_s=0.5"}
    process = start(tmp_path, url, **env)
    log = tmp_path / "service.log"
    try:
        await wait_for(lambda: log.read_text().count("cannot start") >= 2, timeout=60)
        assert process.poll() is None, "the service exited instead of retrying"
        assert "secret" not in log.read_text()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
