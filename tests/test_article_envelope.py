"""Producers written as in the article talk to tidings services: records in the article's JSON
envelope, sent with a plain producer (confluent-kafka on Kafka, the raw publish on the embedded
broker), are handled as typed events, once each, on both backends (`examples/article_envelope`)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from examples.article_envelope import run

from tests.sites import BACKENDS, Site, site
from tests.support import eventually, read_topic
from tidings import connect, event_from_record

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(params=BACKENDS)
def where(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Site]:
    with site(request.param, tmp_path) as chosen:
        yield chosen


async def test_the_articles_producer_talks_to_a_tidings_service(where: Site) -> None:
    name, orders, inventory = where.name("inventory"), where.name("orders"), where.name("stock")
    reserved = await run(
        where.broker,
        where.store(name),
        3,
        name=name,
        orders_topic=orders,
        inventory_topic=inventory,
    )
    assert reserved == [("ord-0", 2), ("ord-1", 2), ("ord-2", 2)]  # ord-0 was sent twice

    broker = connect(where.broker)
    try:
        placed = {
            (event := event_from_record(r)).data["orderId"]: event
            for r in await read_topic(broker, orders)
        }

        async def all_reserved() -> bool:
            return len(await read_topic(broker, inventory)) == 3

        await eventually(all_reserved)
        for record in await read_topic(broker, inventory):
            follow_up = event_from_record(record)
            order = placed[follow_up.data["orderId"]]
            assert order.source == "order-service" and order.type == "ORDER_PLACED"
            assert follow_up.correlation_id == order.correlation_id  # the article's header
            assert follow_up.correlation_id == f"checkout-{order.key.removeprefix('ord-')}"  # type: ignore[union-attr]
            assert follow_up.causation_id == order.id  # the article's eventId
            assert follow_up.source == name and follow_up.sequence == 1
            assert json.loads(record.value)["type"] == "INVENTORY_RESERVED"
            assert follow_up.data["currency"] == "USD"  # v1 upcast to the handler's v2
    finally:
        await broker.close()


def test_the_example_runs_as_a_script(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "examples.article_envelope",
            "--orders",
            "2",
            "--broker",
            f"sqlite:///{tmp_path}/bus.db",
            "--store",
            f"sqlite:///{tmp_path}/{{service}}.db",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["ord-0: 2 units reserved", "ord-1: 2 units reserved"]
