"""One trace per order across every service, checked in a real Jaeger: the order system runs one
OS process per service exporting to Jaeger over OTLP (configured by the standard OTEL_*
variables only), an order is placed through the HTTP API with a correlation id, and Jaeger's
query API returns one trace with spans of all seven services, each handler's process span a
child of the span that published its event. On the embedded default and on Kafka + PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from examples.orders.cluster import ProcessCluster
from examples.orders.serve import NAMES
from examples.orders.services import inventory
from examples.orders.settings import Settings

from tests.support import server_setting
from tests.test_orders_faults import fresh_kafka_topics

pytestmark = pytest.mark.timeout(300)
TOKEN = "trace-token"  # noqa: S105 (a test value)


@pytest.fixture
def jaeger(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    query = server_setting("TIDINGS_JAEGER_QUERY_URL", "jaeger")
    monkeypatch.setenv(
        "OTEL_EXPORTER_OTLP_ENDPOINT", server_setting("TIDINGS_JAEGER_OTLP_ENDPOINT", "jaeger")
    )
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")  # export within 0.1 s of a span's end
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)  # each service names itself
    yield query


async def find_trace(query: str, correlation: str, timeout: float = 90) -> dict[str, Any]:
    """The trace holding `correlation`'s spans, once spans of every service arrived."""
    tags = json.dumps({"messaging.message.conversation_id": correlation})
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=query, timeout=10) as http:
        while True:
            response = await http.get(
                "/api/traces", params={"service": "orders", "tags": tags, "limit": 10}
            )
            traces = response.json().get("data") or []
            for trace in traces:
                services = {p["serviceName"] for p in trace["processes"].values()}
                if services >= set(NAMES):
                    return trace
            assert time.monotonic() < deadline, (
                f"no trace with all services for {correlation}: "
                f"{[sorted({p['serviceName'] for p in t['processes'].values()}) for t in traces]}"
            )
            await asyncio.sleep(0.5)


def tag(span: dict[str, Any], key: str) -> Any:
    return next((t["value"] for t in span["tags"] if t["key"] == key), None)


def check_structure(trace: dict[str, Any]) -> None:
    spans = {s["spanID"]: s for s in trace["spans"]}
    service_of = {pid: p["serviceName"] for pid, p in trace["processes"].items()}
    roots = [
        s for s in spans.values() if not any(r["refType"] == "CHILD_OF" for r in s["references"])
    ]
    assert [s["operationName"] for s in roots] == ["create order-events"]
    assert service_of[roots[0]["processID"]] == "orders"
    handlers = set()
    for span in spans.values():
        name = span["operationName"]
        parents = [r["spanID"] for r in span["references"] if r["refType"] == "CHILD_OF"]
        if name.startswith("process "):
            [parent_id] = parents
            parent = spans[parent_id]  # in the same trace
            assert parent["operationName"] == "create " + name.removeprefix("process ")
            assert tag(parent, "messaging.message.id") == tag(span, "messaging.message.id")
            assert tag(span, "messaging.consumer.group.name") == service_of[span["processID"]]
            assert tag(span, "messaging.operation.type") == "process"
            assert tag(span, "messaging.kafka.offset") is not None
            handlers.add(tag(span, "tidings.handler"))
        elif name.startswith("send "):
            links = [r for r in span["references"] if r["refType"] == "FOLLOWS_FROM"]
            assert links, span  # linked to the create spans of the events it carried
    assert {
        "inventory.reserve",
        "payment.charge",
        "orders.confirm",
        "email.send_confirmation",
        "loyalty.add_points",
        "fulfillment.start_shipment",
        "analytics.track",
    } <= handlers
    event_types = {tag(s, "tidings.event.type") for s in spans.values()}
    assert {
        "ORDER_PLACED",
        "INVENTORY_RESERVED",
        "PAYMENT_CHARGED",
        "ORDER_CONFIRMED",
    } <= event_types


async def place_and_trace(tmp_path: Path, query: str) -> None:
    settings = Settings.in_directory(tmp_path, payment_failure_rate=0.0)
    cluster = ProcessCluster(settings, tmp_path, TOKEN, "127.0.0.1", 0)
    await cluster.start()
    try:
        await inventory.seed(cluster.services["inventory"], {"mouse": 100})
        correlation = f"trace-{uuid.uuid4().hex[:12]}"
        async with httpx.AsyncClient(base_url=cluster.api_url, timeout=30) as http:
            response = await http.post(
                "/orders",
                json={
                    "userId": "ada",
                    "items": [{"productId": "mouse", "quantity": 1, "price": 19.5}],
                    "currency": "EUR",
                },
                headers={"Authorization": f"Bearer {TOKEN}", "X-Correlation-Id": correlation},
            )
            assert response.status_code == 202, response.text
            order_id = response.json()["orderId"]
            deadline = time.monotonic() + 60
            while (await http.get(f"/orders/{order_id}")).json()["status"] != "CONFIRMED":
                assert time.monotonic() < deadline, "the order was not confirmed"
                await asyncio.sleep(0.1)
        check_structure(await find_trace(query, correlation))
        async with httpx.AsyncClient(timeout=10) as http:  # each process serves its metrics
            for name, url in cluster.metrics_urls.items():
                text = (await http.get(url)).text
                assert f'tidings_outbox_pending{{service="{name}"}}' in text, (name, text[:300])
                assert (await http.get(url.replace("/metrics", "/readyz"))).status_code == 200
    finally:
        await cluster.terminate(NAMES, grace=20.0)


async def test_one_trace_spans_all_seven_services_on_the_embedded_default(
    tmp_path: Path, jaeger: str
) -> None:
    await place_and_trace(tmp_path, jaeger)


async def test_one_trace_spans_all_seven_services_on_kafka_and_postgresql(
    tmp_path: Path, jaeger: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psycopg
    from psycopg import sql

    bootstrap = server_setting("TIDINGS_KAFKA_BOOTSTRAP", "kafka")
    dsn = server_setting("TIDINGS_POSTGRES_DSN", "postgres")
    fresh_kafka_topics(bootstrap)
    prefix = f"trace_{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("TIDINGS_BROKER", f"kafka://{bootstrap}")
    monkeypatch.setenv("TIDINGS_STORE", f"{dsn}?schema={prefix}_{{service}}")
    try:
        await place_and_trace(tmp_path, jaeger)
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            for name in NAMES:
                schema = sql.Identifier(f"{prefix}_{name}")
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(schema))
