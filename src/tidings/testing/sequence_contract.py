"""The store contract's part on outbox rows' sequence numbers and attachments (`StoreContract`
derives from `SequenceContract`; it provides the `store` fixture)."""

from __future__ import annotations

import asyncio

import pytest

from tidings.errors import DuplicateEventError, StorageError
from tidings.records import Message
from tidings.stores.base import Store
from tidings.stores.outbox import Numbering


def _stamp(message: Message, number: int) -> Message:
    return Message(message.value, message.key, (*message.headers, ("seq", str(number).encode())))


NUMBERED = Numbering("producer", _stamp)


def keyed(key: str, n: int = 0) -> Message:
    return Message(value=f"v-{n}".encode(), key=key.encode())


async def numbers(store: Store) -> dict[str, list[int]]:
    """Every outbox row's sequence number by event id (removed as a relay would)."""
    found: dict[str, list[int]] = {}
    while True:
        rows = await store.outbox_claim("relay-s", 500, 30.0)
        assert rows is not None
        if not rows:
            return found
        for row in rows:
            found[row.event_id] = [int(v) for name, v in row.message.headers if name == "seq"]
        await store.outbox_remove("relay-s", [r.seq for r in rows])


class Blob:
    """An attachment that records what happened to it."""

    def __init__(self, store: Store | None = None, *, fail: bool = False) -> None:
        self.store = store
        self.fail = fail
        self.written = self.discarded = False
        self.outbox_when_written: int | None = None

    async def write(self) -> None:
        if self.fail:
            raise StorageError("the blob store is full")
        if self.store is not None:
            self.outbox_when_written = await self.store.outbox_size()
        self.written = True

    async def discard(self) -> None:
        self.discarded = self.written


class SequenceContract:
    async def test_rows_are_numbered_per_scope_and_key_across_transactions(
        self, store: Store
    ) -> None:
        async with store.transaction() as tx:
            tx.add_outbox("t", "a1", keyed("a"), numbering=NUMBERED)
            tx.add_outbox("t", "b1", keyed("b"), numbering=NUMBERED)
            tx.add_outbox("t", "a2", keyed("a"), numbering=NUMBERED)
            tx.add_outbox("t", "plain", keyed("a"))
            tx.add_outbox("t", "nokey", Message(b"x"), numbering=NUMBERED)
            tx.add_outbox("u", "other", keyed("a"), numbering=Numbering("other", _stamp))
        async with store.transaction() as tx:
            tx.add_outbox("u", "a3", keyed("a"), numbering=NUMBERED)
        assert await numbers(store) == {
            "a1": [1],
            "b1": [1],
            "a2": [2],
            "plain": [],
            "nokey": [],
            "other": [1],
            "a3": [3],
        }

    async def test_a_rolled_back_transaction_takes_no_number(self, store: Store) -> None:
        async with store.transaction() as tx:
            tx.add_outbox("t", "e1", keyed("k"), numbering=NUMBERED)
        with pytest.raises(RuntimeError):
            async with store.transaction() as tx:
                tx.add_outbox("t", "lost", keyed("k"), numbering=NUMBERED)
                await tx.flush()
                raise RuntimeError
        async with store.transaction() as tx:
            tx.add_outbox("t", "e2", keyed("k"), numbering=NUMBERED)
            with pytest.raises(ValueError):
                async with tx.savepoint():
                    tx.add_outbox("t", "undone", keyed("k"), numbering=NUMBERED)
                    await tx.flush()
                    raise ValueError
            tx.add_outbox("t", "e3", keyed("k"), numbering=NUMBERED)
        assert await numbers(store) == {"e1": [1], "e2": [2], "e3": [3]}

    async def test_concurrent_transactions_of_one_key_never_share_a_number(
        self, store: Store
    ) -> None:
        flushed = asyncio.Event()

        async def publish(n: int) -> None:
            if n:  # the others start while the first holds the key's number, uncommitted
                await flushed.wait()
            async with store.transaction() as tx:
                tx.add_outbox("t", f"e{n}", keyed("hot", n), numbering=NUMBERED)
                if n == 0:
                    await tx.flush()
                    flushed.set()
                    await asyncio.sleep(0.05)

        await asyncio.gather(*(publish(n) for n in range(8)))
        found = await numbers(store)
        assert sorted(n for [n] in found.values()) == list(range(1, 9))
        assert found["e0"] == [1]

    async def test_attachments_are_written_before_their_rows(self, store: Store) -> None:
        first, second = Blob(store), Blob(store)
        async with store.transaction() as tx:
            tx.add_outbox("t", "e1", keyed("k"), attachment=first)
            tx.add_outbox("t", "e2", keyed("k"), numbering=NUMBERED, attachment=second)
            assert not first.written
        assert first.written and second.written and not first.discarded
        assert first.outbox_when_written == second.outbox_when_written == 0
        assert await numbers(store) == {"e1": [], "e2": [1]}

    async def test_attachments_of_a_rollback_are_discarded(self, store: Store) -> None:
        async with store.transaction() as tx:
            tx.add_outbox("t", "taken", keyed("k"))
        blob, unflushed = Blob(), Blob()
        with pytest.raises(DuplicateEventError):
            async with store.transaction() as tx:
                tx.add_outbox("t", "taken", keyed("k"), attachment=blob)
        assert blob.written and blob.discarded
        with pytest.raises(RuntimeError):
            async with store.transaction() as tx:
                tx.add_outbox("t", "e1", keyed("k"), attachment=unflushed)
                raise RuntimeError
        assert not unflushed.written and not unflushed.discarded
        kept, dropped = Blob(), Blob()
        async with store.transaction() as tx:
            tx.add_outbox("t", "kept", keyed("k"), attachment=kept)
            with pytest.raises(ValueError):
                async with tx.savepoint():
                    tx.add_outbox("t", "dropped", keyed("k"), attachment=dropped)
                    await tx.flush()
                    raise ValueError
        assert dropped.discarded and kept.written and not kept.discarded
        assert set(await numbers(store)) == {"taken", "kept"}

    async def test_an_attachment_that_cannot_be_written_fails_the_transaction(
        self, store: Store
    ) -> None:
        with pytest.raises(StorageError, match="full"):
            async with store.transaction() as tx:
                await tx.execute("INSERT INTO orders(id, total) VALUES ('o', 1)")
                tx.add_outbox("t", "e1", keyed("k"), numbering=NUMBERED, attachment=Blob(fail=True))
        assert await store.query("SELECT count(*) FROM orders") == [(0,)]
        assert await store.outbox_size() == 0
        async with store.transaction() as tx:
            tx.add_outbox("t", "e2", keyed("k"), numbering=NUMBERED)
        assert await numbers(store) == {"e2": [1]}
