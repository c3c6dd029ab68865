"""Tracing spans as OpenTelemetry's SDK records them (in memory): one trace follows an event from
request code through the outbox to each handler and on, with the messaging conventions'
attributes; retries are span events and a dead letter is an error. The same against a real
Jaeger, across processes, is in test_tracing_jaeger.py."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from tests.support import eventually
from tidings import Retry
from tidings.schema import EventModel
from tidings.service import Context, Service
from tidings.telemetry.tracing import instrument


class Placed(EventModel, type="TR_PLACED", version=1):
    order_id: str


class Reserved(EventModel, type="TR_RESERVED", version=1):
    order_id: str


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    return tracer_provider


async def test_one_trace_from_request_code_through_two_services(
    tmp_path: Path, exporter: InMemorySpanExporter, running: Callable[[Service], Awaitable[None]]
) -> None:
    bus = f"sqlite:///{tmp_path}/bus.db"
    orders = Service(
        "orders", broker=bus, store=f"sqlite:///{tmp_path}/o.db", topics={"order-events": 2}
    )
    inventory = Service(
        "inventory",
        broker=bus,
        store=f"sqlite:///{tmp_path}/i.db",
        topics={"inventory-events": 2},
        retry=Retry(immediate=1, max_attempts=2, initial_delay=0.01),
    )

    @inventory.handler("order-events")
    async def reserve(event: Placed, ctx: Context) -> None:
        if event.order_id == "bad":
            raise RuntimeError("no stock")
        ctx.publish("inventory-events", Reserved(order_id=event.order_id))

    for service in (orders, inventory):
        instrument(service, provider(exporter))
    await running(inventory)
    await running(orders)
    for order_id in ("o1", "bad"):
        async with orders.transaction(correlation_id=f"corr-{order_id}") as ctx:
            ctx.publish("order-events", Placed(order_id=order_id), key=order_id)

    def named(prefix: str) -> list[ReadableSpan]:
        return [s for s in exporter.get_finished_spans() if s.name.startswith(prefix)]

    async def done() -> bool:
        return len(named("dead_letter")) == 1 and len(named("send inventory-events")) >= 1

    await eventually(done)
    spans = exporter.get_finished_spans()
    by_id = {s.context.span_id: s for s in spans}
    create_order = next(
        s
        for s in named("create order-events")
        if s.attributes and s.attributes["messaging.message.conversation_id"] == "corr-o1"
    )
    assert create_order.kind is SpanKind.PRODUCER
    process = [
        s
        for s in named("process order-events")
        if s.attributes and s.attributes["messaging.message.conversation_id"] == "corr-o1"
    ]
    assert len(process) == 1 and process[0].kind is SpanKind.CONSUMER
    assert (
        process[0].parent is not None and process[0].parent.span_id == create_order.context.span_id
    )
    assert process[0].context.trace_id == create_order.context.trace_id
    attrs = process[0].attributes or {}
    assert attrs["messaging.consumer.group.name"] == "inventory"
    assert attrs["messaging.destination.name"] == "order-events"
    assert attrs["messaging.operation.type"] == "process"
    assert attrs["tidings.event.type"] == "TR_PLACED"
    assert "messaging.kafka.offset" in attrs and "messaging.destination.partition.id" in attrs
    create_reserved = named("create inventory-events")
    assert len(create_reserved) == 1
    parent = create_reserved[0].parent
    assert parent is not None and by_id[parent.span_id] is process[0]  # caused within the handler
    send = named("send order-events")
    assert send and any(
        link.context.span_id == create_order.context.span_id for s in send for link in s.links
    )
    bad = [
        s
        for s in named("process order-events")
        if s.attributes and s.attributes["messaging.message.conversation_id"] == "corr-bad"
    ]
    # the batch's fast pass and the careful pass are attempt 1, then the retry: attempt 2
    assert len(bad) >= 2 and all(s.status.status_code is StatusCode.ERROR for s in bad)
    last = max(bad, key=lambda s: s.start_time or 0)
    assert (last.attributes or {})["tidings.attempt"] == 2
    assert [e.name for e in last.events if e.name == "retry"] == ["retry"]
    [dead] = named("dead_letter")
    assert dead.status.status_code is StatusCode.ERROR
    assert (dead.attributes or {})["tidings.dead_letter.reason"] == "retries-exhausted"
    assert dead.context.trace_id == bad[0].context.trace_id
