"""The PostgreSQL store: the store contract, plus what only PostgreSQL can show.

Needs a server: `scripts/services start postgres` and `eval "$(scripts/services env)"` (sets
TIDINGS_POSTGRES_DSN). Each test works in a fresh schema (`?schema=t_...`), dropped afterwards.
Under CI=true a missing server fails the tests instead of skipping them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import random
import socket
import sys
import textwrap
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from tidings import Event, connect, event_from_record
from tidings.errors import (
    ConfigError,
    InboxConflictError,
    IntegrityError,
    StorageError,
    TransactionAbortedError,
)
from tidings.records import Message, Record, TopicPartition
from tidings.retry import Retry
from tidings.service import Context, Service, SyncContext
from tidings.stores import connect_store
from tidings.stores.base import Store
from tidings.stores.postgres import PostgresStore, _sql, _store, translate_placeholders
from tidings.testing.store_contract import BUSINESS, StoreContract, message, relay_all

DSN_ENV = "TIDINGS_POSTGRES_DSN"


def postgres_dsn() -> str:
    dsn = os.environ.get(DSN_ENV)
    if not dsn:
        reason = (
            f"{DSN_ENV} is not set: start PostgreSQL with `scripts/services start postgres`, "
            'then `eval "$(scripts/services env)"`'
        )
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return dsn


def with_options(url: str, **options: object) -> str:
    parts = urlsplit(url)
    query = [*parse_qsl(parts.query), *((k, str(v)) for k, v in options.items())]
    return urlunsplit(parts._replace(query=urlencode(query)))


def with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:{password}@{host}"))


def with_port(url: str, port: int) -> str:
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{parts.hostname}:{port}"))


def drop_schema(dsn: str, name: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture
def pg_dsn() -> str:
    return postgres_dsn()


@pytest.fixture
def schema_url(pg_dsn: str) -> Iterator[Callable[..., str]]:
    """Makes store URLs, each in a fresh schema (created now unless create=False)."""
    names: list[str] = []

    def make(create: bool = True, **options: object) -> str:
        name = f"t_{uuid.uuid4().hex[:16]}"
        names.append(name)
        if create:
            with psycopg.connect(pg_dsn, autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
        return with_options(pg_dsn, schema=name, **options)

    yield make
    for name in names:
        drop_schema(pg_dsn, name)


def terminate(dsn: str, application_name: str) -> int:
    """Kill every server session of `application_name`; how many."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = %s AND pid <> pg_backend_pid()",
            (application_name,),
        ).fetchone()
        assert row is not None
        return int(row[0])


def wake(loop: asyncio.AbstractEventLoop, event: asyncio.Event) -> None:
    loop.call_soon_threadsafe(event.set)


async def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


class TestPostgresStore(StoreContract):
    @pytest.fixture
    def store_url(self, schema_url: Callable[..., str]) -> str:
        return schema_url()


@pytest.fixture
async def store(schema_url: Callable[..., str]) -> AsyncIterator[Store]:
    async with connect_store(schema_url()) as store:
        await store.migrate([BUSINESS])
        yield store


# ? placeholders --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "sent"),
    [
        ("SELECT ?, ?", "SELECT %s, %s"),
        ("SELECT '?', ?", "SELECT '?', %s"),
        ("SELECT 'it''s ?', ?", "SELECT 'it''s ?', %s"),
        ('SELECT "odd?""name", ?', 'SELECT "odd?""name", %s'),
        ("SELECT E'\\' ?', ?", "SELECT E'\\' ?', %s"),
        ("SELECT 'a\\', ?", "SELECT 'a\\', %s"),
        ("SELECT 1 -- why?\n, ?", "SELECT 1 -- why?\n, %s"),
        ("/* a /* nested? */ b? */ SELECT ?", "/* a /* nested? */ b? */ SELECT %s"),
        ("SELECT $$ ? $$, $t$ ?$$ $t$, ?", "SELECT $$ ? $$, $t$ ?$$ $t$, %s"),
        ("SELECT $1, a$b$ ?", "SELECT $1, a$b$ %s"),
        ("SELECT 'a%' LIKE ?, 7 % 2", "SELECT 'a%%' LIKE %s, 7 %% 2"),
        ("SELECT '%s', %(x)s", "SELECT '%%s', %%(x)s"),
        ("SELECT data ?? 'k', ?", "SELECT data ? 'k', %s"),
        ("SELECT 'open ? %", "SELECT 'open ? %%"),
    ],
)
def test_placeholders_are_translated_outside_quotes_and_comments(written: str, sent: str) -> None:
    assert translate_placeholders(written) == sent


async def test_placeholder_edge_cases_run_on_the_server(store: Store) -> None:
    rows = await store.query(
        "SELECT '?', ?, 'a%b', 7 % 3, E'\\'?', $$?$$, \"q?\" FROM (SELECT 1 AS \"q?\") s"
        " -- trailing comment?\n",
        ("param",),
    )
    assert rows == [("?", "param", "a%b", 1, "'?", "?", 1)]
    assert await store.query("""SELECT '{"a": 1}'::jsonb ?? 'a', ? LIKE 'x%'""", ("xyz",)) == [
        (True, True)
    ]
    async with store.transaction() as tx:
        await tx.execute("INSERT INTO orders(id, total) VALUES (?, ?)", ("50%?", 1.5))
        assert await tx.fetchall("SELECT id FROM orders WHERE id LIKE '50%'") == [("50%?",)]
        assert await tx.fetchall("UPDATE orders SET total = ? WHERE id = ?", (2, "50%?")) == []
    with pytest.raises(TypeError, match="named parameters"):
        await store.query("SELECT :x", {"x": 1})
    async with store.transaction() as tx:
        with pytest.raises(TypeError, match="named parameters"):
            tx.defer("INSERT INTO orders(id, total) VALUES (:id, 1)", {"id": "x"})


async def test_a_transaction_whose_error_was_caught_does_not_pretend_to_commit(
    store: Store,
) -> None:
    """PostgreSQL aborts a transaction at its first error; if the code catches the error and
    carries on, COMMIT would silently roll back. The commit raises instead."""
    with pytest.raises(TransactionAbortedError, match="rolled back"):
        async with store.transaction() as tx:
            await tx.execute("INSERT INTO orders(id, total) VALUES ('a', 1)")
            with pytest.raises(IntegrityError) as raised:
                await tx.execute("INSERT INTO orders(id, total) VALUES ('a', 2)")
            assert isinstance(raised.value.orig, psycopg.errors.UniqueViolation)
    assert await store.query("SELECT count(*) FROM orders") == [(0,)]


async def test_deferred_statements_without_pipeline_mode(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a libpq older than 14 (no pipeline mode) deferred statements still run, in order."""
    monkeypatch.setattr("tidings.stores.postgres._transaction._PIPELINES", False)
    async with store.transaction() as tx:
        tx.defer("INSERT INTO orders(id, total) VALUES (?, ?)", ("a", 1))
        tx.defer("INSERT INTO orders(id, total) VALUES (?, ?)", ("b", 2))
        tx.defer("UPDATE orders SET total = total + 10 WHERE id = ?", ("a",))
    assert await store.query("SELECT id, total FROM orders ORDER BY id") == [("a", 11), ("b", 2)]
    with pytest.raises(IntegrityError):
        async with store.transaction() as tx:
            tx.defer("INSERT INTO orders(id, total) VALUES (?, ?)", ("c", 3))
            tx.defer("INSERT INTO orders(id, total) VALUES (?, ?)", ("a", 4))
    assert await store.query("SELECT count(*) FROM orders") == [(2,)]


# URLs, credentials, unreachable servers -------------------------------------------------------


async def test_wrong_password_is_a_clear_error_without_the_password(pg_dsn: str) -> None:
    secret = "Wr0ng-S3cret-pw"  # noqa: S105 - a wrong one on purpose
    store = connect_store(with_password(pg_dsn, secret))
    assert secret not in store.url and secret not in repr(store)
    with pytest.raises(StorageError) as caught:
        await store.start()
    text = "".join(traceback.format_exception(caught.value))
    assert secret not in text
    parts = urlsplit(pg_dsn)
    assert f"{parts.hostname}:{parts.port}" in str(caught.value)
    assert repr(parts.username) in str(caught.value)
    assert "password authentication failed" in str(caught.value)
    await store.close()


async def test_unreachable_server_is_a_storage_error_after_bounded_retries(pg_dsn: str) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = with_options(with_port(pg_dsn, port), retry_s=0.3)
    started = time.monotonic()
    with pytest.raises(StorageError, match=f"127.0.0.1:{port}"):
        await connect_store(url).start()
    assert time.monotonic() - started < 10


def test_url_options_and_masking(pg_dsn: str) -> None:
    store = connect_store(with_options(pg_dsn.replace("postgresql://", "postgres://"), schema="s"))
    assert isinstance(store, PostgresStore) and store.schema == "s"
    assert ":***@" in store.url
    with pytest.raises(ConfigError) as caught:
        connect_store("postgresql://u:Se%zzcret@127.0.0.1:1/db")
    assert "zzcret" not in str(caught.value)
    with pytest.raises(ConfigError, match="pool_size"):
        connect_store(with_options(pg_dsn, pool_size=0))
    with pytest.raises(ConfigError, match="no_such_param"):
        connect_store(with_options(pg_dsn, no_such_param=1))


# schema creation ---------------------------------------------------------------------------


async def test_concurrent_starts_and_migrations_are_safe(schema_url: Callable[..., str]) -> None:
    url = schema_url(create=False)
    stores = [connect_store(url) for _ in range(4)]
    try:
        await asyncio.gather(*(s.start() for s in stores))
        migrations = [BUSINESS, "CREATE TABLE extra (x INTEGER); CREATE INDEX extra_x ON extra (x)"]
        ran = await asyncio.gather(*(s.migrate(migrations) for s in stores))
        assert sum(ran) == 2
        assert await stores[0].query("SELECT id FROM tidings_migrations ORDER BY id") == [
            (1,),
            (2,),
        ]
    finally:
        for s in stores:
            await s.close()


# relay: late commits and per-key order ----------------------------------------------------------


async def test_late_commits_with_lower_seqs_are_relayed(store: Store) -> None:
    """Writers take seqs 0 < 1 < 2 < 3 (explicit flush), on four connections at once, then
    commit 2, roll back 3, commit 1, commit 0 while a relay loop runs: a relay that removed
    "everything up to the highest seq seen" would lose e-1 and e-0."""
    flushed = [asyncio.Event() for _ in range(4)]
    gates = [asyncio.Event() for _ in range(4)]
    backends: list[int] = []

    async def writer(n: int) -> None:
        try:
            async with store.transaction() as tx:
                row = await tx.fetchone("SELECT pg_backend_pid()")
                assert row is not None
                backends.append(row[0])
                await tx.execute("INSERT INTO orders(id, total) VALUES (?, ?)", (f"o-{n}", n))
                tx.add_outbox("t", f"e-{n}", message(n))
                await tx.flush()
                flushed[n].set()
                await gates[n].wait()
                if n == 3:
                    raise RuntimeError("rolled back on purpose")
        except RuntimeError:
            pass

    relayed: list[tuple[str, int]] = []
    stop = asyncio.Event()

    async def relay() -> None:
        while not stop.is_set():
            rows = await store.outbox_claim("relay-a", 100, 30.0)
            assert rows is not None
            relayed.extend((r.event_id, r.seq) for r in rows)
            if rows:
                await store.outbox_remove("relay-a", [r.seq for r in rows])
            await asyncio.sleep(0.002)

    def was_relayed(event_id: str) -> bool:
        return any(e == event_id for e, _ in relayed)

    relay_task = asyncio.create_task(relay())
    writers = []
    for n in range(4):
        writers.append(asyncio.create_task(writer(n)))
        await flushed[n].wait()
    assert len(set(backends)) == 4
    await asyncio.sleep(0.05)
    assert relayed == []
    for n in (2, 3, 1, 0):
        gates[n].set()
        await writers[n]
        if n == 3:
            await asyncio.sleep(0.05)
        else:
            await eventually(functools.partial(was_relayed, f"e-{n}"))
    stop.set()
    await relay_task
    assert [e for e, _ in relayed] == ["e-2", "e-1", "e-0"]
    seqs = dict(relayed)
    assert seqs["e-0"] < seqs["e-1"] < seqs["e-2"]
    assert await store.outbox_size() == 0


@pytest.mark.parametrize("first_commits_while_second_waits", [True, False])
async def test_batched_inbox_insert_after_a_concurrent_commit_fails_and_falls_back(
    store: Store, first_commits_while_second_waits: bool
) -> None:
    """Two deliveries of the same events both find nothing in the inbox and apply their effect;
    whichever inserts its inbox rows second - waiting for the first's uncommitted rows, or
    after they committed - gets InboxConflictError and commits nothing; the per-record path
    then sees the rows and applies nothing."""
    events = [("svc.h", f"e-{n}", ("t", 0, n)) for n in range(3)]
    keys = [(consumer, event_id) for consumer, event_id, _ in events]
    first_inserted = asyncio.Event()
    release_first = asyncio.Event()

    async def first() -> None:
        async with store.transaction() as tx:
            assert await tx.inbox_find(keys) == set()
            await tx.execute("INSERT INTO orders(id, total) VALUES ('first', 1)")
            await tx.inbox_add_all(events)
            first_inserted.set()
            await release_first.wait()

    async def second() -> None:
        async with store.transaction() as tx:
            assert await tx.inbox_find(keys) == set()
            await tx.execute("INSERT INTO orders(id, total) VALUES ('second', 2)")
            await first_inserted.wait()
            if not first_commits_while_second_waits:
                release_first.set()
                await first_task
            insert = asyncio.create_task(tx.inbox_add_all(events))
            await asyncio.sleep(0.2)
            waited = not insert.done()
            assert waited == first_commits_while_second_waits
            release_first.set()
            await insert

    first_task = asyncio.create_task(first())
    with pytest.raises(InboxConflictError):
        await second()
    await first_task
    assert await store.query("SELECT id FROM orders") == [("first",)]
    async with store.transaction() as tx:
        assert [await tx.inbox_add(c, e, p) for c, e, p in events] == [False, False, False]


async def test_inbox_lookups_probe_the_primary_key_at_any_inbox_size(
    pg_dsn: str, schema_url: Callable[..., str]
) -> None:
    """The batch lookup of inbox rows is planned as one primary-key probe per key: PostgreSQL's
    own choice for a join of 30 keys with an inbox of a few thousand rows is a hash join over a
    scan of the whole table (5-20x slower, and slower as the inbox grows)."""
    url = schema_url()
    schema = dict(parse_qsl(urlsplit(url).query))["schema"]
    async with connect_store(url) as store:
        async with store.transaction() as tx:
            await tx.inbox_add_all([("svc.h", f"e-{n}", ("t", 0, n)) for n in range(3000)])
        keys = [("svc.h", f"e-{n}") for n in range(2990, 3020)]
        async with store.transaction() as tx:
            assert await tx.inbox_find(keys) == {("svc.h", f"e-{n}") for n in range(2990, 3000)}
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        conn.execute("ANALYZE tidings_inbox")
        for size in (2, 30, 300):
            columns = [["svc.h"] * size, [f"e-{n}" for n in range(size)]]
            plan = "\n".join(
                row[0]
                for row in conn.execute(
                    "EXPLAIN " + _sql.INBOX_FIND, columns, prepare=False, binary=True
                )
            )
            assert "Index Only Scan using tidings_inbox_pkey" in plan, plan
            assert "Seq Scan on tidings_inbox" not in plan and "Hash" not in plan, plan


async def test_inbox_cleanup_reads_the_expired_rows_through_an_index(
    pg_dsn: str, schema_url: Callable[..., str]
) -> None:
    """The periodic cleanup finds rows past their retention through the index on `processed`
    (created on start, also in a schema of an older version) instead of reading the whole
    inbox - days of events - every few minutes."""
    url = schema_url()
    schema = dict(parse_qsl(urlsplit(url).query))["schema"]
    async with connect_store(url):
        pass
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        conn.execute("DROP INDEX tidings_inbox_processed")  # as a schema of an older version
    async with connect_store(url) as store:
        async with store.transaction() as tx:
            await tx.inbox_add_all([("svc.h", f"e-{n}", ("t", n % 4, n)) for n in range(20_000)])
        assert await store.inbox_cleanup("svc.", {("t", p): 30_000 for p in range(4)}, 60) == 0
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        conn.execute("ANALYZE tidings_inbox")
        params = (["t"] * 4, list(range(4)), [30_000] * 4, "svc.", "svc.", 60.0)
        plan = "\n".join(
            row[0] for row in conn.execute("EXPLAIN " + _sql.INBOX_CLEANUP, params, prepare=False)
        )
        assert "tidings_inbox_processed" in plan, plan
        assert "Seq Scan on tidings_inbox" not in plan, plan


async def test_concurrent_redelivery_to_two_dispatchers_applies_each_effect_once(
    schema_url: Callable[..., str],
) -> None:
    """The same batch handled by two consumers at once (a rebalance race): both look the inbox
    up before either commits and both run the handlers; the second to insert its inbox rows
    fails, rolls back and re-applies the batch per record, where every event is a duplicate."""
    from tidings.event import event_to_message
    from tidings.records import Batch
    from tidings.runtime.dispatch import Dispatcher

    service = Service(
        "race",
        broker="memory://",
        store=schema_url(),
        migrations=["CREATE TABLE effects (event_id TEXT NOT NULL)"],
    )
    both_ran = asyncio.Barrier(2)

    @service.handler("orders")
    async def apply(event: Event, ctx: Context) -> None:
        await ctx.execute("INSERT INTO effects(event_id) VALUES (?)", (event.id,))
        if event.data["n"] == 4:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.BrokenBarrierError):
                await asyncio.wait_for(both_ran.wait(), 2)

    await service.start()
    events = [Event(type="T", key="k", data={"n": n}) for n in range(5)]
    records = [
        Record("orders", 0, offset, 0, m.value, m.key, m.headers)
        for offset, m in enumerate(event_to_message(e) for e in events)
    ]

    class Acks:
        acked = 0

        def ack(self, batch: Batch) -> None:
            self.acked += 1

        def nack(self, batch: Batch, offset: int | None = None) -> None:
            raise AssertionError(f"nacked at {offset}")

    acks = Acks()
    try:
        await asyncio.gather(
            *(
                Dispatcher(service).process(acks, Batch("orders", 0, records))  # type: ignore[arg-type]
                for _ in range(2)
            )
        )
        rows = await service.store.query(
            "SELECT event_id, count(*) FROM effects GROUP BY event_id ORDER BY event_id"
        )
    finally:
        await service.close()
    assert rows == sorted((e.id, 1) for e in events)
    assert acks.acked == 2
    assert (service.stats.processed, service.stats.duplicates) == (5, 5)


async def test_a_commit_between_claim_and_remove_is_not_lost(store: Store) -> None:
    """The claim sees e-2; e-1 (lower seq) commits before e-2 is removed: removing "up to the
    highest claimed seq" would delete e-1 unpublished."""
    flushed = [asyncio.Event() for _ in range(3)]
    gates = [asyncio.Event() for _ in range(3)]

    async def writer(n: int) -> None:
        async with store.transaction() as tx:
            tx.add_outbox("t", f"e-{n}", message(n))
            await tx.flush()
            flushed[n].set()
            await gates[n].wait()

    writers = []
    for n in range(3):
        writers.append(asyncio.create_task(writer(n)))
        await flushed[n].wait()
    gates[2].set()
    await writers[2]
    first = await store.outbox_claim("relay-a", 100, 30.0)
    assert first is not None and [r.event_id for r in first] == ["e-2"]
    gates[1].set()
    await writers[1]
    await store.outbox_remove("relay-a", [r.seq for r in first])
    second = await store.outbox_claim("relay-a", 100, 30.0)
    assert second is not None and [r.event_id for r in second] == ["e-1"]
    assert second[0].seq < first[0].seq
    gates[0].set()
    await writers[0]
    await store.outbox_remove("relay-a", [r.seq for r in second])
    assert await relay_all(store) == ["e-0"]


async def test_per_key_order_follows_the_row_lock_order(store: Store) -> None:
    """Transactions serialized by a row lock on the same key are relayed in commit order,
    with a relay loop running concurrently."""
    await store.migrate([BUSINESS, "CREATE TABLE counters (k TEXT PRIMARY KEY, n INTEGER)"])
    async with store.transaction() as tx:
        await tx.execute("INSERT INTO counters(k, n) VALUES ('k', 0)")
    relayed: list[str] = []
    stop = asyncio.Event()

    async def relay() -> None:
        while not stop.is_set():
            rows = await store.outbox_claim("relay-a", 7, 30.0)
            assert rows is not None
            relayed.extend(r.event_id for r in rows)
            if rows:
                await store.outbox_remove("relay-a", [r.seq for r in rows])
            await asyncio.sleep(0.001)

    async def bump() -> None:
        async with store.transaction() as tx:
            await asyncio.sleep(random.random() * 0.003)
            row = await tx.fetchone("UPDATE counters SET n = n + 1 WHERE k = ? RETURNING n", ("k",))
            assert row is not None
            await asyncio.sleep(random.random() * 0.003)
            tx.add_outbox("t", f"e-{row[0]}", Message(str(row[0]).encode(), b"k"))

    relay_task = asyncio.create_task(relay())
    await asyncio.gather(*(bump() for _ in range(80)))
    stop.set()
    await relay_task
    relayed.extend(await relay_all(store))
    assert relayed == [f"e-{n}" for n in range(1, 81)]


# connection loss --------------------------------------------------------------------------------


async def test_connection_loss_is_retried_outside_transactions(
    pg_dsn: str, schema_url: Callable[..., str]
) -> None:
    app = f"tidings-test-{uuid.uuid4().hex[:8]}"
    async with connect_store(schema_url(application_name=app)) as store:
        await store.migrate([BUSINESS])
        async with store.transaction() as tx:
            tx.add_outbox("t", "e-1", message(1))
        assert terminate(pg_dsn, app) >= 1
        assert await store.query("SELECT 1") == [(1,)]
        assert terminate(pg_dsn, app) >= 1
        rows = await store.outbox_claim("relay-a", 10, 30.0)
        assert rows is not None and [r.event_id for r in rows] == ["e-1"]
        assert terminate(pg_dsn, app) >= 1
        async with store.transaction() as tx:  # BEGIN on a dead connection is retried
            await tx.execute("INSERT INTO orders(id, total) VALUES ('after', 1)")
        assert await store.query("SELECT id FROM orders") == [("after",)]


async def test_connection_loss_inside_a_transaction_propagates(store: Store) -> None:
    with pytest.raises(StorageError, match="in a transaction"):
        async with store.transaction() as tx:
            await tx.execute("INSERT INTO orders(id, total) VALUES ('lost', 1)")
            tx.add_outbox("t", "e-lost", message(1))
            await tx.execute("SELECT pg_terminate_backend(pg_backend_pid())")
    assert await store.query("SELECT count(*) FROM orders") == [(0,)]
    assert await store.outbox_size() == 0
    async with store.transaction() as tx:
        await tx.execute("INSERT INTO orders(id, total) VALUES ('next', 1)")
    assert await store.query("SELECT id FROM orders") == [("next",)]


# wake-ups ---------------------------------------------------------------------------------------


async def test_on_outbox_wakes_other_instances_of_the_same_schema_only(
    schema_url: Callable[..., str],
) -> None:
    url, elsewhere = schema_url(), schema_url()
    loop = asyncio.get_running_loop()
    async with (
        connect_store(url) as writer,
        connect_store(url) as listener,
        connect_store(elsewhere) as other,
    ):
        woken = asyncio.Event()
        listener.on_outbox(lambda: wake(loop, woken))
        await asyncio.sleep(0.3)
        async with other.transaction() as tx:
            tx.add_outbox("t", "e-other", message(1))
        await asyncio.sleep(0.2)
        assert not woken.is_set()
        async with writer.transaction() as tx:
            tx.add_outbox("t", "e-1", message(1))
        await asyncio.wait_for(woken.wait(), 5)


async def test_outbox_notifications_reach_only_their_schemas_listeners(pg_dsn: str) -> None:
    """Each schema NOTIFYs on a channel of its own (a digest for names too long for one), so a
    process is not woken by other schemas' commits: on one shared channel every process of
    every schema in the database woke for each of them."""
    long_names = [f"t_{uuid.uuid4().hex[:8]}_" + "x" * 50 + suffix for suffix in "ab"]
    channels = [_sql.channel(name) for name in long_names]
    assert not any(name in c for name, c in zip(long_names, channels, strict=True))  # digests
    assert channels[0] != channels[1] and all(len(c.encode()) <= 63 for c in channels)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        for name in long_names:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    try:
        loop = asyncio.get_running_loop()
        url, other_url = (with_options(pg_dsn, schema=name) for name in long_names)
        async with connect_store(url) as store, connect_store(other_url) as other:
            woken = asyncio.Event()
            store.on_outbox(lambda: wake(loop, woken))
            with psycopg.connect(pg_dsn, autocommit=True) as watcher:
                watcher.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channels[0])))
                for n in range(3):
                    async with other.transaction() as tx:
                        tx.add_outbox("t", f"e-other-{n}", message(n))
                async with store.transaction() as tx:
                    tx.add_outbox("t", "e-1", message(1))
                await asyncio.wait_for(woken.wait(), 5)
                seen = [n.payload for n in watcher.notifies(timeout=0.5, stop_after=5)]
            assert seen == [long_names[0]]
    finally:
        for name in long_names:
            drop_schema(pg_dsn, name)


async def test_on_outbox_listener_reconnects(pg_dsn: str, schema_url: Callable[..., str]) -> None:
    app = f"tidings-test-{uuid.uuid4().hex[:8]}"
    loop = asyncio.get_running_loop()
    async with connect_store(schema_url(application_name=app)) as store:
        woken = asyncio.Event()
        store.on_outbox(lambda: wake(loop, woken))
        await asyncio.sleep(0.3)
        assert terminate(pg_dsn, app) >= 1
        await asyncio.wait_for(woken.wait(), 10)  # woken once after the reconnect
        woken.clear()
        async with store.transaction() as tx:
            tx.add_outbox("t", "e-1", message(1))
        await asyncio.wait_for(woken.wait(), 5)


# several relay processes ------------------------------------------------------------------------

RELAY_PROCESS = textwrap.dedent(
    """
    import asyncio, fcntl, os, sys
    from tidings.stores import connect_store

    async def main(url, relay, lock_path, crash_after):
        store = connect_store(url)
        await store.start()
        fd = os.open(lock_path, os.O_RDWR)
        batches = 0
        while not os.path.exists(lock_path + ".done"):
            rows = await store.outbox_claim(relay, 7, 0.5)
            if not rows:
                await asyncio.sleep(0.005)
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                print("OVERLAP", flush=True)
                os._exit(3)
            async with store.transaction() as tx:  # "publish"
                for r in rows:
                    await tx.execute(
                        "INSERT INTO published(relay, event_id, key) VALUES (?, ?, ?)",
                        (relay, r.event_id, r.message.key.decode()),
                    )
            await asyncio.sleep(0.01)
            batches += 1
            if batches == crash_after:
                os._exit(9)  # killed after publishing, before removing
            fcntl.flock(fd, fcntl.LOCK_UN)
            await store.outbox_remove(relay, [r.seq for r in rows])
            if batches % 3 == 0:
                await store.outbox_release(relay)  # let the other relay take a turn
                await asyncio.sleep(0.02)
        await store.close()

    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
    """
)


@pytest.mark.parametrize("crash_after", [0, 4], ids=["both-live", "one-killed"])
async def test_relay_processes_never_publish_concurrently(
    schema_url: Callable[..., str], tmp_path: Path, crash_after: int
) -> None:
    url = schema_url()
    events = 150
    async with connect_store(url) as store:
        await store.migrate(
            [
                "CREATE TABLE published"
                " (n BIGSERIAL PRIMARY KEY, relay TEXT, event_id TEXT, key TEXT)"
            ]
        )
        for n in range(events):
            async with store.transaction() as tx:
                tx.add_outbox("t", f"e-{n}", Message(b"v", f"k{n % 6}".encode()))
        lock_path = tmp_path / "publishing.lock"
        lock_path.touch()
        repo = Path(__file__).resolve().parent.parent
        relays = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                RELAY_PROCESS,
                url,
                f"relay-{i}",
                str(lock_path),
                str(crash_after if i == 0 else 0),
                cwd=repo,
                stdout=asyncio.subprocess.PIPE,
            )
            for i in range(2)
        ]

        async def published() -> list[tuple[str, str, str]]:
            rows = await store.query("SELECT relay, event_id, key FROM published ORDER BY n")
            return [(r[0], r[1], r[2]) for r in rows]

        try:
            deadline = time.monotonic() + 60
            while len({e for _, e, _ in await published()}) < events:
                assert time.monotonic() < deadline, "relays did not publish everything"
                assert all(p.returncode in (None, 9) for p in relays), "a relay failed"
                await asyncio.sleep(0.05)
            (tmp_path / "publishing.lock.done").touch()
            outputs = [await asyncio.wait_for(p.communicate(), 30) for p in relays]
        finally:
            for p in relays:
                if p.returncode is None:
                    p.kill()
                await p.wait()
        assert [p.returncode for p in relays] == [9 if crash_after else 0, 0]
        assert all(b"OVERLAP" not in out for out, _ in outputs)
        rows = await published()
        assert {r for r, _, _ in rows} == {"relay-0", "relay-1"}
        first_seen: dict[str, list[int]] = {}
        seen: set[str] = set()
        for _, event_id, key in rows:
            if event_id not in seen:
                seen.add(event_id)
                first_seen.setdefault(key, []).append(int(event_id[2:]))
        for numbers in first_seen.values():
            assert numbers == sorted(numbers)
        if not crash_after:
            assert len(rows) == events
        assert await store.outbox_size() == 0


# services on PostgreSQL -------------------------------------------------------------------------


async def test_services_run_on_postgres_by_configuration_alone(
    schema_url: Callable[..., str], tmp_path: Path
) -> None:
    """The same service code as on SQLite: async and sync handlers with `?` SQL, the outbox,
    the inbox, and a handler publishing one event twice (dead-lettered, the partition moves on).
    """
    broker_url = f"sqlite:///{tmp_path}/bus.db"
    fast = Retry(immediate=1, max_attempts=2, initial_delay=0.01, max_delay=0.02)
    orders = Service(
        "orders",
        broker=broker_url,
        store=schema_url(),
        migrations=["CREATE TABLE orders (id TEXT PRIMARY KEY, status TEXT NOT NULL)"],
        topics={"order-events": 2, "inventory-events": 2},
    )
    inventory = Service(
        "inventory",
        broker=broker_url,
        store=schema_url(),
        migrations=["CREATE TABLE reserved (order_id TEXT PRIMARY KEY, note TEXT)"],
        retry=fast,
    )

    @inventory.handler("order-events")
    async def reserve(event: Event, ctx: Context) -> None:
        order_id = event.data["id"]
        await ctx.execute("INSERT INTO reserved(order_id, note) VALUES (?, '100%')", (order_id,))
        follow_up = Event(type="RESERVED", data={"id": order_id})
        ctx.publish("inventory-events", follow_up, key=order_id)
        if order_id == "twice":
            ctx.publish("inventory-events", follow_up, key=order_id)

    @orders.handler("inventory-events")
    def confirm(event: Event, ctx: SyncContext) -> None:
        ctx.execute("UPDATE orders SET status = 'CONFIRMED' WHERE id = ?", (event.data["id"],))

    tasks = [await s.run_in_background() for s in (orders, inventory)]
    try:
        ids = [f"o{n}" for n in range(10)] + ["twice"]
        for order_id in ids:
            async with orders.transaction() as ctx:
                await ctx.execute(
                    "INSERT INTO orders(id, status) VALUES (?, 'PENDING')", (order_id,)
                )
                ctx.publish(
                    "order-events", Event(type="PLACED", data={"id": order_id}), key=order_id
                )

        async def settled() -> bool:
            rows = await orders.store.query(
                "SELECT count(*) FROM orders WHERE status = 'CONFIRMED'"
            )
            return bool(rows[0][0] == 10) and inventory.stats.dead_lettered == 1

        deadline = time.monotonic() + 30
        while not await settled():
            assert time.monotonic() < deadline, "services did not settle"
            await asyncio.sleep(0.02)
        rows = await inventory.store.query("SELECT order_id, note FROM reserved ORDER BY order_id")
        assert rows == [(f"o{n}", "100%") for n in range(10)]
        async with connect(broker_url) as broker:
            letters: list[Record] = []
            while not letters:  # the dead letter reaches the topic through the relay
                assert time.monotonic() < deadline + 30, "dead letter not relayed"
                info = await broker.admin.describe_topic("inventory.dlq")
                for p in info.partitions:
                    tp = TopicPartition("inventory.dlq", p.partition)
                    letters.extend(await broker.read(tp, p.start_offset, 100))
                await asyncio.sleep(0.02)
        assert [event_from_record(r).data["id"] for r in letters] == ["twice"]
    finally:
        for service in (orders, inventory):
            service.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)


async def test_a_deferred_constraint_failing_at_commit_is_its_handlers_failure(
    schema_url: Callable[..., str],
) -> None:
    """A DEFERRABLE INITIALLY DEFERRED foreign key is checked at COMMIT, outside any handler:
    the batch is re-applied with constraints checked at each statement, where the violation
    is the handler's own - its event alone is dead-lettered, and the batch is acked (not
    redelivered forever)."""
    from tests.test_deferred import Acks, records
    from tidings.records import Batch
    from tidings.runtime.dispatch import Dispatcher

    service = Service(
        "deferrable",
        broker="memory://",
        store=schema_url(),
        migrations=[
            "CREATE TABLE customers (id TEXT PRIMARY KEY)",
            "INSERT INTO customers VALUES ('ada'), ('bob')",
            "CREATE TABLE orders (id TEXT PRIMARY KEY, customer TEXT NOT NULL"
            " REFERENCES customers(id) DEFERRABLE INITIALLY DEFERRED)",
        ],
    )
    service.retry = Retry(immediate=1, max_attempts=2, initial_delay=0.01, max_delay=0.02)

    @service.handler("orders")
    async def record_order(event: Event, ctx: Context) -> None:
        await ctx.execute(
            "INSERT INTO orders(id, customer) VALUES (?, ?)", (event.id, event.data["customer"])
        )

    await service.start()
    events = [Event(type="T", key="k", data={"customer": c}) for c in ("ada", "eve", "bob")]
    acks = Acks()
    try:
        await asyncio.wait_for(
            Dispatcher(service).process(acks, Batch("orders", 0, records(events))),  # type: ignore[arg-type]
            30,
        )
        rows = await service.store.query("SELECT customer FROM orders ORDER BY customer")
    finally:
        await service.close()
    assert rows == [("ada",), ("bob",)]
    assert acks.acked == 1
    assert service.stats.dead_lettered == 1


async def test_a_cancelled_statement_leaves_only_a_rollback(store: Store) -> None:
    """A statement cancelled by a timeout the code catches: PostgreSQL aborts the
    transaction; the next statement says so in tidings' terms, and nothing commits."""
    with pytest.raises(TransactionAbortedError, match="cancelled"):
        async with store.transaction() as tx:
            await tx.execute("INSERT INTO orders(id, total) VALUES ('a', 1)")
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.2):
                    await tx.execute("SELECT pg_sleep(5)")
            await tx.execute("INSERT INTO orders(id, total) VALUES ('b', 2)")
    assert await store.query("SELECT count(*) FROM orders") == [(0,)]


async def test_the_removal_of_published_rows_goes_with_the_next_claim(
    store: Store,
) -> None:
    """`outbox_remove` defers its DELETE to the relay's next claim (one round trip and one
    transaction for both), or REMOVAL_DELAY_S later; meanwhile the rows are neither claimed
    nor counted as pending. Releasing the lease deletes them at once."""
    assert isinstance(store, PostgresStore)

    async def rows_in_table() -> list[str]:
        rows = await store.query("SELECT event_id FROM tidings_outbox ORDER BY seq")
        return [str(r[0]) for r in rows]

    async with store.transaction() as tx:
        for n in range(3):
            tx.add_outbox("t", f"e-{n}", message(n))
    first = await store.outbox_claim("relay-a", 2, 30.0)
    assert first is not None and [r.event_id for r in first] == ["e-0", "e-1"]
    await store.outbox_remove("relay-a", [r.seq for r in first])
    assert await rows_in_table() == ["e-0", "e-1", "e-2"]  # deferred
    assert (await store.outbox_stats()).pending == 1

    second = await store.outbox_claim("relay-a", 10, 30.0)
    assert second is not None and [r.event_id for r in second] == ["e-2"]
    assert await rows_in_table() == ["e-2"]  # the claim deleted them

    await store.outbox_remove("relay-a", [r.seq for r in second])
    assert (await store.outbox_stats()).pending == 0
    assert await rows_in_table() == ["e-2"]
    await asyncio.sleep(_store.REMOVAL_DELAY_S + 0.2)  # no claim comes: deleted on its own
    assert await rows_in_table() == []

    async with store.transaction() as tx:
        tx.add_outbox("t", "e-3", message(3))
    third = await store.outbox_claim("relay-a", 10, 30.0)
    assert third is not None
    await store.outbox_remove("relay-a", [r.seq for r in third])
    await store.outbox_release("relay-a")
    assert await rows_in_table() == []
