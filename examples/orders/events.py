"""The order system's events, named as in the article (wire fields are camelCase).

Every event is keyed by its order id, so all events of one order stay in order per topic.
"""

from __future__ import annotations

from typing import Any

from tidings import EventModel, WireModel

ORDER_EVENTS = "order-events"
INVENTORY_EVENTS = "inventory-events"
PAYMENT_EVENTS = "payment-events"
TOPICS = (ORDER_EVENTS, INVENTORY_EVENTS, PAYMENT_EVENTS)
PARTITIONS = 4


class Item(WireModel):
    product_id: str
    quantity: int
    price: float


class OrderPlacedV1(EventModel, type="ORDER_PLACED", version=1):
    order_id: str
    user_id: str
    items: list[Item]
    total: float


class OrderPlaced(EventModel, type="ORDER_PLACED", version=2):
    order_id: str
    user_id: str
    items: list[Item]
    total: float
    currency: str
    discount_code: str | None = None


@OrderPlaced.upcaster(from_version=1)
def _order_placed_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    """v1 predates currencies: every v1 order was in USD, without discount codes."""
    return {**data, "currency": "USD", "discountCode": None}


class InventoryReserved(EventModel, type="INVENTORY_RESERVED", version=1):
    order_id: str
    user_id: str
    items: list[Item]
    total: float
    currency: str


class InventoryReservationFailed(EventModel, type="INVENTORY_RESERVATION_FAILED", version=1):
    order_id: str
    reason: str


class PaymentCharged(EventModel, type="PAYMENT_CHARGED", version=1):
    order_id: str
    amount: float
    currency: str
    charge_id: str


class PaymentFailed(EventModel, type="PAYMENT_FAILED", version=1):
    order_id: str
    reason: str


class OrderConfirmed(EventModel, type="ORDER_CONFIRMED", version=1):
    order_id: str
    user_id: str
    total: float
    currency: str


class OrderRejected(EventModel, type="ORDER_REJECTED", version=1):
    order_id: str
    reason: str


class OrderCancelled(EventModel, type="ORDER_CANCELLED", version=1):
    order_id: str
    reason: str
