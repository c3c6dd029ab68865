"""The article's order system (examples/orders): the scripted demo run, its HTTP API and a
poison event. Fault tests (SIGKILL, email down) are in test_orders_faults.py."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from examples.orders.checks import Check, LogCounter, check_invariants
from examples.orders.cluster import InProcessCluster
from examples.orders.events import TOPICS
from examples.orders.load import OrderClient, sample_orders
from examples.orders.services import inventory
from examples.orders.settings import Settings

from tests.support import eventually
from tidings import Event, TopicPartition, connect, event_from_record
from tidings.dlq import list_dead_letters
from tidings.testing.hostile import hostile_records

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "test-token"  # noqa: S105 (a test value)
ORDER = {
    "userId": "ada",
    "items": [{"productId": "keyboard", "quantity": 2, "price": 49.0}],
    "currency": "EUR",
    "discountCode": "SAVE10",
}


def run_demo(
    directory: Path, *args: str, timeout: float = 170, env: dict[str, str] | None = None
) -> str:
    """Run `python -m examples.orders --exit` with `args`; its output, once it passed."""
    demo = [sys.executable, "-m", "examples.orders", "--exit", "--port", "0"]
    result = subprocess.run(
        [*demo, "--dir", str(directory), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {}), "COLUMNS": "200"},
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "all invariants hold" in out, out
    assert "FAIL " not in out and "invariants failed" not in out, out
    return out


def test_demo_runs_200_orders_and_every_invariant_holds(tmp_path: Path) -> None:
    out = run_demo(tmp_path, "--orders", "200")
    for status in ("CONFIRMED", "REJECTED", "CANCELLED"):
        assert status in out
    for event_type in ("ORDER_PLACED", "INVENTORY_RESERVED", "PAYMENT_CHARGED", "PAYMENT_FAILED"):
        assert event_type in out
    assert "placed 200 orders" in out
    assert len(list((tmp_path / "mailbox").glob("*.eml"))) > 0
    # a second run on the same data adds orders; the invariants hold over both
    out = run_demo(tmp_path, "--orders", "50")
    assert "placed 50 orders" in out


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[InProcessCluster]:
    settings = Settings.in_directory(tmp_path, payment_failure_rate=0.0)  # every card works
    running = InProcessCluster(settings, TOKEN, "127.0.0.1", 0)
    await running.start()
    await inventory.seed(running.services["inventory"], {"keyboard": 100, "mouse": 5})
    try:
        yield running
    finally:
        await running.stop()


async def settled(cluster: InProcessCluster, timeout: float = 30) -> list[Check]:
    """Wait until every invariant but 'no dead letters' holds; the checks."""
    assert cluster.settings.broker is not None
    async with connect(cluster.settings.broker) as broker:
        log = LogCounter(broker, TOPICS)
        deadline = time.monotonic() + timeout
        while True:
            checks = await check_invariants(cluster.services, log, cluster.settings.mailbox)
            failing = [c.name for c in checks if not c.ok and c.name != "no dead letters"]
            if not failing or time.monotonic() > deadline:
                return checks
            await asyncio.sleep(0.1)


async def test_post_order_answers_at_once_and_the_order_is_confirmed_by_events(
    cluster: InProcessCluster,
) -> None:
    async with httpx.AsyncClient(base_url=cluster.api_url) as http:
        response = await http.post(
            "/orders",
            json=ORDER,
            headers={"Authorization": f"Bearer {TOKEN}", "X-Correlation-Id": "checkout-42"},
        )
        assert response.status_code == 202, response.text
        body = response.json()
        assert body["status"] == "PENDING"
        assert body["total"] == 88.2  # 2 x 49.0 less 10%
        assert response.headers["X-Correlation-Id"] == "checkout-42"
        assert response.headers["Location"] == f"/orders/{body['orderId']}"
        assert all(c.ok for c in await settled(cluster))

        order = (await http.get(response.headers["Location"])).json()
        assert order["status"] == "CONFIRMED"
        assert (order["currency"], order["discountCode"]) == ("EUR", "SAVE10")
        history = order["events"]
        types = [e["type"] for e in history]
        for expected in ("ORDER_PLACED", "INVENTORY_RESERVED", "PAYMENT_CHARGED"):
            assert expected in types
        assert "ORDER_CONFIRMED" in types
        assert {e["correlationId"] for e in history} == {"checkout-42"}
        placed = next(e for e in history if e["type"] == "ORDER_PLACED")
        assert placed["version"] == 2
        reserved = next(e for e in history if e["type"] == "INVENTORY_RESERVED")
        assert reserved["causationId"] == placed["eventId"]

        listed = (await http.get("/orders", params={"status": "CONFIRMED"})).json()["orders"]
        assert [o["orderId"] for o in listed] == [body["orderId"]]
        assert (await http.get("/orders", params={"status": "PENDING"})).json() == {"orders": []}

        analytics = (await http.get(f"{cluster.analytics_url}/analytics")).json()
        counts = {(e["topic"], e["type"]): e["count"] for e in analytics["events"]}
        assert counts[("order-events", "ORDER_PLACED")] == 1
        assert counts[("payment-events", "PAYMENT_CHARGED")] == 1
        assert [r["orders"] for r in analytics["revenuePerMinute"]] == [1]
        assert analytics["revenuePerMinute"][0]["currency"] == "EUR"


async def test_the_demo_serves_metrics_and_health_of_all_seven_services(
    cluster: InProcessCluster,
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    async with httpx.AsyncClient(base_url=cluster.api_url) as http:
        response = await http.post(
            "/orders", json=ORDER, headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert response.status_code == 202, response.text
        assert all(c.ok for c in await settled(cluster))
        assert cluster.metrics_url.startswith("http://127.0.0.1:")

        async def processed() -> dict[tuple[str, str], float]:
            text = (await http.get(cluster.metrics_url)).text
            return {
                (s.labels["service"], s.labels["type"]): s.value
                for family in text_string_to_metric_families(text)
                for s in family.samples
                if s.name == "tidings_events_processed_total" and s.labels["outcome"] == "ok"
            }

        counted = await processed()
        assert counted.get(("inventory", "ORDER_PLACED")) == 1, counted
        assert counted.get(("payment", "INVENTORY_RESERVED")) == 1, counted
        assert counted.get(("orders", "PAYMENT_CHARGED")) == 1, counted
        health = cluster.metrics_url.removesuffix("/metrics")
        ready = await http.get(f"{health}/readyz")
        assert ready.status_code == 200, ready.text
        assert set(ready.json()["services"]) == set(cluster.services)


async def test_an_old_client_without_currency_publishes_order_placed_v1(
    cluster: InProcessCluster,
) -> None:
    old = {"userId": "bob", "items": [{"productId": "mouse", "quantity": 1, "price": 19.5}]}
    async with httpx.AsyncClient(base_url=cluster.api_url) as http:
        response = await http.post(
            "/orders", json=old, headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert response.status_code == 202, response.text
        assert all(c.ok for c in await settled(cluster))
        order = (await http.get(response.headers["Location"])).json()
    assert (order["status"], order["currency"]) == ("CONFIRMED", "USD")
    placed = next(e for e in order["events"] if e["type"] == "ORDER_PLACED")
    assert placed["version"] == 1
    assert order["events"][0]["correlationId"].startswith("corr-")


async def test_the_same_idempotency_key_places_one_order(cluster: InProcessCluster) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}", "Idempotency-Key": "cart-7"}
    async with httpx.AsyncClient(base_url=cluster.api_url) as http:
        answers = await asyncio.gather(
            *(http.post("/orders", json=ORDER, headers=headers) for _ in range(5))
        )
        assert {a.status_code for a in answers} == {202}
        assert len({a.json()["orderId"] for a in answers}) == 1
        assert sum(a.headers.get("Idempotent-Replayed") == "true" for a in answers) == 4
        reformatted = json.dumps(dict(reversed(ORDER.items())), indent=2)
        again = await http.post("/orders", content=reformatted, headers=headers)
        assert again.status_code == 202, again.text
        assert again.json()["orderId"] == answers[0].json()["orderId"]
        other = {**ORDER, "userId": "someone-else"}
        conflict = await http.post("/orders", json=other, headers=headers)
        assert conflict.status_code == 422
        assert "different request" in conflict.json()["error"]
        assert all(c.ok for c in await settled(cluster))
        assert len((await http.get("/orders")).json()["orders"]) == 1
    charged = await cluster.services["payment"].store.query("SELECT count(*) FROM charges")
    assert charged == [(1,)]


@pytest.mark.parametrize(
    ("headers", "body", "status", "message"),
    [
        ({}, ORDER, 401, "bearer token"),
        ({"Authorization": "Bearer wrong"}, ORDER, 401, "bearer token"),
        ({"Authorization": f"Bearer {TOKEN}"}, b"{not json", 422, "invalid order"),
        ({"Authorization": f"Bearer {TOKEN}"}, {**ORDER, "items": []}, 422, "invalid order"),
        ({"Authorization": f"Bearer {TOKEN}"}, {**ORDER, "total": 1.0}, 422, "does not match"),
        (
            {"Authorization": f"Bearer {TOKEN}"},
            {**ORDER, "discountCode": "FREE"},
            422,
            "invalid order",
        ),
        ({"Authorization": f"Bearer {TOKEN}"}, {**ORDER, "admin": True}, 422, "invalid order"),
        (
            {"Authorization": f"Bearer {TOKEN}", "X-Correlation-Id": "bad id; drop"},
            ORDER,
            400,
            "X-Correlation-Id",
        ),
        ({"Authorization": f"Bearer {TOKEN}"}, b"x" * 70_000, 413, "larger than"),
    ],
    ids=[
        "no-token",
        "wrong-token",
        "not-json",
        "no-items",
        "wrong-total",
        "unknown-discount",
        "unknown-field",
        "bad-correlation-id",
        "too-large",
    ],
)
async def test_bad_requests_get_a_clear_error_and_place_nothing(
    cluster: InProcessCluster,
    headers: dict[str, str],
    body: dict[str, object] | bytes,
    status: int,
    message: str,
) -> None:
    async with httpx.AsyncClient(base_url=cluster.api_url) as http:
        if isinstance(body, bytes):
            response = await http.post("/orders", content=body, headers=headers)
        else:
            response = await http.post("/orders", json=body, headers=headers)
        assert response.status_code == status, response.text
        assert message in response.text
        assert (await http.get("/orders")).json() == {"orders": []}
        assert (await http.get("/orders/nope")).status_code == 404
        assert (await http.get("/orders", params={"status": "LOST"})).status_code == 400
        assert (await http.get("/orders", params={"limit": "x"})).status_code == 400
    outbox = await cluster.services["orders"].store.query("SELECT count(*) FROM tidings_outbox")
    assert outbox == [(0,)]


async def test_poison_order_placed_is_dead_lettered_and_the_rest_flows(
    cluster: InProcessCluster,
) -> None:
    assert cluster.settings.broker is not None
    async with connect(cluster.settings.broker) as broker:
        poison = Event(
            type="ORDER_PLACED", version=2, key="ord-poison", data={"orderId": "ord-poison"}
        )
        await broker.publish_events("order-events", [poison])
        client = OrderClient(cluster.api_url, TOKEN)
        samples = sample_orders(20)
        for sample in samples:
            for item in sample.body["items"]:
                item["productId"], item["price"] = "keyboard", 49.0
        try:
            await client.place_all(samples)
        finally:
            await client.close()
        checks = await settled(cluster)
        assert [c.name for c in checks if not c.ok] == ["no dead letters"], checks
        info = await broker.admin.describe_topic("inventory.dlq")
        letters = await broker.read(
            TopicPartition("inventory.dlq", 0), info.partitions[0].start_offset, 10
        )
        assert len(letters) == 1
        assert event_from_record(letters[0]).id == poison.id
        assert letters[0].header("tidings-dlq-topic") == b"order-events"
        statuses = await cluster.services["orders"].store.query(
            "SELECT status, count(*) FROM orders GROUP BY status"
        )
        by_status = {str(row[0]): int(row[1]) for row in statuses}
        assert sum(by_status.values()) == 20
        assert by_status.get("CONFIRMED", 0) > 0
        # analytics saw the poison record too, like every record of its topics
        log = LogCounter(broker, TOPICS)
        assert (await log.refresh())[("order-events", "ORDER_PLACED")] == 21


async def test_hostile_records_on_every_topic_leave_every_valid_order_and_invariant_intact(
    cluster: InProcessCluster,
) -> None:
    """A hostile producer writes the whole hostile corpus to each topic of the order system
    while orders flow: each record is dead-lettered with its reason (or skipped as of no
    interest), every group's lag returns to 0, and every invariant but 'no dead letters'
    holds."""
    assert cluster.settings.broker is not None
    types = {"order-events": "ORDER_PLACED", "inventory-events": "INVENTORY_RESERVED"}
    types["payment-events"] = "PAYMENT_CHARGED"
    async with connect(cluster.settings.broker) as broker:
        client = OrderClient(cluster.api_url, TOKEN)
        samples = sample_orders(60)
        for sample in samples:
            for item in sample.body["items"]:
                item["productId"], item["price"] = "keyboard", 10.0
        placing = asyncio.create_task(client.place_all(samples, concurrency=4))
        try:
            for seed, (topic, event_type) in enumerate(types.items()):
                corpus = hostile_records(
                    event_type, max_message_bytes=broker.max_message_bytes, seed=seed
                )
                for hostile in corpus:
                    await broker.publish(topic, [hostile.message])
                    await asyncio.sleep(0.002)
            await placing
        finally:
            await client.close()
        checks = await settled(cluster, timeout=60)
        assert [c.name for c in checks if not c.ok] == ["no dead letters"], checks

        async def no_lag() -> bool:
            lags = [(await broker.admin.describe_group(n)).lag for n in cluster.services]
            return not any(lags)

        await eventually(no_lag)
        letters = await list_dead_letters(broker)
        assert letters and all(letter.reason and letter.message for letter in letters)
        assert {letter.reason for letter in letters} <= {"undecodable", "invalid-event"}
        statuses = await cluster.services["orders"].store.query(
            "SELECT status, count(*) FROM orders GROUP BY status"
        )
        assert sum(int(row[1]) for row in statuses) == 60


def test_tidings_demo_command_runs_the_example_from_a_checkout(tmp_path: Path) -> None:
    tidings = [sys.executable, "-m", "tidings.cli", "demo"]
    args = ["--orders", "20", "--exit", "--port", "0", "--dir", str(tmp_path)]
    result = subprocess.run(
        [*tidings, *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all invariants hold" in result.stdout
    elsewhere = subprocess.run(
        [*tidings, *args], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert elsewhere.returncode == 2
    assert "run `tidings demo` from the repository root" in elsewhere.stderr


def test_demo_rejects_bad_arguments_and_a_busy_port(tmp_path: Path) -> None:
    import socket

    demo = [sys.executable, "-m", "examples.orders", "--dir", str(tmp_path)]
    for bad, message in [
        (["--orders", "-1"], "--orders must be >= 0"),
        (["--failure-rate", "2"], "--failure-rate must be between 0 and 1"),
        (["--chaos", "1"], "--chaos needs --processes"),
        (["--port", "70000"], "--port must be 0..65535"),
    ]:
        result = subprocess.run([*demo, *bad], cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 2 and message in result.stderr, result.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        result = subprocess.run(
            [*demo, "--orders", "1", "--exit", "--port", port],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"cannot serve HTTP on 127.0.0.1:{port}" in result.stderr
