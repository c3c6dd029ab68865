"""The outbox relay's pipelined removal: the next rows are relayed while the previous ones are
still being removed, nothing is published twice meanwhile, and a failed removal loses nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from tests.support import read_topic
from tidings import Message, connect
from tidings.brokers.base import Broker
from tidings.runtime.relay import Relay
from tidings.stores.sqlite import SQLiteStore


class GatedStore(SQLiteStore):
    """A SQLite store whose `outbox_remove` waits for `gate` (and fails while `failing`)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.gate = asyncio.Event()
        self.gate.set()
        self.failing = False
        self.removals: list[list[int]] = []

    async def outbox_remove(self, relay: str, seqs: Sequence[int]) -> None:
        await self.gate.wait()
        if self.failing:
            raise OSError("disk on fire")
        self.removals.append(sorted(seqs))
        await super().outbox_remove(relay, seqs)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[GatedStore]:
    store = GatedStore(f"sqlite:///{tmp_path}/store.db")
    await store.start()
    yield store
    await store.close()


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    broker = connect(f"sqlite:///{tmp_path}/bus.db")
    await broker.admin.create_topic("t", 1)
    yield broker
    await broker.close()


async def commit(store: SQLiteStore, *numbers: int) -> None:
    async with store.transaction() as tx:
        for n in numbers:
            tx.add_outbox("t", f"e-{n}", Message(value=f"{n}".encode(), key=b"k"))


async def topic_values(broker: Broker) -> list[bytes]:
    return [record.value for record in await read_topic(broker, "t")]


async def test_relays_new_rows_while_the_previous_removal_is_pending(
    store: GatedStore, broker: Broker
) -> None:
    relay = Relay(store, broker)
    await commit(store, 0, 1)
    store.gate.clear()
    assert await relay.relay_once() == 2
    await commit(store, 2)
    assert await relay.relay_once() == 1
    assert await relay.relay_once() == 0
    assert await topic_values(broker) == [b"0", b"1", b"2"]
    assert await store.outbox_size() == 3
    store.gate.set()
    await relay.settle()
    assert await store.outbox_size() == 0
    assert store.removals == [[1, 2], [3]] or store.removals == [[1, 2, 3]]


async def test_waits_for_removal_when_too_many_rows_await_it(
    store: GatedStore, broker: Broker
) -> None:
    relay = Relay(store, broker, batch=1)
    store.gate.clear()
    for n in range(6):
        await commit(store, n)
    moved = []
    for _ in range(4):
        moved.append(await relay.relay_once())
    assert moved == [1, 1, 1, 1]
    fifth = asyncio.create_task(relay.relay_once())
    await asyncio.sleep(0.05)
    assert not fifth.done()  # 4 batches await removal
    store.gate.set()
    assert await fifth == 1
    await relay.settle()
    assert await topic_values(broker) == [f"{n}".encode() for n in range(5)]
    assert await store.outbox_size() == 1


async def test_a_failed_removal_surfaces_and_its_rows_are_relayed_again(
    store: GatedStore, broker: Broker
) -> None:
    relay = Relay(store, broker)
    await commit(store, 0)
    store.failing = True
    with pytest.raises(OSError, match="disk on fire"):
        await relay.relay_once()  # published; its removal failed at once
    store.gate.clear()
    await commit(store, 1)
    assert await relay.relay_once() == 2  # row 0 again (at least once), and row 1
    store.gate.set()
    await asyncio.sleep(0.01)
    with pytest.raises(OSError, match="disk on fire"):
        await relay.relay_once()  # a removal that failed in the background surfaces
    store.failing = False
    assert await relay.relay_once() == 2
    await relay.settle()
    assert await store.outbox_size() == 0
    assert await topic_values(broker) == [b"0", b"0", b"1", b"0", b"1"]


async def test_a_batch_is_removed_in_one_call(store: GatedStore, broker: Broker) -> None:
    """(On an idle store the removal usually finishes within the cycle; whether it does is a
    matter of timing, so only the outcome is asserted.)"""
    relay = Relay(store, broker)
    await commit(store, 0, 1)
    assert await relay.relay_once() == 2
    await relay.settle()
    assert await store.outbox_size() == 0
    assert store.removals == [[1, 2]]


async def test_run_removes_everything_before_it_stops(store: GatedStore, broker: Broker) -> None:
    relay = Relay(store, broker, poll_s=0.01)
    stopping = asyncio.Event()
    runner = asyncio.create_task(relay.run(stopping))
    for n in range(50):
        await commit(store, n)
    stopping.set()
    await asyncio.wait_for(runner, 10)
    assert await store.outbox_size() == 0
    assert await topic_values(broker) == [f"{n}".encode() for n in range(50)]
    assert await store.outbox_claim("relay-b", 10, 1.0) == []  # lease released


async def test_a_restarted_relay_with_a_stable_id_takes_its_lease_back_at_once(
    store: GatedStore, broker: Broker
) -> None:
    """A relay that crashed holding the lease: another relay waits for the lease to expire;
    the same process restarted with its stable id (TIDINGS_INSTANCE_ID) relays at once."""
    crashed = Relay(store, broker, relay_id="relay-orders-pod-1", lease_s=60.0)
    await commit(store, 1)
    assert await crashed.relay_once() == 1
    await crashed.settle()  # ... and then the process is killed, holding the lease
    await commit(store, 2)
    assert await Relay(store, broker, lease_s=60.0).relay_once() is None  # a stranger waits
    restarted = Relay(store, broker, relay_id="relay-orders-pod-1", lease_s=60.0)
    assert await restarted.relay_once() == 1
    await restarted.settle()
    assert await topic_values(broker) == [b"1", b"2"]


async def test_the_relay_is_named_after_the_instance_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tidings import ConfigError, Service
    from tidings.runtime.runner import ServiceRunner

    service = Service("orders", broker="memory://", store=f"sqlite:///{tmp_path}/o.db")
    assert ServiceRunner(service).relay.relay_id != ServiceRunner(service).relay.relay_id
    monkeypatch.setenv("TIDINGS_INSTANCE_ID", "orders-7f9c")
    assert ServiceRunner(service).relay.relay_id == "relay-orders-orders-7f9c"
    monkeypatch.setenv("TIDINGS_INSTANCE_ID", "pod 1; DROP")
    with pytest.raises(ConfigError, match="TIDINGS_INSTANCE_ID"):
        ServiceRunner(service)
