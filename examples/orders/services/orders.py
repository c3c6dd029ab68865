"""Order service: saves orders as PENDING and publishes ORDER_PLACED through its outbox, then
follows the choreography: PAYMENT_CHARGED -> CONFIRMED, INVENTORY_RESERVATION_FAILED ->
REJECTED, PAYMENT_FAILED -> CANCELLED (inventory releases the stock on its own)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

from examples.orders.events import (
    ORDER_EVENTS,
    PARTITIONS,
    InventoryReservationFailed,
    Item,
    OrderCancelled,
    OrderConfirmed,
    OrderPlaced,
    OrderPlacedV1,
    OrderRejected,
    PaymentCharged,
    PaymentFailed,
)
from examples.orders.settings import Settings
from tidings import Context, EventModel, Service

NAME = "orders"
FINAL = ("CONFIRMED", "REJECTED", "CANCELLED")
DISCOUNTS = {"SAVE10": 0.10, "WELCOME5": 0.05}

MIGRATIONS = [
    """CREATE TABLE orders (
        id TEXT PRIMARY KEY,
        status TEXT NOT NULL
            CHECK (status IN ('PENDING', 'CONFIRMED', 'REJECTED', 'CANCELLED')),
        user_id TEXT NOT NULL,
        total REAL NOT NULL,
        currency TEXT NOT NULL,
        discount_code TEXT,
        reason TEXT,
        version INTEGER NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    )""",
]


def _now() -> str:
    return datetime.now(UTC).isoformat()


def order_total(items: Sequence[Item], discount_code: str | None = None) -> float:
    gross = sum(item.price * item.quantity for item in items)
    return round(gross * (1 - DISCOUNTS.get(discount_code or "", 0.0)), 2)


async def place_order(
    service: Service,
    *,
    user_id: str,
    items: Sequence[Item],
    currency: str | None = "USD",
    discount_code: str | None = None,
    order_id: str | None = None,
    event_version: int = 2,
    correlation_id: str | None = None,
) -> str:
    """Save the order as PENDING and publish ORDER_PLACED (v1 or v2) in one transaction.

    Returns at once: everything else happens in the other services, by events. A v1 event
    carries neither currency nor discount code (old clients), so the order is in USD."""
    order_id = order_id or f"ord-{uuid.uuid4().hex[:12]}"
    if event_version == 1:
        currency, discount_code = "USD", None
    total = order_total(items, discount_code)
    event: EventModel
    if event_version == 1:
        event = OrderPlacedV1(order_id=order_id, user_id=user_id, items=list(items), total=total)
    else:
        event = OrderPlaced(
            order_id=order_id,
            user_id=user_id,
            items=list(items),
            total=total,
            currency=currency or "USD",
            discount_code=discount_code,
        )
    async with service.transaction(correlation_id=correlation_id) as ctx:
        now = _now()
        await ctx.execute(
            "INSERT INTO orders(id, status, user_id, total, currency, discount_code, version,"
            " created_at, updated_at) VALUES (?, 'PENDING', ?, ?, ?, ?, 1, ?, ?)",
            (order_id, user_id, total, currency or "USD", discount_code, now, now),
        )
        ctx.publish(ORDER_EVENTS, event, key=order_id)
    return order_id


async def _finish(ctx: Context, order_id: str, status: str, reason: str | None) -> bool:
    """PENDING -> a final status; False if the order is unknown or already final."""
    changed = await ctx.execute(
        "UPDATE orders SET status = ?, reason = ?, version = version + 1, updated_at = ?"
        " WHERE id = ? AND status = 'PENDING'",
        (status, reason, _now(), order_id),
    )
    return changed == 1


def create(settings: Settings) -> Service:
    service = Service(
        NAME,
        broker=settings.broker,
        store=settings.store,
        migrations=MIGRATIONS,
        topics={ORDER_EVENTS: PARTITIONS},
        retry=settings.retry,
    )

    @service.handler("payment-events")
    async def confirm(event: PaymentCharged, ctx: Context) -> None:
        if not await _finish(ctx, event.order_id, "CONFIRMED", None):
            return
        row = await ctx.fetchone(
            "SELECT user_id, total, currency FROM orders WHERE id = ?", (event.order_id,)
        )
        assert row is not None
        ctx.publish(
            ORDER_EVENTS,
            OrderConfirmed(order_id=event.order_id, user_id=row[0], total=row[1], currency=row[2]),
        )

    @service.handler("inventory-events")
    async def reject(event: InventoryReservationFailed, ctx: Context) -> None:
        if await _finish(ctx, event.order_id, "REJECTED", event.reason):
            ctx.publish(ORDER_EVENTS, OrderRejected(order_id=event.order_id, reason=event.reason))

    @service.handler("payment-events")
    async def cancel(event: PaymentFailed, ctx: Context) -> None:
        if await _finish(ctx, event.order_id, "CANCELLED", event.reason):
            ctx.publish(ORDER_EVENTS, OrderCancelled(order_id=event.order_id, reason=event.reason))

    return service
