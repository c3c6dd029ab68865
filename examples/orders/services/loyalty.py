"""Loyalty service: one point per whole currency unit, once per confirmed order."""

from __future__ import annotations

from examples.orders.events import ORDER_EVENTS, OrderConfirmed
from examples.orders.settings import Settings
from tidings import Context, Service

NAME = "loyalty"

MIGRATIONS = [
    """CREATE TABLE points (
        order_id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL,
        points INTEGER NOT NULL
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

    @service.handler(ORDER_EVENTS)
    async def add_points(event: OrderConfirmed, ctx: Context) -> None:
        ctx.defer(
            "INSERT INTO points(order_id, user_id, points) VALUES (?, ?, ?)",
            (event.order_id, event.user_id, int(event.total)),
        )

    return service
