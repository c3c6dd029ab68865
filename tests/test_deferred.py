"""`ctx.defer` and statement errors: handlers' queued statements, and errors their code
catches, on both stores, through the dispatcher.

In a batch applied without savepoints, a deferred statement runs when the next statement does -
possibly another handler's, or the inbox write at the end - so its failure cannot name its
handler there: the batch rolls back and is re-applied with a savepoint per handler, where it
fails inside its own handler; that event alone is retried and dead-lettered, the others'
effects commit once.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.support import server_setting
from tidings import Event, dlq
from tidings.event import event_to_message
from tidings.records import Batch, Record
from tidings.retry import Retry
from tidings.runtime.dispatch import Dispatcher
from tidings.schema import EventModel
from tidings.service import Context, Service, SyncContext

EFFECTS = "CREATE TABLE effects (event_id TEXT PRIMARY KEY, n INTEGER NOT NULL CHECK (n <> 6))"
FAST = Retry(immediate=1, max_attempts=2, initial_delay=0.01, max_delay=0.02)


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('deferred')}/store.db"
        return
    dsn = server_setting("TIDINGS_POSTGRES_DSN", "postgres")
    schema = f"t_deferred_{uuid.uuid4().hex[:8]}"
    yield f"{dsn}{'&' if '?' in dsn else '?'}schema={schema}"
    import psycopg
    from psycopg import sql

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


class Acks:
    """A consumer that records what the dispatcher acknowledges."""

    def __init__(self) -> None:
        self.acked = 0

    def ack(self, batch: Batch) -> None:
        self.acked += 1

    def nack(self, batch: Batch, offset: int | None = None) -> None:
        raise AssertionError(f"nacked at {offset}")


def records(events: list[Event]) -> list[Record]:
    return [
        Record("orders", 0, offset, 0, m.value, m.key, m.headers)
        for offset, m in enumerate(event_to_message(e) for e in events)
    ]


@pytest.fixture
async def service(store_url: str) -> AsyncIterator[Service]:
    service = Service("deferring", broker="memory://", store=store_url, migrations=[EFFECTS])
    yield service
    await service.close()


async def test_deferred_effects_of_a_batch_commit_once(service: Service) -> None:
    @service.handler("orders")
    async def apply(event: Event, ctx: Context) -> None:
        ctx.defer("INSERT INTO effects(event_id, n) VALUES (?, ?)", (event.id, event.data["n"]))

    @service.handler("orders")
    def count(event: Event, ctx: SyncContext) -> None:
        ctx.defer("UPDATE effects SET n = n + 100 WHERE event_id = ?", (event.id,))

    await service.start()
    events = [Event(type="T", key=f"k{n % 3}", data={"n": n}) for n in range(200) if n != 6]
    acks = Acks()
    batch = records(events)
    await Dispatcher(service).process(acks, Batch("orders", 0, batch))  # type: ignore[arg-type]
    await Dispatcher(service).process(acks, Batch("orders", 0, batch))  # type: ignore[arg-type]
    rows = await service.store.query("SELECT event_id, n FROM effects ORDER BY n")
    assert rows == [(e.id, e.data["n"] + 100) for e in events]
    assert acks.acked == 2
    assert (service.stats.processed, service.stats.duplicates) == (398, 398)


async def test_a_failing_deferred_statement_dead_letters_its_event_only(
    service: Service,
) -> None:
    service.retry = FAST
    calls: dict[int, int] = {}

    @service.handler("orders")
    async def apply(event: Event, ctx: Context) -> None:
        n = event.data["n"]
        calls[n] = calls.get(n, 0) + 1
        ctx.defer("INSERT INTO effects(event_id, n) VALUES (?, ?)", (event.id, n))

    await service.start()
    events = [Event(type="T", key="k", data={"n": n}) for n in range(10)]
    acks = Acks()
    await Dispatcher(service).process(acks, Batch("orders", 0, records(events)))  # type: ignore[arg-type]
    rows = await service.store.query("SELECT n FROM effects ORDER BY n")
    assert [n for (n,) in rows] == [0, 1, 2, 3, 4, 5, 7, 8, 9]
    assert acks.acked == 1
    assert service.stats.dead_lettered == 1
    # The fast pass ran every handler once; the careful pass ran 0..6 again, 6 failing inside
    # its savepoint; 6 got one retry (max_attempts=2); 7..9 ran in the careful pass after it.
    assert calls == {0: 2, 1: 2, 2: 2, 3: 2, 4: 2, 5: 2, 6: 3, 7: 2, 8: 2, 9: 2}
    claimed = await service.store.outbox_claim("test", 10, 30.0)
    assert claimed is not None
    [letter] = claimed
    assert letter.topic == "deferring.dlq"
    assert letter.message.value == event_to_message(events[6]).value
    headers = {k: v.decode() for k, v in letter.message.headers}
    assert headers[dlq.OFFSET] == "6"
    assert headers[dlq.REASON] == dlq.REASON_EXHAUSTED
    assert "check constraint" in headers[dlq.MESSAGE].lower()


class Typed(EventModel, type="TEST_DEFERRED_TYPED", version=1):
    n: int


async def test_a_deferred_failure_surfacing_at_a_framework_statement_is_still_the_handlers(
    service: Service,
) -> None:
    """The failure surfaces at the inbox row of an undecodable record / an invalid event that
    follows it in the batch: outside any handler, yet only the deferring handler's event is
    dead-lettered, and the batch moves on."""
    service.retry = FAST

    @service.handler("orders")
    async def apply(event: Event, ctx: Context) -> None:
        if event.type == "T":
            ctx.defer("INSERT INTO effects(event_id, n) VALUES (?, ?)", (event.id, event.data["n"]))

    @service.handler("orders")
    async def typed(event: Typed, ctx: Context) -> None:
        pass

    await service.start()
    events = [Event(type="T", key="k", data={"n": n}) for n in (5, 6)]
    batch = records(events)
    invalid = event_to_message(Event(type=Typed.event_type, key="k", data={"n": "not a number"}))
    batch.append(Record("orders", 0, 2, 0, b"not an event", b"k", ()))
    batch.append(Record("orders", 0, 3, 0, invalid.value, invalid.key, invalid.headers))
    acks = Acks()
    await Dispatcher(service).process(acks, Batch("orders", 0, batch))  # type: ignore[arg-type]
    assert await service.store.query("SELECT n FROM effects") == [(5,)]
    assert acks.acked == 1
    assert service.stats.dead_lettered == 3  # n=6 (retries exhausted), undecodable, invalid


async def test_a_handler_catching_its_own_errors_cannot_swallow_anothers_deferred_failure(
    service: Service,
) -> None:
    """`audit` ignores duplicate-key errors of its own insert; the second shipment of o1, which
    `ship` deferred, fails while `audit` awaits its statement - and is still `ship`'s failure."""
    service.retry = FAST
    await service.store.start()
    await service.store.migrate(
        [
            EFFECTS,
            "CREATE TABLE shipments (order_id TEXT PRIMARY KEY, event_id TEXT NOT NULL)",
            "CREATE TABLE seen (event_id TEXT PRIMARY KEY)",
        ]
    )

    @service.handler("orders")
    async def ship(event: Event, ctx: Context) -> None:
        ctx.defer(
            "INSERT INTO shipments(order_id, event_id) VALUES (?, ?)",
            (event.data["order"], event.id),
        )

    @service.handler("orders")
    async def audit(event: Event, ctx: Context) -> None:
        with contextlib.suppress(Exception):  # already seen
            await ctx.execute("INSERT INTO seen(event_id) VALUES (?)", (event.id,))

    await service.start()
    events = [Event(type="T", key="k", data={"order": o}) for o in ("o1", "o2", "o1")]
    acks = Acks()
    await Dispatcher(service).process(acks, Batch("orders", 0, records(events)))  # type: ignore[arg-type]
    shipped = await service.store.query("SELECT event_id FROM shipments ORDER BY order_id")
    assert shipped == [(events[0].id,), (events[1].id,)]
    assert await service.store.query("SELECT count(*) FROM seen") == [(3,)]
    assert acks.acked == 1
    assert service.stats.dead_lettered == 1
    [letter] = await service.store.outbox_claim("test", 10, 30.0) or []
    headers = {k: v.decode() for k, v in letter.message.headers}
    assert (headers[dlq.HANDLER], headers[dlq.OFFSET]) == ("deferring.ship", "2")


async def test_a_deferred_statement_naming_a_missing_column_is_dead_lettered(
    service: Service,
) -> None:
    """A statement the schema cannot run (a column not migrated yet) is the handler's failure,
    retried and dead-lettered - not a store failure that redelivers the batch forever."""
    service.retry = FAST

    @service.handler("orders")
    async def apply(event: Event, ctx: Context) -> None:
        ctx.defer(
            "INSERT INTO effects(event_id, n, full_name) VALUES (?, ?, ?)", (event.id, 1, "x")
        )

    await service.start()
    acks = Acks()
    batch = records([Event(type="T", key="k", data={}) for _ in range(3)])
    await Dispatcher(service).process(acks, Batch("orders", 0, batch))  # type: ignore[arg-type]
    assert acks.acked == 1
    assert service.stats.dead_lettered == 3


async def test_a_sync_handlers_deferred_failure_crosses_its_thread_and_stays_its_own(
    service: Service,
) -> None:
    """A `def` handler runs on a worker thread; its own later statement runs what it deferred,
    and the failure comes back through that thread - still only its event is dead-lettered."""
    service.retry = FAST

    @service.handler("orders")
    def apply(event: Event, ctx: SyncContext) -> None:
        ctx.defer("INSERT INTO effects(event_id, n) VALUES (?, ?)", (event.id, event.data["n"]))
        ctx.fetchone("SELECT count(*) FROM effects")

    await service.start()
    events = [Event(type="T", key="k", data={"n": n}) for n in (4, 5, 6, 7)]
    acks = Acks()
    await Dispatcher(service).process(acks, Batch("orders", 0, records(events)))  # type: ignore[arg-type]
    assert await service.store.query("SELECT n FROM effects ORDER BY n") == [(4,), (5,), (7,)]
    assert acks.acked == 1
    assert service.stats.dead_lettered == 1


# statement errors a handler catches ---------------------------------------------------------


async def test_a_handler_swallowing_its_own_statement_error_is_dead_lettered_not_stuck(
    service: Service,
) -> None:
    """Catching a failed statement's error does not make the transaction usable again (the
    same on SQLite as on PostgreSQL, which aborts it): the event whose handler did that is
    dead-lettered with a reason that says what to do, the others are applied, and the batch
    is acked - never redelivered forever."""
    service.retry = FAST
    await service.store.start()
    await service.store.migrate([EFFECTS, "CREATE TABLE seen (id TEXT PRIMARY KEY)"])

    @service.handler("orders")
    async def remember(event: Event, ctx: Context) -> None:
        with contextlib.suppress(Exception):  # "already seen": the wrong way to ignore it
            await ctx.execute("INSERT INTO seen(id) VALUES (?)", (event.data["id"],))

    await service.start()
    events = [Event(type="T", key="k", data={"id": i}) for i in ("a", "b", "a", "c")]
    acks = Acks()
    await Dispatcher(service).process(acks, Batch("orders", 0, records(events)))  # type: ignore[arg-type]
    assert await service.store.query("SELECT id FROM seen ORDER BY id") == [("a",), ("b",), ("c",)]
    assert acks.acked == 1
    assert service.stats.dead_lettered == 1
    [letter] = await service.store.outbox_claim("test", 10, 30.0) or []
    headers = {k: v.decode() for k, v in letter.message.headers}
    assert headers[dlq.OFFSET] == "2"
    assert "ctx.savepoint()" in headers[dlq.MESSAGE]


async def test_handlers_carry_on_after_a_statement_error_inside_a_savepoint(
    service: Service,
) -> None:
    """The portable way to go on after a statement's error: run it in `ctx.savepoint()` (async
    and `def` handlers alike); nothing is dead-lettered, every effect is applied once."""
    await service.store.start()
    await service.store.migrate(
        [
            EFFECTS,
            "CREATE TABLE seen (id TEXT PRIMARY KEY, times INTEGER NOT NULL)",
            "CREATE TABLE seen_sync (id TEXT PRIMARY KEY, times INTEGER NOT NULL)",
        ]
    )

    @service.handler("orders")
    async def remember(event: Event, ctx: Context) -> None:
        try:
            async with ctx.savepoint():
                await ctx.execute("INSERT INTO seen(id, times) VALUES (?, 1)", (event.data["id"],))
        except Exception:  # already seen
            await ctx.execute("UPDATE seen SET times = times + 1 WHERE id = ?", (event.data["id"],))

    @service.handler("orders")
    def remember_sync(event: Event, ctx: SyncContext) -> None:
        try:
            with ctx.savepoint():
                ctx.execute("INSERT INTO seen_sync(id, times) VALUES (?, 1)", (event.data["id"],))
        except Exception:
            ctx.execute("UPDATE seen_sync SET times = times + 1 WHERE id = ?", (event.data["id"],))

    await service.start()
    events = [Event(type="T", key="k", data={"id": i}) for i in ("a", "b", "a", "c", "a")]
    acks = Acks()
    await Dispatcher(service).process(acks, Batch("orders", 0, records(events)))  # type: ignore[arg-type]
    expected = [("a", 3), ("b", 1), ("c", 1)]
    assert await service.store.query("SELECT id, times FROM seen ORDER BY id") == expected
    assert await service.store.query("SELECT id, times FROM seen_sync ORDER BY id") == expected
    assert acks.acked == 1
    assert service.stats.dead_lettered == 0
