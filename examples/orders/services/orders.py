"""Order service: saves orders as PENDING and publishes ORDER_PLACED through its outbox, then
follows the choreography: PAYMENT_CHARGED -> CONFIRMED, INVENTORY_RESERVATION_FAILED ->
REJECTED, PAYMENT_FAILED -> CANCELLED (inventory releases the stock on its own).

It also keeps each order's event history (every event of the three topics that names the
order), which `GET /orders/{id}` shows; its HTTP API is in `examples/orders/api.py`."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from examples.orders.events import (
    ORDER_EVENTS,
    PARTITIONS,
    TOPICS,
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
from tidings import Context, Event, EventModel, Service

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
    """CREATE TABLE idempotency_keys (
        key TEXT PRIMARY KEY,
        order_id TEXT NOT NULL,
        request_hash TEXT NOT NULL
    );
    CREATE TABLE order_events (
        event_id TEXT PRIMARY KEY,
        order_id TEXT NOT NULL,
        topic TEXT NOT NULL,
        type TEXT NOT NULL,
        version INTEGER NOT NULL,
        time TEXT NOT NULL,
        correlation_id TEXT,
        causation_id TEXT
    );
    CREATE INDEX order_events_by_order ON order_events(order_id, time)""",
]


class IdempotencyConflict(Exception):
    """An Idempotency-Key was sent again with a different request."""


@dataclass(frozen=True, slots=True)
class Placed:
    order_id: str
    created: bool  # False: the Idempotency-Key was seen before; nothing new was placed


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
    idempotency_key: str | None = None,
    request_hash: str = "",
) -> Placed:
    """Save the order as PENDING and publish ORDER_PLACED (v1 or v2) in one transaction.

    Returns at once: everything else happens in the other services, by events. A v1 event
    carries neither currency nor discount code (old clients), so the order is in USD.

    With `idempotency_key`, a key seen before places nothing and returns the first order
    (`created=False`), also when two requests with the key race; the same key with another
    `request_hash` raises IdempotencyConflict."""
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
        if idempotency_key is not None:
            # ON CONFLICT DO NOTHING waits for a racing transaction with the same key and then
            # inserts nothing; that portable form needs no error handling on either store.
            claimed = await ctx.execute(
                "INSERT INTO idempotency_keys(key, order_id, request_hash) VALUES (?, ?, ?)"
                " ON CONFLICT(key) DO NOTHING",
                (idempotency_key, order_id, request_hash),
            )
            if not claimed:
                row = await ctx.fetchone(
                    "SELECT order_id, request_hash FROM idempotency_keys WHERE key = ?",
                    (idempotency_key,),
                )
                assert row is not None
                if row[1] != request_hash:
                    raise IdempotencyConflict(
                        f"Idempotency-Key {idempotency_key!r} was used for a different request"
                    )
                return Placed(str(row[0]), created=False)
        now = _now()
        # nothing here needs its result: deferred, it goes with the COMMIT (one round trip
        # less on PostgreSQL)
        ctx.defer(
            "INSERT INTO orders(id, status, user_id, total, currency, discount_code, version,"
            " created_at, updated_at) VALUES (?, 'PENDING', ?, ?, ?, ?, 1, ?, ?)",
            (order_id, user_id, total, currency or "USD", discount_code, now, now),
        )
        ctx.publish(ORDER_EVENTS, event, key=order_id)
    return Placed(order_id, created=True)


async def _finish(
    ctx: Context, order_id: str, status: str, reason: str | None
) -> tuple[Any, ...] | None:
    """PENDING -> a final status; the order's (user_id, total, currency), read by the same
    statement, or None if the order is unknown or already final."""
    return await ctx.fetchone(
        "UPDATE orders SET status = ?, reason = ?, version = version + 1, updated_at = ?"
        " WHERE id = ? AND status = 'PENDING' RETURNING user_id, total, currency",
        (status, reason, _now(), order_id),
    )


def create(settings: Settings) -> Service:
    service = Service(
        NAME,
        broker=settings.broker,
        store=settings.store,
        migrations=MIGRATIONS,
        topics={ORDER_EVENTS: PARTITIONS},
        retry=settings.retry,
    )

    service.publishes(
        ORDER_EVENTS, OrderPlaced, OrderPlacedV1, OrderConfirmed, OrderRejected, OrderCancelled
    )

    @service.handler("payment-events")
    async def confirm(event: PaymentCharged, ctx: Context) -> None:
        row = await _finish(ctx, event.order_id, "CONFIRMED", None)
        if row is None:
            return
        ctx.publish(
            ORDER_EVENTS,
            OrderConfirmed(order_id=event.order_id, user_id=row[0], total=row[1], currency=row[2]),
        )

    @service.handler("inventory-events")
    async def reject(event: InventoryReservationFailed, ctx: Context) -> None:
        if await _finish(ctx, event.order_id, "REJECTED", event.reason) is not None:
            ctx.publish(ORDER_EVENTS, OrderRejected(order_id=event.order_id, reason=event.reason))

    @service.handler("payment-events")
    async def cancel(event: PaymentFailed, ctx: Context) -> None:
        if await _finish(ctx, event.order_id, "CANCELLED", event.reason) is not None:
            ctx.publish(ORDER_EVENTS, OrderCancelled(order_id=event.order_id, reason=event.reason))

    @service.handler(*TOPICS)
    async def record_history(event: Event, ctx: Context) -> None:
        order_id = event.data.get("orderId") if isinstance(event.data, dict) else None
        if not isinstance(order_id, str):
            return
        ctx.defer(
            "INSERT INTO order_events(event_id, order_id, topic, type, version, time,"
            " correlation_id, causation_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT(event_id) DO NOTHING",
            (
                event.id,
                order_id,
                ctx.position[0] if ctx.position else "",
                event.type,
                event.version,
                event.time.isoformat(),
                event.correlation_id,
                event.causation_id,
            ),
        )

    return service
