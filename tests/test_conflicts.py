"""A transaction the database aborts because of a concurrent one (deadlock, serialization
failure) is retried without using up the handler's attempts: it is not the handler's fault."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from tests.support import eventually, server_setting
from tidings import ConfigError, connect
from tidings.retry import NO_RETRY, Retry, is_transaction_conflict
from tidings.schema import EventModel
from tidings.service import Context, Service


class Transfer(EventModel, type="TEST_TRANSFER", version=1):
    source: str
    target: str


class Deadlock(Exception):
    sqlstate = "40P01"


def test_conflicts_are_retried_beyond_max_attempts_and_bounded_by_max_elapsed() -> None:
    policy = Retry(immediate=0, max_attempts=2, max_elapsed=10.0)
    conflict = RuntimeError("wrapped")
    conflict.__cause__ = Deadlock("deadlock detected")
    assert is_transaction_conflict(conflict)
    assert not is_transaction_conflict(RuntimeError("boom"))
    for attempt in (1, 5, 50):
        delay = policy.next_delay(attempt, 0.0, conflict)
        assert delay is not None and 0 <= delay <= 0.5
    assert NO_RETRY.next_delay(1, 0.0, conflict) is not None
    assert policy.next_delay(1, 0.0, RuntimeError("boom")) is not None
    assert policy.next_delay(2, 0.0, RuntimeError("boom")) is None  # attempts spent
    assert policy.next_delay(3, 10.0, conflict) is None  # out of time


@pytest.fixture
def pg_schema() -> Iterator[tuple[str, str]]:
    dsn = server_setting("TIDINGS_POSTGRES_DSN", "postgres")
    schema = f"t_conflict_{uuid.uuid4().hex[:8]}"
    yield dsn, schema
    import psycopg
    from psycopg import sql

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


async def test_a_real_deadlock_on_postgresql_is_retried_even_under_no_retry(
    tmp_path: Path,
    pg_schema: tuple[str, str],
    running: Callable[[Service], Awaitable[None]],
) -> None:
    """Two transfers on two partitions lock the same two accounts in opposite orders, at the
    same time: PostgreSQL aborts one of them. With NO_RETRY it must still not be
    dead-lettered, and both transfers apply exactly once. (Here the batch's fallback path
    absorbs the abort; the test below drives the retry loop itself.)"""
    dsn, schema = pg_schema
    broker_url = f"sqlite:///{tmp_path}/bus.db"
    bank = Service(
        "bank",
        broker=broker_url,
        store=f"{dsn}?schema={schema}",
        migrations=[
            "CREATE TABLE accounts (id TEXT PRIMARY KEY, moves INTEGER NOT NULL);"
            "INSERT INTO accounts VALUES ('a', 0), ('b', 0)"
        ],
        retry=NO_RETRY,
    )
    first_locks = 0
    both_locked = asyncio.Event()

    @bank.handler("transfers")
    async def move(event: Transfer, ctx: Context) -> None:
        nonlocal first_locks
        await ctx.execute("UPDATE accounts SET moves = moves + 1 WHERE id = ?", (event.source,))
        first_locks += 1
        if first_locks == 2:
            both_locked.set()
        # the first attempt of each waits until the other holds its first row
        if not both_locked.is_set():
            await asyncio.wait_for(both_locked.wait(), 10)
        await ctx.execute("UPDATE accounts SET moves = moves + 1 WHERE id = ?", (event.target,))

    async with connect(broker_url) as broker:
        await broker.admin.create_topic("transfers", 2)  # keys k0 and k3: one per partition
        await broker.publish_events(
            "transfers",
            [
                Transfer(source="a", target="b").to_event(key="k0"),
                Transfer(source="b", target="a").to_event(key="k3"),
            ],
        )
    await running(bank)

    async def both_applied() -> bool:
        return bank.stats.processed == 2

    await eventually(both_applied, timeout=30)
    assert bank.stats.dead_lettered == 0
    rows = await bank.store.query("SELECT id, moves FROM accounts ORDER BY id")
    assert rows == [("a", 2), ("b", 2)]


async def test_repeated_conflicts_do_not_use_up_the_attempts(
    tmp_path: Path, running: Callable[[Service], Awaitable[None]]
) -> None:
    """A handler whose transaction is aborted as a deadlock more often than its policy's
    attempts (as happens under load, when other partitions keep colliding with the retry)
    still applies once, and nothing is dead-lettered."""
    broker_url = f"sqlite:///{tmp_path}/bus.db"
    bank = Service(
        "bank",
        broker=broker_url,
        store=f"sqlite:///{tmp_path}/bank.db",
        migrations=["CREATE TABLE moves (source TEXT PRIMARY KEY)"],
        retry=Retry(immediate=0, max_attempts=2, initial_delay=0.01),
    )
    runs = 0

    @bank.handler("transfers")
    async def move(event: Transfer, ctx: Context) -> None:
        nonlocal runs
        runs += 1
        await ctx.execute("INSERT INTO moves(source) VALUES (?)", (event.source,))
        if runs <= 6:
            raise RuntimeError("could not update") from Deadlock("deadlock detected")

    async with connect(broker_url) as broker:
        await broker.admin.create_topic("transfers", 1)
        await broker.publish_events("transfers", [Transfer(source="a", target="b").to_event()])
    await running(bank)

    async def applied() -> bool:
        return bank.stats.processed == 1

    await eventually(applied, timeout=30)
    assert bank.stats.dead_lettered == 0
    assert bank.stats.retried >= 5
    assert await bank.store.query("SELECT source FROM moves") == [("a",)]


@pytest.mark.parametrize("locks", [True, False], ids=["named-locks", "no-locks"])
async def test_handlers_naming_their_hot_rows_do_not_deadlock(
    tmp_path: Path,
    pg_schema: tuple[str, str],
    running: Callable[[Service], Awaitable[None]],
    locks: bool,
) -> None:
    """Batches of transfers on four partitions, applied concurrently, each transfer writing
    its two accounts in its own order: with `locks=` naming the accounts, transactions wait
    for each other and none is aborted as a deadlock; without, PostgreSQL aborts some (the
    scenario does conflict) and their retries still apply every transfer once."""
    dsn, schema = pg_schema
    broker_url = f"sqlite:///{tmp_path}/bus.db"
    bank = Service(
        "bank",
        broker=broker_url,
        store=f"{dsn}?schema={schema}",
        migrations=[
            "CREATE TABLE accounts (id TEXT PRIMARY KEY, moves INTEGER NOT NULL);"
            "INSERT INTO accounts VALUES ('a', 0), ('b', 0), ('c', 0)"
        ],
    )

    @bank.handler("transfers", locks=(lambda t: [t.source, t.target]) if locks else None)
    async def move(event: Transfer, ctx: Context) -> None:
        await ctx.execute("UPDATE accounts SET moves = moves + 1 WHERE id = ?", (event.source,))
        await asyncio.sleep(0.05)  # hold the first row while the other partitions run
        await ctx.execute("UPDATE accounts SET moves = moves + 1 WHERE id = ?", (event.target,))

    pairs = [("a", "b"), ("b", "c"), ("c", "a"), ("b", "a"), ("a", "c"), ("c", "b")]
    transfers = [
        Transfer(source=s, target=t).to_event(key=f"k{n}") for n, (s, t) in enumerate(pairs * 4)
    ]
    async with connect(broker_url) as broker:
        await broker.admin.create_topic("transfers", 4)
        await broker.publish_events("transfers", transfers)
    await running(bank)

    async def all_applied() -> bool:
        return bank.stats.processed == len(transfers)

    await eventually(all_applied, timeout=60)
    assert bank.stats.dead_lettered == 0
    rows = await bank.store.query("SELECT id, moves FROM accounts ORDER BY id")
    assert rows == [("a", 16), ("b", 16), ("c", 16)]
    if locks:
        assert bank.stats.retried == 0
    else:
        assert bank.stats.retried > 0


def test_locks_must_name_something() -> None:
    service = Service("bank", broker="memory://", store="memory://")
    for bad in ([], [""], [1], ""):
        with pytest.raises(ConfigError, match="locks="):
            service.handler("transfers", locks=bad)  # type: ignore[arg-type]
    service.handler("transfers", locks="accounts")
