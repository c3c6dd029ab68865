"""The store contract's part on the inbox: exactly-once effects under redelivery, batches,
conflicts with concurrent transactions (`StoreContract` derives from `InboxContract`; it
provides the `store` fixture)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from tidings.errors import InboxConflictError
from tidings.records import Message
from tidings.stores.base import InboxStatus, Store, Transaction

BUSINESS = "CREATE TABLE orders (id TEXT PRIMARY KEY, total REAL NOT NULL)"
"""The business table every contract test's store starts with."""


class InboxContract:
    async def test_inbox_dedupes_concurrent_redelivery(self, store: Store) -> None:
        await store.migrate([BUSINESS, "CREATE TABLE counter (n INTEGER NOT NULL)"])
        async with store.transaction() as tx:
            await tx.execute("INSERT INTO counter(n) VALUES (0)")

        async def deliver() -> None:
            async with store.transaction() as tx:
                if await tx.inbox_add("billing.charge", "e-1", ("t", 0, 5)):
                    await tx.execute("UPDATE counter SET n = n + 1")

        await asyncio.gather(*(deliver() for _ in range(20)))
        assert await store.query("SELECT n FROM counter") == [(1,)]
        async with store.transaction() as tx:
            assert await tx.inbox_get("billing.charge", "e-1") is InboxStatus.DONE
            assert await tx.inbox_get("other.consumer", "e-1") is None
            assert await tx.inbox_add("other.consumer", "e-1", ("t", 0, 5))

    async def test_inbox_find_returns_the_recorded_pairs_of_any_status(self, store: Store) -> None:
        async with store.transaction() as tx:
            await tx.inbox_add("svc.a", "e-1", ("t", 0, 1))
            await tx.inbox_add("svc.b", "e-2", ("t", 0, 2), InboxStatus.DEAD)
            for n in range(1000):
                await tx.inbox_add("svc.many", f"m-{n}", ("t", 1, n))
        async with store.transaction() as tx:
            assert await tx.inbox_find([]) == set()
            keys = [("svc.a", "e-1"), ("svc.a", "e-2"), ("svc.b", "e-2"), ("svc.c", "e-1")]
            assert await tx.inbox_find(keys) == {("svc.a", "e-1"), ("svc.b", "e-2")}
            await tx.inbox_add("svc.c", "e-1", ("t", 0, 1))
            assert ("svc.c", "e-1") in await tx.inbox_find(keys)
            many = [("svc.many", f"m-{n}") for n in range(0, 2000, 3)]
            assert await tx.inbox_find(many) == {k for k in many if int(k[1][2:]) < 1000}
            assert await tx.inbox_find([("svc.a", "e-1")] * 3) == {("svc.a", "e-1")}

    async def test_inbox_add_all_records_done_rows(self, store: Store) -> None:
        entries = [("svc.h", f"e-{n}", ("t", n % 2, n)) for n in range(300)]
        async with store.transaction() as tx:
            await tx.inbox_add_all([])
            await tx.inbox_add_all(entries)
            assert await tx.inbox_find([("svc.h", "e-7")]) == {("svc.h", "e-7")}
        async with store.transaction() as tx:
            assert await tx.inbox_get("svc.h", "e-299") is InboxStatus.DONE
            assert not await tx.inbox_add("svc.h", "e-0", ("t", 0, 0))
            assert await tx.inbox_add("other.h", "e-0", ("t", 0, 0))
        await asyncio.sleep(0.05)
        assert await store.inbox_cleanup("svc.", {("t", 0): 10, ("t", 1): 10}, 0.01) == 10

    @pytest.mark.parametrize("at_commit", [False, True], ids=["now", "at_commit"])
    @pytest.mark.parametrize("recorded_by", ["committed", "this transaction", "the batch"])
    async def test_inbox_add_all_conflict_raises_and_nothing_commits(
        self, store: Store, recorded_by: str, at_commit: bool
    ) -> None:
        if recorded_by == "committed":
            async with store.transaction() as tx:
                await tx.inbox_add("svc.h", "e-2", ("t", 0, 2))
        entries = [("svc.h", f"e-{n}", ("t", 0, n)) for n in range(1, 4)]
        if recorded_by == "the batch":
            entries.append(entries[0])
        with pytest.raises(InboxConflictError):
            async with store.transaction() as tx:
                await tx.execute("INSERT INTO orders(id, total) VALUES ('effect', 1)")
                if recorded_by == "this transaction":
                    await tx.inbox_add("svc.h", "e-3", ("t", 0, 3))
                if at_commit:
                    tx.inbox_add_at_commit(entries)
                    tx.add_outbox("t", "with-the-rows", Message(b"x"))
                else:
                    await tx.inbox_add_all(entries)
        assert await store.query("SELECT count(*) FROM orders") == [(0,)]
        assert (await store.outbox_stats()).pending == 0
        async with store.transaction() as tx:
            recorded = await tx.inbox_find([(c, e) for c, e, _ in entries])
        assert recorded == ({("svc.h", "e-2")} if recorded_by == "committed" else set())

    @pytest.mark.parametrize("at_commit", [False, True], ids=["now", "at_commit"])
    async def test_inbox_conflict_with_a_transaction_committing_meanwhile(
        self, store: Store, at_commit: bool
    ) -> None:
        """A redelivery whose inbox row waits for a concurrent transaction holding the same
        key raises InboxConflictError when that one commits - however late the error arrives
        (on PostgreSQL, while the COMMIT pipeline is already being read back)."""
        first_open, first_may_commit = asyncio.Event(), asyncio.Event()

        async def first() -> None:
            async with store.transaction() as tx:
                await tx.inbox_add("svc.h", "e-1", ("t", 0, 1))
                first_open.set()
                await first_may_commit.wait()

        async def second() -> None:
            await first_open.wait()
            async with store.transaction() as tx:
                await tx.execute("INSERT INTO orders(id, total) VALUES ('effect', 1)")
                if at_commit:
                    tx.inbox_add_at_commit([("svc.h", "e-1", ("t", 0, 1))])
                else:
                    await tx.inbox_add_all([("svc.h", "e-1", ("t", 0, 1))])

        holder = asyncio.create_task(first())
        redelivery = asyncio.create_task(second())
        await first_open.wait()
        await asyncio.sleep(0.2)  # the redelivery waits on the row's lock (or the writer)
        first_may_commit.set()
        await holder
        with pytest.raises(InboxConflictError):
            await redelivery
        assert await store.query("SELECT count(*) FROM orders") == [(0,)]

    async def test_inbox_rows_for_commit_are_written_when_it_commits(self, store: Store) -> None:
        async with store.transaction() as tx:
            tx.inbox_add_at_commit([("svc.h", "e-1", ("t", 0, 1))])
            with contextlib.suppress(RuntimeError):
                async with tx.savepoint():
                    tx.inbox_add_at_commit([("svc.h", "e-2", ("t", 0, 2))])
                    raise RuntimeError
            tx.inbox_add_at_commit([("svc.h", "e-3", ("t", 0, 3))])
            assert await tx.inbox_find([("svc.h", "e-1")]) == set()
        async with store.transaction() as tx:
            keys = [("svc.h", f"e-{n}") for n in range(1, 4)]
            assert await tx.inbox_find(keys) == {("svc.h", "e-1"), ("svc.h", "e-3")}

    @pytest.mark.parametrize("at_commit", [False, True], ids=["now", "at_commit"])
    async def test_batched_inbox_applies_a_concurrently_redelivered_event_once(
        self, store: Store, at_commit: bool
    ) -> None:
        """The dispatcher's pattern: look the batch up, apply what is new, insert its inbox rows
        at the end; on a conflict roll back and apply per record (inbox_add first). Deliveries
        start at different offsets of one partition, as redeliveries do."""
        await store.migrate([BUSINESS, "CREATE TABLE effects (event_id TEXT NOT NULL)"])
        ids = [f"e-{n}" for n in range(8)]

        async def apply(tx: Transaction, event_id: str) -> None:
            await tx.execute("INSERT INTO effects(event_id) VALUES (?)", (event_id,))
            await asyncio.sleep(0)

        async def deliver(first: int) -> None:
            events = ids[first:]
            try:
                async with store.transaction() as tx:
                    recorded = await tx.inbox_find([("svc.h", e) for e in events])
                    new = [e for e in events if ("svc.h", e) not in recorded]
                    for event_id in new:
                        await apply(tx, event_id)
                    rows = [("svc.h", e, ("t", 0, ids.index(e))) for e in new]
                    if at_commit:
                        tx.inbox_add_at_commit(rows)
                    else:
                        await tx.inbox_add_all(rows)
            except InboxConflictError:
                async with store.transaction() as tx:
                    for event_id in events:
                        if await tx.inbox_add("svc.h", event_id, ("t", 0, ids.index(event_id))):
                            await apply(tx, event_id)

        await asyncio.gather(*(deliver(n % 4) for n in range(20)))
        assert await store.query(
            "SELECT event_id, count(*) FROM effects GROUP BY event_id ORDER BY event_id"
        ) == [(e, 1) for e in ids]

    async def test_inbox_rows_of_a_rollback_are_forgotten(self, store: Store) -> None:
        with pytest.raises(RuntimeError):
            async with store.transaction() as tx:
                assert await tx.inbox_add("c", "e-1", ("t", 0, 0))
                raise RuntimeError
        async with store.transaction() as tx:
            assert await tx.inbox_add("c", "e-1", ("t", 0, 0))
