"""Fulfillment service: starts a shipment when the payment is charged."""

from __future__ import annotations

from datetime import UTC, datetime

from examples.orders.events import PAYMENT_EVENTS, PaymentCharged
from examples.orders.settings import Settings
from tidings import Context, Service

NAME = "fulfillment"

MIGRATIONS = [
    """CREATE TABLE shipments (
        order_id TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        created_at TEXT NOT NULL
    )""",
]


def create(settings: Settings) -> Service:
    service = Service(
        NAME,
        broker=settings.broker,
        store=settings.store,
        migrations=MIGRATIONS,
        retry=settings.retry,
    )

    @service.handler(PAYMENT_EVENTS)
    async def start_shipment(event: PaymentCharged, ctx: Context) -> None:
        ctx.defer(
            "INSERT INTO shipments(order_id, status, created_at) VALUES (?, 'PREPARING', ?)",
            (event.order_id, datetime.now(UTC).isoformat()),
        )

    return service
