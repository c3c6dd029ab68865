"""The store contract: every store backend subclasses `StoreContract` and passes it.

A subclass provides `store_url` (a fixture giving a URL for a fresh, empty store).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import pytest

from tidings.errors import (
    DuplicateEventError,
    InboxConflictError,
    IntegrityError,
    MigrationError,
    TransactionAbortedError,
)
from tidings.records import Message
from tidings.stores import connect_store
from tidings.stores.base import (
    InboxCleanup,
    InboxRows,
    InboxStatus,
    Outbox,
    OutboxWriter,
    Statements,
    Store,
    Transactions,
)
from tidings.testing.inbox_contract import BUSINESS, InboxContract
from tidings.testing.sequence_contract import SequenceContract

UNIQUE_VIOLATION = r"(?i)unique|duplicate"  # SQLite: "UNIQUE constraint", PG: "duplicate key"


def message(n: int) -> Message:
    return Message(value=f"event-{n}".encode(), key=f"order-{n}".encode(), headers=(("h", b"1"),))


async def relay_all(store: Store, relay: str = "relay-a") -> list[str]:
    """Claim and remove everything in the outbox; returns the event ids in order."""
    ids: list[str] = []
    while True:
        rows = await store.outbox_claim(relay, 100, 30.0)
        assert rows is not None
        if not rows:
            return ids
        ids.extend(r.event_id for r in rows)
        await store.outbox_remove(relay, [r.seq for r in rows])


class StoreContract(InboxContract, SequenceContract):
    @pytest.fixture
    def store_url(self) -> str:
        raise NotImplementedError

    @pytest.fixture
    async def store(self, store_url: str) -> AsyncIterator[Store]:
        store = connect_store(store_url)
        await store.start()
        await store.migrate([BUSINESS])
        yield store
        await store.close()

    async def test_outbox_stats_tell_pending_rows_and_the_oldest_ones_age(
        self, store: Store
    ) -> None:
        empty = await store.outbox_stats()
        assert empty.pending == 0 and empty.oldest_age_s is None
        async with store.transaction() as tx:
            tx.add_outbox("t", "stats-1", message(1))
            tx.add_outbox("t", "stats-2", message(2))
        await asyncio.sleep(0.05)
        stats = await store.outbox_stats()
        assert stats.pending == 2 and await store.outbox_size() == 2
        assert stats.oldest_age_s is not None and 0.04 <= stats.oldest_age_s < 60

    async def test_outbox_rows_commit_with_the_business_transaction(self, store: Store) -> None:
        async with store.transaction() as tx:
            await tx.execute("INSERT INTO orders(id, total) VALUES (?, ?)", ("o-1", 42.0))
            tx.add_outbox("order-events", "e-1", message(1))
        assert await store.query("SELECT id, total FROM orders") == [("o-1", 42.0)]
        rows = await store.outbox_claim("relay-a", 10, 30.0)
        assert rows is not None
        assert [(r.topic, r.event_id, r.message) for r in rows] == [
            ("order-events", "e-1", message(1))
        ]

    async def test_outbox_rows_vanish_with_a_rollback(self, store: Store) -> None:
        with pytest.raises(RuntimeError, match="boom"):
            async with store.transaction() as tx:
                await tx.execute("INSERT INTO orders(id, total) VALUES (?, ?)", ("o-1", 1.0))
                tx.add_outbox("order-events", "e-1", message(1))
                raise RuntimeError("boom")
        assert await store.query("SELECT count(*) FROM orders") == [(0,)]
        assert await store.outbox_size() == 0

    async def test_duplicate_event_ids_are_rejected_and_roll_back(self, store: Store) -> None:
        async with store.transaction() as tx:
            tx.add_outbox("order-events", "e-1", message(1))
        with pytest.raises(DuplicateEventError):
            async with store.transaction() as tx:
                await tx.execute("INSERT INTO orders(id, total) VALUES (?, ?)", ("o-2", 1.0))
                tx.add_outbox("order-events", "e-1", message(2))
        assert await store.query("SELECT count(*) FROM orders") == [(0,)]
        assert await store.outbox_size() == 1
        async with store.transaction() as tx:
            tx.add_outbox("order-events.dlq", "e-1", message(1))
        assert await store.outbox_size() == 2

    async def test_dispatched_rows_are_removed_in_order(self, store: Store) -> None:
        for n in range(250):
            async with store.transaction() as tx:
                tx.add_outbox("t", f"e-{n}", message(n))
        assert await relay_all(store) == [f"e-{n}" for n in range(250)]
        assert await store.outbox_size() == 0

    async def test_relay_never_skips_a_transaction_that_commits_late(self, store: Store) -> None:
        gates = [asyncio.Event() for _ in range(4)]
        rollback = 3

        async def writer(n: int) -> None:
            try:
                async with store.transaction() as tx:
                    await tx.execute(
                        "INSERT INTO orders(id, total) VALUES (?, ?)", (f"o-{n}", float(n))
                    )
                    tx.add_outbox("t", f"e-{n}", message(n))
                    await gates[n].wait()
                    if n == rollback:
                        raise RuntimeError("rolled back on purpose")
            except RuntimeError:
                pass

        relayed: list[str] = []
        stop = asyncio.Event()

        async def relay() -> None:
            while not stop.is_set():
                rows = await store.outbox_claim("relay-a", 100, 30.0)
                assert rows is not None
                relayed.extend(r.event_id for r in rows)
                if rows:
                    await store.outbox_remove("relay-a", [r.seq for r in rows])
                await asyncio.sleep(0.005)

        relay_task = asyncio.create_task(relay())
        writers = [asyncio.create_task(writer(n)) for n in range(4)]
        await asyncio.sleep(0.05)
        for n in (2, rollback, 1, 0):
            gates[n].set()
            await asyncio.wait([writers[n]], timeout=0.3)
        await asyncio.wait_for(asyncio.gather(*writers), 30)
        await asyncio.sleep(0.1)
        stop.set()
        await relay_task
        relayed.extend(await relay_all(store))
        assert sorted(relayed) == ["e-0", "e-1", "e-2"]
        assert len(relayed) == len(set(relayed))

    async def test_claim_excludes_rows_whose_removal_is_pending(self, store: Store) -> None:
        """A relay claims the next rows while the previous ones are still being removed; a
        removal that never happens leaves them for a claim without `exclude`."""
        for n in range(5):
            async with store.transaction() as tx:
                tx.add_outbox("t", f"e-{n}", message(n))
        first = await store.outbox_claim("relay-a", 2, 30.0)
        assert first is not None and [r.event_id for r in first] == ["e-0", "e-1"]
        pending = [r.seq for r in first]
        second = await store.outbox_claim("relay-a", 2, 30.0, exclude=pending)
        assert second is not None and [r.event_id for r in second] == ["e-2", "e-3"]
        pending += [r.seq for r in second]
        third = await store.outbox_claim("relay-a", 10, 30.0, exclude=pending)
        assert third is not None and [r.event_id for r in third] == ["e-4"]
        again = await store.outbox_claim("relay-a", 10, 30.0)
        assert again is not None and [r.event_id for r in again] == [f"e-{n}" for n in range(5)]
        await store.outbox_remove("relay-a", [r.seq for r in first])
        rest = await store.outbox_claim("relay-a", 10, 30.0, exclude=[r.seq for r in second])
        assert rest is not None and [r.event_id for r in rest] == ["e-4"]
        await store.outbox_remove("relay-a", pending + [r.seq for r in rest])
        assert await store.outbox_claim("relay-a", 10, 30.0, exclude=pending) == []
        assert await store.outbox_size() == 0

    async def test_only_one_relay_holds_the_lease(self, store: Store) -> None:
        async with store.transaction() as tx:
            tx.add_outbox("t", "e-1", message(1))
        first = await store.outbox_claim("relay-a", 10, 30.0)
        assert first is not None and len(first) == 1
        assert await store.outbox_claim("relay-b", 10, 30.0) is None
        await store.outbox_release("relay-a")
        taken = await store.outbox_claim("relay-b", 10, 0.2)
        assert taken is not None and [r.event_id for r in taken] == ["e-1"]
        assert await store.outbox_claim("relay-a", 10, 30.0) is None
        await asyncio.sleep(0.3)
        after_expiry = await store.outbox_claim("relay-a", 10, 30.0)
        assert after_expiry is not None and [r.event_id for r in after_expiry] == ["e-1"]

    async def test_savepoint_undoes_sql_outbox_and_inbox_of_its_block(self, store: Store) -> None:
        async with store.transaction() as tx:
            await tx.execute("INSERT INTO orders(id, total) VALUES ('kept', 1)")
            tx.add_outbox("t", "kept", message(1))
            with pytest.raises(ValueError):
                async with tx.savepoint():
                    await tx.execute("INSERT INTO orders(id, total) VALUES ('undone', 2)")
                    tx.add_outbox("t", "undone", message(2))
                    await tx.inbox_add("c", "undone", ("t", 0, 1))
                    raise ValueError
            async with tx.savepoint():
                await tx.execute("INSERT INTO orders(id, total) VALUES ('nested', 3)")
            assert await tx.inbox_get("c", "undone") is None
        assert await store.query("SELECT id FROM orders ORDER BY id") == [("kept",), ("nested",)]
        assert await relay_all(store) == ["kept"]

    async def test_deferred_statements_run_in_order_before_the_next_statement(
        self, store: Store
    ) -> None:
        async with store.transaction() as tx:
            tx.defer("INSERT INTO orders(id, total) VALUES (?, ?)", ("a", 1.0))
            tx.defer("INSERT INTO orders(id, total) VALUES (?, ?)", ("b", 2.0))
            tx.defer("UPDATE orders SET total = total * 10 WHERE id = ?", ("a",))
            tx.defer("INSERT INTO orders(id, total) VALUES (?, ?)", ("c", 3.0))
            assert await tx.fetchall("SELECT id, total FROM orders ORDER BY id") == [
                ("a", 10.0),
                ("b", 2.0),
                ("c", 3.0),
            ]
            tx.defer("DELETE FROM orders WHERE id = ?", ("b",))
            tx.add_outbox("t", "e-1", message(1))
        assert await store.query("SELECT id FROM orders ORDER BY id") == [("a",), ("c",)]
        assert await relay_all(store) == ["e-1"]

    async def test_deferred_statements_run_before_commit(self, store: Store) -> None:
        async with store.transaction() as tx:
            for n in range(300):
                tx.defer("INSERT INTO orders(id, total) VALUES (?, ?)", (f"o-{n}", n))
        assert await store.query("SELECT count(*), sum(total) FROM orders") == [(300, 44850)]

    async def test_a_failing_deferred_statement_fails_the_transaction(self, store: Store) -> None:
        async with store.transaction() as tx:
            await tx.execute("INSERT INTO orders(id, total) VALUES ('taken', 1)")
        with pytest.raises(Exception, match=UNIQUE_VIOLATION):
            async with store.transaction() as tx:
                tx.defer("INSERT INTO orders(id, total) VALUES ('new', 2)")
                tx.defer("INSERT INTO orders(id, total) VALUES ('taken', 3)")
                tx.add_outbox("t", "e-1", message(1))
        assert await store.query("SELECT id, total FROM orders") == [("taken", 1)]
        assert await store.outbox_size() == 0
        with pytest.raises(Exception, match=UNIQUE_VIOLATION):
            async with store.transaction() as tx:
                tx.defer("INSERT INTO orders(id, total) VALUES ('taken', 3)")
                await tx.execute("INSERT INTO orders(id, total) VALUES ('after', 4)")
        assert await store.query("SELECT id FROM orders") == [("taken",)]

    async def test_deferred_parameters_are_copied_at_the_call(self, store: Store) -> None:
        async with store.transaction() as tx:
            params = ["m1", 1.0]
            tx.defer("INSERT INTO orders(id, total) VALUES (?, ?)", params)
            params[:] = ["m2", 2.0]
            tx.defer("INSERT INTO orders(id, total) VALUES (?, ?)", params)
            params[:] = ["m3", 3.0]
        assert await store.query("SELECT id FROM orders ORDER BY id") == [("m1",), ("m2",)]

    async def test_a_caught_deferred_failure_leaves_only_a_rollback(self, store: Store) -> None:
        async with store.transaction() as tx:
            await tx.execute("INSERT INTO orders(id, total) VALUES ('taken', 1)")
        with pytest.raises(TransactionAbortedError, match="earlier statement"):
            async with store.transaction() as tx:
                tx.defer("INSERT INTO orders(id, total) VALUES ('a', 2)")
                tx.defer("INSERT INTO orders(id, total) VALUES ('taken', 3)")
                tx.defer("INSERT INTO orders(id, total) VALUES ('c', 4)")
                with pytest.raises(Exception, match=UNIQUE_VIOLATION):
                    await tx.execute("UPDATE orders SET total = 5 WHERE id = 'nothing'")
                with pytest.raises(TransactionAbortedError):
                    await tx.fetchall("SELECT id FROM orders")
                tx.add_outbox("t", "e-1", message(1))
        assert await store.query("SELECT id FROM orders") == [("taken",)]
        assert await store.outbox_size() == 0

    async def test_deferred_statements_with_returning(self, store: Store) -> None:
        async with store.transaction() as tx:
            for n in range(3):
                tx.defer("INSERT INTO orders(id, total) VALUES (?, ?) RETURNING id", (f"r{n}", n))
        assert await store.query("SELECT count(*) FROM orders") == [(3,)]

    async def test_savepoint_owns_the_statements_deferred_inside_it(self, store: Store) -> None:
        async with store.transaction() as tx:
            await tx.execute("INSERT INTO orders(id, total) VALUES ('taken', 1)")
            tx.defer("INSERT INTO orders(id, total) VALUES ('before', 2)")
            with pytest.raises(Exception, match=UNIQUE_VIOLATION):
                async with tx.savepoint():
                    tx.defer("INSERT INTO orders(id, total) VALUES ('inside', 3)")
                    tx.defer("INSERT INTO orders(id, total) VALUES ('taken', 4)")
            with pytest.raises(ValueError):
                async with tx.savepoint():
                    tx.defer("INSERT INTO orders(id, total) VALUES ('never', 5)")
                    raise ValueError
            async with tx.savepoint():
                tx.defer("INSERT INTO orders(id, total) VALUES ('nested', 6)")
            tx.defer("INSERT INTO orders(id, total) VALUES ('last', 7)")
        assert await store.query("SELECT id FROM orders ORDER BY total") == [
            ("taken",),
            ("before",),
            ("nested",),
            ("last",),
        ]

    async def test_a_caught_statement_error_leaves_only_a_rollback(self, store: Store) -> None:
        """The same on every store: PostgreSQL aborts the transaction, SQLite is held to it."""
        async with store.transaction() as tx:
            await tx.execute("INSERT INTO orders(id, total) VALUES ('taken', 1)")
        with pytest.raises(TransactionAbortedError, match="earlier statement") as aborted:
            async with store.transaction() as tx:
                await tx.execute("INSERT INTO orders(id, total) VALUES ('a', 2)")
                with pytest.raises(IntegrityError, match=UNIQUE_VIOLATION):
                    await tx.execute("INSERT INTO orders(id, total) VALUES ('taken', 3)")
                with pytest.raises(TransactionAbortedError, match=UNIQUE_VIOLATION):
                    await tx.fetchall("SELECT id FROM orders")
                with pytest.raises(TransactionAbortedError):
                    async with tx.savepoint():
                        pass
                tx.add_outbox("t", "e-1", message(1))
        assert aborted.value.__cause__ is not None
        assert await store.query("SELECT id FROM orders") == [("taken",)]
        assert await store.outbox_size() == 0

    async def test_a_savepoint_carries_the_transaction_past_a_statement_error(
        self, store: Store
    ) -> None:
        async with store.transaction() as tx:
            await tx.execute("INSERT INTO orders(id, total) VALUES ('taken', 1)")
        async with store.transaction() as tx:
            await tx.execute("INSERT INTO orders(id, total) VALUES ('a', 2)")
            with pytest.raises(Exception, match=UNIQUE_VIOLATION):
                async with tx.savepoint():
                    await tx.execute("INSERT INTO orders(id, total) VALUES ('b', 3)")
                    await tx.execute("INSERT INTO orders(id, total) VALUES ('taken', 4)")
            # a block that swallows its statement's error still ends in TransactionAbortedError,
            # rolled back like any block that raises
            with pytest.raises(TransactionAbortedError, match=UNIQUE_VIOLATION):
                async with tx.savepoint():
                    await tx.execute("INSERT INTO orders(id, total) VALUES ('c', 5)")
                    with contextlib.suppress(Exception):
                        await tx.execute("INSERT INTO orders(id, total) VALUES ('taken', 6)")
            await tx.execute("INSERT INTO orders(id, total) VALUES ('d', 7)")
            tx.add_outbox("t", "e-1", message(1))
        assert await store.query("SELECT id FROM orders ORDER BY total") == [
            ("taken",),
            ("a",),
            ("d",),
        ]
        assert await relay_all(store) == ["e-1"]

    async def test_the_store_and_its_transactions_play_every_role(self, store: Store) -> None:
        assert all(isinstance(store, role) for role in (Transactions, Outbox, InboxCleanup))
        async with store.transaction() as tx:
            assert all(isinstance(tx, role) for role in (Statements, OutboxWriter, InboxRows))

    async def test_nested_savepoints_undo_only_their_own_block(self, store: Store) -> None:
        async with store.transaction() as tx:
            async with tx.savepoint():
                await tx.execute("INSERT INTO orders(id, total) VALUES ('outer', 1)")
                with pytest.raises(ValueError):
                    async with tx.savepoint():
                        await tx.execute("INSERT INTO orders(id, total) VALUES ('inner', 2)")
                        tx.add_outbox("t", "inner", message(2))
                        await tx.inbox_add("c", "inner", ("t", 0, 2))
                        raise ValueError
                tx.add_outbox("t", "outer", message(1))
            assert await tx.inbox_get("c", "inner") is None
        assert await store.query("SELECT id FROM orders") == [("outer",)]
        assert await relay_all(store) == ["outer"]

    async def test_a_duplicate_event_is_a_failed_statement(self, store: Store) -> None:
        """DuplicateEventError leaves only a rollback, like any statement's error; in a
        savepoint it takes the block's outbox rows with it and the transaction carries on."""
        async with store.transaction() as tx:
            tx.add_outbox("t", "e-1", message(1))
        async with store.transaction() as tx:
            tx.add_outbox("t", "kept", message(2))
            with pytest.raises(DuplicateEventError):
                async with tx.savepoint():
                    tx.add_outbox("t", "e-1", message(3))
                    await tx.flush()
            await tx.execute("INSERT INTO orders(id, total) VALUES ('after', 1)")
        assert await relay_all(store) == ["e-1", "kept"]
        async with store.transaction() as tx:
            tx.add_outbox("t", "e-2", message(1))
        with pytest.raises(TransactionAbortedError, match="DuplicateEventError"):
            async with store.transaction() as tx:
                await tx.execute("INSERT INTO orders(id, total) VALUES ('undone', 2)")
                tx.add_outbox("t", "e-2", message(2))
                with pytest.raises(DuplicateEventError):
                    await tx.flush()
                with pytest.raises(TransactionAbortedError):
                    await tx.fetchall("SELECT id FROM orders")
        assert await store.query("SELECT id FROM orders") == [("after",)]
        assert await store.outbox_size() == 1

    async def test_an_inbox_conflict_is_a_failed_statement(self, store: Store) -> None:
        async with store.transaction() as tx:
            await tx.inbox_add("svc.h", "e-1", ("t", 0, 1))
        with pytest.raises(TransactionAbortedError, match="InboxConflictError"):
            async with store.transaction() as tx:
                with pytest.raises(InboxConflictError):
                    await tx.inbox_add_all([("svc.h", "e-1", ("t", 0, 1))])
                with pytest.raises(TransactionAbortedError):
                    await tx.inbox_get("svc.h", "e-1")
        async with store.transaction() as tx:
            with pytest.raises(InboxConflictError):
                async with tx.savepoint():
                    await tx.execute("INSERT INTO orders(id, total) VALUES ('undone', 1)")
                    await tx.inbox_add_all(
                        [("svc.h", "e-2", ("t", 0, 2)), ("svc.h", "e-1", ("t", 0, 1))]
                    )
            await tx.inbox_add_all([("svc.h", "e-3", ("t", 0, 3))])
            await tx.execute("INSERT INTO orders(id, total) VALUES ('kept', 2)")
        assert await store.query("SELECT id FROM orders") == [("kept",)]
        async with store.transaction() as tx:
            recorded = await tx.inbox_find([("svc.h", f"e-{n}") for n in (1, 2, 3)])
        assert recorded == {("svc.h", "e-1"), ("svc.h", "e-3")}

    async def test_constraint_violations_raise_integrity_error(self, store: Store) -> None:
        """The same error type on every store (the driver's is `orig`)."""
        await store.migrate(
            [
                BUSINESS,
                "CREATE TABLE lines (order_id TEXT NOT NULL, qty INTEGER NOT NULL CHECK (qty > 0),"
                " UNIQUE (order_id, qty))",
            ]
        )
        violations = [
            "INSERT INTO orders(id, total) VALUES ('o1', 2)",  # primary key
            "INSERT INTO orders(id, total) VALUES ('o2', NULL)",  # NOT NULL
            "INSERT INTO lines(order_id, qty) VALUES ('o1', 0)",  # CHECK
        ]
        async with store.transaction() as tx:
            await tx.execute("INSERT INTO orders(id, total) VALUES ('o1', 1)")
            for statement in violations:
                with pytest.raises(IntegrityError) as raised:
                    async with tx.savepoint():
                        await tx.execute(statement)
                assert raised.value.orig is raised.value.__cause__
            tx.defer("INSERT INTO lines(order_id, qty) VALUES ('o1', 3)")
        with pytest.raises(IntegrityError):
            async with store.transaction() as tx:
                tx.defer("INSERT INTO lines(order_id, qty) VALUES ('o1', 3)")
        assert await store.query("SELECT order_id, qty FROM lines") == [("o1", 3)]

    async def test_a_migration_breaking_a_constraint_is_a_migration_error(
        self, store: Store
    ) -> None:
        with pytest.raises(MigrationError, match="migration 2"):
            await store.migrate(
                [BUSINESS, "INSERT INTO orders(id, total) VALUES ('a', 1), ('a', 2)"]
            )
        assert await store.query("SELECT count(*) FROM orders") == [(0,)]

    async def test_inbox_dead_status_and_delete(self, store: Store) -> None:
        async with store.transaction() as tx:
            assert await tx.inbox_add("c", "e-1", ("t", 0, 0), InboxStatus.DEAD)
            assert not await tx.inbox_add("c", "e-1", ("t", 0, 0))
            assert await tx.inbox_get("c", "e-1") is InboxStatus.DEAD
            await tx.inbox_delete("c", "e-1")
            assert await tx.inbox_add("c", "e-1", ("t", 0, 0))

    async def test_inbox_cleanup_keeps_what_the_broker_can_redeliver(self, store: Store) -> None:
        async with store.transaction() as tx:
            for offset in range(10):
                await tx.inbox_add("svc.handler", f"e-{offset}", ("t", 0, offset))
            await tx.inbox_add("other.handler", "x", ("t", 0, 0))
        assert await store.inbox_cleanup("svc.", {("t", 0): 6}, older_than_s=3600) == 0
        await asyncio.sleep(0.05)
        assert await store.inbox_cleanup("svc.", {("t", 0): 6}, older_than_s=0.01) == 6
        async with store.transaction() as tx:
            assert await tx.inbox_get("svc.handler", "e-5") is None
            assert await tx.inbox_get("svc.handler", "e-6") is InboxStatus.DONE
            assert await tx.inbox_get("other.handler", "x") is InboxStatus.DONE

    async def test_migrations_apply_once_and_refuse_edits(self, store: Store) -> None:
        more = [BUSINESS, "CREATE TABLE a (x INTEGER); CREATE INDEX a_x ON a (x)"]
        assert await store.migrate(more) == 1
        assert await store.migrate(more) == 0
        with pytest.raises(MigrationError, match="migration 2 was changed"):
            await store.migrate([BUSINESS, "CREATE TABLE a (y INTEGER)"])
        with pytest.raises(MigrationError, match="migration 3 failed"):
            await store.migrate([*more, "CREATE TABLE broken ("])
        assert await store.migrate([*more, "CREATE TABLE c (x INTEGER)"]) == 1

    async def test_on_outbox_wakes_when_an_outbox_transaction_commits(self, store: Store) -> None:
        woken = asyncio.Event()
        loop = asyncio.get_running_loop()
        store.on_outbox(lambda: (loop.call_soon_threadsafe(woken.set), None)[1])
        async with store.transaction() as tx:
            await tx.execute("INSERT INTO orders(id, total) VALUES ('no-event', 1)")
        await asyncio.sleep(0.05)
        assert not woken.is_set()
        async with store.transaction() as tx:
            tx.add_outbox("t", "e-1", message(1))
        await asyncio.wait_for(woken.wait(), 5)

    async def test_many_concurrent_transactions_all_commit(self, store: Store) -> None:
        async def place(n: int) -> None:
            async with store.transaction() as tx:
                await tx.execute("INSERT INTO orders(id, total) VALUES (?, ?)", (f"o-{n}", n))
                tx.add_outbox("t", f"e-{n}", message(n))

        await asyncio.gather(*(place(n) for n in range(200)))
        assert await store.query("SELECT count(*) FROM orders") == [(200,)]
        assert sorted(await relay_all(store)) == sorted(f"e-{n}" for n in range(200))

    async def test_named_locks_keep_hot_rows_from_deadlocking(self, store: Store) -> None:
        """Transactions that write the same rows in opposite orders, each naming them with
        `lock` first, wait for each other instead of deadlocking (SQLite: one writer at a time
        anyway; PostgreSQL: advisory locks), and every write lands."""
        await store.migrate(
            [BUSINESS, "CREATE TABLE hot (id TEXT PRIMARY KEY, n INTEGER NOT NULL)"]
        )
        async with store.transaction() as tx:
            await tx.execute("INSERT INTO hot(id, n) VALUES ('a', 0), ('b', 0), ('c', 0)")
        orders = [("a", "b", "c"), ("c", "b", "a"), ("b", "c", "a"), ("c", "a", "b")] * 3
        both_started = asyncio.Barrier(len(orders))

        async def write(ids: tuple[str, ...]) -> None:
            async with store.transaction() as tx:
                await tx.lock([*reversed(ids), ids[0]])  # any order, repeats: one set
                await tx.execute("UPDATE hot SET n = n + 1 WHERE id = ?", (ids[0],))
                with contextlib.suppress(TimeoutError):  # SQLite: the others wait to begin
                    await asyncio.wait_for(both_started.wait(), 0.2)
                for id_ in ids[1:]:
                    await tx.execute("UPDATE hot SET n = n + 1 WHERE id = ?", (id_,))

        await asyncio.wait_for(asyncio.gather(*(write(o) for o in orders)), 30)
        rows = await store.query("SELECT id, n FROM hot ORDER BY id")
        assert rows == [("a", len(orders)), ("b", len(orders)), ("c", len(orders))]

    async def test_fresh_store_is_empty(self, store_url: str) -> None:
        async with connect_store(store_url) as store:
            assert await store.outbox_size() == 0
            assert await store.outbox_claim(f"r-{uuid.uuid4().hex}", 10, 1.0) == []
