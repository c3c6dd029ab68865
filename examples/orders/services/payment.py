"""Payment service: charges on INVENTORY_RESERVED through a simulated gateway ->
PAYMENT_CHARGED or PAYMENT_FAILED. Nothing leaves the machine.

The gateway declines a configurable fraction of orders, chosen by a hash of the order id (so a
run is reproducible), and is called with the order id as idempotency key, as real gateways
allow: a handler that runs again for the same event gets the same answer and no second charge.
"""

from __future__ import annotations

import asyncio
import hashlib

from examples.orders.events import (
    INVENTORY_EVENTS,
    PARTITIONS,
    PAYMENT_EVENTS,
    InventoryReserved,
    PaymentCharged,
    PaymentFailed,
)
from examples.orders.settings import Settings
from tidings import Context, Service

NAME = "payment"

MIGRATIONS = [
    """CREATE TABLE charges (
        order_id TEXT PRIMARY KEY,
        amount REAL NOT NULL,
        currency TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('CHARGED', 'FAILED')),
        charge_id TEXT,
        reason TEXT
    )""",
]


class CardDeclined(Exception):
    pass


def declines(order_id: str, failure_rate: float) -> bool:
    """Whether the simulated gateway declines this order: deterministic per order id."""
    digest = hashlib.sha256(order_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < failure_rate


class SimulatedGateway:
    def __init__(self, failure_rate: float = 0.1, latency_s: float = 0.0) -> None:
        self.failure_rate = failure_rate
        self.latency_s = latency_s

    async def charge(self, idempotency_key: str, amount: float, currency: str) -> str:
        """The charge id, or CardDeclined."""
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        if declines(idempotency_key, self.failure_rate):
            raise CardDeclined(f"card declined for {amount:.2f} {currency}")
        return "ch_" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:16]


def create(settings: Settings) -> Service:
    gateway = SimulatedGateway(settings.payment_failure_rate, settings.payment_latency_s)
    service = Service(
        NAME,
        broker=settings.broker,
        store=settings.store,
        migrations=MIGRATIONS,
        topics={PAYMENT_EVENTS: PARTITIONS},
        retry=settings.retry,
    )

    service.publishes(PAYMENT_EVENTS, PaymentCharged, PaymentFailed)

    @service.handler(INVENTORY_EVENTS)
    async def charge(event: InventoryReserved, ctx: Context) -> None:
        try:
            charge_id = await gateway.charge(event.order_id, event.total, event.currency)
        except CardDeclined as exc:
            ctx.defer(
                "INSERT INTO charges(order_id, amount, currency, status, reason)"
                " VALUES (?, ?, ?, 'FAILED', ?)",
                (event.order_id, event.total, event.currency, str(exc)),
            )
            ctx.publish(PAYMENT_EVENTS, PaymentFailed(order_id=event.order_id, reason=str(exc)))
            return
        ctx.defer(
            "INSERT INTO charges(order_id, amount, currency, status, charge_id)"
            " VALUES (?, ?, ?, 'CHARGED', ?)",
            (event.order_id, event.total, event.currency, charge_id),
        )
        ctx.publish(
            PAYMENT_EVENTS,
            PaymentCharged(
                order_id=event.order_id,
                amount=event.total,
                currency=event.currency,
                charge_id=charge_id,
            ),
        )

    return service
