from __future__ import annotations

import threading
import uuid

import pytest

from tidings.brokers._inflight import InFlight
from tidings.records import Batch, Record, TopicPartition
from tidings.testing.broker_contract import BrokerContract


class TestMemoryBroker(BrokerContract):
    @pytest.fixture
    def url(self) -> str:
        return f"memory://{uuid.uuid4().hex}"


# the in-flight bookkeeping every group consumer (memory, sqlite, kafka) shares -------------

TP0, TP1, TP2 = (TopicPartition("t", p) for p in range(3))


def _batch(tp: TopicPartition, first: int, count: int = 2) -> Batch:
    records = [Record(tp.topic, tp.partition, o, 0, b"v") for o in range(first, first + count)]
    return Batch(tp.topic, tp.partition, records)


def test_one_batch_in_flight_per_partition_and_only_it_settles() -> None:
    flight = InFlight()
    first, other = _batch(TP0, 0), _batch(TP0, 0)
    assert flight.begin(TP0, first)
    assert not flight.begin(TP0, other)
    assert flight.ready([TP0, TP1]) == [TP1]
    assert not flight.ack(other)  # equal, but not the batch in flight
    assert not flight.nack(other)
    assert flight.acked() == {}
    assert flight.ack(first)
    assert not flight.ack(first)  # settled once
    assert flight.acked() == {TP0: 2}
    assert flight.ready([TP0]) == [TP0]


def test_a_dropped_batch_settles_nothing() -> None:
    flight = InFlight()
    batch = _batch(TP0, 0)
    flight.begin(TP0, batch)
    flight.drop(TP0)
    assert not flight.ack(batch)
    assert flight.acked() == {}
    assert flight.begin(TP0, _batch(TP0, 5))


def test_acked_offsets_wait_until_committed() -> None:
    flight = InFlight()
    flight.begin(TP0, b := _batch(TP0, 0))
    flight.ack(b, 7)
    flight.begin(TP1, b := _batch(TP1, 0))
    flight.ack(b)
    assert flight.acked([TP1]) == {TP1: 2}
    sent = flight.acked()
    flight.begin(TP0, b := _batch(TP0, 7))
    flight.ack(b)  # acked again while the commit was under way
    flight.committed(sent)
    assert flight.acked() == {TP0: 9}


def test_revoking_partitions_hand_out_nothing_and_leaving_reports_lost_acks() -> None:
    flight = InFlight()
    flight.begin(TP0, b := _batch(TP0, 0))
    flight.ack(b)
    flight.begin(TP1, _batch(TP1, 0))
    flight.revoke([TP0, TP1])
    assert flight.is_revoking(TP0)
    assert flight.ready([TP0, TP1, TP2]) == [TP2]
    assert not flight.begin(TP0, _batch(TP0, 2))
    assert set(flight.in_flight([TP0, TP1])) == {TP1}
    assert flight.forget(TP0)  # an acked offset not committed
    assert not flight.forget(TP1)
    assert flight.revoking() == set()
    flight.set_revoking([TP2])
    assert flight.ready([TP0, TP2]) == [TP0]


def test_partitions_take_turns() -> None:
    flight = InFlight()
    firsts = [flight.ready([TP0, TP1, TP2])[0] for _ in range(3)]
    assert sorted(firsts, key=lambda tp: tp.partition) == [TP0, TP1, TP2]


def test_a_revocation_waits_for_the_batch_in_flight() -> None:
    flight = InFlight()
    flight.begin(TP0, batch := _batch(TP0, 0))
    threading.Timer(0.05, flight.ack, (batch,)).start()
    with flight.changed:
        settled = flight.changed.wait_for(lambda: not flight.in_flight([TP0]), timeout=5)
    assert settled
