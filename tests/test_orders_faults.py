"""The order system under faults, one OS process per service (examples/orders --processes):
services SIGKILLed repeatedly while 2,000 orders flow (on the embedded default and on Kafka +
PostgreSQL), and the email service down for a while."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from pathlib import Path

import pytest
from examples.orders.checks import LogCounter, check_invariants
from examples.orders.cluster import ProcessCluster
from examples.orders.events import TOPICS
from examples.orders.load import CATALOG, OrderClient, sample_orders
from examples.orders.serve import NAMES
from examples.orders.services import inventory
from examples.orders.settings import Settings

from tests.support import server_setting
from tests.test_orders_demo import run_demo
from tidings import connect

pytestmark = pytest.mark.timeout(600)


def killed(out: str) -> dict[str, int]:
    """The demo's chaos report, e.g. 'SIGKILLed 9 time(s) (email 1, orders 2)', as a dict."""
    match = re.search(r"SIGKILLed (\d+) time\(s\) \(([^)]*)\)", " ".join(out.split()))
    assert match, out
    pairs = (part.rsplit(" ", 1) for part in match.group(2).split(", "))
    return {name: int(count) for name, count in pairs}


def test_sigkill_during_2000_orders_on_the_embedded_default(tmp_path: Path) -> None:
    out = run_demo(tmp_path, "--processes", "--orders", "2000", "--chaos", "1.5", timeout=400)
    victims = killed(out)
    assert set(victims) == set(NAMES), victims  # the order API and every relay included
    assert "placed 2000 orders" in out


def fresh_kafka_topics(bootstrap: str) -> None:
    """Delete the demo's topics and consumer groups from this broker."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    topics = [*TOPICS, *(f"{name}.dlq" for name in NAMES)]
    present = [t for t in topics if t in admin.list_topics(timeout=10).topics]
    for future in admin.delete_topics(present, operation_timeout=30).values() if present else []:
        future.result()
    for future in admin.delete_consumer_groups(list(NAMES), request_timeout=10).values():
        try:
            future.result()
        except Exception as exc:  # a group that never existed
            assert "GROUP_ID_NOT_FOUND" in str(exc) or "not found" in str(exc).lower(), exc
    deadline = time.monotonic() + 30
    while set(topics) & set(admin.list_topics(timeout=10).topics):
        assert time.monotonic() < deadline, "Kafka did not delete the demo's topics"
        time.sleep(0.2)


def test_sigkill_during_2000_orders_on_kafka_and_postgresql(tmp_path: Path) -> None:
    bootstrap = server_setting("TIDINGS_KAFKA_BOOTSTRAP", "kafka")
    dsn = server_setting("TIDINGS_POSTGRES_DSN", "postgres")
    fresh_kafka_topics(bootstrap)
    schema = f"demo_{uuid.uuid4().hex[:8]}"
    env = {
        "TIDINGS_BROKER": f"kafka://{bootstrap}",
        "TIDINGS_STORE": f"{dsn}?schema={schema}_{{service}}",
    }
    try:
        out = run_demo(
            tmp_path,
            "--processes",
            "--orders",
            "2000",
            "--chaos",
            "3",
            "--timeout",
            "240",
            timeout=550,
            env=env,
        )
    finally:
        _drop_schemas(dsn, schema)
        fresh_kafka_topics(bootstrap)  # other tests use topics of the same names
    victims = killed(out)
    assert set(victims) == set(NAMES), victims
    assert "placed 2000 orders" in out


def _drop_schemas(dsn: str, schema: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(dsn, autocommit=True) as conn:
        for name in NAMES:
            conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                    sql.Identifier(f"{schema}_{name}")
                )
            )


async def test_orders_confirm_while_email_is_down_and_emails_go_out_when_it_returns(
    tmp_path: Path,
) -> None:
    settings = Settings.in_directory(tmp_path)
    assert settings.broker is not None
    cluster = ProcessCluster(settings, tmp_path, "t0ken", "127.0.0.1", 0)
    await cluster.start()
    client = OrderClient(cluster.api_url, "t0ken")
    try:
        await inventory.seed(cluster.services["inventory"], {p: s for p, (_, s) in CATALOG.items()})
        await cluster.terminate(("email",))
        assert not cluster.running("email")
        await client.place_all(sample_orders(150))
        orders = cluster.services["orders"].store
        deadline = time.monotonic() + 60
        while await orders.query("SELECT id FROM orders WHERE status = 'PENDING'"):
            assert time.monotonic() < deadline, "orders did not settle without the email service"
            await asyncio.sleep(0.1)
        confirmed = await orders.query("SELECT count(*) FROM orders WHERE status = 'CONFIRMED'")
        assert confirmed[0][0] > 50
        assert not list(settings.mailbox.glob("*.eml"))  # nobody sent a thing yet

        await cluster.start(("email",))
        async with connect(settings.broker) as broker:
            log = LogCounter(broker, TOPICS)
            deadline = time.monotonic() + 60
            while True:
                checks = await check_invariants(cluster.services, log, settings.mailbox)
                if all(c.ok for c in checks):
                    break
                assert time.monotonic() < deadline, [c for c in checks if not c.ok]
                await asyncio.sleep(0.2)
        assert len(list(settings.mailbox.glob("*.eml"))) == confirmed[0][0]
    finally:
        await client.close()
        await cluster.stop()
