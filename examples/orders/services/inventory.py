"""Inventory service: reserves stock for every item of an order, all or nothing, never below
zero (ORDER_PLACED -> INVENTORY_RESERVED or INVENTORY_RESERVATION_FAILED); releases it when the
payment fails (the compensation)."""

from __future__ import annotations

from collections.abc import Mapping

from examples.orders.events import (
    INVENTORY_EVENTS,
    ORDER_EVENTS,
    PARTITIONS,
    InventoryReservationFailed,
    InventoryReserved,
    OrderPlaced,
    PaymentFailed,
)
from examples.orders.settings import Settings
from tidings import Context, Service

NAME = "inventory"
STOCK_LOCK = "stock"

MIGRATIONS = [
    """CREATE TABLE stock (
        product_id TEXT PRIMARY KEY,
        initial INTEGER NOT NULL,
        available INTEGER NOT NULL CHECK (available >= 0)
    );
    CREATE TABLE reservations (
        order_id TEXT NOT NULL,
        product_id TEXT NOT NULL,
        quantity INTEGER NOT NULL CHECK (quantity > 0),
        status TEXT NOT NULL CHECK (status IN ('RESERVED', 'RELEASED')),
        PRIMARY KEY (order_id, product_id)
    )""",
]


async def seed(service: Service, stock: Mapping[str, int]) -> None:
    """Stock the shelves once: products already known keep their current stock."""
    async with service.transaction() as ctx:
        for product_id, quantity in stock.items():
            await ctx.execute(
                "INSERT INTO stock(product_id, initial, available) VALUES (?, ?, ?)"
                " ON CONFLICT(product_id) DO NOTHING",
                (product_id, quantity, quantity),
            )


def create(settings: Settings) -> Service:
    service = Service(
        NAME,
        broker=settings.broker,
        store=settings.store,
        migrations=MIGRATIONS,
        topics={INVENTORY_EVENTS: PARTITIONS},
        retry=settings.retry,
    )

    service.publishes(INVENTORY_EVENTS, InventoryReserved, InventoryReservationFailed)

    # Every order takes from the same few stock rows: the two handlers that write them name
    # one lock, so that concurrent transactions (other partitions' batches, other instances)
    # queue for the stock instead of deadlocking on it (PostgreSQL; SQLite has one writer).
    @service.handler(ORDER_EVENTS, locks=STOCK_LOCK)
    async def reserve(event: OrderPlaced, ctx: Context) -> None:
        wanted: dict[str, int] = {}
        for item in event.items:
            wanted[item.product_id] = wanted.get(item.product_id, 0) + item.quantity
        # Take each product's stock with one conditional UPDATE (in a fixed order): reading
        # the stock first and then decrementing it would race with a concurrent transaction
        # (another partition's batch) taking the same stock in between on PostgreSQL.
        taken: list[tuple[str, int]] = []
        missing: list[str] = []
        for product_id, quantity in sorted(wanted.items()):
            if quantity > 0 and await ctx.execute(
                "UPDATE stock SET available = available - ?"
                " WHERE product_id = ? AND available >= ?",
                (quantity, product_id, quantity),
            ):
                taken.append((product_id, quantity))
            else:
                missing.append(product_id)
        if missing:
            for product_id, quantity in taken:  # all or nothing: give back what was taken
                ctx.defer(
                    "UPDATE stock SET available = available + ? WHERE product_id = ?",
                    (quantity, product_id),
                )
            ctx.publish(
                INVENTORY_EVENTS,
                InventoryReservationFailed(
                    order_id=event.order_id,
                    reason="insufficient stock: "
                    + ", ".join(f"{p} (wanted {wanted[p]})" for p in missing),
                ),
            )
            return
        for product_id, quantity in taken:
            ctx.defer(
                "INSERT INTO reservations(order_id, product_id, quantity, status)"
                " VALUES (?, ?, ?, 'RESERVED')",
                (event.order_id, product_id, quantity),
            )
        ctx.publish(
            INVENTORY_EVENTS,
            InventoryReserved(
                order_id=event.order_id,
                user_id=event.user_id,
                items=event.items,
                total=event.total,
                currency=event.currency,
            ),
        )

    @service.handler("payment-events", locks=STOCK_LOCK)
    async def release(event: PaymentFailed, ctx: Context) -> None:
        rows = await ctx.fetchall(
            "SELECT product_id, quantity FROM reservations"
            " WHERE order_id = ? AND status = 'RESERVED'",
            (event.order_id,),
        )
        for product_id, quantity in rows:
            ctx.defer(
                "UPDATE stock SET available = available + ? WHERE product_id = ?",
                (quantity, product_id),
            )
        ctx.defer(
            "UPDATE reservations SET status = 'RELEASED' WHERE order_id = ?", (event.order_id,)
        )

    return service
