"""The article's order system (examples/orders): the scripted demo run and a poison event."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

from examples.orders.events import TOPICS
from examples.orders.run import LogCounter, check_invariants, sample_orders, start_all, stop_all
from examples.orders.services import build_all, inventory, orders
from examples.orders.settings import Settings

from tidings import Event, TopicPartition, connect, event_from_record

ROOT = Path(__file__).resolve().parents[1]


def test_demo_runs_200_orders_and_every_invariant_holds(tmp_path: Path) -> None:
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "examples.orders",
            "--orders",
            "200",
            "--exit",
            "--dir",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
        env={**os.environ, "COLUMNS": "200"},
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "all invariants hold" in out
    assert "FAIL " not in out and "invariants failed" not in out
    for status in ("CONFIRMED", "REJECTED", "CANCELLED"):
        assert status in out
    for event_type in ("ORDER_PLACED", "INVENTORY_RESERVED", "PAYMENT_CHARGED", "PAYMENT_FAILED"):
        assert event_type in out
    assert len(list((tmp_path / "mailbox").glob("*.eml"))) > 0
    assert time.monotonic() - started < 110


async def test_poison_order_placed_is_dead_lettered_and_the_rest_flows(tmp_path: Path) -> None:
    settings = Settings.in_directory(tmp_path)
    assert settings.broker is not None
    services = build_all(settings)
    tasks = await start_all(services)
    try:
        await inventory.seed(services["inventory"], {"keyboard": 100})
        async with connect(settings.broker) as broker:
            poison = Event(
                type="ORDER_PLACED", version=2, key="ord-poison", data={"orderId": "ord-poison"}
            )
            await broker.publish_events("order-events", [poison])
            for sample in sample_orders(20):
                await orders.place_order(
                    services["orders"],
                    order_id=sample.order_id,
                    user_id=sample.user_id,
                    items=[i.model_copy(update={"product_id": "keyboard"}) for i in sample.items],
                    currency=sample.currency,
                    event_version=sample.event_version,
                )
            log = LogCounter(broker, TOPICS)
            deadline = time.monotonic() + 30
            while True:
                checks = {
                    c.name: c for c in await check_invariants(services, log, settings.mailbox)
                }
                failing = [c for c in checks.values() if not c.ok]
                if [c.name for c in failing] == ["no dead letters"] or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
            assert [c.name for c in failing] == ["no dead letters"], failing
            info = await broker.admin.describe_topic("inventory.dlq")
            letters = await broker.read(
                TopicPartition("inventory.dlq", 0), info.partitions[0].start_offset, 10
            )
            assert len(letters) == 1
            assert event_from_record(letters[0]).id == poison.id
            assert letters[0].header("tidings-dlq-topic") == b"order-events"
            statuses = await services["orders"].store.query(
                "SELECT status, count(*) FROM orders GROUP BY status"
            )
            assert sum(n for _, n in statuses) == 20
            by_status = {str(row[0]): int(row[1]) for row in statuses}
            assert by_status.get("CONFIRMED", 0) > 0
            # analytics saw the poison record too, like every record of its topics
            assert log.counts[("order-events", "ORDER_PLACED")] == 21
    finally:
        await stop_all(services, tasks)
